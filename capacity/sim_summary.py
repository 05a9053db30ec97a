"""A simulated run summarized in the same shape as a measured load run (analysis.latency's
summarize: ttft_ms, itl_ms, tpot_ms, e2e_ms percentiles, throughput over the active span,
goodput under the SLOs), marked simulated, with 90 % prediction intervals from replicas.

Pure; the percentiles are numpy's default (linear between closest ranks), as the load
summary's, and ITL is pooled over every gap of every request as there (the simulator keeps
a regular gap as one (duration, count) pair per step, so the percentile is weighted).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from servescope.capacity.sim_run import SimRun

PERCENTILES = (50, 90, 95, 99, 99.9)
METRICS = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "queue_ms")
RATES = ("output_tokens_per_s", "requests_per_s")


def _key(p: float) -> str:
    return f"p{p:g}"


def weighted_percentiles(values: np.ndarray, counts: np.ndarray,
                         ps: Sequence[float] = PERCENTILES) -> list[float]:
    """np.percentile of `values` each repeated `counts` times, without repeating them."""
    order = np.argsort(values)
    v, c = values[order], counts[order]
    ends = np.cumsum(c)  # value i covers ranks ends[i]-c[i] .. ends[i]-1
    n = int(ends[-1])
    out = []
    for p in ps:
        r = p / 100 * (n - 1)
        lo, frac = int(np.floor(r)), r - np.floor(r)
        i = int(np.searchsorted(ends, lo, side="right"))
        j = int(np.searchsorted(ends, min(lo + 1, n - 1), side="right"))
        out.append(float(v[i] + (v[j] - v[i]) * frac))
    return out


def _dist(values: np.ndarray, counts: np.ndarray | None = None) -> dict[str, Any]:
    if len(values) == 0:
        return {"count": 0, **{_key(p): None for p in PERCENTILES}, "mean": None}
    if counts is None:
        counts = np.ones(len(values))
    qs = weighted_percentiles(values, counts)
    return {"count": int(counts.sum()), **{_key(p): q for p, q in zip(PERCENTILES, qs,
                                                                       strict=True)},
            "mean": float(np.average(values, weights=counts)),
            "min": float(values.min()), "max": float(values.max())}


def summarize_run(run: SimRun, slos: dict[str, dict[str, float]] | None = None,
                  warmup_requests: int = 0) -> dict[str, Any]:
    """The load summary's figures for one simulated run. Goodput judges each request on its
    own TTFT, TPOT and E2E; an ITL target on its mean gap (its TPOT) or, for a percentile, on
    its longest gap (stricter than the measured summary's own percentile of its gaps)."""
    reqs = run.requests[warmup_requests:]
    ttft = np.array([r.ttft_s for r in reqs]) * 1000
    e2e = np.array([r.e2e_s for r in reqs]) * 1000
    queue = np.array([r.queue_s for r in reqs]) * 1000
    tpot = np.array([r.tpot_s for r in reqs if r.tpot_s is not None]) * 1000
    itl_v = np.array([d for d, _ in run.itl.steps] + run.itl.other) * 1000
    itl_c = np.array([n for _, n in run.itl.steps] + [1] * len(run.itl.other), dtype=float)
    out: dict[str, Any] = {"simulated": True, "ttft_ms": _dist(ttft), "itl_ms": _dist(itl_v, itl_c),
                           "tpot_ms": _dist(tpot), "e2e_ms": _dist(e2e), "queue_ms": _dist(queue)}
    out_tokens = sum(r.output_tokens for r in reqs)
    span = (max(r.arrival_s + r.e2e_s for r in reqs) - min(r.arrival_s for r in reqs)
            if reqs else 0.0)
    out.update(
        requests_ok=len(reqs), requests_failed=0, warmup_requests_trimmed=warmup_requests,
        prompt_tokens_total=sum(r.prompt_tokens for r in reqs), output_tokens_total=out_tokens,
        duration_s=span, output_tokens_per_s=out_tokens / span if span > 0 else None,
        requests_per_s=len(reqs) / span if span > 0 else None,
        unfinished=run.unfinished, preemptions=run.preemptions, steps=run.steps,
        busy_fraction=run.busy_s / run.span_s,
        goodput=_goodput(reqs, slos or {}, span))
    return out


def _goodput(reqs: Sequence[Any], slos: dict[str, dict[str, float]], span: float
             ) -> dict[str, Any]:
    rows = [(m, stat, t) for m, targets in slos.items() for stat, t in targets.items()]
    if not reqs:
        return {"requests": 0, "ratio": None, "requests_per_s": None, "attainment": []}
    met = [0] * len(rows)
    met_all = 0
    for r in reqs:
        values = {"ttft_ms": r.ttft_s * 1000, "e2e_ms": r.e2e_s * 1000,
                  "tpot_ms": None if r.tpot_s is None else r.tpot_s * 1000}
        ok = True
        for i, (m, stat, target) in enumerate(rows):
            if m == "itl_ms":
                v = None if r.tpot_s is None else (
                    r.tpot_s * 1000 if stat == "mean" else r.itl_max_s * 1000)
            else:
                v = values.get(m)
            hit = v is not None and v <= target
            met[i] += hit
            ok = ok and hit
        met_all += ok
    return {"requests": met_all, "ratio": met_all / len(reqs),
            "requests_per_s": met_all / span if span > 0 else None,
            "attainment": [{"metric": m, "stat": s, "target_ms": t, "ratio": met[i] / len(reqs)}
                           for i, (m, s, t) in enumerate(rows)]}


def figures(summary: dict[str, Any]) -> dict[str, float | None]:
    """The flat figures intervals are given for: metric.pNN and the two rates."""
    flat: dict[str, float | None] = {}
    for m in METRICS:
        for p in (*PERCENTILES, "mean"):
            k = _key(p) if p != "mean" else "mean"
            flat[f"{m}.{k}"] = (summary.get(m) or {}).get(k)
    for k in RATES:
        flat[k] = summary.get(k)
    flat["goodput.requests_per_s"] = (summary.get("goodput") or {}).get("requests_per_s")
    return flat


def _error_for(k: str, model_error: dict[str, float] | float, default: float) -> float:
    """A figure's own measured error, else its metric's largest, else the largest."""
    if not isinstance(model_error, dict):
        return default
    if k in model_error:
        return model_error[k]
    same = [v for name, v in model_error.items() if name.split(".")[0] == k.split(".")[0]]
    return max(same) if same else default


def add_intervals(summary: dict[str, Any], replicas: Sequence[dict[str, Any]],
                  model_error: dict[str, float] | float = 0.0, level: float = 0.9
                  ) -> dict[str, Any]:
    """Add `interval90` (flat figure -> [low, high]): the spread of the replicas (step noise,
    refits of the calibration, redrawn requests) between the (1-level)/2 quantiles, widened
    by the relative model error the calibration measured on itself (per figure, or one
    value; a figure not named takes the largest)."""
    point = figures(summary)
    flats = [figures(r) for r in replicas]
    tail = (1 - level) / 2
    default = max(model_error.values(), default=0.0) if isinstance(model_error, dict) \
        else float(model_error)
    out: dict[str, list[float] | None] = {}
    for k, v in point.items():
        vals = [f[k] for f in flats if f.get(k) is not None] + ([v] if v is not None else [])
        if not vals:
            out[k] = None
            continue
        lo, hi = np.quantile(vals, [tail, 1 - tail])
        if v is not None:  # the point estimate is one of the runs: inside its own interval
            lo, hi = min(lo, v), max(hi, v)
        err = _error_for(k, model_error, default)
        # every figure is a time or a rate: a model error above 100 % must not give a
        # negative bound
        out[k] = [max(0.0, float(lo) * (1 - err)), float(hi) * (1 + err)]
    summary[f"interval{round(level * 100)}"] = out
    summary["interval_replicas"] = len(replicas)
    return summary
