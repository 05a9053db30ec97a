"""One clock for request stamps: perf_counter_ns precision, epoch-ns meaning.

The perf counter is anchored to the wall clock once per process, so differences between
stamps are exact perf-counter differences, while the stamps themselves can be joined with
server-side samples (which carry wall-clock times).
"""

from __future__ import annotations

import time

_WALL_ANCHOR_NS = time.time_ns()
_PERF_ANCHOR_NS = time.perf_counter_ns()


def now_ns() -> int:
    return _WALL_ANCHOR_NS + (time.perf_counter_ns() - _PERF_ANCHOR_NS)
