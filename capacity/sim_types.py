"""The simulator's public data types: requests in, scheduler knobs, the step-time protocol,
what one step did and what one request experienced."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass
class SimRequest:
    """One request to simulate: when it arrives and how many tokens it reads and writes.
    `prefix_key` names a shared prefix (a system prompt, a conversation so far) of
    `prefix_tokens` tokens that the prefix cache can reuse across requests."""

    id: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_key: str | None = None
    prefix_tokens: int = 0


@dataclass
class SchedulerConfig:
    """The scheduler's knobs. policy "vllm": continuous batching with paged KV blocks;
    "slots": Ollama / llama.cpp, `slots` parallel sequences behind a FIFO queue, each slot's
    context preallocated (no preemption), prompts processed `max_num_batched_tokens` (their
    n_batch) at a time."""

    policy: str = "vllm"
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    kv_blocks: int = 10**9
    block_size: int = 16
    slots: int = 1
    prefix_caching: bool = True

    def __post_init__(self) -> None:
        if self.policy not in ("vllm", "slots"):
            raise ValueError(f"SchedulerConfig.policy: {self.policy!r} is not 'vllm' or 'slots'")
        for name in ("max_num_seqs", "max_num_batched_tokens", "kv_blocks", "block_size", "slots"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"SchedulerConfig.{name} must be at least 1, got {getattr(self, name)}")

    @property
    def seq_cap(self) -> int:
        return self.slots if self.policy == "slots" else self.max_num_seqs


class StepModel(Protocol):
    """How long one forward pass takes, from what it computes: the prompt tokens it
    prefills, the sequences it decodes (one token each), the KV tokens it reads and the
    (query, key) pairs its prefill attends over (prefill_pairs; 0 in a step
    without prefill, where the engine leaves the argument out)."""

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int,
                     pairs: int = 0) -> float: ...


def prefill_pairs(chunk: int, before: int) -> int:
    """The (query, key) pairs a prefill chunk of `chunk` tokens attends over, `before`
    tokens already computed: each new token attends to everything before it and itself."""
    return chunk * before + chunk * (chunk + 1) // 2


@runtime_checkable
class NoisyStepModel(Protocol):
    """A step model that can also draw one step's time with its measured spread."""

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int,
                     pairs: int = 0) -> float: ...

    def sample_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int,
                       rng: random.Random, pairs: int = 0) -> float: ...


@dataclass
class StepResult:
    """What one step did. `tokens`: the ids that emitted one output token at its end
    (start_s + duration_s); `prefill`: prompt tokens computed per id (chunks included)."""

    start_s: float
    duration_s: float
    prefill: dict[str, int]
    tokens: list[str]
    finished: list[str]
    preempted: list[str]
    running: int
    waiting: int
    kv_blocks_used: int
    decode_seqs: int = 0
    kv_tokens: int = 0

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


@dataclass(slots=True)
class RequestTiming:
    """One simulated request's latencies (seconds, from its arrival) and what happened to it."""

    id: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    queue_s: float
    ttft_s: float
    e2e_s: float
    tpot_s: float | None
    preemptions: int = 0
    cached_tokens: int = 0
    itl_max_s: float = 0.0


@dataclass
class ItlPool:
    """Every inter-token gap of the run, pooled over requests as the load summary pools them:
    regular gaps (a decode right after the sequence's previous token) are one step's duration
    for each sequence decoded in it, kept as (duration, count); the rest one by one."""

    steps: list[tuple[float, int]] = field(default_factory=list)
    other: list[float] = field(default_factory=list)

    def count(self) -> int:
        return sum(n for _, n in self.steps) + len(self.other)
