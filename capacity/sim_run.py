"""Drive the simulated engine through a workload as fast as it goes: open loop (each
request at its own arrival time: a Poisson schedule or a trace, built by the caller) or
closed loop (N users, each sending its next request when its previous one finishes).

The caller builds the requests (the scenario's lengths and arrivals live in loadgen, which
this pure package must not import).
"""

from __future__ import annotations

import gc
import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter

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
    ramp_s: float = 0.0,
    seed: int = 0,
    max_steps: int | None = None,
    overhead_s: float = 0.0,
    tail_s: float = 0.0,
    max_requests: int | None = None,
) -> SimRun:
    """Simulate a workload. Open loop: requests arrive at their arrival_s. Closed loop:
    `closed_loop_users` users start at 0 and each sends the next request of the list (its
    arrival_s ignored) `think_s` after its previous one finished; with `duration_s` the list
    is reused until then; `ramp_s` spreads the users' first sends evenly over that many
    seconds (as a load generator's spawn rate does; 0: all at once, in lockstep while the
    lengths are equal). In both, no request arrives after `duration_s` (when given) and
    the ones in flight finish.
    `overhead_s`: time from a request's send to the engine (HTTP, tokenization, the way
    back: a calibration's ttft_overhead_s), `tail_s` from its last token to the end of the
    stream; both count in its TTFT and E2E, and a closed-loop user waits for them.
    `max_requests`: a closed loop sends no more than that many (whichever of it and
    `duration_s` comes first, as the load generator stops)."""
    engine = Engine(config, step_model, seed=seed)
    pool = list(requests)
    # arrival heap: (time, order, request) open loop, (time, order, request, id, sent at)
    # closed loop
    pending: list[tuple] = []
    order = 0
    closed = closed_loop_users is not None
    if closed:
        if closed_loop_users < 1:
            raise ValueError("closed_loop_users must be at least 1")
        if not pool:
            raise ValueError("simulate: no requests")

    size = len(pool)
    end_s = math.inf if duration_s is None else duration_s
    most = math.inf if max_requests is None else max_requests
    push = heapq.heappush

    # the closed loop sends the list, then (with a duration) the list again, until
    # max_requests: `last` requests at most
    last = min(most, math.inf if duration_s is not None else size)
    sent = 0

    def take() -> tuple[SimRequest, str] | None:
        """A closed-loop user's next request and its id (the k-th time round the list,
        "<id>#<k>"); None when no more are sent."""
        nonlocal sent
        i = sent
        if i >= last:
            return None
        sent = i + 1
        if i < size:  # checked the first time it is sent
            b = pool[i]
            engine.check(b)
            return b, b.id
        b = pool[i % size]
        return b, f"{b.id}#{i // size}"

    def issue(times: list[float]) -> None:
        """Closed-loop users send their next requests, one at each of `times`."""
        nonlocal order
        for at in times:
            if at > end_s or (nxt := take()) is None:
                continue
            push(pending, (at + overhead_s, order, nxt[0], nxt[1], at))  # sent as (rid, at)
            order += 1

    if closed:
        issue([ramp_s * i / closed_loop_users for i in range(closed_loop_users)])
    else:
        for r in pool:
            if duration_s is None or r.arrival_s <= duration_s:
                heapq.heappush(pending, (r.arrival_s + overhead_s, order, r))
                order += 1
    start = pending[0][0] - overhead_s if pending else 0.0
    t = start
    done_seen = 0
    add, add_as, pop, idle = engine.add, engine.add_as, heapq.heappop, engine.idle
    advance, step, done_list = engine.advance_decode, engine.step, engine.done

    delay = tail_s + think_s  # from a request's finish to its user's next send
    straight_in = not (delay or overhead_s)

    def feed(now: float) -> float:
        """Between steps: the users whose requests finished since the last call (all at
        `now`: it is called at the end of every step that finishes one) send their next
        ones, the requests due by `now` go in; returns when the next one is due."""
        nonlocal done_seen
        if closed:
            finished = len(done_list) - done_seen
            if finished:
                done_seen += finished
                if straight_in and not pending and now <= end_s:
                    # nothing on the way: the requests go in now, in the order the heap
                    # would give them back, without its round trip
                    for _ in range(finished):
                        if (nxt := take()) is None:
                            break
                        add_as(nxt[0], nxt[1], now)
                else:
                    issue([now + delay] * finished)
            while pending and pending[0][0] <= now:
                _, _, b, rid, at = pop(pending)
                add_as(b, rid, at)
        else:
            while pending and pending[0][0] <= now:
                add(pop(pending)[2])
        return pending[0][0] if pending else math.inf

    engine.feed = feed  # advance_decode calls it between its steps, as this loop does
    # The run makes no reference cycles (the one through engine.feed is cut below); the
    # cyclic collector would only re-scan its many live objects, a tenth of the time.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        while True:
            until = feed(t)
            if idle():
                if not pending:
                    break
                t = pending[0][0]
                continue
            # the common steps (the decoding cohort, admissions, finishes) in one loop,
            # the rest one step() at a time
            t2, n = advance(t, until, None if max_steps is None else max_steps - engine.steps)
            if n:
                t = t2
            else:
                res = step(t, False)
                if res is None:  # nothing runnable until more work arrives
                    if not pending:
                        break
                    t = max(t, pending[0][0])
                    continue
                t = res.end_s
            if max_steps is not None and engine.steps >= max_steps:
                feed(t)  # the users whose requests just finished have sent their next ones
                break
    finally:
        engine.feed = None
        if gc_was_enabled:
            gc.enable()
    unfinished = engine.running + engine.waiting + len(pending)
    done = sorted(engine.done, key=attrgetter("arrival_s"))
    if overhead_s or tail_s:
        for r in done:  # timed from the send already; the engine's queue began later
            r.queue_s -= overhead_s
            r.e2e_s += tail_s
    return SimRun(done, engine.itl, start, t + tail_s, engine.steps, engine.preemptions,
                  engine.busy_s, unfinished)

