"""Server phases per request: what the server says each request spent in queue, prefill and
decode, beside what the client measured, and the remainder (client - server) that neither
the server's phases nor its TTFT/E2E hold: HTTP, tokenization, detokenization, network and
the client itself.

Three sources, normalized into one shape (`ServerPhases`):
- vLLM: one OpenTelemetry span per request (collectors/otlp.py stores it), joined to the
  client's record by request id (the span's ``gen_ai.request.id`` is ``chatcmpl-`` + the
  X-Request-Id the client sent) and by time;
- llama.cpp: the ``timings`` block of each response (prompt_ms, predicted_ms);
- Ollama's native API: its durations (analysis.ollama_phases.phases_from_response).
The last two ride on the record itself (`RequestRecord.server_timings`).

Pure functions: no store, no I/O (analysis/join.py reads the spans).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from servescope.analysis.latency import distribution, e2e_ms, ttft_ms
from servescope.core.records import RequestRecord, ServerSpan

VLLM_SPAN = "vllm-otlp"
LLAMACPP_TIMINGS = "llamacpp-timings"
OLLAMA_NATIVE = "ollama-native"
SOURCE_LABELS = {
    VLLM_SPAN: "vLLM OpenTelemetry span per request",
    LLAMACPP_TIMINGS: "llama.cpp `timings` of each response",
    OLLAMA_NATIVE: "Ollama's native durations of each response",
}
# How servers form a request's id from its X-Request-Id header: vLLM 0.32's chat
# completions, completions (one engine request per prompt: "-0" for the first), or as is.
SPAN_ID_FORMS = ("chatcmpl-{}", "cmpl-{}-0", "cmpl-{}", "{}")
# A span is a request's only if it lies inside the client's send..end, widened by this much
# for the two clocks (one machine: none; NTP-synced machines: milliseconds).
CLOCK_SLACK_NS = 2_000_000_000
# The per-request summary's distributions, in the order they are shown.
PHASE_METRICS = {
    "queue_ms": "queue (server)",
    "prefill_ms": "prefill (server)",
    "decode_ms": "decode (server)",
    "server_ttft_ms": "TTFT (server)",
    "server_e2e_ms": "E2E (server)",
    "ttft_remainder_ms": "TTFT remainder (client - server)",
    "e2e_remainder_ms": "E2E remainder (client - server)",
}

# The timeline's pieces outside the server's account (analysis of RequestPhases.segments).
BEFORE = "client + HTTP (before the server's first token)"
AFTER = "client + HTTP (after)"
UNSPLIT = "client + HTTP"
UNREPORTED = "client + HTTP + what the server does not report"


@dataclass(frozen=True, slots=True)
class ServerPhases:
    """One request as its server accounts for it, in ms (None: that server does not say).

    `ttft_ms` and `e2e_ms` are the server's own (from its arrival of the request); `load_ms`
    is Ollama's scheduler time (model load, or reuse of a loaded runner)."""

    source: str
    queue_ms: float | None = None
    prefill_ms: float | None = None
    decode_ms: float | None = None
    ttft_ms: float | None = None
    e2e_ms: float | None = None
    load_ms: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def from_span(span: ServerSpan) -> ServerPhases:
    """A vLLM `llm_request` span: time_in_queue, time_in_model_prefill/decode, TTFT, E2E."""
    return ServerPhases(
        source=VLLM_SPAN, queue_ms=_ms(span.queue_s), prefill_ms=_ms(span.prefill_s),
        decode_ms=_ms(span.decode_s), ttft_ms=_ms(span.ttft_s), e2e_ms=_ms(span.e2e_s),
        prompt_tokens=span.prompt_tokens, output_tokens=span.output_tokens,
    )


def from_timings(timings: Mapping[str, Any] | None) -> ServerPhases | None:
    """A record's `server_timings`: llama.cpp's raw `timings` block (prompt_ms, predicted_ms:
    no queue, no server TTFT or E2E) or Ollama's phases (queue and overhead, load, prefill,
    decode, total). None for anything else."""
    if not timings:
        return None
    if "predicted_ms" in timings or "prompt_ms" in timings:
        return ServerPhases(
            source=LLAMACPP_TIMINGS, prefill_ms=timings.get("prompt_ms"),
            decode_ms=timings.get("predicted_ms"),
            prompt_tokens=_tokens(timings.get("prompt_n"), timings.get("cache_n")),
            output_tokens=timings.get("predicted_n"),
        )
    if "total_s" in timings:
        return ServerPhases(
            source=OLLAMA_NATIVE, queue_ms=_ms(timings.get("queue_and_overhead_s")),
            prefill_ms=_ms(timings.get("prefill_s")), decode_ms=_ms(timings.get("decode_s")),
            e2e_ms=_ms(timings.get("total_s")), load_ms=_ms(timings.get("load_s")),
            prompt_tokens=timings.get("prompt_tokens"),
            output_tokens=timings.get("output_tokens"),
        )
    return None


def _tokens(processed: int | None, cached: int | None) -> int | None:
    """llama.cpp's prompt_n counts only the tokens it computed; cache_n the ones reused."""
    if processed is None:
        return None
    return processed + (cached or 0)


@dataclass(frozen=True, slots=True)
class RequestPhases:
    """One request: the client's TTFT and E2E beside the server's account of it."""

    request_id: str
    send_ns: int
    client_ttft_ms: float | None
    client_e2e_ms: float | None
    server: ServerPhases

    @property
    def ttft_remainder_ms(self) -> float | None:
        """Client TTFT - server TTFT: the request's way in (HTTP, parsing, tokenization,
        network) and its first token's way out (detokenization, network, the client)."""
        if self.client_ttft_ms is None or self.server.ttft_ms is None:
            return None
        return self.client_ttft_ms - self.server.ttft_ms

    @property
    def e2e_remainder_ms(self) -> float | None:
        """Client E2E - server E2E: everything of the request the server's clock missed."""
        if self.client_e2e_ms is None or self.server.e2e_ms is None:
            return None
        return self.client_e2e_ms - self.server.e2e_ms

    def value(self, metric: str) -> float | None:
        s = self.server
        return {
            "queue_ms": s.queue_ms, "prefill_ms": s.prefill_ms, "decode_ms": s.decode_ms,
            "server_ttft_ms": s.ttft_ms, "server_e2e_ms": s.e2e_ms,
            "ttft_remainder_ms": self.ttft_remainder_ms,
            "e2e_remainder_ms": self.e2e_remainder_ms,
        }[metric]

    def segments(self) -> list[tuple[str, float]]:
        """The client's E2E cut into consecutive pieces for a timeline, in ms: what the
        server accounts for in its order, the rest as `client + HTTP` pieces before and
        after it. The pieces add up to the client's E2E; a piece a server does not report
        is not invented (it stays in the remainder)."""
        e2e = self.client_e2e_ms
        if e2e is None:
            return []
        s = self.server
        ttft_rem = self.ttft_remainder_ms
        before = max(ttft_rem, 0.0) if ttft_rem is not None else 0.0
        pieces: list[tuple[str, float]] = [(BEFORE, before)]
        server_parts = [("queue", s.queue_ms), ("load", s.load_ms), ("prefill", s.prefill_ms)]
        known = [(name, max(v, 0.0)) for name, v in server_parts if v is not None]
        if s.ttft_ms is not None:
            # vLLM times queue and prefill in its engine process and TTFT from the API
            # server's arrival: the first two may overrun the third by a fraction of a ms.
            left = max(s.ttft_ms, 0.0)
            for name, v in known:
                pieces.append((name, min(v, left)))
                left -= pieces[-1][1]
            pieces.append(("server other", left))  # TTFT beyond queue + prefill
        else:
            pieces += known
        if s.ttft_ms is not None and s.e2e_ms is not None:
            pieces.append(("decode", max(s.e2e_ms - s.ttft_ms, 0.0)))
        elif s.decode_ms is not None:
            pieces.append(("decode", max(s.decode_ms, 0.0)))
            if s.e2e_ms is not None:  # Ollama: its total beyond the phases it names
                used = sum(v for _, v in pieces[1:])
                pieces.append(("server other", max(s.e2e_ms - used, 0.0)))
        rest = AFTER if ttft_rem is not None else UNSPLIT if s.e2e_ms is not None else UNREPORTED
        pieces = _fit(pieces, e2e)
        pieces.append((rest, e2e - sum(v for _, v in pieces)))
        return [(name, v) for name, v in pieces if v > 0]


def _fit(pieces: list[tuple[str, float]], total: float) -> list[tuple[str, float]]:
    """The pieces cut from the end to add up to at most `total`. The client's first token
    may take longer to arrive than its last (its remainder before the server's first token
    is then larger than its remainder overall), so the server's decode as timed by the
    server can overrun the client's time after its first token by a fraction of a ms."""
    out = list(pieces)
    excess = sum(v for _, v in out) - total
    for i in range(len(out) - 1, -1, -1):
        if excess <= 0:
            break
        name, v = out[i]
        cut = min(v, excess)
        out[i] = (name, v - cut)
        excess -= cut
    return out


def match_spans(records: Sequence[RequestRecord], spans: Iterable[ServerSpan]
                ) -> list[ServerSpan | None]:
    """Each record's span (None: none), in the records' order: the span with the record's
    id (as the server formed it) that lies inside the record's send..end (within
    CLOCK_SLACK_NS) and ends nearest the record's end. Request ids repeat across runs of one
    seed, so the id alone is not enough; each span joins at most one record."""
    by_id: dict[str, list[ServerSpan]] = {}
    for span in spans:
        if span.request_id is not None:
            by_id.setdefault(span.request_id, []).append(span)
    used: set[tuple[str, str]] = set()
    out: list[ServerSpan | None] = []
    for rec in records:
        out.append(None)
        end = rec.end_ns if rec.end_ns is not None else rec.last_token_ns
        if end is None:
            continue
        candidates = [
            s for form in SPAN_ID_FORMS for s in by_id.get(form.format(rec.request_id), ())
            if (s.trace_id, s.span_id) not in used
            and s.start_ns >= rec.send_ns - CLOCK_SLACK_NS and s.end_ns <= end + CLOCK_SLACK_NS
        ]
        if candidates:
            best = min(candidates, key=lambda s: abs(s.end_ns - end))
            used.add((best.trace_id, best.span_id))
            out[-1] = best
    return out


def span_ids(records: Iterable[RequestRecord]) -> list[str]:
    """Every id a server may have given these records' spans."""
    return [form.format(r.request_id) for r in records for form in SPAN_ID_FORMS]


def request_phases(records: Sequence[RequestRecord], spans: Iterable[ServerSpan] = ()
                   ) -> list[RequestPhases]:
    """The successful requests that have a server account: their own `server_timings`
    (llama.cpp, Ollama) or else a matching span (vLLM), in send order."""
    ok = sorted((r for r in records if r.ok), key=lambda r: r.send_ns)
    phases: list[ServerPhases | None] = [from_timings(r.server_timings) for r in ok]
    need = [i for i, p in enumerate(phases) if p is None]
    for i, span in zip(need, match_spans([ok[i] for i in need], spans), strict=True):
        if span is not None:
            phases[i] = from_span(span)
    return [
        RequestPhases(r.request_id, r.send_ns, ttft_ms(r), e2e_ms(r), p)
        for r, p in zip(ok, phases, strict=True) if p is not None
    ]


def needs_spans(records: Iterable[RequestRecord]) -> list[RequestRecord]:
    """The successful records without a server account of their own."""
    return [r for r in records if r.ok and from_timings(r.server_timings) is None]


def summarize_phases(rows: Sequence[RequestPhases], requests_ok: int) -> dict[str, Any] | None:
    """The summary's per-request server section: which sources, how many of the client's
    successful requests were joined, and per phase and remainder its distribution over the
    joined requests (a phase no source reported has count 0). None when nothing joined."""
    if not rows:
        return None
    out: dict[str, Any] = {
        "sources": dict(Counter(r.server.source for r in rows)),
        "requests_ok": requests_ok,
        "joined": len(rows),
        "missing": requests_ok - len(rows),
    }
    for metric in PHASE_METRICS:
        values = [v for r in rows if (v := r.value(metric)) is not None]
        out[metric] = distribution(values)
    # The server's clock runs inside the client's: a negative remainder means a wrong join
    # or clocks that disagree (another machine), and is counted, not hidden.
    out["negative_remainders"] = sum(
        1 for r in rows for v in (r.ttft_remainder_ms, r.e2e_remainder_ms)
        if v is not None and v < 0
    )
    return out
