"""The calibration: a server whose step time is known (the simulator itself, run with a
known linear step model) is "measured" the way servescope measures a real one (token
arrival stamps per request, the span's queue and prefill), and the fit must recover the
coefficients, the overhead outside the steps, and predict what it was fitted on."""

from __future__ import annotations

import random

import pytest

from servescope.capacity.sim_calibrate import (
    Calibration,
    Observed,
    _time_blocks,
    all_rows,
    bootstrap,
    calibrate,
    run_speed,
    speed_drift,
    step_rows,
    warnings_for,
)
from servescope.capacity.sim_engine import Engine
from servescope.capacity.simulator import SchedulerConfig, SimRequest
from servescope.capacity.steptime import LinearStepModel, fit_linear, nnls

TRUE = LinearStepModel(0.004, 20e-6, 300e-6, 50e-9)


def measure(users: int, n: int, seed: int, overhead: float = 0.0,
            model: LinearStepModel = TRUE) -> list[Observed]:
    """Closed loop on the simulator, stamped like a client: each token's arrival, the
    request's send `overhead` seconds before the engine sees it."""
    rng = random.Random(seed)
    reqs = [SimRequest(f"r{i}", 0.0, rng.randint(20, 300), rng.randint(10, 80))
            for i in range(n)]
    eng = Engine(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=512), model)
    sent: dict[str, float] = {}
    tokens: dict[str, list[float]] = {}
    first_sched: dict[str, float] = {}
    by_id = {r.id: r for r in reqs}
    queue = list(reqs)
    pending: list[tuple[float, SimRequest]] = []
    t = 0.0
    for _ in range(users):
        r = queue.pop(0)
        sent[r.id] = t
        pending.append((t + overhead, r))
    out: list[Observed] = []
    while pending or not eng.idle():
        for at, r in [p for p in pending if p[0] <= t]:
            pending.remove((at, r))
            eng.add(SimRequest(r.id, at, r.prompt_tokens, r.output_tokens))
        if eng.idle():
            t = min(p[0] for p in pending)
            continue
        res = eng.step(t)
        for rid in res.prefill:
            first_sched.setdefault(rid, t)
        for rid in res.tokens:
            tokens.setdefault(rid, []).append(res.end_s)
        t = res.end_s
        for rid in res.finished:
            r = by_id[rid]
            ts = tokens[rid]
            out.append(Observed(sent[rid], ts, ts[-1], r.prompt_tokens, r.output_tokens,
                                first_sched[rid] - sent[rid] - overhead,
                                ts[0] - first_sched[rid]))
            if queue:
                nxt = queue.pop(0)
                sent[nxt.id] = t
                pending.append((t + overhead, nxt))
    return out


def test_nnls_recovers_nonnegative_coefficients_and_clamps_a_negative_one():
    import numpy as np

    rng = np.random.default_rng(0)
    x = np.column_stack([np.ones(200), rng.uniform(0, 100, 200), rng.uniform(0, 10, 200)])
    y = x @ np.array([2.0, 0.5, 0.0]) - 0.01 * x[:, 2]  # the last wants to be negative
    coef = nnls(x, y)
    assert (coef >= 0).all()
    assert coef[1] == pytest.approx(0.5, rel=0.01)


def test_fit_linear_recovers_known_steps():
    rng = random.Random(1)
    rows = [(rng.randint(0, 2000), rng.randint(0, 64), rng.randint(0, 50_000)) for _ in range(300)]
    secs = [TRUE.step_seconds(*r) * rng.uniform(0.98, 1.02) for r in rows]
    m = fit_linear(rows, secs)
    assert m.a_s == pytest.approx(TRUE.a_s, rel=0.1)
    assert m.prefill_s_per_token == pytest.approx(TRUE.prefill_s_per_token, rel=0.05)
    assert m.decode_s_per_seq == pytest.approx(TRUE.decode_s_per_seq, rel=0.05)
    assert m.kv_s_per_token == pytest.approx(TRUE.kv_s_per_token, rel=0.15)
    assert min(m.ratios) > 0.97 and max(m.ratios) < 1.03  # the noise it saw


def test_calibration_recovers_the_step_model_from_request_stamps():
    runs = [measure(c, 60, seed=c, overhead=0.012) for c in (1, 2, 4, 8)]
    cal = calibrate(runs)
    s = cal.step
    assert s.a_s == pytest.approx(TRUE.a_s, rel=0.1)
    assert s.prefill_s_per_token == pytest.approx(TRUE.prefill_s_per_token, rel=0.1)
    assert s.decode_s_per_seq == pytest.approx(TRUE.decode_s_per_seq, rel=0.15)
    assert cal.ttft_overhead_s == pytest.approx(0.012, abs=0.002)
    assert cal.spans_used == sum(len(r) for r in runs)
    lo, hi = cal.context_range  # prompts 20-300 and outputs 10-80 decode at these contexts
    assert 20 < lo < hi < 380
    assert Calibration.from_dict(cal.to_dict()).context_range == cal.context_range


def test_decode_rows_see_the_batch_they_ran_in():
    obs = measure(4, 30, seed=3)
    x, y = step_rows(obs)
    decode = x[:, 4] == 0
    assert x[decode, 2].max() == 4  # never more decoding than the users
    # each decode gap is one step of the true model, given the reconstructed state
    pred = x[decode, 0] * TRUE.a_s + x[decode, 1] * TRUE.prefill_s_per_token \
        + x[decode, 2] * TRUE.decode_s_per_seq + x[decode, 3] * TRUE.kv_s_per_token
    close = abs(pred - y[decode]) / y[decode] < 0.05
    assert close.mean() > 0.9


def test_bootstrap_refits_spread_around_the_fit():
    runs = [measure(c, 40, seed=10 + c) for c in (1, 4)]
    boots = bootstrap(runs, n=8)
    assert len(boots) == 8
    decs = [b["decode_s_per_seq"] for b in boots]
    assert min(decs) <= TRUE.decode_s_per_seq * 1.2 and max(decs) >= TRUE.decode_s_per_seq * 0.8


class Drifting:
    """TRUE, but the server slows by 30 % after `switch` steps (a neighbour's job starts)."""

    def __init__(self, switch: int) -> None:
        self.n, self.switch = 0, switch

    def step_seconds(self, prefill: int, decodes: int, kv: int, pairs: int = 0) -> float:
        self.n += 1
        return TRUE.step_seconds(prefill, decodes, kv, pairs) * (
            1.3 if self.n > self.switch else 1.0)


def test_speed_drift_sees_a_server_that_slows_inside_a_run():
    import numpy as np

    steady = [measure(c, 60, seed=20 + c) for c in (1, 2, 4)]
    coef = np.array([TRUE.a_s, TRUE.prefill_s_per_token, TRUE.decode_s_per_seq,
                     TRUE.kv_s_per_token, 0.0])
    assert speed_drift(steady, coef) < 0.02  # same speed throughout: no drift
    drifting = [measure(c, 60, seed=20 + c, model=Drifting(800)) for c in (1, 2, 4)]
    assert 0.08 < speed_drift(drifting, coef) < 0.25  # half the windows 30 % slower
    # the calibration's run-to-run spread takes the drift in (intervals widen with it)
    assert calibrate(drifting).run_sd >= speed_drift(drifting, coef) * 0.5


def test_the_bootstrap_resamples_blocks_of_time_not_single_steps():
    """Every measured step in exactly one block; a block spans about one request's life,
    so the refits see the steps' correlation (the bootstrap resamples these blocks)."""
    import numpy as np

    from servescope.capacity.sim_calibrate import step_rows_timed

    runs = [measure(c, 40, seed=30 + c) for c in (1, 4)]
    _, y = all_rows(runs)
    blocks = _time_blocks(runs)
    idx = np.sort(np.concatenate(blocks))
    assert (idx == np.arange(len(y))).all()
    assert 8 <= len(blocks) < len(y) / 10  # far fewer blocks than steps
    _, _, t = step_rows_timed(runs[0])
    life = float(np.median([o.end_s - o.send_s for o in runs[0]]))
    first = [b for b in blocks if b.max() < len(t)]
    assert all(np.ptp(t[b]) <= life for b in first)


class Concave:
    """A server whose step grows with the square root of the batch (a frontend that
    batches its work, say): a line fitted at 1-2 users over-predicts 4."""

    def step_seconds(self, prefill: int, decodes: int, kv: int, pairs: int = 0) -> float:
        return 0.004 + 20e-6 * prefill + 900e-6 * decodes ** 0.5


def _profile_from(model, levels=(1, 2, 4), models=None) -> dict:
    """build_profile on runs "measured" on `model` (or on models[i] for run i)."""
    from types import SimpleNamespace

    from servescope.capacity.sim_profile import Workload, run_summary
    from servescope.commands.simulate_calibrate import build_profile

    models = models or [model] * len(levels)
    runs = [measure(c, 60, seed=40 + c + 100 * levels[:i].count(c), model=m)
            for i, (c, m) in enumerate(zip(levels, models, strict=True))]
    config = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=512)
    summaries = []
    for c, obs, m in zip(levels, runs, models, strict=True):  # each run's "measured" summary
        reqs = [SimRequest(f"m{i}", 0.0, o.prompt_tokens, o.output_tokens)
                for i, o in enumerate(sorted(obs, key=lambda o: o.send_s))]
        span = max(o.end_s for o in obs) - min(o.send_s for o in obs)
        summaries.append(run_summary(Workload(reqs, c, span), config, m))
    scenario = SimpleNamespace(slos=SimpleNamespace(model_dump=dict))
    return build_profile(list(levels), runs, summaries,
                         {"max_num_seqs": 8, "max_num_batched_tokens": 512},
                         {"levels": list(levels)}, scenario)


def test_the_profile_measures_its_error_past_the_levels_it_was_fitted_on():
    """Fitted without the highest level, the profile predicts it: on a linear server that
    costs almost nothing; on a concave one the error is real, and it widens the intervals
    of predictions past the calibrated levels, per doubling of the users."""
    from servescope.capacity.sim_profile import Profile

    linear = _profile_from(TRUE)["extrapolation_error"]
    concave = Profile.from_dict(_profile_from(Concave()))
    itl = "itl_ms.p50"
    assert linear[itl] < 0.01  # the simulator measuring itself: exact
    # the line through 1 and 2 users puts 4 users' step 0.2 ms (about 4 %) too long
    assert 0.02 < concave.extrapolation_error[itl] < 0.1
    within, past = concave.error_for(4), concave.error_for(16)
    assert within[itl] == concave.model_error[itl]  # inside the calibrated levels: no more
    assert past[itl] == pytest.approx(concave.model_error[itl]
                                      + 2 * concave.extrapolation_error[itl])
    assert concave.error_for(None)[itl] == concave.model_error[itl]  # open loop



def test_the_machines_swings_reach_the_intervals_once():
    """Runs at different speeds (a shared machine, by the minute): each calibration run is
    replayed at its own speed (its mean step against the fit), so the model error holds
    what the model misses (little, on a linear server) and the swings go into the
    intervals as the runs' spread, drawn as a new run's speed is predicted from a few
    (Student's t: wider tails than a normal)."""
    import statistics

    from servescope.capacity.sim_calibrate import run_order
    from servescope.capacity.sim_profile import Profile, speed_draw

    factors = [1.0, 1.25, 0.85, 1.15, 0.8, 1.05]  # not by level: 1, 2, 4, 4, 2, 1
    order = run_order([1, 2, 4])
    profile = Profile.from_dict(_profile_from(
        None, tuple(order), [TRUE.scaled(f) for f in factors]))
    cal = profile.calibration
    # each run's speed against the one line follows the machine's (relative to their mean)
    mean = statistics.mean(factors)
    for got, f in zip(cal.run_speeds, factors, strict=True):
        assert got == pytest.approx(f / mean, rel=0.05)
    assert cal.run_sd == pytest.approx(statistics.stdev(factors) / mean, rel=0.25)
    # replayed at their own speeds, the runs are predicted within a few percent (at the
    # mean speed, a run 25% slow would have put 20-25% into every interval a second time)
    assert profile.model_error["itl_ms.p50"] < 0.05
    assert profile.model_error["output_tokens_per_s"] < 0.05
    # six runs: the draws' 5-95 % range is wider than a normal's 3.29 sd
    draws = sorted(speed_draw(f"s{i}", 6) for i in range(4000))
    assert 3.6 < draws[3799] - draws[199] < 5.2
    normal = sorted(speed_draw(f"s{i}", 2) for i in range(4000))
    assert normal[3799] - normal[199] == pytest.approx(3.29, rel=0.08)


def test_a_later_runs_speed_counts_the_steps_noise_once():
    """A server with stalls (one step in five takes 1.9x: its noise averages 1.18x the
    line) is calibrated, then measured again 30% faster. The later run's speed reads 0.7
    against the calibration, and the calibrated model scaled by it takes that run's mean
    step: its noise is drawn once, not also inside the speed (which would read 0.82)."""
    import statistics

    import numpy as np

    stalls = LinearStepModel(TRUE.a_s, TRUE.prefill_s_per_token, TRUE.decode_s_per_seq,
                             TRUE.kv_s_per_token, [0.96] * 4 + [1.9])
    runs = [measure(users, 60, seed, model=stalls) for seed, users in enumerate((1, 2, 4, 4))]
    cal = calibrate(runs)
    assert statistics.mean(cal.run_speeds) == pytest.approx(1.0, abs=0.04)
    later = measure(4, 60, 9, model=stalls.scaled(0.7))
    speed = run_speed(later, cal.step)
    assert speed == pytest.approx(0.7, rel=0.05)
    x, y = step_rows(later)
    dec = x[:, 4] == 0
    scaled = cal.step.scaled(speed)
    model_mean = np.mean([scaled.step_seconds(p, d, k) for _, p, d, k, _ in x[dec]])
    noise = statistics.mean(cal.step.ratios)
    assert model_mean * noise == pytest.approx(float(np.mean(y[dec])), rel=0.05)
    assert run_speed(later[:1], cal.step) is None  # too few steps to tell


class Slowing:
    """TRUE, but the server runs 1.6x slower after `switch` steps."""

    def __init__(self, switch: int) -> None:
        self.n, self.switch = 0, switch

    def step_seconds(self, prefill: int, decodes: int, kv: int, pairs: int = 0) -> float:
        self.n += 1
        return TRUE.step_seconds(prefill, decodes, kv) * (1.6 if self.n > self.switch else 1.0)


def test_calibrate_warns_of_a_server_whose_speed_wandered_and_of_a_flat_fit():
    steady = calibrate([measure(c, 60, seed=30 + c) for c in (1, 2, 4)])
    assert warnings_for(steady) == []
    slowing = calibrate([measure(c, 60, seed=30 + c, model=Slowing(800)) for c in (1, 2, 4)])
    (w,) = [w for w in warnings_for(slowing) if "speed varied" in w]
    assert f"{slowing.run_sd:.0%}" in w
    flat = Calibration(LinearStepModel(0.006, 1e-4, 0.0, 0.0), 0.01, 0.0, 100, 0)
    assert any("no cost per decoding sequence" in w for w in warnings_for(flat))


def test_prefill_pairs_priced_from_the_architecture_carry_to_long_prompts():
    """A server whose prefill attention costs per (query, key) pair, calibrated on short
    prompts: given a pair's price in prompt tokens (as `calibrate` takes it from the
    architecture), the fit recovers the per-token cost and predicts a long prompt's
    prefill; without it the long prompt comes out far too fast."""
    from servescope.capacity.sim_types import prefill_pairs

    true = LinearStepModel(0.004, 20e-6, 300e-6, 50e-9, pair_tokens=0.002)
    runs = [measure(u, 80, seed=u, model=true) for u in (1, 2, 4)]
    priced = calibrate(runs, pair_tokens=0.002)
    left_out = calibrate(runs)
    assert priced.step.pair_tokens == 0.002
    assert priced.step.prefill_s_per_token == pytest.approx(20e-6, rel=0.05)
    long = 2000
    pairs = prefill_pairs(long, 0)
    truth = true.step_seconds(long, 0, long, pairs)
    assert priced.step.step_seconds(long, 0, long, pairs) == pytest.approx(truth, rel=0.05)
    assert left_out.step.step_seconds(long, 0, long, pairs) < 0.7 * truth
    # the profile keeps the price
    again = Calibration.from_dict(priced.to_dict())
    assert again.step.pair_tokens == 0.002


class SlowingSteadily:
    """TRUE, slowing steadily: each step 0.005 % slower than the one before (a quarter
    slower by the end of the calibration)."""

    def __init__(self) -> None:
        self.n = 0

    def step_seconds(self, prefill: int, decodes: int, kv: int, pairs: int = 0) -> float:
        self.n += 1
        return TRUE.step_seconds(prefill, decodes, kv) * (1 + 5e-5 * self.n)


def test_the_mirrored_run_order_keeps_a_steady_drift_out_of_the_per_sequence_cost():
    """On a server that slows steadily, one pass up (1, 2, 4) puts the slowest minutes on
    the most sequences and tilts the line: 8 sequences come out far slower, relative to
    the truth, than one. The mirrored order (1, 2, 4, 4, 2, 1: half the requests each)
    gives every level the same mean time: the fit is slow by the drift's mean, alike at
    every batch size."""
    from servescope.capacity.sim_calibrate import run_order

    assert run_order([1, 2, 4]) == [1, 2, 4, 4, 2, 1]

    def tilt(cal: Calibration) -> float:  # the fit against the truth, 8 sequences over 1
        def rel(n: int) -> float:
            return cal.step.step_seconds(0, n, n * 150) / TRUE.step_seconds(0, n, n * 150)
        return rel(8) / rel(1)

    server = SlowingSteadily()
    once = calibrate([measure(c, 60, seed=50 + c, model=server) for c in (1, 2, 4)])
    server = SlowingSteadily()
    mirrored = calibrate([measure(c, 30, seed=50 + i, model=server)
                          for i, c in enumerate(run_order([1, 2, 4]))])
    assert tilt(once) > 1.15
    assert tilt(mirrored) == pytest.approx(1.0, abs=0.03)


def test_tokens_read_together_are_spread_over_the_gap_before_them():
    """Two SSE events in one read share a stamp: the steps that made them ran during the
    gap before, so the calibration spreads them over it; ties at the first token (nothing
    before them in the request) are left out, never read as zero-second steps."""
    import dataclasses

    from servescope.capacity.sim_calibrate import _decode_gaps, _spread

    assert _spread([0.0, 1.0, 3.0, 3.0, 3.0, 4.0]) == pytest.approx(
        [0.0, 1.0, 5 / 3, 7 / 3, 3.0, 4.0])
    assert _spread([5.0, 5.0, 6.0]) == [5.0, 5.0, 6.0]
    first_tied = Observed(0.0, [5.0, 5.0, 6.0], 6.0, 10, 3)
    t1, t2 = _decode_gaps([first_tied])
    assert list(t1) == [5.0] and list(t2) == [6.0]

    # a run whose client read every third token together with the one after it
    runs = [measure(c, 60, seed=60 + c) for c in (1, 2, 4)]

    def coalesced(o: Observed) -> Observed:
        t = list(o.token_s)
        for i in range(1, len(t) - 1, 3):
            t[i] = t[i + 1]
        return dataclasses.replace(o, token_s=t)

    clean = calibrate(runs)
    read_together = calibrate([[coalesced(o) for o in run] for run in runs])
    assert min(read_together.step.ratios) > 0.3  # no zero-second steps
    for term in ("a_s", "decode_s_per_seq"):
        assert getattr(read_together.step, term) == pytest.approx(getattr(clean.step, term),
                                                                  rel=0.1)
