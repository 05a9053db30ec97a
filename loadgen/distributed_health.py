"""The client health of a distributed run: each worker watches its own process
(loadgen/health.py) and reports it in its final message; the master combines the reports
into the run summary's one "client" section, so checks written for a single process still
hold."""

from __future__ import annotations

from typing import Any

from servescope.loadgen import health as client_health
from servescope.loadgen.health import ClientHealth


def _badness(h: dict[str, Any]) -> tuple[bool, int, float]:
    """Order workers by how much they limited their results: flagged first, then by how far
    past its threshold the worst of their measures is."""
    def ratio(value: float | None, limit: float) -> float:
        return (value or 0.0) / limit

    worst = max(
        ratio(h["loop_lag_ms"]["p99"], client_health.MAX_LOOP_LAG_P99_MS),
        ratio(h["send_lag_ms"]["p99"], client_health.MAX_SEND_LAG_P99_MS),
        ratio(h["cpu_percent"].get("p90"), 100 * client_health.MAX_CPU_SHARE),
    )
    return h["limited_by_client"], len(h["reasons"]), worst


def combine_health(finals: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """The summary's "client" for a distributed run: the worst worker's measures at the top
    level (so checks written for one process still hold), every worker's reasons, and one
    entry per worker under "workers"."""
    entries = {name: {**f["health"], "host": f.get("host"), "requests": f.get("records")}
               for name, f in finals.items() if f is not None}
    if entries:
        worst = max(entries, key=lambda name: _badness(entries[name]))
        top = {k: v for k, v in entries[worst].items() if k not in ("host", "requests")}
    else:
        worst = None
        top = ClientHealth().summary(send_lag_ms=[], connections={}, peak_concurrency=0)
    top["limited_by_client"] = any(e["limited_by_client"] for e in entries.values())
    top["reasons"] = [f"worker {name}: {r}" for name, e in entries.items() for r in e["reasons"]]
    top["worst_worker"] = worst
    top["workers"] = entries
    top["workers_lost"] = [name for name, f in finals.items() if f is None]
    return top

