"""One clock for request stamps: perf_counter_ns precision, epoch-ns meaning.

The perf counter is anchored to the wall clock once per process, so differences between
stamps are exact perf-counter differences, while the stamps themselves can be joined with
server-side samples (which carry wall-clock times).

Stamps that come with wall-clock meaning (the kernel's receive stamps) are moved onto this
clock by `from_wall_ns`, with the offset between the two clocks measured from a bracketed
pair of reads and kept for 0.1 s: taken from two plain reads, a preemption between them
would shift every stamp converted with it by that long.
"""

from __future__ import annotations

import time

_WALL_ANCHOR_NS = time.time_ns()
_PERF_ANCHOR_NS = time.perf_counter_ns()


def now_ns() -> int:
    return _WALL_ANCHOR_NS + (time.perf_counter_ns() - _PERF_ANCHOR_NS)


_OFFSET_TTL_NS = 100_000_000  # the two clocks drift apart by microseconds per 0.1 s at most
_TIGHT_NS = 20_000  # a bracket this narrow had no preemption inside it
_offset = {"at": None, "wall_minus_ours": 0}


def _measure_offset() -> int:
    best_width, best = None, 0
    for _ in range(5):
        before = now_ns()
        wall = time.time_ns()
        after = now_ns()
        if best_width is None or after - before < best_width:
            best_width, best = after - before, wall - (before + after) // 2
        if after - before <= _TIGHT_NS:
            break
    return best


def from_wall_ns(wall_ns: int, now: int) -> int:
    """A wall-clock stamp (epoch ns) on this clock; `now` is now_ns() taken by the caller."""
    at = _offset["at"]
    if at is None or now - at > _OFFSET_TTL_NS or now < at:
        _offset["wall_minus_ours"], _offset["at"] = _measure_offset(), now
    return wall_ns - _offset["wall_minus_ours"]
