"""Fetch one target's metrics page (or read a saved one) and normalize it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from collectors.mappings import MAPPINGS
from collectors.normalize import ParseError, Snapshot, normalize


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


def scrape(
    source: str, runtime: str = "vllm", client: httpx.Client | None = None, timeout: float = 5.0
) -> Snapshot:
    try:
        mapping = MAPPINGS[runtime]
    except KeyError:
        raise ScrapeError(
            f"unknown runtime {runtime!r}; known: {', '.join(sorted(MAPPINGS))}"
        ) from None
    text = fetch_text(source, client, timeout)
    ts = time.time()
    try:
        return normalize(text, mapping, source=source, ts=ts)
    except ParseError as exc:
        raise ScrapeError(f"{source}: {exc}") from exc


def server_info(
    source: str, runtime: str, client: httpx.Client | None = None, timeout: float = 5.0
) -> dict[str, Any]:
    """What the server says about itself (vLLM: /v1/models -> served models, max_model_len).
    Empty for a saved file or when the endpoint is unavailable."""
    if runtime != "vllm" or not source.startswith(("http://", "https://")):
        return {}
    url = base_url(source) + "/v1/models"
    try:
        resp = (client or httpx).get(url, timeout=timeout)
        resp.raise_for_status()
        data = resp.json().get("data", [])
    except (httpx.HTTPError, ValueError):
        return {}
    models = [{"id": m.get("id"), "max_model_len": m.get("max_model_len")} for m in data]
    return {"models": models, "model": models[0]["id"] if models else None,
            "max_model_len": models[0]["max_model_len"] if models else None}
