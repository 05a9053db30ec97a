"""One entry point for every runtime: Prometheus-format pages and Ollama's JSON API."""

from __future__ import annotations

import contextlib

import httpx
from servescope.collectors.normalize import Snapshot
from servescope.collectors.ollama import OllamaSnapshot, poll_ollama
from servescope.collectors.scrape import ScrapeError, scrape

RUNTIMES = ("auto", "vllm", "llamacpp", "sglang", "tgi", "ollama")


def ollama_snapshot(polled: OllamaSnapshot) -> Snapshot:
    return Snapshot(runtime="ollama", source=polled.source, ts=polled.ts,
                    samples=polled.samples, info=polled.info)


def snapshot(
    source: str,
    runtime: str = "auto",
    client: httpx.Client | None = None,
    timeout: float = 5.0,
    keep_raw: bool = True,
) -> tuple[Snapshot, OllamaSnapshot | None]:
    """A normalized snapshot of `source`, and the raw Ollama poll when it is an Ollama.

    With runtime "auto", a server without /metrics (HTTP 404) is asked whether it is an
    Ollama (which has none) before giving up."""
    if runtime == "ollama":
        polled = poll_ollama(source, client, timeout)
        return ollama_snapshot(polled), polled
    try:
        return scrape(source, runtime, client=client, timeout=timeout, keep_raw=keep_raw), None
    except ScrapeError as exc:
        if runtime == "auto" and "HTTP 404" in str(exc):
            with contextlib.suppress(ScrapeError):
                polled = poll_ollama(source, client, timeout)
                return ollama_snapshot(polled), polled
        raise
