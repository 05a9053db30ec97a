"""Fetch one target's metrics page (or read a saved one) and normalize it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from servescope.collectors.llamacpp import props_info, slots_samples
from servescope.collectors.mappings import MAPPINGS, PREFIXES
from servescope.collectors.normalize import ParseError, Snapshot, normalize, parse_families


class ScrapeError(RuntimeError):
    """A scrape failed; the message is one line naming the URL or file and the cause."""


def describe_http_error(url: str, exc: Exception) -> str:
    """One clear line for a failed request (no stack trace, no secrets)."""
    if isinstance(exc, httpx.ConnectError):
        return f"{url}: cannot connect ({_short(exc)})"
    if isinstance(exc, httpx.TimeoutException):
        return f"{url}: timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.HTTPStatusError):
        return f"{url}: HTTP {exc.response.status_code}"
    return f"{url}: {type(exc).__name__}: {_short(exc)}"


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:200] if text else type(exc).__name__


def metrics_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith("/metrics") else base + "/metrics"


def base_url(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/metrics")] if url.endswith("/metrics") else url


def fetch_text(source: str, client: httpx.Client | None = None, timeout: float = 5.0) -> str:
    """The page at a URL (its /metrics) or in a saved file."""
    if not source.startswith(("http://", "https://")):
        path = Path(source)
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ScrapeError(f"{source}: cannot read file ({exc.strerror})") from exc
    url = metrics_url(source)
    try:
        if client is None:
            resp = httpx.get(url, timeout=timeout)
        else:
            resp = client.get(url, timeout=timeout)
        resp.raise_for_status()
    except httpx.HTTPError as exc:
        raise ScrapeError(describe_http_error(url, exc)) from exc
    return resp.text


def detect_runtime(text: str) -> str | None:
    """The runtime whose metric prefix the page carries (None when none does)."""
    for line in text.splitlines():
        if line and not line.startswith("#"):
            for prefix, runtime in PREFIXES.items():
                if line.startswith(prefix):
                    return runtime
    return None


def scrape(
    source: str,
    runtime: str = "vllm",
    client: httpx.Client | None = None,
    timeout: float = 5.0,
    keep_raw: bool = True,
) -> Snapshot:
    """Fetch and normalize one page. `runtime="auto"` detects it from the metric names."""
    if runtime != "auto" and runtime not in MAPPINGS:
        raise ScrapeError(
            f"unknown runtime {runtime!r}; known: auto, {', '.join(sorted(MAPPINGS))}"
        )
    text = fetch_text(source, client, timeout)
    ts = time.time()
    if runtime == "auto":
        runtime = detect_runtime(text) or ""
        if not runtime:
            try:
                parse_families(text)
            except ParseError as exc:
                raise ScrapeError(f"{source}: {exc}") from exc
            raise ScrapeError(f"{source}: no known runtime's metrics in the page "
                              f"(looked for {', '.join(PREFIXES)})")
    try:
        snap = normalize(text, MAPPINGS[runtime], source=source, ts=ts, keep_raw=keep_raw)
    except ParseError as exc:
        raise ScrapeError(f"{source}: {exc}") from exc
    if runtime == "llamacpp" and _is_url(source):
        slots = _get_json(base_url(source) + "/slots", client, timeout)
        if isinstance(slots, list):
            snap.samples.extend(slots_samples(slots))
    return snap


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _get_json(url: str, client: httpx.Client | None, timeout: float) -> Any:
    """JSON at `url`, or None when the endpoint is missing or answers garbage."""
    try:
        resp = (client or httpx).get(url, timeout=timeout)
        resp.raise_for_status()
        return resp.json()
    except (httpx.HTTPError, ValueError):
        return None


def server_info(
    source: str, runtime: str, client: httpx.Client | None = None, timeout: float = 5.0
) -> dict[str, Any]:
    """What the server says about itself (vLLM: /v1/models -> served models and
    max_model_len; llama.cpp: /props). Empty for a saved file or a missing endpoint."""
    if not _is_url(source):
        return {}
    base = base_url(source)
    if runtime == "llamacpp":
        props = _get_json(base + "/props", client, timeout)
        return props_info(props) if isinstance(props, dict) else {}
    data = _get_json(base + "/v1/models", client, timeout)
    if not isinstance(data, dict):
        return {}
    models = [
        {"id": m.get("id"), "max_model_len": m.get("max_model_len")}
        for m in data.get("data") or []
        if isinstance(m, dict)
    ]
    if not models:
        return {}
    return {"models": models, "model": models[0]["id"],
            "max_model_len": models[0]["max_model_len"]}
