"""One timed, streaming request to Ollama's native API (/api/generate or /api/chat) -> one
RequestRecord.

Ollama streams NDJSON: one JSON object a line. Lines are parsed by lines (buffered to the
newline), not by TCP chunks, and each line is stamped with the arrival of the chunk that
completed it. A line with non-empty `response` (generate) or `message.content` (chat) is a
content event; one with only `thinking` (generate) or `message.thinking` (chat) is a
reasoning event (upstream Ollama 0.9.0 and later, with `"think": true`; api/types.go). The
final line (``"done": true``) carries the token counts
(prompt_eval_count, eval_count) and the server's own nanosecond timings, which are kept on
the record as `server_timings` (analysis.ollama_phases.phases_from_response). Every failure
becomes an error class on the record; nothing here raises for a bad server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from servescope.analysis.ollama_phases import phases_from_response
from servescope.core.records import RequestRecord
from servescope.loadgen.openai_chat import count_events, flatten_messages, new_record, note_event
from servescope.loadgen.wire import Wire

OllamaApi = Literal["generate", "chat"]


@dataclass(slots=True)
class Line:
    data: str
    arrived_ns: int


class NDJSONParser:
    """Feed bytes as they arrive; get back the complete lines they finish (blank lines are
    skipped). A line is stamped with the arrival of the chunk that completed it."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes, arrived_ns: int) -> list[Line]:
        self._buf += chunk
        lines = []
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                break
            raw, self._buf = self._buf[:end], self._buf[end + 1 :]
            text = raw.decode("utf-8", errors="replace").strip()
            if text:
                lines.append(Line(text, arrived_ns))
        return lines

    def close(self, arrived_ns: int) -> list[Line]:
        """The last line when the stream ended without a final newline."""
        text = self._buf.decode("utf-8", errors="replace").strip()
        self._buf = b""
        return [Line(text, arrived_ns)] if text else []

    @property
    def pending(self) -> bytes:
        """Bytes of a line that never completed (a truncated stream)."""
        return self._buf


@dataclass(slots=True)
class LineInfo:
    """What one line of an Ollama stream carries."""

    content: str = ""
    reasoning: str = ""
    done: bool = False
    error: str | None = None
    body: dict[str, Any] = field(default_factory=dict)


def parse_ollama_line(data: str) -> LineInfo:
    """Classify one NDJSON line of /api/generate or /api/chat. Raises ValueError for data
    that is not a JSON object."""
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise ValueError("line is not a JSON object")
    info = LineInfo(done=bool(obj.get("done")), body=obj)
    if "error" in obj:
        err = obj["error"]
        info.error = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    message = obj.get("message")
    if isinstance(message, dict):
        info.content = message.get("content") or ""
        thinking = message.get("thinking")
    else:
        info.content = obj.get("response") or ""
        thinking = obj.get("thinking")
    info.reasoning = thinking if isinstance(thinking, str) else ""
    return info


@dataclass
class OllamaRequest:
    model: str
    messages: list[dict[str, str]]
    max_tokens: int
    api: OllamaApi = "generate"
    seed: int | None = None
    extra_options: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_predict": self.max_tokens}
        if self.seed is not None:
            options["seed"] = self.seed
        options.update(self.extra_options)
        body: dict[str, Any] = {"model": self.model, "stream": True, "options": options}
        if self.api == "chat":
            body["messages"] = self.messages
        else:
            body["prompt"] = flatten_messages(self.messages)
        return body


def stream_ollama(
    wire: Wire,
    path: str,
    req: OllamaRequest,
    request_id: str,
    intended_ns: int,
    timeout: float,
    headers: dict[str, str] | None = None,
    answer: list[str] | None = None,
) -> RequestRecord:
    """Send `req` to `path` (/api/generate or /api/chat) and time every line. With `answer`,
    the generated text is gathered there too."""
    hdrs = {"x-request-id": request_id, "accept": "application/x-ndjson",
            "content-type": "application/json", **(headers or {})}
    content = json.dumps(req.body()).encode()
    rec = new_record(request_id, intended_ns, req.max_tokens)
    parser = NDJSONParser()
    final: dict[str, Any] | None = None

    def handle(line: Line) -> None:
        nonlocal final
        try:
            info = parse_ollama_line(line.data)
        except ValueError:
            rec.error_class = "malformed_event"
            rec.error = f"line is not a JSON object: {line.data[:120]!r}"
            return
        note_event(rec, info.error, info.content, line.arrived_ns, answer, info.reasoning)
        if info.done:
            final = info.body

    def on_chunk(chunk: bytes, arrived: int) -> None:
        for line in parser.feed(chunk, arrived):
            handle(line)

    completed = wire.post(path, content, hdrs, timeout, rec, on_chunk)
    if rec.status_code is not None and rec.status_code >= 400:
        return rec
    if completed:
        for line in parser.close(rec.end_ns):  # a last line with no newline after it
            handle(line)
    if rec.error_class is None and final is None:
        rec.error_class = "dropped"
        rec.error = "stream ended before its final (done) line"
    apply_final(rec, final)
    return rec


def apply_final(rec: RequestRecord, final: dict[str, Any] | None) -> None:
    """Token counts and server phases from the final line; without one, count events.
    eval_count counts every generated token, thinking included (Ollama splits the thinking
    from the text after generating it); no line says how many were thinking."""
    if final is None:
        rec.output_tokens = count_events(rec)
        rec.token_count_source = "events"
        return
    phases = phases_from_response(final)
    rec.server_timings = phases
    rec.prompt_tokens = phases["prompt_tokens"]  # type: ignore[assignment]
    rec.output_tokens = phases["output_tokens"]  # type: ignore[assignment]
    rec.token_count_source = "usage"
