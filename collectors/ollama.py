"""Ollama: what is loaded and how each request spent its time.

Ollama has no /metrics endpoint (ollama/ollama issue 3144), so the collector polls its
JSON API instead: /api/version, /api/ps (loaded models) and /api/show for each loaded
model. Per-request phases come from the final body of /api/generate or /api/chat, which
carries the server's own nanosecond timings.

Parsing is kept in pure functions (`snapshot_from_payloads`, `phases_from_response`,
`model_events`) so captured payloads can be checked without a server.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

# Re-exported: the collector's callers and tests read phases from here too.
from servescope.analysis.ollama_phases import METRIC_FIELDS, phases_from_response  # noqa: F401
from servescope.collectors.scrape import ScrapeError, describe_http_error
from servescope.core.records import Sample


@dataclass
class OllamaSnapshot:
    """One poll of an Ollama server: normalized samples, details, and the raw /api/ps body
    (kept so two polls can be compared with `model_events`)."""

    source: str
    ts: float
    samples: list[Sample] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    ps: dict[str, Any] = field(default_factory=dict)

    def value(self, concept: str, model: str | None = None) -> float | None:
        for s in self.samples:
            if s.concept == concept and (model is None or s.labels.get("model") == model):
                return s.value
        return None

    @property
    def loaded(self) -> list[str]:
        return [m["name"] for m in self.info.get("models", [])]


# ---------------------------------------------------------------- pure parsing


def show_summary(show: Mapping[str, Any] | None) -> dict[str, Any]:
    """The parts of an /api/show body that matter for capacity: family, size, quantization,
    the model's trained context length (model_info "<arch>.context_length") and the
    Modelfile parameters (num_ctx there is the context a runner is started with)."""
    if not show:
        return {}
    details = show.get("details") or {}
    model_info = show.get("model_info") or {}
    arch = model_info.get("general.architecture")
    ctx_key = f"{arch}.context_length" if arch else None
    if ctx_key not in model_info:
        ctx_key = next((k for k in model_info if k.endswith(".context_length")), None)
    return {
        "family": details.get("family"),
        "parameter_size": details.get("parameter_size"),
        "quantization_level": details.get("quantization_level"),
        "format": details.get("format"),
        "architecture": arch,
        "parameter_count": model_info.get("general.parameter_count"),
        "context_length": model_info.get(ctx_key) if ctx_key else None,
        "context_length_key": ctx_key,
        "parameters": parse_parameters(show.get("parameters") or ""),
    }


def parse_parameters(text: str) -> dict[str, Any]:
    """/api/show "parameters" text ("num_ctx   512\\nstop  \\"<|im_end|>\\"") -> dict;
    repeated keys (stop) become lists, numbers become numbers."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        key, _, raw = line.strip().partition(" ")
        if not key:
            continue
        value: Any = raw.strip().strip('"')
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        if key in out:
            prev = out[key]
            out[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[key] = value
    return out


def snapshot_from_payloads(
    version: Mapping[str, Any] | None,
    ps: Mapping[str, Any],
    shows: Mapping[str, Mapping[str, Any] | None],
    source: str = "",
    ts: float | None = None,
) -> OllamaSnapshot:
    """Normalize one poll. `shows` maps a loaded model's name to its /api/show body.

    model_context_length is the runtime context from /api/ps when the server reports it
    (newer Ollama), otherwise the trained context from /api/show model_info; `raw_name`
    says which one it is.
    """
    models = list(ps.get("models") or [])
    samples = [Sample("models_loaded", float(len(models)), "/api/ps:models")]
    infos = []
    for m in models:
        name = m.get("name") or m.get("model") or "?"
        labels = {"model": name}
        for concept, key in (("model_size_bytes", "size"), ("model_vram_bytes", "size_vram")):
            if m.get(key) is not None:
                samples.append(Sample(concept, float(m[key]), f"/api/ps:{key}", dict(labels)))
        details = show_summary(shows.get(name))
        if m.get("context_length") is not None:
            samples.append(Sample("model_context_length", float(m["context_length"]),
                                  "/api/ps:context_length", dict(labels)))
        elif details.get("context_length") is not None:
            samples.append(Sample("model_context_length", float(details["context_length"]),
                                  f"/api/show:model_info.{details['context_length_key']}",
                                  dict(labels)))
        infos.append({
            "name": name,
            "model": m.get("model"),
            "digest": m.get("digest"),
            "size": m.get("size"),
            "size_vram": m.get("size_vram"),
            "expires_at": m.get("expires_at"),
            "context_length": m.get("context_length"),
            "details": m.get("details") or {},
            "show": details,
        })
    info = {"version": (version or {}).get("version"), "models": infos}
    return OllamaSnapshot(source=source, ts=time.time() if ts is None else ts,
                          samples=samples, info=info, ps=dict(ps))


def _loaded(ps: Mapping[str, Any] | OllamaSnapshot | None) -> dict[tuple[str, str], None]:
    if isinstance(ps, OllamaSnapshot):
        ps = ps.ps
    models = (ps or {}).get("models") or []
    return {(m.get("name") or m.get("model") or "?", m.get("digest") or ""): None
            for m in models}


def model_events(
    prev_ps: Mapping[str, Any] | OllamaSnapshot | None,
    cur_ps: Mapping[str, Any] | OllamaSnapshot | None,
) -> list[tuple[str, str]]:
    """("load" | "unload", model) between two /api/ps polls (bodies or snapshots).

    A model re-created under the same name (new digest) shows as unload then load.
    Unloads come first, each kind in name order. None counts as nothing loaded.
    """
    prev, cur = _loaded(prev_ps), _loaded(cur_ps)
    unloads = sorted(name for name, digest in prev if (name, digest) not in cur)
    loads = sorted(name for name, digest in cur if (name, digest) not in prev)
    return [("unload", n) for n in unloads] + [("load", n) for n in loads]


# ---------------------------------------------------------------- polling


def _get_json(client: httpx.Client, method: str, url: str, timeout: float,
              body: dict[str, Any] | None = None) -> Any:
    try:
        resp = client.request(method, url, json=body, timeout=timeout)
        resp.raise_for_status()
        return resp.json()
    except httpx.HTTPError as exc:
        raise ScrapeError(describe_http_error(url, exc)) from exc
    except ValueError as exc:
        raise ScrapeError(f"{url}: response is not JSON") from exc


def poll_ollama(
    base_url: str, client: httpx.Client | None = None, timeout: float = 5.0
) -> OllamaSnapshot:
    """Read /api/version, /api/ps and /api/show for each loaded model; normalize them.

    Raises ScrapeError (one line: URL and cause) when the server can't be read. A model
    that vanished between /api/ps and /api/show keeps its /api/ps samples.
    """
    base = base_url.rstrip("/")
    own = client is None
    client = client or httpx.Client()
    try:
        version = _get_json(client, "GET", f"{base}/api/version", timeout)
        ps = _get_json(client, "GET", f"{base}/api/ps", timeout)
        ts = time.time()
        shows: dict[str, Any] = {}
        for m in ps.get("models") or []:
            name = m.get("name") or m.get("model")
            try:
                shows[name] = _get_json(client, "POST", f"{base}/api/show", timeout,
                                        {"model": name})
            except ScrapeError:
                shows[name] = None
    finally:
        if own:
            client.close()
    return snapshot_from_payloads(version, ps, shows, source=base, ts=ts)
