"""Latency metrics derived from raw request stamps (see README "Metric formulas").

Pure functions over RequestRecord lists; the CLI's summary and the dashboard both use them,
so a number means the same thing everywhere.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from servescope.records import RequestRecord

PERCENTILES = (50, 90, 95, 99)
METRICS = (
    "ttft_ms",
    "itl_ms",
    "tpot_ms",
    "e2e_ms",
    "ttft_from_intended_ms",
    "e2e_from_intended_ms",
    "send_lag_ms",
)
NS_PER_MS = 1_000_000


def ttft_ms(r: RequestRecord) -> float | None:
    """First event carrying generated text, from the actual send."""
    if r.first_token_ns is None:
        return None
    return (r.first_token_ns - r.send_ns) / NS_PER_MS


def e2e_ms(r: RequestRecord) -> float | None:
    """End of the response stream, from the actual send."""
    if r.end_ns is None:
        return None
    return (r.end_ns - r.send_ns) / NS_PER_MS


def tpot_ms(r: RequestRecord) -> float | None:
    """(E2E - TTFT) / (output tokens - 1): mean time per output token after the first."""
    ttft, e2e = ttft_ms(r), e2e_ms(r)
    if ttft is None or e2e is None or not r.output_tokens or r.output_tokens < 2:
        return None
    return (e2e - ttft) / (r.output_tokens - 1)


def itl_ms(r: RequestRecord) -> list[float]:
    """Every gap between consecutive content events of one request."""
    offs = r.event_offsets_ns
    return [(b - a) / NS_PER_MS for a, b in itertools.pairwise(offs)]


def ttft_from_intended_ms(r: RequestRecord) -> float | None:
    """TTFT measured from when the request should have been sent (coordinated omission)."""
    if r.first_token_ns is None:
        return None
    return (r.first_token_ns - r.intended_ns) / NS_PER_MS


def e2e_from_intended_ms(r: RequestRecord) -> float | None:
    """E2E measured from when the request should have been sent (coordinated omission)."""
    if r.end_ns is None:
        return None
    return (r.end_ns - r.intended_ns) / NS_PER_MS


def send_lag_ms(r: RequestRecord) -> float:
    """How late the client sent the request: actual send - intended send."""
    return (r.send_ns - r.intended_ns) / NS_PER_MS


_PER_REQUEST = {
    "ttft_ms": ttft_ms,
    "tpot_ms": tpot_ms,
    "e2e_ms": e2e_ms,
    "ttft_from_intended_ms": ttft_from_intended_ms,
    "e2e_from_intended_ms": e2e_from_intended_ms,
    "send_lag_ms": send_lag_ms,
}


def metric_values(records: Iterable[RequestRecord], metric: str) -> list[float]:
    """All values of one metric over the successful requests (ITL pooled over requests)."""
    ok = [r for r in records if r.ok]
    if metric == "itl_ms":
        return [gap for r in ok for gap in itl_ms(r)]
    fn = _PER_REQUEST[metric]
    return [v for v in (fn(r) for r in ok) if v is not None]


def distribution(values: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p90/p95/p99 (linear interpolation between closest ranks), mean, count."""
    out: dict[str, float | int | None] = {"count": len(values)}
    if not values:
        out.update({f"p{p}": None for p in PERCENTILES})
        out.update(mean=None, min=None, max=None)
        return out
    arr = np.asarray(values, dtype=float)
    for p, v in zip(PERCENTILES, np.percentile(arr, PERCENTILES), strict=True):
        out[f"p{p}"] = float(v)
    out.update(mean=float(arr.mean()), min=float(arr.min()), max=float(arr.max()))
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
                "ttft_ms": ttft_ms(r),
                "tpot_ms": tpot_ms(r),
                "e2e_ms": e2e_ms(r),
                "itl_mean_ms": float(np.mean(gaps)) if gaps else None,
                "ttft_from_intended_ms": ttft_from_intended_ms(r),
                "e2e_from_intended_ms": e2e_from_intended_ms(r),
                "send_lag_ms": send_lag_ms(r),
            }
        )
    return rows


def summarize(records: Sequence[RequestRecord]) -> dict[str, Any]:
    """The run summary: per-metric distributions plus counts and throughput.

    Throughput is over the run's active span: from the first actual send to the last end.
    """
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    out: dict[str, Any] = {m: distribution(metric_values(records, m)) for m in METRICS}
    out_tokens = sum(r.output_tokens or 0 for r in ok)
    ends = [r.end_ns for r in ok if r.end_ns is not None]
    span_s = (max(ends) - min(r.send_ns for r in ok)) / 1e9 if ends else 0.0
    errors: dict[str, int] = {}
    for r in failed:
        errors[r.error_class or "unknown"] = errors.get(r.error_class or "unknown", 0) + 1
    out.update(
        requests_ok=len(ok),
        requests_failed=len(failed),
        errors_by_class=errors,
        prompt_tokens_total=sum(r.prompt_tokens or 0 for r in ok),
        output_tokens_total=out_tokens,
        duration_s=span_s,
        output_tokens_per_s=out_tokens / span_s if span_s > 0 else None,
        requests_per_s=len(ok) / span_s if span_s > 0 else None,
        token_count_sources=sorted({r.token_count_source for r in ok}),
    )
    return out
