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
from dataclasses import dataclass, field
from typing import Any

from servescope.core.records import RequestRecord
from servescope.loadgen.sse import SSEParser, parse_openai_chunk
from servescope.loadgen.wire import Wire


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


def stream_chat(
    wire: Wire,
    path: str,
    req: ChatRequest | CompletionRequest,
    request_id: str,
    intended_ns: int,
    timeout: float,
    headers: dict[str, str] | None = None,
    answer: list[str] | None = None,
) -> RequestRecord:
    """Send `req` to `path` (/v1/chat/completions or /v1/completions) and time every event.
    With `answer`, the generated text is gathered there too (a conversation's history)."""
    hdrs = {"x-request-id": request_id, "accept": "text/event-stream",
            "content-type": "application/json", **(headers or {})}
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
            note_event(rec, info.error, info.content, arrived, answer, info.reasoning,
                       info.token)
            if info.usage:
                usage = info.usage
            if info.timings:  # llama.cpp: the server's own phases of this request
                rec.server_timings = info.timings

    wire.post(path, content, hdrs, timeout, rec, on_chunk)
    if rec.status_code is not None and rec.status_code >= 400:
        return rec
    if rec.error_class is None and not done and usage is None:
        rec.error_class = "dropped"
        rec.error = "stream ended before [DONE]"
    _apply_usage(rec, usage)
    return rec


def new_record(request_id: str, intended_ns: int, max_tokens: int) -> RequestRecord:
    """A request's record before it is sent (send_ns is stamped by Wire.post)."""
    return RequestRecord(request_id=request_id, intended_ns=intended_ns, send_ns=0,
                         target_output_tokens=max_tokens)


def note_event(rec: RequestRecord, error: str | None, content: str, arrived: int,
               answer: list[str] | None, reasoning: str = "", token: bool = False) -> None:
    """What one parsed event (an SSE event or an NDJSON line) adds to its record: a server
    error, or generated text. Reasoning counts as generated: the first event carrying
    either kind is the first token (TTFT, as `vllm bench serve` counts it). An event with
    answer text goes to `event_offsets_ns` (its text to `answer`: a conversation's history
    holds no reasoning); one with reasoning only to `reasoning_event_offsets_ns`, so each
    event is in exactly one list. `token` marks an event that carried a generated token
    with no text of its own (see sse.ChunkInfo.token): timed like an answer event."""
    if error:
        rec.error_class = "server_error_event"
        rec.error = error[:300]
    if content or reasoning or token:
        if rec.first_token_ns is None:
            rec.first_token_ns = arrived
        rec.last_token_ns = arrived
    if content or (token and not reasoning):
        rec.event_offsets_ns.append(arrived - rec.send_ns)
        if answer is not None:
            answer.append(content)
    elif reasoning:
        rec.reasoning_event_offsets_ns.append(arrived - rec.send_ns)


def _apply_usage(rec: RequestRecord, usage: dict[str, Any] | None) -> None:
    if usage:
        rec.prompt_tokens = usage.get("prompt_tokens")
        rec.output_tokens = usage.get("completion_tokens")
        # completion_tokens counts reasoning and answer together; the split only where the
        # server gives it (else None: analysis.latency counts the reasoning events)
        details = usage.get("completion_tokens_details") or {}
        rec.reasoning_tokens = details.get("reasoning_tokens")
        rec.token_count_source = "usage"
    else:
        rec.output_tokens = count_events(rec)
        rec.token_count_source = "events"


def count_events(rec: RequestRecord) -> int | None:
    """Output tokens counted as events, reasoning and answer alike (no usage sent)."""
    return len(rec.event_offsets_ns) + len(rec.reasoning_event_offsets_ns) or None
