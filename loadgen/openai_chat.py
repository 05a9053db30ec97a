"""One timed, streaming OpenAI-compatible chat (or completions) request -> one RequestRecord.

Works for vLLM, llama.cpp, SGLang and Ollama's /v1. /v1/chat/completions takes the
messages (`ChatRequest`); /v1/completions takes them flattened to one prompt
(`CompletionRequest`); both stream the same SSE events. Usage is always requested
(`stream_options.include_usage`); token counts come from it, and only when a server sends
none are content events counted instead (recorded as ``token_count_source="events"``).
Every failure becomes an error class on the record; nothing here raises for a bad server.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from loadgen.clock import now_ns
from loadgen.sse import SSEParser, parse_openai_chunk
from servescope.records import RequestRecord


@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    max_tokens: int
    ignore_eos: bool = True  # vLLM/llama.cpp: generate exactly max_tokens
    extra_body: dict[str, Any] = field(default_factory=dict)

    def prompt(self) -> dict[str, Any]:
        return {"messages": self.messages}

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            **self.prompt(),
            "max_tokens": self.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.ignore_eos:
            body["ignore_eos"] = True
        body.update(self.extra_body)
        return body


def flatten_messages(messages: list[dict[str, str]]) -> str:
    """The messages as one plain-text prompt: their contents (system, user, any history)
    joined by newlines."""
    return "\n".join(m["content"] for m in messages if m.get("content"))


@dataclass
class CompletionRequest(ChatRequest):
    """The same request for /v1/completions: the messages flattened to a `prompt`."""

    def prompt(self) -> dict[str, Any]:
        return {"prompt": flatten_messages(self.messages)}


def classify_http_error(status: int, body: str) -> tuple[str, str]:
    """(error class, message) for an HTTP error answer (e.g. 404 for an unknown model)."""
    return f"http_{status}", f"HTTP {status}: {body.strip()}"


def stream_chat(
    client: httpx.Client,
    url: str,
    req: ChatRequest | CompletionRequest,
    request_id: str,
    intended_ns: int,
    timeout: float,
    headers: dict[str, str] | None = None,
) -> RequestRecord:
    """Send `req` to `url` (the full /v1/chat/completions or /v1/completions URL) and
    time every event."""
    hdrs = {"x-request-id": request_id, "accept": "text/event-stream", **(headers or {})}
    content = json.dumps(req.body()).encode()
    rec = new_record(request_id, intended_ns, req.max_tokens)
    parser = SSEParser()
    usage: dict[str, Any] | None = None
    done = False
    def on_chunk(chunk: bytes, arrived: int) -> None:
        nonlocal usage, done
        for event in parser.feed(chunk, arrived):
            if event.data.strip() == "[DONE]":
                done = True
                continue
            try:
                info = parse_openai_chunk(event.data)
            except ValueError:
                rec.error_class = "malformed_event"
                rec.error = f"event data is not JSON: {event.data[:120]!r}"
                continue
            if info.error:
                rec.error_class = "server_error_event"
                rec.error = info.error[:300]
            if info.content:
                add_content_event(rec, arrived)
            if info.reasoning:
                rec.reasoning_event_offsets_ns.append(arrived - rec.send_ns)
            if info.usage:
                usage = info.usage

    timed_post(client, url, content, hdrs, timeout, rec, on_chunk)
    if rec.status_code is not None and rec.status_code >= 400:
        return rec
    if rec.error_class is None and not done and usage is None:
        rec.error_class = "dropped"
        rec.error = "stream ended before [DONE]"
    _apply_usage(rec, usage)
    return rec


def new_record(request_id: str, intended_ns: int, max_tokens: int) -> RequestRecord:
    """A request's record before it is sent (send_ns is stamped by timed_post)."""
    return RequestRecord(request_id=request_id, intended_ns=intended_ns, send_ns=0,
                         target_output_tokens=max_tokens)


def add_content_event(rec: RequestRecord, arrived: int) -> None:
    """An event that carried generated text: the first one is the first token."""
    if rec.first_token_ns is None:
        rec.first_token_ns = arrived
    rec.last_token_ns = arrived
    rec.event_offsets_ns.append(arrived - rec.send_ns)


def timed_post(
    client: httpx.Client,
    url: str,
    content: bytes,
    headers: dict[str, str],
    timeout: float,
    rec: RequestRecord,
    on_chunk: Callable[[bytes, int], None],
) -> bool:
    """POST `content` and stream the answer, stamping send, headers and end on `rec` and
    handing each chunk with its arrival stamp to `on_chunk`. An HTTP error status or a
    transport failure becomes the record's error class (never an exception). Returns True
    when the answer was read to its end."""
    last_arrival: int | None = None

    def on_trace(name: str, info: dict[str, Any]) -> None:
        # The request's first byte is about to be written: the actual send. Under gevent,
        # httpcore's pool checkout yields to the hub (a poll per idle connection), so a stamp
        # taken before client.stream() would count other users' work as server latency;
        # connect and pool waits show as send lag instead.
        if name == "http11.send_request_headers.started":
            rec.send_ns = now_ns()

    rec.send_ns = now_ns()  # replaced by on_trace once the request goes on the wire
    try:
        with client.stream(
            "POST", url, content=content,
            headers={**headers, "content-type": "application/json"}, timeout=timeout,
            extensions={"trace": on_trace},
        ) as resp:
            rec.headers_ns = now_ns()
            rec.status_code = resp.status_code
            if resp.status_code >= 400:
                body = resp.read()[:300].decode("utf-8", "replace")
                rec.end_ns = now_ns()
                rec.error_class, rec.error = classify_http_error(resp.status_code, body)
                return False
            for chunk in resp.iter_raw():
                last_arrival = now_ns()
                on_chunk(chunk, last_arrival)
            # The end is the arrival of the last bytes: stamping after the loop would add
            # httpx's response close (a pool re-scan that yields to the hub).
            rec.end_ns = last_arrival or now_ns()
            return True
    except httpx.TimeoutException as exc:
        rec.end_ns = now_ns()
        rec.error_class = "timeout"
        rec.error = f"{type(exc).__name__} after {timeout:.0f}s"
    except httpx.ConnectError as exc:
        rec.end_ns = now_ns()
        rec.error_class = "connect"
        rec.error = str(exc)[:300]
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        rec.end_ns = now_ns()
        rec.error_class = "dropped"
        rec.error = f"connection dropped mid-stream: {exc}"[:300]
    except httpx.HTTPError as exc:
        rec.end_ns = now_ns()
        rec.error_class = type(exc).__name__
        rec.error = str(exc)[:300]
    return False


def _apply_usage(rec: RequestRecord, usage: dict[str, Any] | None) -> None:
    if usage:
        rec.prompt_tokens = usage.get("prompt_tokens")
        rec.output_tokens = usage.get("completion_tokens")
        details = usage.get("completion_tokens_details") or {}
        rec.reasoning_tokens = details.get("reasoning_tokens")
        rec.token_count_source = "usage"
    else:
        rec.output_tokens = len(rec.event_offsets_ns) or None
        rec.token_count_source = "events"
