"""Latency metrics derived from raw request stamps (see README "Metric formulas").

Pure functions over RequestRecord lists; the CLI's summary and the dashboard both use them,
so a number means the same thing everywhere.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from servescope.analysis.intervals import PERCENTILES, percentile_ci, request_cis
from servescope.analysis.intervals import key as _key
from servescope.core.records import RequestRecord

METRICS = (
    "ttft_ms",
    "ttfo_ms",
    "itl_ms",
    "tpot_ms",
    "e2e_ms",
    "ttft_from_intended_ms",
    "e2e_from_intended_ms",
    "send_lag_ms",
    "connect_ms",
)
NS_PER_MS = 1_000_000


def first_token_ns(r: RequestRecord) -> int | None:
    """The first event carrying generated text of any kind, reasoning included. (Records
    stored before reasoning counted as generated kept the first answer event here; their
    first reasoning event, when earlier, is the first token.)"""
    first = r.first_token_ns
    if r.reasoning_event_offsets_ns:
        reasoning = r.send_ns + r.reasoning_event_offsets_ns[0]
        first = reasoning if first is None else min(first, reasoning)
    return first


def ttft_ms(r: RequestRecord) -> float | None:
    """First event carrying generated text of any kind (reasoning included, as `vllm bench
    serve` counts it), from the actual send."""
    first = first_token_ns(r)
    return None if first is None else (first - r.send_ns) / NS_PER_MS


def ttfo_ms(r: RequestRecord) -> float | None:
    """Time to first output: the first answer (content) event, after any reasoning, from
    the actual send. Without reasoning it is the TTFT; None when reasoning came but no
    answer (the request ended while thinking)."""
    if not r.reasoning_event_offsets_ns:
        return ttft_ms(r)
    if not r.event_offsets_ns:
        return None
    return r.event_offsets_ns[0] / NS_PER_MS


def generated_offsets_ns(r: RequestRecord) -> list[int]:
    """Every generated event of one request (reasoning and answer), in arrival order."""
    if not r.reasoning_event_offsets_ns:
        return r.event_offsets_ns
    return list(heapq.merge(r.reasoning_event_offsets_ns, r.event_offsets_ns))


def e2e_ms(r: RequestRecord) -> float | None:
    """End of the response stream, from the actual send."""
    if r.end_ns is None:
        return None
    return (r.end_ns - r.send_ns) / NS_PER_MS


def tpot_ms(r: RequestRecord) -> float | None:
    """(E2E - TTFT) / (output tokens - 1): mean time per output token after the first. TTFT
    and the output tokens both count reasoning and answer alike."""
    ttft, e2e = ttft_ms(r), e2e_ms(r)
    if ttft is None or e2e is None or not r.output_tokens or r.output_tokens < 2:
        return None
    return (e2e - ttft) / (r.output_tokens - 1)


def itl_ms(r: RequestRecord) -> list[float]:
    """Every gap between consecutive generated events of one request, reasoning and answer
    alike."""
    offs = generated_offsets_ns(r)
    return [(b - a) / NS_PER_MS for a, b in itertools.pairwise(offs)]


def reasoning_tokens(r: RequestRecord) -> tuple[int, str | None]:
    """A request's reasoning tokens and how they were counted: "usage" (the server's
    completion_tokens_details.reasoning_tokens), "events" (its reasoning-only events, one
    token each: servers that give no split, e.g. Ollama), or None (no reasoning seen)."""
    if r.reasoning_tokens is not None:
        return r.reasoning_tokens, "usage"
    if r.reasoning_event_offsets_ns:
        return len(r.reasoning_event_offsets_ns), "events"
    return 0, None


def answer_tokens(r: RequestRecord) -> int | None:
    """Output tokens that were not reasoning."""
    if r.output_tokens is None:
        return None
    return max(0, r.output_tokens - reasoning_tokens(r)[0])


def ttft_from_intended_ms(r: RequestRecord) -> float | None:
    """TTFT measured from when the request should have been sent (coordinated omission)."""
    first = first_token_ns(r)
    return None if first is None else (first - r.intended_ns) / NS_PER_MS


def e2e_from_intended_ms(r: RequestRecord) -> float | None:
    """E2E measured from when the request should have been sent (coordinated omission)."""
    if r.end_ns is None:
        return None
    return (r.end_ns - r.intended_ns) / NS_PER_MS


def send_lag_ms(r: RequestRecord) -> float:
    """How late the client itself sent the request: actual send - intended send - time
    spent opening a new connection (the server's accept and the network's, not the
    client's; that is `connect_ms`)."""
    return (r.send_ns - r.intended_ns - (r.connect_ns or 0)) / NS_PER_MS


def connect_ms(r: RequestRecord) -> float | None:
    """Time spent opening a new connection before the send (None: it reused one)."""
    return None if r.connect_ns is None else r.connect_ns / NS_PER_MS


_PER_REQUEST = {
    "ttft_ms": ttft_ms,
    "ttfo_ms": ttfo_ms,
    "tpot_ms": tpot_ms,
    "e2e_ms": e2e_ms,
    "ttft_from_intended_ms": ttft_from_intended_ms,
    "e2e_from_intended_ms": e2e_from_intended_ms,
    "send_lag_ms": send_lag_ms,
    "connect_ms": connect_ms,
}


def metric_values(records: Iterable[RequestRecord], metric: str) -> list[float]:
    """All values of one metric over the successful requests (ITL pooled over requests)."""
    ok = [r for r in records if r.ok]
    if metric == "itl_ms":
        return [gap for r in ok for gap in itl_ms(r)]
    fn = _PER_REQUEST[metric]
    return [v for v in (fn(r) for r in ok) if v is not None]


def samples_needed(p: float) -> int:
    """Fewer than 10 / (1 - p) samples leave fewer than 10 beyond the p-th percentile: the
    estimate then rests on a handful of requests."""
    return int(np.ceil(10 / (1 - p / 100) - 1e-6))  # 1 - 0.999 is not exactly 0.001


def distribution(values: Sequence[float], ci: bool = True,
                 groups: Sequence[Sequence[float]] | None = None) -> dict[str, Any]:
    """p50/p90/p95/p99/p99.9 (linear interpolation between closest ranks), mean, min, max,
    count, and per percentile a 95 % confidence interval (`ci95`) and the tail percentiles
    that too few samples back (`thin_tail`). With `groups` (`values` split by request, as
    ITL's gaps), the intervals take the request as the unit (request_cis)."""
    out: dict[str, Any] = {"count": len(values)}
    if not values:
        out.update({_key(p): None for p in PERCENTILES})
        out.update(mean=None, min=None, max=None, ci95={}, thin_tail=[])
        return out
    arr = np.asarray(values, dtype=float)
    for p, v in zip(PERCENTILES, np.percentile(arr, PERCENTILES), strict=True):
        out[_key(p)] = float(v)
    out.update(mean=float(arr.mean()), min=float(arr.min()), max=float(arr.max()))
    if ci and groups is not None:
        out["ci95"] = request_cis(groups)
    elif ci and len(arr) > 1:
        out["ci95"] = {_key(p): percentile_ci(arr, p) for p in PERCENTILES}
    else:
        out["ci95"] = {}
    out["thin_tail"] = [_key(p) for p in PERCENTILES if len(arr) < samples_needed(p)]
    return out


def request_table(records: Iterable[RequestRecord]) -> list[dict[str, Any]]:
    """One row per request with every derived metric (for tables, plots, exports)."""
    rows = []
    for r in records:
        gaps = itl_ms(r)
        rows.append(
            {
                "request_id": r.request_id,
                "send_s": r.send_ns / 1e9,
                "ok": r.ok,
                "error_class": r.error_class,
                "prompt_tokens": r.prompt_tokens,
                "output_tokens": r.output_tokens,
                "reasoning_tokens": reasoning_tokens(r)[0] if r.ok else None,
                "ttft_ms": ttft_ms(r),
                "ttfo_ms": ttfo_ms(r),
                "tpot_ms": tpot_ms(r),
                "e2e_ms": e2e_ms(r),
                "itl_mean_ms": float(np.mean(gaps)) if gaps else None,
                "ttft_from_intended_ms": ttft_from_intended_ms(r),
                "e2e_from_intended_ms": e2e_from_intended_ms(r),
                "send_lag_ms": send_lag_ms(r),
                "connect_ms": connect_ms(r),
            }
        )
    return rows


def trim_warmup(records: Sequence[RequestRecord], warmup_requests: int) -> list[RequestRecord]:
    """Drop the first `warmup_requests` requests by send time (cold caches, JIT, loading)."""
    return sorted(records, key=lambda r: r.send_ns)[warmup_requests:]


def request_slo_value(r: RequestRecord, metric: str, stat: str) -> float | None:
    """The per-request value an SLO is judged on: the request's own TTFT, TPOT or E2E; for
    ITL, the given statistic over that request's own gaps."""
    if metric == "itl_ms":
        gaps = itl_ms(r)
        if not gaps:
            return None
        return float(np.mean(gaps)) if stat == "mean" else float(
            np.percentile(gaps, float(stat.removeprefix("p"))))
    return _PER_REQUEST[metric](r)


def goodput(
    records: Sequence[RequestRecord], slos: dict[str, dict[str, float]], span_s: float
) -> dict[str, Any]:
    """Requests that met every SLO, each request judged on its own values, and per SLO
    the share of requests that met it (attainment). Failed requests meet none."""
    rows = [(m, stat, target) for m, targets in slos.items() for stat, target in targets.items()]
    if not records:
        return {"requests": 0, "ratio": None, "requests_per_s": None, "attainment": []}
    met_all = 0
    met = [0] * len(rows)
    for r in records:
        ok_all = r.ok
        for i, (metric, stat, target) in enumerate(rows):
            v = request_slo_value(r, metric, stat) if r.ok else None
            hit = v is not None and v <= target
            met[i] += hit
            ok_all = ok_all and hit
        met_all += ok_all
    return {
        "requests": met_all,
        "ratio": met_all / len(records),
        "requests_per_s": met_all / span_s if span_s > 0 else None,
        "attainment": [
            {"metric": m, "stat": stat, "target_ms": t, "ratio": met[i] / len(records)}
            for i, (m, stat, t) in enumerate(rows)
        ],
    }


def reasoning_split(ok: Sequence[RequestRecord]) -> dict[str, Any]:
    """Output tokens split into reasoning and answer, and how the reasoning was counted
    (reasoning_tokens): ``reasoning_token_sources`` is empty when no request reasoned."""
    counted = [reasoning_tokens(r) for r in ok]
    reasoned = [src for n, src in counted if n > 0]
    return {
        "reasoning_tokens_total": sum(n for n, _ in counted),
        "answer_tokens_total": sum(answer_tokens(r) or 0 for r in ok),
        "reasoning_token_sources": sorted(set(reasoned)),
        "requests_with_reasoning": len(reasoned),
    }


def reasoning_lines(summary: dict[str, Any]) -> list[str]:
    """For the printed summary: the reasoning / answer split and the TTFO, when any request
    reasoned (nothing otherwise)."""
    n = summary.get("requests_with_reasoning") or 0
    if not n:
        return []
    how = {"usage": "from the server's usage (completion_tokens_details)",
           "events": "counted as reasoning events: the server's usage gives no split"}
    sources = "; ".join(how.get(src, src) for src in summary["reasoning_token_sources"])
    ttfo = summary.get("ttfo_ms") or {}
    when = ", ".join(f"{k} {ttfo[k]:.1f} ms" for k in ("p50", "p99") if ttfo.get(k) is not None)
    return [f"reasoning: {summary['reasoning_tokens_total']:,} reasoning and "
            f"{summary['answer_tokens_total']:,} answer tokens, {n:,} requests reasoned "
            f"({sources}); TTFT counts the first reasoning token, TTFO (first answer token) "
            f"{when or 'none: no answer came'}"]


def summarize(
    records: Sequence[RequestRecord],
    slos: dict[str, dict[str, float]] | None = None,
    warmup_requests: int = 0,
) -> dict[str, Any]:
    """The run summary: per-metric distributions plus counts, throughput and goodput.

    Throughput is over the run's active span: from the first actual send to the last end.
    The first `warmup_requests` requests (by send time) are left out of every figure.
    """
    records = trim_warmup(records, warmup_requests) if warmup_requests else list(records)
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    out: dict[str, Any] = {m: distribution(metric_values(records, m))
                           for m in METRICS if m != "itl_ms"}
    gaps = [itl_ms(r) for r in ok]
    out["itl_ms"] = distribution([g for per in gaps for g in per], groups=gaps)
    out = {m: out[m] for m in METRICS}  # in METRICS order
    out_tokens = sum(r.output_tokens or 0 for r in ok)
    ends = [r.end_ns for r in ok if r.end_ns is not None]
    span_s = (max(ends) - min(r.send_ns for r in ok)) / 1e9 if ends else 0.0
    errors: dict[str, int] = {}
    for r in failed:
        errors[r.error_class or "unknown"] = errors.get(r.error_class or "unknown", 0) + 1
    out.update(
        requests_ok=len(ok),
        requests_failed=len(failed),
        warmup_requests_trimmed=warmup_requests,
        errors_by_class=errors,
        prompt_tokens_total=sum(r.prompt_tokens or 0 for r in ok),
        output_tokens_total=out_tokens,
        duration_s=span_s,
        output_tokens_per_s=out_tokens / span_s if span_s > 0 else None,
        requests_per_s=len(ok) / span_s if span_s > 0 else None,
        token_count_sources=sorted({r.token_count_source for r in ok}),
        **reasoning_split(ok),
        goodput=goodput(records, slos or {}, span_s),
    )
    out["warnings"] = [
        f"{key} of {m} rests on {out[m]['count']} samples; {samples_needed(float(key[1:]))} "
        "or more are needed for a stable estimate"
        for m in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms")
        for key in out[m]["thin_tail"]
        if key in ("p99", "p99.9")
    ]
    return out
