"""One entry point for every runtime: Prometheus-format pages and Ollama's JSON API."""

from __future__ import annotations

import contextlib

import httpx

from servescope.collectors.normalize import Snapshot
from servescope.collectors.ollama import OllamaSnapshot, poll_ollama
from servescope.collectors.scrape import ScrapeError, scrape
from servescope.core import concepts
from servescope.core.concepts import AUTO
from servescope.core.urls import (  # noqa: F401  (re-exported for the collector's callers)
    is_http_url,
    redact_credentials,
    split_credentials,
)

# Every runtime a target may name: the concept table's runtimes and "auto" (detected on the
# first scrape).
RUNTIMES: tuple[str, ...] = (AUTO, *concepts.RUNTIMES)

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
    Ollama (which has none) before giving up. Credentials in the URL are sent as basic auth
    and appear nowhere in the snapshot."""
    source, auth = split_credentials(source)
    if auth is not None:
        with httpx.Client(auth=auth, timeout=timeout, follow_redirects=False) as authed:
            return snapshot(source, runtime, authed, timeout, keep_raw)
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
