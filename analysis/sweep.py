"""Reading a sweep: where throughput stops growing while latency climbs (saturation),
and the highest load level that still meets the SLOs. Pure functions over per-level
summaries (the `servescope load` summary of each level).

A level where the load generator reported itself the bottleneck (its summary's
`client.limited_by_client`) is marked `client_limited`: its throughput is the client's, not
the server's, so no saturation is read from a step to or from it.
"""

from __future__ import annotations

import itertools
from typing import Any

# Saturation: a step that adds less than this share of throughput...
MIN_THROUGHPUT_GAIN = 0.10
# ...while the p95 end-to-end latency grows by more than this share.
MIN_LATENCY_GROWTH = 0.20


def curve(levels: list[float], summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per level: the figures a capacity planner plots."""
    rows = []
    for level, s in zip(levels, summaries, strict=True):
        rows.append({
            "level": level,
            "requests_ok": s.get("requests_ok"),
            "requests_failed": s.get("requests_failed"),
            "output_tokens_per_s": s.get("output_tokens_per_s"),
            "requests_per_s": s.get("requests_per_s"),
            "goodput_per_s": (s.get("goodput") or {}).get("requests_per_s"),
            "ttft_p95_ms": (s.get("ttft_ms") or {}).get("p95"),
            "itl_p95_ms": (s.get("itl_ms") or {}).get("p95"),
            "e2e_p95_ms": (s.get("e2e_ms") or {}).get("p95"),
            "slos_met": all(r["met"] for r in s.get("slos") or []) if s.get("slos") else None,
            "client_limited": _client_limited(s),
        })
    return rows


def _client_limited(summary: dict[str, Any]) -> bool | None:
    client = summary.get("client")
    return None if not client else bool(client.get("limited_by_client"))


def saturation_level(rows: list[dict[str, Any]]) -> float | None:
    """The last level before throughput stopped growing while latency climbed; None if
    throughput kept growing to the highest level tried. Steps to or from a client-limited
    level are skipped: the flat throughput there may be the load generator's."""
    for prev, cur in itertools.pairwise(rows):
        if prev.get("client_limited") or cur.get("client_limited"):
            continue
        t0, t1 = prev["output_tokens_per_s"], cur["output_tokens_per_s"]
        l0, l1 = prev["e2e_p95_ms"], cur["e2e_p95_ms"]
        if None in (t0, t1, l0, l1) or t0 <= 0 or l0 <= 0:
            continue
        if (t1 - t0) / t0 < MIN_THROUGHPUT_GAIN and (l1 - l0) / l0 > MIN_LATENCY_GROWTH:
            return prev["level"]
    return None


def highest_level_meeting_slos(rows: list[dict[str, Any]]) -> float | None:
    """The highest level whose run met every SLO (levels above a miss are not trusted: the
    first level that misses ends the search)."""
    best = None
    for row in rows:
        if row["slos_met"] is False or (row["requests_failed"] or 0) > 0:
            break
        if row["slos_met"]:
            best = row["level"]
    return best


def analyze(levels: list[float], summaries: list[dict[str, Any]]) -> dict[str, Any]:
    rows = curve(levels, summaries)
    return {
        "curve": rows,
        "saturation_level": saturation_level(rows),
        "max_level_meeting_slos": highest_level_meeting_slos(rows),
        "client_limited_levels": [r["level"] for r in rows if r.get("client_limited")],
    }
