"""Record types shared by collectors, the load generator, the store and the dashboard."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Sample:
    """One normalized observation from a scrape, with the raw series it came from.

    `concept` is the runtime-independent name (e.g. ``running``); `raw_name` and `labels`
    are exactly what the server exposed, so nothing is lost by normalizing. Histograms
    carry their count in `value` and ``{"sum": s, "buckets": [[le, cumulative], ...]}``
    in `extra`.
    """

    concept: str
    value: float
    raw_name: str
    labels: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] | None = None


@dataclass(slots=True)
class RequestRecord:
    """Raw stamps of one request, as the client saw them.

    All ``*_ns`` stamps are nanoseconds since the Unix epoch, derived from
    ``time.perf_counter_ns()`` anchored once per process to ``time.time_ns()``: differences
    between stamps of one request are exact perf-counter differences. `event_offsets_ns`
    holds the arrival of every event that carried answer text (content), as offsets from
    `send_ns`; `reasoning_event_offsets_ns` that of every event that carried reasoning only;
    `first_token_ns` / `last_token_ns` are the first / last of either kind. `connect_ns` is
    how long the request waited for a new connection to open before it was sent (None: it
    reused an open one). Every latency metric is derived from
    these stamps afterwards.
    `server_timings` is the server's own account of the request where its API reports one
    (Ollama's native API: analysis.ollama_phases.phases_from_response of the final line, e.g.
    total_s, load_s, prefill_s, decode_s, queue_and_overhead_s; llama.cpp: its raw
    `timings` block, prompt_ms, predicted_ms ...; analysis/phases.py reads both).
    """

    request_id: str
    intended_ns: int
    send_ns: int
    headers_ns: int | None = None
    first_token_ns: int | None = None
    last_token_ns: int | None = None
    end_ns: int | None = None
    connect_ns: int | None = None
    event_offsets_ns: list[int] = field(default_factory=list)
    reasoning_event_offsets_ns: list[int] = field(default_factory=list)
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    token_count_source: str = "usage"  # "usage" (server-reported) or "events" (counted)
    target_prompt_tokens: int | None = None
    target_output_tokens: int | None = None
    status_code: int | None = None
    error_class: str | None = None
    error: str | None = None
    worker: str = "local"
    user_id: int | None = None
    server_timings: dict[str, Any] | None = None
    # How target_prompt_tokens was reached: "server_tokenizer" (counted by the server's
    # tokenizer before the run), "local_tokenizer" (--tokenizer) or "estimate" (sized from
    # lengths calibrated before the run, or chars per token); loadgen/tokenizer.py.
    prompt_length_source: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_class is None


@dataclass(slots=True)
class ServerSpan:
    """One request as the server traced it (an OpenTelemetry span received over OTLP; vLLM
    sends one `llm_request` span per finished request). Latencies are seconds, as the
    server reported them (None where the span lacks one); `start_ns`/`end_ns` are the span's
    own Unix-epoch stamps, on the server's clock. `attributes` keeps every attribute raw."""

    trace_id: str
    span_id: str
    name: str
    start_ns: int
    end_ns: int
    request_id: str | None = None  # as the server formed it, e.g. "chatcmpl-" + X-Request-Id
    service: str | None = None  # the sender's service.name resource attribute
    queue_s: float | None = None
    prefill_s: float | None = None
    decode_s: float | None = None
    inference_s: float | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    received_at: float = 0.0  # Unix seconds when the collector received it
