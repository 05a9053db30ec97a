"""Server-sent events, parsed by events (buffered to a blank line), not by TCP chunks.

A chunk may hold half an event or several; an event is complete only at its blank line,
and it is stamped with the arrival time of the chunk that completed it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Event:
    data: str
    arrived_ns: int
    event: str | None = None


class SSEParser:
    """Feed bytes as they arrive; get back the events they complete."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes, arrived_ns: int) -> list[Event]:
        buf = self._buf + chunk
        # A CR at the end may be the first half of a CRLF split across two reads: hold it.
        held = b"\r" if buf.endswith(b"\r") else b""
        if held:
            buf = buf[:-1]
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events = []
        start = 0
        while (end := buf.find(b"\n\n", start)) >= 0:
            event = _parse_block(buf[start:end].decode("utf-8", errors="replace"), arrived_ns)
            if event is not None:
                events.append(event)
            start = end + 2
        self._buf = buf[start:] + held
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event that never completed (a truncated stream)."""
        return self._buf


def _parse_block(block: str, arrived_ns: int) -> Event | None:
    data_lines: list[str] = []
    name = None
    for line in block.split("\n"):
        if not line or line.startswith(":"):
            continue  # comment / keep-alive
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data_lines.append(value)
        elif field == "event":
            name = value
    if not data_lines:
        return None
    return Event(data="\n".join(data_lines), arrived_ns=arrived_ns, event=name)


# Where servers put streamed reasoning (the model's thinking before its answer): vLLM 0.32
# and Ollama's /v1 send `reasoning`; older vLLM, SGLang, llama.cpp and DeepSeek's API send
# `reasoning_content`. A server in transition may fill both with the same text, so the first
# non-empty one is taken, never both.
REASONING_FIELDS = ("reasoning", "reasoning_content")


@dataclass(slots=True)
class ChunkInfo:
    """What one OpenAI-style chat/completions chunk carries: answer text (`content`) and
    reasoning text apart."""

    content: str = ""
    reasoning: str = ""
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    error: str | None = None
    timings: dict[str, Any] | None = None  # llama.cpp's per-response prompt_ms, predicted_ms
    # A generated token arrived, even one that decoded to no text yet (half of a multi-byte
    # character: vLLM then sends `"content": ""`). Dropping those would merge two gaps into
    # one and inflate ITL's tail; `vllm bench serve` times them too.
    token: bool = False


def parse_openai_chunk(data: str) -> ChunkInfo:
    """Classify a chunk: generated content, reasoning, usage, or none of them.

    A role-only, usage-only or finish-only chunk is not a token; a reasoning-only chunk is
    one (of the reasoning), and so is a chunk whose `content` is an empty string outside the
    role announcement (a token with no text of its own yet).
    Raises ValueError for data that is not a JSON object.
    """
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise ValueError("event data is not a JSON object")
    info = ChunkInfo(usage=obj.get("usage") or None, timings=obj.get("timings") or None)
    if "error" in obj:
        err = obj["error"]
        info.error = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    for choice in obj.get("choices") or []:
        delta = choice.get("delta")
        if delta is None:  # /v1/completions streams `text`
            text = choice.get("text")
            info.content += text or ""
            info.token |= isinstance(text, str) and not choice.get("finish_reason")
        else:
            info.content += delta.get("content") or ""
            info.reasoning += next(
                (text for name in REASONING_FIELDS
                 if isinstance(text := delta.get(name), str) and text), "")
            info.token |= "role" not in delta and isinstance(delta.get("content"), str)
        info.finish_reason = choice.get("finish_reason") or info.finish_reason
    info.token |= bool(info.content or info.reasoning)
    return info
