"""When requests (open loop) and users (closed loop) arrive: pure, seeded functions.

An open-loop client sends every request at its scheduled time whatever the server is
doing, so a request's intended send time comes from here, never from when a greenlet got
around to it. That is what lets latency measured from the intended send expose queueing in
the client (coordinated omission).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

Process = Literal["poisson", "gamma", "constant"]


@dataclass(frozen=True, slots=True)
class RateStage:
    """`rate` requests per second for `duration` seconds. Over the first `ramp` seconds the
    rate moves linearly from the previous stage's rate (0 before the first stage)."""

    rate: float
    duration: float
    ramp: float = 0.0


@dataclass(frozen=True, slots=True)
class UserStage:
    """`users` closed-loop users for `duration` seconds, reached linearly over `ramp`."""

    users: int
    duration: float
    ramp: float = 0.0


@dataclass(frozen=True, slots=True)
class TraceEntry:
    """One line of a trace file: a request at `t` seconds with its lengths."""

    t: float
    prompt_tokens: int
    output_tokens: int


# -- open loop ------------------------------------------------------------------------------
def unit_gaps(process: Process, cv: float, rng: random.Random) -> Iterator[float]:
    """Gaps of a renewal process with mean 1: exponential (poisson), gamma with coefficient
    of variation `cv` (shape 1/cv^2: cv > 1 is burstier than poisson, cv < 1 more regular),
    or exactly 1 (constant)."""
    if process == "constant":
        while True:
            yield 1.0
    elif process == "poisson":
        while True:
            yield rng.expovariate(1.0)
    elif process == "gamma":
        if cv <= 0:
            raise ValueError("gamma needs cv > 0")
        shape = 1.0 / (cv * cv)
        while True:
            yield rng.gammavariate(shape, 1.0 / shape)
    else:
        raise ValueError(f"unknown arrival process {process!r}")


def _segments(stages: Sequence[RateStage]) -> list[tuple[float, float, float, float]]:
    """(start, length, rate at start, rate at end) pieces of a piecewise-linear rate."""
    out, t, prev = [], 0.0, 0.0
    for s in stages:
        ramp = min(s.ramp, s.duration)
        if ramp > 0:
            out.append((t, ramp, prev, s.rate))
        if s.duration > ramp:
            out.append((t + ramp, s.duration - ramp, s.rate, s.rate))
        t += s.duration
        prev = s.rate
    return out


def arrival_times(
    stages: Sequence[RateStage],
    process: Process = "poisson",
    cv: float = 1.0,
    seed: int | str = 0,
    limit: int | None = None,
) -> Iterator[float]:
    """Seconds from the start at which requests arrive, in order, until the stages end (or
    `limit` arrivals).

    A unit-rate renewal process (see `unit_gaps`) is mapped through the cumulative rate
    Lambda(t) = integral of rate(t) ("time change"). Within a stage of constant rate r this is
    exactly the process at rate r: poisson stays poisson, constant arrivals are 1/r apart and
    gamma gaps keep their cv. A ramp gives a linearly rising or falling rate.
    """
    if limit is not None and limit <= 0:
        return
    rng = random.Random(f"{seed}:arrivals")
    gaps = unit_gaps(process, cv, rng)
    target = next(gaps)  # the next arrival, in units of Lambda
    done = 0
    lam = 0.0  # Lambda at the start of the current segment
    for start, length, r0, r1 in _segments(stages):
        area = length * (r0 + r1) / 2
        if area <= 0:
            continue
        while True:
            x = target - lam
            if x > area:
                break
            # Solve r0*tau + (r1 - r0)/(2*length)*tau^2 = x for tau in [0, length]; this form
            # stays accurate when the ramp is flat (a -> 0).
            a = (r1 - r0) / (2 * length)
            tau = 2 * x / (r0 + math.sqrt(max(r0 * r0 + 4 * a * x, 0.0)))
            yield start + min(tau, length)
            done += 1
            if limit is not None and done >= limit:
                return
            target += next(gaps)
        lam += area


def schedule(
    stages: Sequence[RateStage],
    process: Process = "poisson",
    cv: float = 1.0,
    seed: int | str = 0,
    limit: int | None = None,
) -> list[float]:
    """`arrival_times` as a list."""
    return list(arrival_times(stages, process, cv, seed, limit))


def total_duration(stages: Iterable[RateStage | UserStage]) -> float:
    return sum(s.duration for s in stages)


# -- closed loop ----------------------------------------------------------------------------
def users_at(stages: Sequence[UserStage], elapsed: float) -> tuple[int, int, float] | None:
    """(stage index, users, spawn rate) for a Locust shape at `elapsed` seconds, or None
    after the last stage.

    A stage with `ramp` moves from the previous stage's users to its own at
    |difference| / ramp users per second, so Locust adds (or stops) them linearly; without a
    ramp the whole difference is spawned at once, which is what a spike stage wants.
    """
    prev = 0
    for i, stage in enumerate(stages):
        if elapsed < stage.duration:
            delta = abs(stage.users - prev)
            rate = delta / stage.ramp if stage.ramp > 0 and delta else float(max(delta, 1))
            return i, stage.users, rate
        elapsed -= stage.duration
        prev = stage.users
    return None


# -- trace replay ---------------------------------------------------------------------------
def parse_trace(text: str) -> list[TraceEntry]:
    """JSON lines ``{"t": seconds, "prompt_tokens": n, "output_tokens": m}``, sorted by t.
    Blank lines and lines starting with ``#`` are skipped; a bad line raises ValueError
    naming its line number."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            row = json.loads(line)
            t = float(row["t"])
            prompt, output = row["prompt_tokens"], row["output_tokens"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"line {number}: expected {{\"t\": s, \"prompt_tokens\": n, "
                f"\"output_tokens\": m}} ({type(exc).__name__}: {exc})"
            ) from None
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (prompt, output))
        if not ints or prompt < 1 or output < 1:
            raise ValueError(f"line {number}: token counts must be positive integers")
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"line {number}: t must be a non-negative number of seconds")
        entries.append(TraceEntry(t, prompt, output))
    if not entries:
        raise ValueError("the trace holds no requests")
    entries.sort(key=lambda e: e.t)
    return entries


def replay_times(
    entries: Sequence[TraceEntry],
    time_scale: float = 1.0,
    duration: float | None = None,
    limit: int | None = None,
) -> list[tuple[float, TraceEntry]]:
    """(offset, entry) pairs: the trace's times relative to its first request, multiplied
    by `time_scale` (2.0 replays at half speed, 0.5 twice as fast), cut at `duration`
    seconds and `limit` requests."""
    if time_scale <= 0:
        raise ValueError("time_scale must be positive")
    if not entries:
        return []
    t0 = entries[0].t
    out = []
    for entry in entries:
        offset = (entry.t - t0) * time_scale
        if duration is not None and offset >= duration:
            break
        if limit is not None and len(out) >= limit:
            break
        out.append((offset, entry))
    return out
