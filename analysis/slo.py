"""SLO checks of a run summary: each target is a percentile of a metric, in milliseconds."""

from __future__ import annotations

from typing import Any


def evaluate_slos(slos: dict[str, dict[str, float]], summary: dict[str, Any]) -> list[dict]:
    """One row per SLO: metric, stat, target, observed, met (None when unmeasured)."""
    rows = []
    for metric, targets in slos.items():
        for stat, target in (targets or {}).items():
            observed = (summary.get(metric) or {}).get(stat)
            rows.append(
                {
                    "metric": metric,
                    "stat": stat,
                    "target_ms": target,
                    "observed_ms": observed,
                    "met": None if observed is None else observed <= target,
                }
            )
    return rows
