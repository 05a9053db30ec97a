"""Each runtime's /metrics families mapped onto servescope's concepts, built from the concept
table (servescope/core/concepts.py): a new runtime or a renamed metric is a source there,
not a new code path here.

Family names are as prometheus-client's parser reports them: a counter's family drops the
``_total`` suffix that its samples carry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from servescope.core.concepts import CONCEPTS, PREFIXES, RUNTIMES, SCALAR_CONCEPTS

__all__ = ["LLAMACPP", "MAPPINGS", "PREFIXES", "SCALAR_CONCEPTS", "SGLANG", "TGI", "VLLM",
           "RuntimeMapping", "mapping_for"]


@dataclass(frozen=True)
class RuntimeMapping:
    runtime: str
    gauges: dict[str, str]  # concept -> metric family
    counters: dict[str, str]  # concept -> counter family (without _total)
    histograms: dict[str, str]  # concept -> histogram family
    # Old family name -> current one, so a server of any version in a rename window
    # normalizes the same.
    aliases: dict[str, str] = field(default_factory=dict)
    info_family: str | None = None  # an *_info gauge holding config in its labels


_BY_KIND = {"gauge": "gauges", "counter": "counters", "histogram": "histograms"}


def mapping_for(runtime: str) -> RuntimeMapping:
    """The runtime's /metrics sources in the concept table (API-only sources left out: the
    runtime's collector module reads those)."""
    kinds: dict[str, dict[str, str]] = {"gauges": {}, "counters": {}, "histograms": {}}
    aliases: dict[str, str] = {}
    info_family = None
    for c in CONCEPTS:
        src = c.sources.get(runtime)
        if src is None or src.api:
            continue
        if src.info:
            info_family = src.name
            continue
        kinds[_BY_KIND[c.kind]][c.name] = src.name
        aliases.update(dict.fromkeys(src.aliases, src.name))
    return RuntimeMapping(runtime, **kinds, aliases=aliases, info_family=info_family)


# The runtimes with a /metrics page (those PREFIXES detects), in RUNTIMES' order.
MAPPINGS: dict[str, RuntimeMapping] = {
    r: mapping_for(r) for r in RUNTIMES if r in PREFIXES.values()
}
VLLM = MAPPINGS["vllm"]
LLAMACPP = MAPPINGS["llamacpp"]  # KV use comes from /slots (collectors/llamacpp.py)
SGLANG = MAPPINGS["sglang"]
TGI = MAPPINGS["tgi"]
