"""The simulator's fast paths change nothing: a run through `Engine.advance_decode` (pure
decode steps and the common admit / finish steps in one loop) equals, bit for bit, the same
run stepped one `Engine.step(detail=True)` at a time, and (bar the order of the irregular
gaps) the run with no decode cohort at all. Configurations where each rule matters: small
KV caches (preemption, prefix eviction), chunked prefill, the slots policy, open and closed
loop, overheads and think time, a max_steps cut, noisy step times (one random draw a step)."""

from __future__ import annotations

import random

import pytest

from servescope.capacity.sim_engine import Engine
from servescope.capacity.sim_run import simulate_run
from servescope.capacity.simulator import SchedulerConfig, SimRequest
from servescope.capacity.steptime import LinearStepModel

NOISY = LinearStepModel(0.004, 2e-5, 3e-4, 5e-8, ratios=[0.8, 0.95, 1.0, 1.1, 1.6])
PLAIN = LinearStepModel(0.004, 2e-5, 3e-4, 5e-8)


class Exact:
    """A step model without sample_seconds (as physics): no random draws."""

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int,
                     pairs: int = 0) -> float:
        return (0.003 + 3e-5 * prefill_tokens + 2e-4 * decode_seqs + 1e-7 * kv_tokens
                + 1e-9 * pairs)


def _requests(n: int = 240, seed: int = 9, one_token: bool = False,
              prefix_in_prompt: bool = False) -> list[SimRequest]:
    """Shared prefixes ("p", "q0".."q6"), some longer than the prompt unless
    `prefix_in_prompt`; with `one_token` every fifth request wants one output token."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        key = "p" if i % 4 == 0 else (f"q{i % 7}" if i % 3 == 0 else None)
        prompt = rng.randint(10, 300)
        prefix = rng.choice([0, 20, 32, 70])
        out.append(SimRequest(f"r{i}", i * 0.05, prompt,
                              1 if one_token and i % 5 == 0 else rng.randint(1, 150), key,
                              min(prefix, prompt - 1) if prefix_in_prompt else prefix))
    return out


CASES = {
    "vllm small kv, open loop": (
        SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=256, kv_blocks=160,
                        block_size=16), NOISY, dict(seed=3)),
    "vllm small kv, closed loop": (
        SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=256, kv_blocks=160,
                        block_size=16), NOISY, dict(closed_loop_users=40, duration_s=20.0,
                                                    seed=3)),
    "chunked prefill, overheads": (
        SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=96, kv_blocks=5000,
                        block_size=16), NOISY,
        dict(closed_loop_users=12, duration_s=20.0, seed=5, overhead_s=0.01, tail_s=0.002,
             think_s=0.1)),
    "slots": (SchedulerConfig(policy="slots", slots=4, max_num_batched_tokens=64), NOISY,
              dict(closed_loop_users=6, duration_s=20.0, seed=1)),
    "max_steps cut": (
        SchedulerConfig(max_num_seqs=24, max_num_batched_tokens=512, kv_blocks=300,
                        block_size=16), PLAIN, dict(max_steps=1377)),
    "closed loop cut inside a finish": (
        SchedulerConfig(max_num_seqs=24, max_num_batched_tokens=512, kv_blocks=300,
                        block_size=16), NOISY, dict(closed_loop_users=30, duration_s=30.0,
                                                    max_steps=1501, seed=2)),
    "max_requests, block size 8": (
        SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=2048, kv_blocks=120,
                        block_size=8), NOISY, dict(closed_loop_users=20, duration_s=60.0,
                                                   max_requests=300, seed=7)),
    "no prefix caching, many users": (
        SchedulerConfig(max_num_seqs=32, max_num_batched_tokens=200, kv_blocks=200,
                        block_size=16, prefix_caching=False), NOISY,
        dict(closed_loop_users=50, duration_s=15.0, seed=2)),
    "no noise model, small kv": (
        SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=256, kv_blocks=160,
                        block_size=16), Exact(), dict(closed_loop_users=24, duration_s=20.0)),
    "roomy cache, big budget": (
        SchedulerConfig(max_num_seqs=128, max_num_batched_tokens=8192), PLAIN,
        dict(closed_loop_users=100, duration_s=15.0)),
}


def _step_by_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step through Engine.step, with its full result (no fast loop)."""
    monkeypatch.setattr(Engine, "advance_decode", lambda self, now, until, n=None: (now, 0))
    plain_step = Engine.step
    monkeypatch.setattr(Engine, "step", lambda self, now, detail=True: plain_step(self, now))


def _signature(run) -> tuple:
    return (run.requests, run.itl.steps, run.itl.other, run.steps, run.preemptions,
            run.busy_s, run.start_s, run.end_s, run.unfinished)


@pytest.mark.parametrize("name", list(CASES))
def test_fast_paths_equal_stepping_one_step_at_a_time(monkeypatch, name):
    cfg, model, kw = CASES[name]
    reqs = _requests(one_token=name.startswith("vllm small kv"))
    fast = simulate_run(reqs, cfg, model, **kw)
    assert fast.requests
    with monkeypatch.context() as m:
        _step_by_step(m)
        slow = simulate_run(reqs, cfg, model, **kw)
    assert _signature(fast) == _signature(slow)
    if "small kv" in name:
        assert fast.preemptions > 0


@pytest.mark.parametrize("name", ["vllm small kv, open loop", "chunked prefill, overheads",
                                  "slots", "max_steps cut"])
def test_fast_paths_equal_no_cohort_at_all(monkeypatch, name):
    """Against the full path on every step (no sequence kept in the lazy cohort), open loop:
    the same timings; irregular gaps may be recorded in another order within a step. (In a
    closed loop the requests finishing in one step may be listed in another order, so the
    users send their next requests in another order: another run. A prefix longer than
    the prompt is registered by a decoding sequence only outside the cohort.)"""
    cfg, model, kw = CASES[name]
    kw = {k: v for k, v in kw.items() if k not in ("closed_loop_users", "duration_s")}
    reqs = _requests(prefix_in_prompt=True)
    fast = simulate_run(reqs, cfg, model, **kw)
    with monkeypatch.context() as m:
        _step_by_step(m)
        m.setattr(Engine, "_fast_ok", lambda self, budget: None)
        slow = simulate_run(reqs, cfg, model, **kw)
    assert fast.requests == slow.requests
    assert fast.itl.steps == slow.itl.steps
    assert sorted(fast.itl.other) == sorted(slow.itl.other)
    assert (fast.steps, fast.preemptions, fast.busy_s, fast.end_s) == (
        slow.steps, slow.preemptions, slow.busy_s, slow.end_s)


def test_an_engine_driven_by_the_fast_loop_ends_where_plain_steps_end():
    """An engine driven by advance_decode between plain steps (work arriving mid-run, as
    the live server adds it) ends where one driven by step alone does: the same finished
    requests, gaps, counters and blocks."""
    cfg = SchedulerConfig(max_num_seqs=12, max_num_batched_tokens=128, kv_blocks=120,
                          block_size=16)

    def drive(use_fast: bool) -> tuple:
        reqs = [SimRequest(r.id, 0.0, r.prompt_tokens, r.output_tokens, r.prefix_key,
                           r.prefix_tokens) for r in _requests(120, seed=4)]
        eng = Engine(cfg, NOISY, seed=11)
        for r in reqs[:60]:
            eng.add(r)
        later, t = reqs[60:], 0.0
        while True:
            if len(eng.done) > 30 and later:  # more work arrives mid-run
                for r in later:
                    eng.add(SimRequest(r.id, t, r.prompt_tokens, r.output_tokens,
                                       r.prefix_key, r.prefix_tokens))
                later = []
            if use_fast:  # as if work might arrive every 0.05 s
                t, n = eng.advance_decode(t, t + 0.05)
                if n:
                    continue
            res = eng.step(t)
            if res is None:
                break
            t = res.end_s
        return eng.done, eng.itl, eng.steps, eng.preemptions, eng.busy_s, eng.kv_blocks_used

    fast, slow = drive(True), drive(False)
    assert len(fast[0]) == 120 and fast[3] > 0
    assert fast == slow


@pytest.mark.parametrize("fast", [True, False])
def test_a_request_too_big_for_the_cache_still_fails(monkeypatch, fast):
    if not fast:
        monkeypatch.setattr(Engine, "fast_paths", False)
    cfg = SchedulerConfig(kv_blocks=4, block_size=16)
    with pytest.raises(RuntimeError, match="does not fit"):
        simulate_run([SimRequest("big", 0.0, 100, 5)], cfg, Exact())
