"""The simulated scheduler's rules, each where it can visibly fail: the sequence cap, the
token budget that chunks a prefill, decodes before prefills, preemption and recompute when
the KV blocks run out, prefix-cache hits, the slot model's serialization, physics' floors,
and the lazy decode cohort giving exactly what stepping every sequence gives."""

from __future__ import annotations

import random

import pytest

from servescope.capacity import catalog, perf
from servescope.capacity.setup import PlanInput
from servescope.capacity.sim_engine import Engine
from servescope.capacity.sim_run import simulate_run
from servescope.capacity.sim_setup import sim_setup
from servescope.capacity.sim_summary import add_intervals, summarize_run
from servescope.capacity.sim_types import prefill_pairs
from servescope.capacity.simulator import SchedulerConfig, SimRequest, simulate
from servescope.capacity.steptime import LinearStepModel


class Flat:
    """Every step 10 ms plus 0.1 ms per prefill token: easy to reason about."""

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int,
                     pairs: int = 0) -> float:
        return 0.010 + 0.0001 * prefill_tokens


def run_all(eng: Engine, t: float = 0.0) -> list:
    steps = []
    while (res := eng.step(t)) is not None:
        steps.append(res)
        t = res.end_s
    return steps


def test_max_num_seqs_caps_running():
    eng = Engine(SchedulerConfig(max_num_seqs=3), Flat())
    for i in range(10):
        eng.add(SimRequest(f"r{i}", 0.0, 20, 5))
    steps = run_all(eng)
    assert steps[0].running == 3 and steps[0].waiting == 7
    assert max(s.running for s in steps) == 3
    assert len(eng.done) == 10


def test_token_budget_chunks_a_long_prefill():
    eng = Engine(SchedulerConfig(max_num_batched_tokens=256), Flat())
    eng.add(SimRequest("long", 0.0, 1000, 3))
    steps = run_all(eng)
    assert [s.prefill.get("long") for s in steps[:4]] == [256, 256, 256, 232]
    assert [bool(s.tokens) for s in steps[:4]] == [False, False, False, True]
    assert len(steps) == 6  # 4 prefill chunks, then 2 decodes
    (t,) = eng.done
    assert t.ttft_s == pytest.approx(4 * 0.010 + 0.0001 * 1000)


def test_decodes_are_scheduled_before_a_prefill():
    eng = Engine(SchedulerConfig(max_num_batched_tokens=100), Flat())
    eng.add(SimRequest("a", 0.0, 10, 50))
    t = eng.step(0.0).end_s  # a's prefill, first token
    eng.add(SimRequest("b", t, 500, 5))
    res = eng.step(t)
    assert "a" in res.tokens and res.decode_seqs == 1
    assert res.prefill == {"b": 99}  # what the decode left of the budget


def test_preemption_frees_the_newest_and_recomputes_it():
    # 6 blocks of 16 tokens: two requests of 40 prompt + 40 output cannot both finish
    eng = Engine(SchedulerConfig(kv_blocks=6, block_size=16), Flat())
    eng.add(SimRequest("old", 0.0, 40, 40))
    eng.add(SimRequest("new", 0.0, 40, 40))
    steps = run_all(eng)
    pre = [s for s in steps if s.preempted]
    assert pre and pre[0].preempted == ["new"]
    done = {t.id: t for t in eng.done}
    assert done["old"].preemptions == 0 and done["new"].preemptions >= 1
    assert done["new"].output_tokens == 40
    # recompute: after its preemption "new" prefills its prompt AND what it had generated
    again = next(s.prefill["new"] for s in steps[steps.index(pre[0]) + 1:]
                 if "new" in s.prefill)
    assert again > 40
    assert max(s.kv_blocks_used for s in steps) <= 6
    assert eng.kv_blocks_used == 0


def test_prefix_hits_shorten_the_prefill():
    def second_prefill(caching: bool) -> int:
        eng = Engine(SchedulerConfig(block_size=16, prefix_caching=caching), Flat())
        eng.add(SimRequest("a", 0.0, 100, 2, prefix_key="sys", prefix_tokens=70))
        run_all(eng)
        eng.add(SimRequest("b", 1.0, 120, 2, prefix_key="sys", prefix_tokens=70))
        return eng.step(1.0).prefill["b"]

    assert second_prefill(True) == 120 - 64  # 4 full blocks of the 70-token prefix
    assert second_prefill(False) == 120


def test_slots_serialize_at_one_slot():
    """Ollama / llama.cpp with one slot: throughput stays flat as users grow, and TTFT
    grows linearly with them (each waits for everyone ahead)."""
    cfg = SchedulerConfig(policy="slots", slots=1)
    tput, ttft = {}, {}
    for users in (1, 2, 4, 8):
        reqs = [SimRequest(f"r{i}", 0.0, 50, 20) for i in range(200)]
        run = simulate_run(reqs, cfg, Flat(), closed_loop_users=users)
        s = summarize_run(run)
        tput[users], ttft[users] = s["output_tokens_per_s"], s["ttft_ms"]["p50"]
    assert max(tput.values()) / min(tput.values()) < 1.02
    service = 1000 * (0.010 + 0.0001 * 50 + 19 * 0.010)  # one request alone, ms
    for users in (2, 4, 8):
        assert ttft[users] - ttft[1] == pytest.approx((users - 1) * service, rel=0.05)


def test_slots_batch_when_there_are_more():
    reqs = [SimRequest(f"r{i}", 0.0, 50, 20) for i in range(100)]
    one = summarize_run(simulate_run(reqs, SchedulerConfig(policy="slots", slots=1), Flat(),
                                     closed_loop_users=4))
    four = summarize_run(simulate_run(reqs, SchedulerConfig(policy="slots", slots=4), Flat(),
                                      closed_loop_users=4))
    assert four["output_tokens_per_s"] > 2.5 * one["output_tokens_per_s"]


def _h100_8b():
    return sim_setup(PlanInput(model=catalog.model("llama-3.1-8b"),
                               hardware=catalog.hardware("h100")))


def test_physics_decode_step_is_at_least_weights_over_bandwidth():
    ss = _h100_8b()
    s = ss.setup
    floor = perf.decode_bound(catalog.model("llama-3.1-8b").spec, s.fmt,
                              catalog.hardware("h100"), 1, 1, 1000, s.kv_bytes).seconds_per_step
    assert ss.physics.step_seconds(0, 1, 1000) >= floor
    assert ss.physics.step_seconds(0, 64, 64 * 1000) >= perf.decode_bound(
        catalog.model("llama-3.1-8b").spec, s.fmt, catalog.hardware("h100"), 1, 64, 1000,
        s.kv_bytes).seconds_per_step


def test_batching_raises_throughput_and_itl_together():
    ss = _h100_8b()
    rng = random.Random(0)
    reqs = [SimRequest(f"r{i}", 0.0, rng.randint(200, 800), rng.randint(100, 300))
            for i in range(600)]
    low = summarize_run(simulate_run(reqs, ss.config, ss.physics, closed_loop_users=1,
                                     duration_s=60))
    high = summarize_run(simulate_run(reqs, ss.config, ss.physics, closed_loop_users=128,
                                      duration_s=60))
    assert high["output_tokens_per_s"] > 10 * low["output_tokens_per_s"]
    assert high["itl_ms"]["p50"] > low["itl_ms"]["p50"]


def test_the_lazy_cohort_matches_stepping_every_sequence(monkeypatch):
    """The fast path (decoding sequences advanced as one cohort) gives the same timings as
    the full path, preemptions and prefix hits included."""
    rng = random.Random(5)
    reqs = [SimRequest(f"r{i}", i * 0.02, rng.randint(10, 400), rng.randint(1, 120),
                       "p" if i % 3 == 0 else None, 32) for i in range(400)]
    cfg = SchedulerConfig(max_num_seqs=24, max_num_batched_tokens=512, kv_blocks=300,
                          block_size=16)
    step = LinearStepModel(0.004, 2e-5, 3e-4, 5e-8)
    fast = simulate_run(reqs, cfg, step)
    monkeypatch.setattr(Engine, "_fast_ok", lambda self, budget: None)
    monkeypatch.setattr(Engine, "advance_decode", lambda self, now, until, n=None: (now, 0))
    slow = simulate_run(reqs, cfg, step)
    assert fast.preemptions == slow.preemptions > 0
    key = [(t.id, t.ttft_s, t.e2e_s, t.queue_s, t.preemptions, t.cached_tokens, t.itl_max_s)
           for t in fast.requests]
    assert key == [(t.id, t.ttft_s, t.e2e_s, t.queue_s, t.preemptions, t.cached_tokens,
                    t.itl_max_s) for t in slow.requests]
    assert sorted(fast.itl.other) == sorted(slow.itl.other)
    assert fast.itl.count() == slow.itl.count() == sum(t.output_tokens - 1
                                                       for t in fast.requests)


def _signature(run):
    return ([(t.id, t.ttft_s, t.e2e_s, t.queue_s, t.preemptions, t.cached_tokens, t.itl_max_s)
             for t in run.requests], run.itl.steps, run.itl.other, run.steps, run.busy_s,
            run.end_s, run.unfinished)


@pytest.mark.parametrize("users", [None, 1, 3, 40])
def test_advancing_many_decode_steps_at_once_changes_nothing(monkeypatch, users):
    """advance_decode (pure-decode steps in one loop) gives bit-identical runs to one
    step() call per step: noisy step times (same random draws), open and closed loop,
    the KV limit reached, and a max_steps cut inside a stretch."""
    rng = random.Random(9)
    reqs = [SimRequest(f"r{i}", i * 0.05, rng.randint(10, 300), rng.randint(1, 150),
                       "p" if i % 4 == 0 else None, 32) for i in range(150)]
    cfg = SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=256, kv_blocks=160,
                          block_size=16)
    step = LinearStepModel(0.004, 2e-5, 3e-4, 5e-8, ratios=[0.8, 0.95, 1.0, 1.1, 1.6])
    kw = dict(closed_loop_users=users, duration_s=20.0 if users else None, seed=3)
    fast = simulate_run(reqs, cfg, step, **kw)
    cut = simulate_run(reqs, cfg, step, max_steps=777, **kw)
    monkeypatch.setattr(Engine, "advance_decode", lambda self, now, until, n=None: (now, 0))
    slow = simulate_run(reqs, cfg, step, **kw)
    slow_cut = simulate_run(reqs, cfg, step, max_steps=777, **kw)
    assert _signature(fast) == _signature(slow)
    assert _signature(cut) == _signature(slow_cut) and cut.steps == 777


def test_open_loop_at_low_rate_does_not_queue():
    reqs = [SimRequest(f"r{i}", i * 1.0, 50, 10) for i in range(20)]
    done = simulate(reqs, SchedulerConfig(), Flat())
    assert len(done) == 20
    assert all(t.queue_s == 0 for t in done)
    assert all(t.ttft_s == pytest.approx(0.010 + 0.005) for t in done)


def test_overhead_and_tail_count_in_ttft_and_e2e():
    reqs = [SimRequest("a", 0.0, 50, 10)]
    (plain,) = simulate(reqs, SchedulerConfig(), Flat())
    (more,) = simulate(reqs, SchedulerConfig(), Flat(), overhead_s=0.02, tail_s=0.003)
    assert more.ttft_s == pytest.approx(plain.ttft_s + 0.02)
    assert more.e2e_s == pytest.approx(plain.e2e_s + 0.023)
    assert more.queue_s == plain.queue_s == 0


def test_summary_has_the_load_shape_and_intervals_hold_the_point():
    reqs = [SimRequest(f"r{i}", 0.0, 50, 10) for i in range(50)]
    runs = [summarize_run(simulate_run(reqs, SchedulerConfig(), LinearStepModel(
        0.01 * (1 + k / 10), 0, 0.001, 0), closed_loop_users=4), {"ttft_ms": {"p95": 50}})
        for k in range(5)]
    s = add_intervals(runs[0], runs[1:], 0.05)
    for key in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
        assert {"p50", "p90", "p99", "mean", "count"} <= set(s[key])
    assert s["simulated"] is True and s["goodput"]["ratio"] is not None
    for k, (lo, hi) in ((k, v) for k, v in s["interval90"].items() if v):
        point = {"output_tokens_per_s": s["output_tokens_per_s"]}.get(k)
        if point is not None:
            assert lo <= point <= hi
    assert s["itl_ms"]["count"] == 50 * 9


def test_a_request_larger_than_the_kv_cache_is_refused():
    eng = Engine(SchedulerConfig(kv_blocks=2, block_size=16), Flat())
    eng.add(SimRequest("big", 0.0, 100, 5))
    with pytest.raises(RuntimeError, match="does not fit"):
        eng.step(0.0)


def test_slots_hold_no_blocks_and_vllm_gives_them_all_back():
    reqs = [SimRequest(f"r{i}", 0.0, 60, 30, "p", 32) for i in range(40)]
    for cfg in (SchedulerConfig(policy="slots", slots=2),
                SchedulerConfig(kv_blocks=64, block_size=16, max_num_seqs=6)):
        eng = Engine(cfg, Flat())
        for r in reqs:
            eng.add(r)
        used = [s.kv_blocks_used for s in run_all(eng)]
        assert min(used) >= 0 and len(eng.done) == 40
        assert eng.kv_blocks_used == (0 if cfg.policy == "slots" else 2)  # the cached prefix


def test_an_interval_never_goes_below_zero():
    """A model error above 100 % (a replayed tail that far off) widens the interval down to
    0, not past it: latencies and rates are never negative."""
    point = {"ttft_ms": {"p99": 200.0}}
    reps = [{"ttft_ms": {"p99": v}} for v in (150.0, 250.0, 300.0)]
    add_intervals(point, reps, {"ttft_ms.p99": 1.4})
    lo, hi = point["interval90"]["ttft_ms.p99"]
    assert lo == 0.0 and hi > 300.0


@pytest.mark.parametrize("closed", [False, True])
def test_a_request_without_tokens_is_refused_by_name(closed):
    reqs = [SimRequest("ok", 0.0, 50, 10), SimRequest("empty", 0.0, 50, 0)]
    kw = {"closed_loop_users": 1} if closed else {}
    with pytest.raises(ValueError, match="request empty: prompt_tokens and output_tokens"):
        simulate_run(reqs, SchedulerConfig(), Flat(), **kw)


def test_a_closed_loop_user_sends_the_next_request_the_moment_one_finishes():
    # Flat steps of 10 ms and prompts that fit one step: with no think time, every
    # request arrives exactly when its user's previous one ended (not a rounding later),
    # and is admitted in the very next step: no queue
    reqs = [SimRequest(f"r{i}", 0.0, 50, 3 + i % 4) for i in range(40)]
    run = simulate_run(reqs, SchedulerConfig(), Flat(), closed_loop_users=3)
    assert len(run.requests) == 40 and run.unfinished == 0
    ends = sorted(r.arrival_s + r.e2e_s for r in run.requests)
    arrivals = sorted(r.arrival_s for r in run.requests)[3:]  # the first 3 at 0
    assert all(any(abs(a - e) < 1e-12 for e in ends) for a in arrivals)
    assert all(r.queue_s == 0 for r in run.requests)


def test_a_ramp_spreads_the_users_first_sends_and_breaks_their_lockstep():
    # Four users of equal lengths: started together, each step admits all four and they
    # finish together forever; joined over 40 ms (a load generator's ramp), they arrive 10 ms
    # apart, and most stay apart (a prompt admitted in a longer step can catch another up)
    reqs = [SimRequest(f"r{i}", 0.0, 50, 5) for i in range(40)]
    together = simulate_run(reqs, SchedulerConfig(), Flat(), closed_loop_users=4)
    ramped = simulate_run(reqs, SchedulerConfig(), Flat(), closed_loop_users=4, ramp_s=0.04)
    assert sorted(r.arrival_s for r in ramped.requests)[:4] == pytest.approx(
        [0.0, 0.01, 0.02, 0.03])
    assert len({round(r.arrival_s, 9) for r in together.requests}) == 10  # 10 rounds of 4
    assert len({round(r.arrival_s, 9) for r in ramped.requests}) > 25
    assert len(ramped.requests) == 40 and ramped.unfinished == 0


class PairRecorder:
    """A flat step that records the prefill attention pairs each step reports."""

    def __init__(self) -> None:
        self.pairs: list[int] = []

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int,
                     pairs: int = 0) -> float:
        self.pairs.append(pairs)
        return 0.01


def test_each_prefill_chunk_attends_over_what_came_before_it():
    """A 100-token prompt in chunks of 64 and 36: the first chunk's tokens attend to each
    other, the second's to the first chunk too; decode steps report none. Together: the
    whole prompt's pairs, 100 x 101 / 2."""
    rec = PairRecorder()
    eng = Engine(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64), rec)
    eng.add(SimRequest("r", 0.0, 100, 3))
    t = 0.0
    while (res := eng.step(t)) is not None:
        t = res.end_s
    assert rec.pairs == [64 * 65 // 2, 36 * 64 + 36 * 37 // 2, 0, 0]
    assert sum(rec.pairs) == prefill_pairs(100, 0) == 5050


def test_physics_prefill_grows_faster_than_its_tokens():
    """Attention's FLOPs in prefill grow with the square of the prompt: a 32k-token
    prompt takes more than twice a 16k one on the roofline."""
    ph = _h100_8b().physics

    def prefill(n: int) -> float:
        return ph.step_seconds(n, 0, n, prefill_pairs(n, 0)) - ph.overhead_s

    assert prefill(32768) > 2.2 * prefill(16384)
    assert ph.step_seconds(512, 0, 512) < ph.step_seconds(512, 0, 512, prefill_pairs(512, 0))
