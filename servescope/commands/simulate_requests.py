"""A scenario's requests for the simulator: lengths drawn as the load generator draws them
(the scenario's seed, request classes, turns and prefix groups), arrivals from its shape
(closed-loop users, an open-loop schedule from loadgen/arrivals.py, or a trace). The
simulator itself (servescope.capacity) must not import loadgen, so this application-side
module hands it a plain request list."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from servescope.capacity.simulator import SimRequest

# closed loop: distinct requests drawn (a longer run reuses them, in order)
CLOSED_POOL = 5_000


@dataclass
class SimWorkload:
    """What simulate_run needs: the requests and the load shape."""

    requests: list[SimRequest]
    closed_loop_users: int | None
    duration_s: float | None
    think_s: float
    warmup_requests: int
    describe: str
    max_requests: int | None = None


def replica_maker(scenario: Any) -> Callable[[int], Any]:
    """`sim_profile.predict`'s make_workload for a scenario: replica i's Workload (i > 0
    redraws its lengths and arrivals), with the scenario's SLOs."""
    from servescope.capacity.sim_profile import Workload

    slos = scenario.slos.model_dump()

    def make(i: int) -> Workload:
        w = scenario_workload(scenario, seed_offset=i)
        return Workload(w.requests, w.closed_loop_users, w.duration_s, w.think_s,
                        w.warmup_requests, slos, w.max_requests)

    return make


def _conversation_requests(scenario: Any, index: int, arrival: float) -> list[SimRequest]:
    """One conversation's turns (one for a single-turn scenario), seeded like
    loadgen/prompts.py's Conversation: a later turn's prompt is the history plus its own
    message, and the history is a prefix the cache can reuse."""
    rng = random.Random(f"{scenario.seed}:{index}")
    workloads = scenario.workloads()
    w = (rng.choices(workloads, [c.weight for c in scenario.mix or []])[0]
         if len(workloads) > 1 else workloads[0])
    turns = w.turns.sample(rng) if w.turns is not None else 1
    group = rng.randrange(scenario.prefix_groups)
    shared = scenario.shared_prefix_tokens or (
        len(scenario.system_prompt) // 4 if scenario.system_prompt else 0)
    out, history = [], 0
    for turn in range(max(1, turns)):
        trng = random.Random(f"{scenario.seed}:{index}:{turn}")
        prompt, output = w.lengths(trng)
        prompt = max(prompt, shared + 1) + history
        if history:  # approximate: the cache keeps the first history it saw of this key
            key, prefix = f"conv{index}", history
        elif shared:
            key, prefix = f"prefix{group}", shared
        else:
            key, prefix = None, 0
        out.append(SimRequest(f"r{index:07d}-t{turn}", arrival, prompt, max(1, output), key,
                              prefix))
        history = prompt + output
    return out


def scenario_workload(scenario: Any, seed_offset: int = 0, max_requests: int | None = None
                      ) -> SimWorkload:
    """The scenario's requests (pass it after with_overrides for --concurrency/--rate/
    --requests). `seed_offset` redraws lengths and arrivals for replicas."""
    from servescope.loadgen.arrivals import arrival_times, replay_times

    limit = max_requests or scenario.max_requests
    if seed_offset:
        scenario = scenario.with_overrides(seed=scenario.seed + seed_offset)
    warmup = scenario.warmup_requests
    if scenario.mode == "trace":
        t = scenario.trace
        pairs = replay_times(t.entries, t.time_scale, t.duration, limit)
        reqs = [SimRequest(f"trace{i:07d}", off, max(1, e.prompt_tokens),
                           max(1, e.output_tokens)) for i, (off, e) in enumerate(pairs)]
        return SimWorkload(reqs, None, None, 0.0, warmup,
                           f"trace replay of {len(reqs)} requests")
    if scenario.mode == "open":
        a = scenario.arrivals
        times = list(arrival_times(a.rate_stages(), a.process, a.cv or 1.0, scenario.seed,
                                   limit))
        reqs: list[SimRequest] = []
        for i, at in enumerate(times):
            reqs.extend(_conversation_requests(scenario, i, at)[:1])
        rates = "->".join(f"{s.rate:g}" for s in a.rate_stages())
        return SimWorkload(reqs, None, scenario.duration_s, 0.0, warmup,
                           f"open loop, {a.process} arrivals at {rates}/s")
    stages = scenario.stages
    users = max(s.concurrency for s in stages)
    duration = scenario.duration_s
    n = min(limit or CLOSED_POOL, CLOSED_POOL)
    reqs = []
    i = 0
    while len(reqs) < n:
        reqs.extend(_conversation_requests(scenario, i, 0.0))
        i += 1
    reqs = reqs[:n]
    note = "" if len(stages) == 1 else f" (its {len(stages)} stages simulated at their peak)"
    window = f"{duration:g}s" if not limit else f"{limit} requests or {duration:g}s, " \
        "whichever ends first"
    return SimWorkload(reqs, users, duration, stages[0].think_time or 0.0, warmup,
                       f"closed loop, {users} users, {window}{note}", limit)
