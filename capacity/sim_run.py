"""Drive the simulated engine through a workload as fast as it goes: open loop (each
request at its own arrival time: a Poisson schedule or a trace, built by the caller) or
closed loop (N users, each sending its next request when its previous one finishes).

The caller builds the requests (the scenario's lengths and arrivals live in loadgen, which
this pure package must not import).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass

from servescope.capacity.sim_engine import Engine
from servescope.capacity.sim_types import (
    ItlPool,
    RequestTiming,
    SchedulerConfig,
    SimRequest,
    StepModel,
)


@dataclass
class SimRun:
    """One simulated run: every finished request, every inter-token gap (pooled), and what
    the engine did."""

    requests: list[RequestTiming]
    itl: ItlPool
    start_s: float
    end_s: float
    steps: int
    preemptions: int
    busy_s: float
    unfinished: int = 0

    @property
    def span_s(self) -> float:
        return max(self.end_s - self.start_s, 1e-12)


def simulate_run(
    requests: Iterable[SimRequest],
    config: SchedulerConfig,
    step_model: StepModel,
    *,
    closed_loop_users: int | None = None,
    duration_s: float | None = None,
    think_s: float = 0.0,
    seed: int = 0,
    max_steps: int | None = None,
    overhead_s: float = 0.0,
    tail_s: float = 0.0,
    max_requests: int | None = None,
) -> SimRun:
    """Simulate a workload. Open loop: requests arrive at their arrival_s. Closed loop:
    `closed_loop_users` users start at 0 and each sends the next request of the list (its
    arrival_s ignored) `think_s` after its previous one finished; with `duration_s` the list
    is reused until then. In both, no request arrives after `duration_s` (when given) and
    the ones in flight finish.
    `overhead_s`: time from a request's send to the engine (HTTP, tokenization, the way
    back: a calibration's ttft_overhead_s), `tail_s` from its last token to the end of the
    stream; both count in its TTFT and E2E, and a closed-loop user waits for them.
    `max_requests`: a closed loop sends no more than that many (whichever of it and
    `duration_s` comes first, as the load generator stops)."""
    engine = Engine(config, step_model, seed=seed)
    pool = list(requests)
    pending: list[tuple[float, int, SimRequest]] = []  # arrival heap
    order = 0
    next_index = 0
    closed = closed_loop_users is not None
    if closed:
        if closed_loop_users < 1:
            raise ValueError("closed_loop_users must be at least 1")
        if not pool:
            raise ValueError("simulate: no requests")

    def issue(at: float) -> None:
        """One closed-loop user sends its next request at `at`."""
        nonlocal next_index, order
        if duration_s is not None and at > duration_s:
            return
        if max_requests is not None and next_index >= max_requests:
            return
        if next_index >= len(pool):
            if duration_s is None:
                return
            b = pool[next_index % len(pool)]
            req = SimRequest(f"{b.id}#{next_index // len(pool)}", at, b.prompt_tokens,
                             b.output_tokens, b.prefix_key, b.prefix_tokens)
        else:
            b = pool[next_index]
            req = SimRequest(b.id, at, b.prompt_tokens, b.output_tokens, b.prefix_key,
                             b.prefix_tokens)
        next_index += 1
        heapq.heappush(pending, (at + overhead_s, order, req))
        order += 1

    if closed:
        for _ in range(closed_loop_users):
            issue(0.0)
    else:
        for r in pool:
            if duration_s is None or r.arrival_s <= duration_s:
                heapq.heappush(pending, (r.arrival_s + overhead_s, order, r))
                order += 1
    start = pending[0][0] - overhead_s if pending else 0.0
    t = start
    done_seen = 0
    add, pop, idle = engine.add, heapq.heappop, engine.idle  # bound once: the loop is hot
    advance, step, done_list = engine.advance_decode, engine.step, engine.done
    while True:
        while pending and pending[0][0] <= t:
            add(pop(pending)[2])
        if idle():
            if not pending:
                break
            t = pending[0][0]
            continue
        # the steps that only advance the decoding cohort, in one loop (same results)
        t2, n = advance(t, pending[0][0] if pending else math.inf,
                        None if max_steps is None else max_steps - engine.steps)
        if n:
            t = t2
            if max_steps is not None and engine.steps >= max_steps:
                break
            continue
        res = step(t, False)
        if res is None:  # nothing runnable until more work arrives
            if not pending:
                break
            t = max(t, pending[0][0])
            continue
        t = res.end_s
        if closed and len(done_list) > done_seen:
            for r in done_list[done_seen:]:
                issue(r.arrival_s + r.e2e_s + tail_s + think_s)
            done_seen = len(done_list)
        if max_steps is not None and engine.steps >= max_steps:
            break
    unfinished = engine.running + engine.waiting + len(pending)
    done = sorted(engine.done, key=lambda r: r.arrival_s)
    if overhead_s or tail_s:
        for r in done:  # timed from the send already; the engine's queue began later
            r.queue_s -= overhead_s
            r.e2e_s += tail_s
    return SimRun(done, engine.itl, start, t + tail_s, engine.steps, engine.preemptions,
                  engine.busy_s, unfinished)

