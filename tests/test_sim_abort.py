"""Engine.abort: a request whose client went away leaves the simulated engine as it would
leave vLLM's: out of the queue, or out of the batch with its KV blocks freed (its prefix
references given back), never finished. The engine's books stay exact (blocks held, the
lazy cohort's counters, its finish heap), the others run on as they would, and the fast
loop and plain steps agree on the run with an abort in it."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from servescope.capacity.sim_engine import Engine, _Seq
from servescope.capacity.simulator import SchedulerConfig, SimRequest
from servescope.capacity.steptime import LinearStepModel

NOISY = LinearStepModel(0.004, 2e-5, 3e-4, 5e-8, ratios=[0.8, 0.95, 1.0, 1.1, 1.6])
SMALL = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=256, kv_blocks=400,
                        block_size=16)
CHUNKED = SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=64, kv_blocks=2000,
                          block_size=16)
TIGHT = SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=256, kv_blocks=120,
                        block_size=16)
NO_CACHE = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=256, kv_blocks=400,
                           block_size=16, prefix_caching=False)


def _requests(n: int = 40, seed: int = 3, long_prompts: bool = False) -> list[SimRequest]:
    """Every third request shares prefix "p" (64 tokens), every fifth "q" (40)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        key, ptoks = ("p", 64) if i % 3 == 0 else (("q", 40) if i % 5 == 0 else (None, 0))
        prompt = rng.randint(150, 400) if long_prompts else rng.randint(70, 200)
        out.append(SimRequest(f"r{i}", 0.0, prompt, rng.randint(2, 60), key, ptoks))
    return out


def _books(eng: Engine) -> None:
    """The engine's accounts agree with its sequences."""
    bs, g = eng._bs, eng.steps
    assert set(eng._running) == set(eng._explicit) | set(eng._cohort)
    assert not set(eng._explicit) & set(eng._cohort)
    assert not {s.id for s in eng._waiting} & set(eng._running)
    own, kv, residue = 0, 0, [0] * bs
    refs: Counter[str] = Counter()
    for s in eng._running.values():
        if s.id in eng._cohort:
            computed = s.base_c + g - s.base_step
            own += -(-computed // bs) - s.shared
            kv += computed
            residue[(s.base_c - s.base_step) % bs] += 1
        else:
            own += s.own
        if s.ref is not None:
            refs[s.ref] += 1
    for s in eng._waiting:
        assert s.own == 0 and s.ref is None and s.shared == 0
    if eng._limited:  # (the slots policy counts no blocks)
        assert eng._own_blocks == own
        assert eng._cached_blocks == sum(v[0] for v in eng._prefix.values())
    assert eng._cohort_kv == kv and eng._residue == residue
    assert sorted(id(e[2]) for e in eng._ends) == sorted(id(s) for s in eng._cohort.values())
    assert {k: v[1] for k, v in eng._prefix.items() if v[1]} == dict(refs)


Pick = Callable[[Engine], _Seq]


def _run(eng: Engine, at_steps: list[int], on_due: Callable[[Engine], None],
         check: Callable[[Any], None] | None = None) -> None:
    """Run `eng` to idle, calling on_due(eng) when it has run each of `at_steps` (sorted)
    steps: the fast loop where it can (advance_decode, up to the next of those steps) and
    one step at a time otherwise; check(result) sees every full step."""
    plan, t = list(at_steps), 0.0
    while True:
        if plan and eng.steps == plan[0]:
            plan.pop(0)
            on_due(eng)
        t2, n = eng.advance_decode(t, math.inf, plan[0] - eng.steps if plan else None)
        if n:
            t = t2
            continue
        res = eng.step(t)
        if res is None:
            break
        if check is not None:
            check(res)
        t = res.end_s


def _drive(cfg: SchedulerConfig, reqs: list[SimRequest], fast: bool, at_step: int,
           pick: Pick) -> tuple:
    """Run to step `at_step`, abort the request `pick` chooses, run to idle: the fast loop
    (advance_decode where it can) or plain steps only."""
    eng = Engine(cfg, NOISY, seed=5)
    eng.fast_paths = fast
    for r in reqs:
        eng.add(r)
    gone: list[str] = []

    def abort(eng: Engine) -> None:
        victim = pick(eng).id
        gone.append(victim)
        blocks_before = eng.kv_blocks_used
        assert eng.abort(victim) is True
        assert eng.abort(victim) is False  # gone already
        assert victim not in eng._running and all(w.id != victim for w in eng._waiting)
        _books(eng)
        assert eng.kv_blocks_used <= blocks_before

    def check(res: Any) -> None:
        assert not set(gone) & (set(res.tokens) | set(res.finished))

    _run(eng, [at_step], abort, check)
    assert gone, "the run ended before the abort"
    victim = gone[0]
    assert eng.idle()
    _books(eng)
    cached = sum(v[0] for v in eng._prefix.values())
    assert eng.kv_blocks_used == cached  # only evictable prefix blocks are left
    assert all(v[1] == 0 for v in eng._prefix.values())
    if not cfg.prefix_caching:
        assert eng.kv_blocks_used == 0
    got = {r.id: r for r in eng.done}
    assert victim not in got
    assert len(got) == len(eng.done) == len(reqs) - 1
    for r in reqs:
        if r.id != victim:
            assert got[r.id].output_tokens == r.output_tokens
    return victim, eng.done, eng.itl, eng.steps, eng.preemptions, eng.busy_s, \
        eng.kv_blocks_used


def _both(cfg: SchedulerConfig, reqs: list[SimRequest], at_step: int, pick: Pick) -> tuple:
    fast = _drive(cfg, reqs, True, at_step, pick)
    slow = _drive(cfg, reqs, False, at_step, pick)
    assert fast == slow
    return fast


def _waiting_last(eng: Engine) -> _Seq:
    assert eng._waiting
    return eng._waiting[-1]


def _in_cohort(eng: Engine) -> _Seq:
    assert eng._cohort
    return list(eng._cohort.values())[len(eng._cohort) // 2]


def _mid_prefill(eng: Engine) -> _Seq:
    chunking = [s for s in eng._explicit.values() if 0 < s.computed < s.tokens and not s.out]
    assert chunking
    return chunking[0]


def _shared_prefix(eng: Engine) -> _Seq:
    holders = [s for s in eng._running.values()
               if s.ref is not None and eng._prefix[s.ref][1] >= 2]
    assert holders
    return holders[-1]


@pytest.mark.parametrize("cfg", [SMALL, NO_CACHE], ids=["caching", "no caching"])
def test_aborting_a_waiting_request(cfg):
    _both(cfg, _requests(), 3, _waiting_last)


@pytest.mark.parametrize("cfg", [SMALL, NO_CACHE, TIGHT], ids=["caching", "no caching",
                                                               "tight kv"])
def test_aborting_a_decoding_request_in_the_cohort(cfg):
    _both(cfg, _requests(), 12, _in_cohort)


def test_aborting_a_request_mid_chunked_prefill():
    _both(CHUNKED, _requests(long_prompts=True), 2, _mid_prefill)


def test_aborting_a_request_holding_a_shared_prefix():
    reqs = _requests()
    victim = _both(SMALL, reqs, 10, _shared_prefix)[0]
    assert next(r for r in reqs if r.id == victim).prefix_key is not None


def test_aborting_the_cohort_one_by_one_frees_every_block():
    eng = Engine(NO_CACHE, NOISY, seed=1)
    for r in _requests(6):
        eng.add(r)
    t = 0.0
    while len(eng._cohort) < 6:
        t = eng.step(t).end_s
    eng.step(t)  # a step into the cohort's decoding: its counters are stale now
    assert eng.kv_blocks_used > 0
    for rid in list(eng._cohort):
        assert eng.abort(rid)
        _books(eng)
    assert eng.idle() and eng.kv_blocks_used == 0 and eng.step(t) is None
    assert eng.done == [] and not eng._ends


def test_abort_of_a_finished_or_unknown_request_is_false():
    eng = Engine(SMALL, NOISY)
    eng.add(SimRequest("a", 0.0, 20, 2))
    t = 0.0
    while (res := eng.step(t)) is not None:
        t = res.end_s
    assert [r.id for r in eng.done] == ["a"]
    assert eng.abort("a") is False and eng.abort("nobody") is False


RANDOM_CFGS = [SMALL, CHUNKED, TIGHT, NO_CACHE,
               SchedulerConfig(policy="slots", slots=4, max_num_batched_tokens=64)]


def _random_aborts(cfg: SchedulerConfig, trial: int, fast: bool) -> tuple:
    reqs = _requests(30, seed=trial, long_prompts=trial % 2 == 1)
    plan = sorted(random.Random(trial).sample(range(1, 120), 4))
    eng = Engine(cfg, NOISY, seed=trial)
    eng.fast_paths = fast
    for r in reqs:
        eng.add(r)
    aborted, choose = [], random.Random(trial)

    def abort(eng: Engine) -> None:
        ids = sorted([s.id for s in eng._waiting] + list(eng._running))
        if ids:
            rid = choose.choice(ids)
            assert eng.abort(rid)
            aborted.append(rid)
            _books(eng)

    _run(eng, plan, abort)
    _books(eng)
    assert eng.kv_blocks_used == eng._cached_blocks
    assert {r.id for r in eng.done} == {r.id for r in reqs} - set(aborted)
    return aborted, eng.done, eng.itl, eng.steps, eng.busy_s, eng.preemptions


@pytest.mark.parametrize("trial", range(12))
def test_random_aborts_fast_loop_and_plain_steps_agree(trial):
    """Several aborts at random steps, of whatever is there (queued, decoding, chunking):
    the books stay exact after each and both ways of running agree."""
    cfg = RANDOM_CFGS[trial % len(RANDOM_CFGS)]
    fast = _random_aborts(cfg, trial, True)
    assert fast[0]
    assert fast == _random_aborts(cfg, trial, False)


def test_the_sim_server_aborts_a_request_whose_client_left():
    """Through the HTTP API: a streaming client that closes early is aborted in the engine
    at once (its blocks freed, the engine idle), not left decoding to max_tokens."""
    import time

    import httpx

    from servescope.engines.sim_driver import SimSpec, build_backend
    from servescope.engines.sim_server import SimServer

    model, gpu = "llama-3.1-8b", "h100-80gb"
    aborted_name = ('vllm:request_success_total{engine="0",finished_reason="abort"'
                    f',model_name="{model} (simulated on {gpu})"}}')

    def metric(url: str, name: str) -> float:
        for line in httpx.get(f"{url}/metrics").text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    with SimServer(build_backend(SimSpec(model, gpu, max_num_seqs=8)), port=0) as sim:
        body = {"prompt": "go on and on", "max_tokens": 50_000, "stream": True,
                "ignore_eos": True}  # minutes of decoding, were it not aborted
        with httpx.stream("POST", f"{sim.url}/v1/completions", json=body, timeout=30) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i >= 6:
                    break
        driver = sim.app.driver
        deadline = time.monotonic() + 20
        while (metric(sim.url, aborted_name) < 1 or not driver.engine.idle()) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(sim.url, aborted_name) == 1
        engine = driver.engine
        assert engine.idle() and driver.streams == {} and engine.done == []
        assert engine.kv_blocks_used == sum(v[0] for v in engine._prefix.values())
        # the gauges say so at once (an idle engine takes no step to update them)
        running = ('vllm:num_requests_running{engine="0",'
                   f'model_name="{model} (simulated on {gpu})"}}')
        assert metric(sim.url, running) == 0
