"""Ollama's own account of one request: phases from the durations of a final /api/generate
or /api/chat body. Pure; read by the collector's proxy, the load generator's native client
and the per-request join alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NS_PER_S = 1e9

METRIC_FIELDS = ("load_duration", "prompt_eval_count", "prompt_eval_duration",
                 "eval_count", "eval_duration")


def phases_from_response(body: Mapping[str, Any]) -> dict[str, float | int | None]:
    """Per-request phases from a final /api/generate or /api/chat body (or the last line
    of a stream). The server's durations are nanoseconds.

    queue_and_overhead_s = (total - load - prompt_eval - eval) / 1e9: time the request
    spent neither loading nor computing, mostly waiting for a free slot when
    OLLAMA_NUM_PARALLEL requests are already running. Not clamped: in Ollama 0.5.4 the
    prompt_eval and eval durations are whole milliseconds, so tiny rounding shows as is.
    load_duration is the scheduler's time, not only a model load: before reusing a loaded
    runner it pings it, and a busy runner answers late, so part of a queued request's
    wait can show there. total_s - prefill_s - decode_s is the whole wait.

    Ollama leaves zero-valued metrics out of the body (Go `omitempty`): a sub-millisecond
    prefill has no prompt_eval_duration at all. So in a body that carries total_duration
    a missing metric counts as 0; in one without it (a stream chunk, a load or unload
    reply) every phase is None.
    """
    final = body.get("total_duration") is not None
    v = {k: body.get(k, 0 if final else None) for k in ("total_duration", *METRIC_FIELDS)}
    if final:
        queue: float | None = (v["total_duration"] - v["load_duration"]
                               - v["prompt_eval_duration"] - v["eval_duration"]) / NS_PER_S
    else:
        queue = None
    prefill_s = _seconds(v["prompt_eval_duration"])
    decode_s = _seconds(v["eval_duration"])
    return {
        "total_s": _seconds(v["total_duration"]),
        "load_s": _seconds(v["load_duration"]),
        "prefill_s": prefill_s,
        "decode_s": decode_s,
        "queue_and_overhead_s": queue,
        "prompt_tokens": v["prompt_eval_count"],
        "output_tokens": v["eval_count"],
        "prefill_tokens_per_s": _rate(v["prompt_eval_count"], prefill_s),
        "decode_tokens_per_s": _rate(v["eval_count"], decode_s),
    }


def _seconds(ns: int | None) -> float | None:
    return None if ns is None else ns / NS_PER_S


def _rate(tokens: int | None, seconds: float | None) -> float | None:
    if tokens is None or not seconds:
        return None
    return tokens / seconds
