"""One entry point for every runtime: Prometheus-format pages and Ollama's JSON API."""

from __future__ import annotations

import contextlib
import re
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from servescope.collectors.normalize import Snapshot
from servescope.collectors.ollama import OllamaSnapshot, poll_ollama
from servescope.collectors.scrape import ScrapeError, scrape
from servescope.core import concepts
from servescope.core.concepts import AUTO

# Every runtime a target may name: the concept table's runtimes and "auto" (detected on the
# first scrape).
RUNTIMES: tuple[str, ...] = (AUTO, *concepts.RUNTIMES)

_USERINFO = re.compile(r"(?<=://)[^/?#\s]*@")


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """`url` without its ``user:password@`` part, and that part as HTTP basic auth, so
    credentials are used to authenticate and never shown, logged or stored."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=hostport)), (unquote(user), unquote(password))


def is_http_url(url: str) -> bool:
    """An http(s) URL with a host, a valid port if any, and no white space."""
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # not a number, or out of range
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname) and port_ok
            and not any(c.isspace() for c in url))


def redact_credentials(text: str) -> str:
    """`text` with the credentials of any URL in it replaced by ``***``, for messages that
    show a value the user typed."""
    return _USERINFO.sub("***@", text)


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
