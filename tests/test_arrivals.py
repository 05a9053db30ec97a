"""Arrival schedules and load shapes are pure, seeded functions: their statistics are what
the scenario asks for."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from servescope.loadgen.arrivals import (
    RateStage,
    TraceEntry,
    UserStage,
    parse_trace,
    replay_times,
    schedule,
    users_at,
)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def cv(values: list[float]) -> float:
    return statistics.pstdev(values) / statistics.fmean(values)


def test_poisson_arrivals_have_the_asked_rate_and_exponential_gaps():
    times = schedule([RateStage(rate=20, duration=1000)], "poisson", seed=1)
    assert len(times) == pytest.approx(20_000, rel=0.03)  # sd of the count: ~141
    assert statistics.fmean(gaps(times)) == pytest.approx(1 / 20, rel=0.03)
    assert cv(gaps(times)) == pytest.approx(1.0, abs=0.05)  # exponential: cv 1
    assert all(0 <= t <= 1000 for t in times) and times == sorted(times)


@pytest.mark.parametrize("burstiness", [0.5, 2.0, 3.0])
def test_gamma_arrivals_keep_the_rate_with_the_asked_cv(burstiness):
    times = schedule([RateStage(rate=20, duration=2000)], "gamma", cv=burstiness, seed=2)
    assert len(times) == pytest.approx(40_000, rel=0.05)
    assert cv(gaps(times)) == pytest.approx(burstiness, rel=0.1)


def test_constant_arrivals_are_evenly_spaced():
    times = schedule([RateStage(rate=4, duration=3)], "constant")
    assert len(times) == 12
    assert gaps(times) == pytest.approx([0.25] * 11)
    assert times[0] == pytest.approx(0.25)


def test_rate_stages_and_pauses():
    stages = [RateStage(5, 10), RateStage(0, 10), RateStage(50, 4)]
    times = schedule(stages, "constant")
    assert sum(1 for t in times if t <= 10) == 50
    assert not [t for t in times if 10 < t < 20]  # a rate-0 stage is a pause
    assert sum(1 for t in times if t > 20) == 200
    assert gaps([t for t in times if t > 20]) == pytest.approx([0.02] * 199)


def test_a_ramp_raises_the_rate_linearly():
    # Rate 0 -> 10/s over 10 s: Lambda(t) = t^2 / 2, so arrival k lands at sqrt(2k).
    times = schedule([RateStage(10, 10, ramp=10)], "constant")
    assert len(times) == 50
    assert times == pytest.approx([math.sqrt(2 * k) for k in range(1, 51)])
    # ... and a ramp down mirrors it.
    down = schedule([RateStage(10, 5), RateStage(0, 10, ramp=10)], "constant")
    assert len(down) == 50 + 50


def test_schedules_are_reproducible_by_seed():
    stages = [RateStage(8, 30), RateStage(2, 30, ramp=5)]
    a = schedule(stages, "gamma", cv=2.0, seed=7)
    assert a == schedule(stages, "gamma", cv=2.0, seed=7)
    assert a != schedule(stages, "gamma", cv=2.0, seed=8)


def test_limit_bounds_the_count():
    assert len(schedule([RateStage(100, 3600)], "poisson", seed=1, limit=25)) == 25
    assert schedule([RateStage(100, 3600)], limit=0) == []


def test_bad_process_or_cv_is_refused():
    with pytest.raises(ValueError, match="unknown arrival process"):
        schedule([RateStage(1, 10)], "bursty")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cv > 0"):
        schedule([RateStage(1, 10)], "gamma", cv=0)


def test_closed_loop_stages_ramp_users_linearly_and_spike_at_once():
    stages = [UserStage(4, 60, ramp=20), UserStage(48, 20), UserStage(4, 30, ramp=11)]
    assert users_at(stages, 0) == (0, 4, pytest.approx(0.2))  # 4 users over 20 s
    assert users_at(stages, 65) == (1, 48, 44.0)  # the spike: all 44 more at once
    assert users_at(stages, 81) == (2, 4, pytest.approx(4.0))  # 44 fewer over 11 s
    assert users_at(stages, 110) is None


TRACE = """\
# a comment
{"t": 12.0, "prompt_tokens": 300, "output_tokens": 20}
{"t": 10.0, "prompt_tokens": 100, "output_tokens": 10}

{"t": 10.5, "prompt_tokens": 200, "output_tokens": 15}
"""


def test_trace_lines_are_parsed_and_sorted():
    entries = parse_trace(TRACE)
    assert [e.t for e in entries] == [10.0, 10.5, 12.0]
    assert entries[0] == TraceEntry(10.0, 100, 10)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"t": 1, "prompt_tokens": 5}\n', "line 1"),
        ('{"t": 1, "prompt_tokens": 5, "output_tokens": 2}\nnot json\n', "line 2"),
        ('{"t": 1, "prompt_tokens": 0, "output_tokens": 2}\n', "positive integers"),
        ('{"t": -1, "prompt_tokens": 5, "output_tokens": 2}\n', "non-negative"),
        ("# only a comment\n", "no requests"),
    ],
)
def test_bad_trace_lines_are_named(text, why):
    with pytest.raises(ValueError, match=why):
        parse_trace(text)


def test_trace_replay_scales_time_and_cuts():
    entries = parse_trace(TRACE)
    assert [t for t, _ in replay_times(entries)] == [0.0, 0.5, 2.0]
    assert [t for t, _ in replay_times(entries, time_scale=0.5)] == [0.0, 0.25, 1.0]
    assert [t for t, _ in replay_times(entries, time_scale=2.0)] == [0.0, 1.0, 4.0]
    assert len(replay_times(entries, duration=1.0)) == 2
    assert len(replay_times(entries, limit=1)) == 1
    with pytest.raises(ValueError, match="time_scale"):
        replay_times(entries, time_scale=0)
