"""Request lengths a scenario produces, for sizing the KV cache by the workload's real
lengths rather than max_model_len. Takes a loaded Scenario (servescope.loadgen.scenario);
draws with its seed, so the same scenario gives the same plan."""

from __future__ import annotations

import random
from typing import Any

from servescope.capacity.setup import Workload

SAMPLES = 20_000


def scenario_workload(scenario: Any, samples: int = SAMPLES) -> Workload:
    """(prompt, output) lengths of `samples` requests of `scenario`, request classes drawn by
    weight. A multi-turn conversation resends its history, so a later turn's prompt is the
    earlier prompts and answers plus its own (that is the context the KV cache holds)."""
    rng = random.Random(scenario.seed)
    workloads = scenario.workloads()
    mix = {c.name: c.weight for c in (scenario.mix or [])}
    weights = [mix.get(w.name, 1.0) for w in workloads]
    pairs: list[tuple[int, int]] = []
    while len(pairs) < samples:
        w = rng.choices(workloads, weights)[0]
        turns = w.turns.sample(rng) if w.turns is not None else 1
        history = 0
        for _ in range(max(1, turns)):
            prompt, output = w.lengths(rng)
            pairs.append((history + prompt, output))
            history += prompt + output
    return Workload.from_samples(pairs[:samples], f"scenario {scenario.name} "
                                 f"({samples:,} requests drawn with seed {scenario.seed})")
