"""The search behind `servescope tune`: measure a candidate value of the concurrency knob,
let the advisor read the sweep, measure what it points to, keep the best goodput under the
SLOs. At most `max_runs` measurements.

The advisor's next value comes first. When it has none (or one already measured) and the
last value measured did worse than the best, the geometric middle of the two is tried:
the best lies between a value that queued and one that broke the latency SLOs. Pure: the
measuring is the caller's `measure(value) -> evidence`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from servescope.capacity.advise import advise, best_goodput


def _between(tried: dict[int, float], last: int) -> int | None:
    best = max(tried, key=lambda v: tried[v])
    if last == best:
        return None
    mid = round(math.sqrt(best * last))
    return mid if mid not in tried and mid not in (best, last) else None


def _step(value: int, ev: dict[str, Any], kv_capacity_tokens: int | None
          ) -> tuple[dict[str, Any], dict[str, Any], float]:
    """One measured value as a step of the search (without its `next`), the advice on it,
    and its goodput (0 when none)."""
    level, goodput = best_goodput(ev)
    adv = advise(ev, kv_capacity_tokens)
    step = {"value": value, "goodput_per_s": goodput, "level": level, "limit": adv["limit"],
            "recommendations": adv["recommendations"], "notes": adv["notes"],
            "sweep_id": ev.get("sweep_id")}
    return step, adv, goodput or 0.0


def _result(tried: dict[int, float], steps: list[dict[str, Any]], stopped: str
            ) -> dict[str, Any]:
    best = max(tried, key=lambda v: tried[v]) if tried else None
    best_step = next((s for s in steps if s["value"] == best), None)
    return {"best": best, "best_goodput_per_s": tried.get(best) if best is not None else None,
            "best_level": best_step["level"] if best_step else None, "steps": steps,
            "stopped": stopped}


def search(measure: Callable[[int], dict[str, Any]], start: int, max_runs: int = 3,
           kv_capacity_tokens: int | None = None,
           on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Measure `start`, then follow the advice, at most `max_runs` values. Returns {best
    (the value with the best goodput), best_goodput_per_s, best_level, steps: [{value,
    goodput_per_s, level (where that goodput was), limit, recommendations, next}],
    stopped ("advice" / "max_runs" / "interrupted")}. Ctrl-C (KeyboardInterrupt) inside
    `measure` ends the search with what was measured before; `on_step` sees each step."""
    steps: list[dict[str, Any]] = []
    tried: dict[int, float] = {}
    value: int | None = start
    stopped = "max_runs"
    while value is not None and len(steps) < max_runs:
        try:
            ev = measure(value)
        except KeyboardInterrupt:
            stopped = "interrupted"
            break
        step, adv, tried[value] = _step(value, ev, kv_capacity_tokens)
        nxt = adv["next_candidate"]
        if nxt is not None:
            nxt = max(1, int(nxt))
        if nxt is None or nxt in tried:
            nxt = _between(tried, value)
        step["next"] = nxt
        steps.append(step)
        if on_step is not None:
            on_step(step)
        if ev.get("status") == "interrupted":
            stopped = "interrupted"
            break
        if nxt is None:
            stopped = "advice"
        value = nxt
    return _result(tried, steps, stopped)


# -- tune --simulate-first: the simulator orders the candidates, the server confirms --------
def simulated_order(predicted: dict[Any, float], max_runs: int) -> list[Any]:
    """The values to measure (max_num_seqs values, or pairs with max_num_batched_tokens):
    best predicted goodput first (a tie goes to the smaller value,
    which reserves less memory for the same answer), at most `max_runs`."""
    return sorted(predicted, key=lambda v: (-(predicted[v] or 0.0), v))[:max(0, max_runs)]


def confirm(measure: Callable[[Any], dict[str, Any]], predicted: dict[Any, float],
            max_runs: int = 3, kv_capacity_tokens: int | None = None,
            on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Measure the simulator's top `max_runs` values in its order (not the advisor's), and
    keep the best measured goodput. Same result as `search`, each step with its
    `predicted_goodput_per_s`, plus `predicted` (every value's prediction)."""
    order = simulated_order(predicted, max_runs)
    steps: list[dict[str, Any]] = []
    tried: dict[Any, float] = {}
    stopped = "max_runs" if len(order) < len(predicted) else "candidates"
    for i, value in enumerate(order):
        try:
            ev = measure(value)
        except KeyboardInterrupt:
            stopped = "interrupted"
            break
        step, _, tried[value] = _step(value, ev, kv_capacity_tokens)
        step["predicted_goodput_per_s"] = predicted[value]
        step["next"] = order[i + 1] if i + 1 < len(order) else None
        steps.append(step)
        if on_step is not None:
            on_step(step)
        if ev.get("status") == "interrupted":
            stopped = "interrupted"
            break
    return {**_result(tried, steps, stopped),
            "predicted": {candidate_key(k): v for k, v in predicted.items()}}


def candidate_key(value: Any) -> str:
    """A candidate as a JSON key or in a file name: "8", or "8x2048" for a (max_num_seqs,
    max_num_batched_tokens) pair."""
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)
