"""Search vLLM's two batching knobs, `max_num_seqs` x `max_num_batched_tokens`, on the
simulator: every candidate runs the same workload for a short window and is ranked by its
predicted goodput (requests per second that met every SLO), then throughput.

Why a short window: a candidate's goodput settles within a few hundred requests, and a
grid of 20-40 candidates must answer in seconds; the window used is in the result. Only
the top candidates get prediction intervals (replicas on a calibration profile's refits
are the expensive part). Pure: the caller builds the requests (loadgen is not imported).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from servescope.capacity.sim_profile import Profile, Workload, predict, run_summary
from servescope.capacity.sim_setup import SimSetup
from servescope.capacity.sim_types import SchedulerConfig, SimRequest, StepModel

DEFAULT_SEQS = (8, 16, 32, 64, 128, 256)
DEFAULT_TOKENS = (2048, 8192, 16384)
WINDOW_S = 120.0  # simulated seconds of load per candidate
MAX_REQUESTS = 2000  # ... or this many requests, whichever comes first


@dataclass(frozen=True)
class Window:
    """How much load each candidate is simulated with."""

    seconds: float = WINDOW_S
    max_requests: int | None = MAX_REQUESTS

    def describe(self) -> str:
        more = f" or {self.max_requests:,} requests" if self.max_requests else ""
        return f"{self.seconds:g} simulated seconds{more} per candidate, whichever first"


def _windowed(work: Workload, window: Window) -> Workload:
    """The workload cut to the window: no arrival after it, no more requests than it allows
    (simulate_run lets the ones in flight finish)."""
    duration = min(work.duration_s or window.seconds, window.seconds)
    cap = [v for v in (work.max_requests, window.max_requests) if v]
    requests = work.requests
    if work.closed_loop_users is None:  # open loop: the list is the schedule
        requests = [r for r in requests if r.arrival_s <= duration]
        if cap:
            requests = requests[:min(cap)]
    return replace(work, requests=requests, duration_s=duration,
                   max_requests=min(cap) if cap else None)


def _row(seqs: int, tokens: int, s: dict[str, Any]) -> dict[str, Any]:
    gp = s.get("goodput") or {}
    return {"max_num_seqs": seqs, "max_num_batched_tokens": tokens,
            "goodput_per_s": gp.get("requests_per_s") or 0.0,
            "goodput_ratio": gp.get("ratio"),
            "requests_per_s": s.get("requests_per_s"),
            "output_tokens_per_s": s.get("output_tokens_per_s"),
            "ttft_ms": {k: s["ttft_ms"].get(k) for k in ("p50", "p90", "p99")},
            "itl_ms": {k: s["itl_ms"].get(k) for k in ("p50", "p90", "p99")},
            "e2e_ms": {k: s["e2e_ms"].get(k) for k in ("p50", "p90", "p99")},
            "requests": s.get("requests_ok"), "preemptions": s.get("preemptions"),
            "attainment": gp.get("attainment") or []}


def _rank_key(row: dict[str, Any]) -> tuple[float, float, float]:
    """Best goodput first; then throughput; then the lower TTFT p90."""
    return (-(row["goodput_per_s"] or 0.0), -(row["requests_per_s"] or 0.0),
            row["ttft_ms"]["p90"] if row["ttft_ms"]["p90"] is not None else float("inf"))


def search(base: SchedulerConfig | SimSetup, workload: Workload,
           slos: dict[str, dict[str, float]] | None = None,
           seqs: Sequence[int] = DEFAULT_SEQS, tokens: Sequence[int] = DEFAULT_TOKENS,
           step_model: StepModel | None = None, profile: Profile | None = None,
           window: Window = Window(), top: int = 5, replicas: int = 0) -> dict[str, Any]:
    """Rank every (max_num_seqs, max_num_batched_tokens) of the grid by simulated goodput.

    `base`: the scheduler to vary (a SimSetup brings its physics step model too); the step
    model is `profile`'s calibrated one when given, else `step_model`, else the setup's
    physics. `slos` replace the workload's. Pairs with fewer batched tokens than sequences
    are skipped (vLLM refuses them at start). With `replicas` > 0 the `top` candidates are
    re-predicted with that many replicas for 90 % intervals. Returns {candidates (ranked,
    each with its rank), skipped, window, step_model, calibrated, slos}."""
    config = base.config if isinstance(base, SimSetup) else base
    step = profile.calibration.step if profile else (
        step_model or (base.physics if isinstance(base, SimSetup) else None))
    if step is None:
        raise ValueError("sim_search.search: give a step model, a profile or a SimSetup")
    if not seqs or not tokens:
        raise ValueError("sim_search.search: the grid is empty")
    work = _windowed(replace(workload, slos=slos if slos is not None else workload.slos),
                     window)
    if not work.requests:
        raise ValueError("sim_search.search: no requests inside the window")
    over, tail = ((profile.calibration.ttft_overhead_s, profile.calibration.tail_s)
                  if profile else (0.0, 0.0))
    rows, skipped = [], []
    for n in sorted(set(seqs)):
        for t in sorted(set(tokens)):
            if t < n:
                skipped.append({"max_num_seqs": n, "max_num_batched_tokens": t,
                                "why": "max_num_batched_tokens < max_num_seqs"})
                continue
            cand = replace(config, max_num_seqs=n, max_num_batched_tokens=t)
            rows.append(_row(n, t, run_summary(work, cand, step, 0, over, tail)))
    rows.sort(key=_rank_key)
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    if replicas > 0:
        for r in rows[:top]:
            cand = replace(config, max_num_seqs=r["max_num_seqs"],
                           max_num_batched_tokens=r["max_num_batched_tokens"])
            p = predict(lambda _i: work, cand, profile, None if profile else step, replicas)
            r["interval90"] = {k: p["interval90"].get(k) for k in (
                "goodput.requests_per_s", "requests_per_s", "ttft_ms.p90", "ttft_ms.p99",
                "itl_ms.p90", "itl_ms.p99")}
    label = getattr(step, "label", "custom")
    used = Window(work.duration_s or window.seconds, work.max_requests)
    return {"candidates": rows, "skipped": skipped, "window": used.describe(),
            "window_s": work.duration_s, "max_requests": work.max_requests,
            "step_model": label, "calibrated": profile is not None, "slos": work.slos,
            "base": {"kv_blocks": config.kv_blocks, "block_size": config.block_size,
                     "policy": config.policy}}


ROUNDS = 4  # a load curve's level sends at least this many requests a user


def users_levels(max_num_seqs: int, serve: int | None = None, most: int = 1024) -> list[int]:
    """Closed-loop users to draw a load curve at: 1, 2, 4, ... up to twice max_num_seqs (the
    knee and the queue past it) or the concurrency to serve, whichever is larger, at most
    `most`; the last level is that top itself."""
    top = min(most, max(2 * max_num_seqs, serve or 0, 1))
    levels, n = [], 1
    while n < top:
        levels.append(n)
        n *= 2
    return [*levels, top]


def load_curve(base: SimSetup, lengths: Sequence[tuple[int, int]], users: Sequence[int],
               window: Window = Window(), seed: int = 0) -> dict[str, Any]:
    """The setup (its scheduler and physics step model, uncalibrated) under closed-loop
    load at each number of `users`, no think time: each user sends requests whose (prompt,
    output) lengths are drawn from `lengths` in a seeded order. The users join evenly over
    one request's unloaded time (a load generator's ramp): started together, users of
    equal lengths would stay in lockstep, every prompt arriving in the same step. Returns
    {rows (one per users count: search's row plus "users"), window, ramp_s, step_model}."""
    if not lengths:
        raise ValueError("sim_search.load_curve: no request lengths")
    if not users or min(users) < 1:
        raise ValueError("sim_search.load_curve: give users counts of at least 1")
    n = window.max_requests or MAX_REQUESTS
    order = random.Random(seed)
    reqs = [SimRequest(f"r{i}", 0.0, *lengths[order.randrange(len(lengths))])
            for i in range(n)]
    alone = run_summary(Workload(reqs[:20], closed_loop_users=1), base.config, base.physics)
    ramp = (alone["e2e_ms"]["p50"] or 0.0) / 1000
    rows = []
    for u in users:
        # at least ROUNDS requests a user: a window's request cap below the users would
        # leave most of them idle
        level = Window(window.seconds, max(n, ROUNDS * u))
        work = _windowed(Workload(reqs, closed_loop_users=u, duration_s=window.seconds,
                                  ramp_s=ramp), level)
        row = _row(base.config.max_num_seqs, base.config.max_num_batched_tokens,
                   run_summary(work, base.config, base.physics))
        rows.append({"users": u, **row})
    return {"rows": rows, "ramp_s": ramp,
            "window": f"{window.seconds:g} simulated seconds or {n:,} requests ({ROUNDS} a "
                      "user where more) per level, whichever first",
            "step_model": getattr(base.physics, "label", "physics")}


def format_search(result: dict[str, Any], top: int = 5) -> list[str]:
    """The top candidates as a table, with what was simulated and how sure it is."""
    cal = "calibrated" if result["calibrated"] else "simulated, uncalibrated (physics)"
    lines = [f"simulated search ({cal}; {result['window']}), ranked by goodput:",
             f"{'rank':>4}{'seqs':>6}{'batched':>9}{'goodput/s':>11}{'req/s':>8}"
             f"{'tok/s':>9}{'ttft p90':>10}{'ttft p99':>10}{'itl p90':>9}{'itl p99':>9}"
             f"{'preempt':>9}"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}" if v >= 100 else f"{v:.1f}"

    for r in result["candidates"][:top]:
        iv = (r.get("interval90") or {}).get("goodput.requests_per_s")
        good = f"{r['goodput_per_s']:.2f}"
        lines.append(
            f"{r['rank']:>4}{r['max_num_seqs']:>6}{r['max_num_batched_tokens']:>9}{good:>11}"
            f"{r['requests_per_s'] or 0:>8.2f}{r['output_tokens_per_s'] or 0:>9.0f}"
            f"{ms(r['ttft_ms']['p90']):>10}{ms(r['ttft_ms']['p99']):>10}"
            f"{ms(r['itl_ms']['p90']):>9}{ms(r['itl_ms']['p99']):>9}{r['preemptions']:>9}"
            + (f"  goodput 90%: {iv[0]:.2f}-{iv[1]:.2f}" if iv else ""))
    n = len(result["candidates"])
    if n > top:
        lines.append(f"  ({n - top} more candidates in --json)")
    if not result["slos"]:
        lines.append("  no SLOs given: goodput is every finished request")
    if not result["calibrated"]:
        lines.append("  uncalibrated: the ranking follows the roofline's assumptions; "
                     "confirm on a server (`servescope tune --simulate-first`)")
    return lines
