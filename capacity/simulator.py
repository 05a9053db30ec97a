"""A discrete-event model of an LLM server's scheduler: vLLM v1 continuous batching, or the
fixed parallel slots of Ollama and llama.cpp.

Why a model of the scheduler and not a formula: queueing, chunked prefill, preemption and
prefix hits decide latency past the knee, and they follow from the scheduler's rules, which
are simple to replay. One `Engine.step` is one forward pass; how long it takes comes from a
`StepModel` (calibrated on a real server or from physics, see `steptime.py`). The engine is
incremental (`sim_engine.py`), so the live simulated server drives it in real time and
`simulate` drives it as fast as it can (`sim_run.py`).

vLLM v1's rules replayed (vllm/v1/core/sched/scheduler.py): the running requests are
scheduled first, each taking what it still needs (one token for a decode, the rest of its
prompt for a prefill) from the step's token budget (`max_num_batched_tokens`), decodes
first, so a long prompt is chunked over steps; when the KV blocks run out the newest
running request is preempted (its blocks freed, its progress recomputed later: it goes back
to the front of the waiting queue); only in a step without preemption are waiting requests
admitted, first come first served, while the budget, `max_num_seqs` and the free blocks
allow. A prefix cache hit (full blocks of a shared prefix computed before) skips those
tokens of the prefill. The "slots" policy (Ollama, llama.cpp) is the same loop with
`slots` sequences at most and each slot's context preallocated (no block limit).

This module is the public face: the types, the engine and `simulate`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from servescope.capacity.sim_engine import Engine
from servescope.capacity.sim_types import (
    ItlPool,
    NoisyStepModel,
    RequestTiming,
    SchedulerConfig,
    SimRequest,
    StepModel,
    StepResult,
)

__all__ = ["Engine", "ItlPool", "NoisyStepModel", "RequestTiming", "SchedulerConfig",
           "SimRequest", "StepModel", "StepResult", "simulate"]


def simulate(requests: Iterable[SimRequest], config: SchedulerConfig, step_model: StepModel,
             *, closed_loop_users: int | None = None, **kw: Any) -> list[RequestTiming]:
    """The finished requests' timings (open loop by arrival_s, or closed loop with
    `closed_loop_users`; see sim_run.simulate_run for the options)."""
    from servescope.capacity.sim_run import simulate_run

    return simulate_run(requests, config, step_model, closed_loop_users=closed_loop_users,
                        **kw).requests
