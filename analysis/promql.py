"""Counter and histogram arithmetic with PromQL's semantics, on stored samples.

Pure functions: no I/O. `increase`/`rate` treat any decrease of a counter as a reset (the
process restarted), exactly like PromQL, so a rate is never negative.
`histogram_quantile` interpolates linearly inside the bucket that holds the quantile,
assumes the lowest bucket starts at 0, and answers the highest finite bound when the
quantile lands in the +Inf bucket.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

Point = tuple[float, float]  # (unix seconds, value)
Buckets = list[tuple[float, float]]  # [(le, cumulative count)], ascending le, +Inf last


def increase(points: Sequence[Point]) -> float:
    """Total increase of a counter over the points, counting resets as restarts from 0."""
    total = 0.0
    for (_, prev), (_, cur) in itertools.pairwise(points):
        total += cur - prev if cur >= prev else cur
    return total


def resets(points: Sequence[Point]) -> int:
    return sum(1 for (_, a), (_, b) in itertools.pairwise(points) if b < a)


def rate(points: Sequence[Point]) -> float | None:
    """Per-second increase between the first and last point (None with < 2 points)."""
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return None
    return increase(points) / (points[-1][0] - points[0][0])


def rates(points: Sequence[Point]) -> list[Point]:
    """Per-second rate between consecutive points, stamped at the later point."""
    out = []
    for (t0, v0), (t1, v1) in itertools.pairwise(points):
        if t1 > t0:
            out.append((t1, ((v1 - v0) if v1 >= v0 else v1) / (t1 - t0)))
    return out


def histogram_delta(older: Buckets, newer: Buckets) -> Buckets:
    """Bucket-wise increase from `older` to `newer`; a reset (any decrease, or changed
    bucket bounds) means the newer histogram counted from zero."""
    if [le for le, _ in older] != [le for le, _ in newer]:
        return list(newer)
    delta = [(le, n - o) for (le, o), (_, n) in zip(older, newer, strict=True)]
    if any(d < 0 for _, d in delta):
        return list(newer)
    return delta


def merge_buckets(histograms: Sequence[Buckets]) -> Buckets:
    """Sum histograms with the same bounds (e.g. several engines of one server)."""
    merged: dict[float, float] = {}
    for buckets in histograms:
        for le, n in buckets:
            merged[le] = merged.get(le, 0.0) + n
    return sorted(merged.items())


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """The q-quantile (0..1) of a cumulative histogram; None when it holds no samples."""
    if not buckets or not 0 <= q <= 1:
        return None
    buckets = sorted(buckets)
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                # Prometheus answers the highest finite bound for the +Inf bucket.
                return lower_bound if len(buckets) > 1 else None
            if count == lower_count:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = le, count
    return buckets[-1][0]


def histogram_mean(count: float, total: float) -> float | None:
    return total / count if count > 0 else None
