"""The load generator watches itself: when it is the bottleneck, its numbers describe the
client, not the server, and the summary must say so.

A greenlet wakes every `tick` seconds and records how late it woke (the event loop's
scheduling lag: every stream's event stamps are late by as much); psutil samples the
process's CPU. The request records add the send lag (actual minus intended send).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import gevent
import numpy as np
import psutil

# Thresholds past which results are flagged as limited by the client.
MAX_LOOP_LAG_P99_MS = 10.0
MAX_SEND_LAG_P99_MS = 10.0
# With every read stamped by the kernel, loop lag costs no latency, only pacing: a
# closed-loop user sends its next request late by the lag. It limits the run when the loop
# lost more than this share of the run's time (a stall of 20 ms once in a few seconds,
# common on a busy 2-core machine, costs well under it); late sends are the send lag's.
MAX_PACING_LOSS = 0.05
# Loop lag with the process itself mostly idle: it was runnable but other processes had the
# CPU (e.g. the server on the same cores).
STARVED_CPU_SHARE = 0.5
MAX_CPU_SHARE = 0.9  # of one core: one process runs on one core (the GIL) ...
# ... in more than 10 % of the run's 1 s samples (p90). A single busy second (spawning
# hundreds of users and opening their connections) limits nothing by itself; if it delayed
# requests or stamps, the loop lag and the send lag say so.


@dataclass
class ClientHealth:
    tick: float = 0.05
    loop_lag_ms: list[float] = field(default_factory=list)
    cpu_percent: list[float] = field(default_factory=list)
    _greenlet: Any = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._watch)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _watch(self) -> None:
        proc = psutil.Process()
        proc.cpu_percent(None)  # prime
        last_cpu = time.monotonic()
        while True:
            t0 = time.perf_counter()
            gevent.sleep(self.tick)
            self.loop_lag_ms.append(max(0.0, (time.perf_counter() - t0 - self.tick) * 1e3))
            if time.monotonic() - last_cpu >= 1.0:
                self.cpu_percent.append(proc.cpu_percent(None))
                last_cpu = time.monotonic()

    def summary(self, send_lag_ms: list[float], connections: dict[str, Any],
                peak_concurrency: int) -> dict[str, Any]:
        """`connections`: the timed client's Wire.stats() (one connection per request in
        flight, no cap, so no pool wait; a request's wait for a new connection is its
        `connect_ns`, apart from its send lag)."""
        def q(values: list[float], p: float) -> float | None:
            return float(np.percentile(values, p)) if values else None

        out = {
            "loop_lag_ms": {"p50": q(self.loop_lag_ms, 50), "p99": q(self.loop_lag_ms, 99),
                            "max": max(self.loop_lag_ms, default=None)},
            "cpu_percent": {"p50": q(self.cpu_percent, 50), "p90": q(self.cpu_percent, 90),
                            "max": max(self.cpu_percent, default=None)},
            "send_lag_ms": {"p99": q(send_lag_ms, 99), "max": max(send_lag_ms, default=None)},
            "connections": connections,
            "peak_concurrency": peak_concurrency,
        }
        reasons = []
        advice = ("Rerun with fewer users per process, or spread the load over more "
                  "processes or machines.")
        kernel = connections.get("reads_kernel_stamped", 0)
        user = connections.get("reads_user_stamped", 0)
        kernel_stamped = kernel and user <= 0.01 * (kernel + user)  # (nearly) all
        lost = sum(self.loop_lag_ms)
        loss = lost / (lost + 1e3 * self.tick * len(self.loop_lag_ms)) if lost else 0.0
        out["loop_lag_ms"]["share"] = loss
        if (lag := out["loop_lag_ms"]["p99"]) is not None and lag > MAX_LOOP_LAG_P99_MS \
                and (not kernel_stamped or loss > MAX_PACING_LOSS):
            if kernel_stamped:
                effect = (f"the loop lost {loss:.0%} of the run, so closed-loop users slowed "
                          "down (arrival stamps are the kernel's, so the latencies "
                          "themselves hold)")
            else:
                effect = "event stamps are late by up to that much"
            reasons.append(f"event-loop lag p99 {lag:.1f} ms > {MAX_LOOP_LAG_P99_MS:g} ms: "
                           f"{effect}")
            cpu = out["cpu_percent"]["p90"]
            if cpu is not None and cpu < 100 * STARVED_CPU_SHARE:
                reasons.append(f"the load generator itself used at most {cpu:.0f}% of a core "
                               "(p90): other processes on this machine kept it waiting for a "
                               "CPU")
                advice = ("Run the load generator on cores the server does not use (taskset), "
                          "or on another machine.")
        if (cpu := out["cpu_percent"]["p90"]) is not None and cpu > 100 * MAX_CPU_SHARE:
            reasons.append(f"load generator CPU at {cpu:.0f}% of a core or more in 10 % of "
                           "the run")
        if (lag := out["send_lag_ms"]["p99"]) is not None and lag > MAX_SEND_LAG_P99_MS:
            reasons.append(f"requests left the client late: send lag p99 {lag:.1f} ms")
        out["limited_by_client"] = bool(reasons)
        out["reasons"] = reasons
        out["advice"] = advice if reasons else None
        return out
