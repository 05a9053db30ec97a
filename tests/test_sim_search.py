"""The simulated search over max_num_seqs x max_num_batched_tokens (capacity/sim_search.py):
a config that breaks the ITL SLO ranks below one that meets it, batching wins on a
memory-bound physics model, a calibration profile gives intervals, and
`servescope plan --simulate` prints the ranking beside the unchanged plan."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from helpers import servescope
from servescope.capacity import catalog
from servescope.capacity.setup import PlanInput
from servescope.capacity.sim_calibrate import Calibration
from servescope.capacity.sim_profile import Profile, Workload
from servescope.capacity.sim_search import (
    Window,
    format_search,
    load_curve,
    search,
    users_levels,
)
from servescope.capacity.sim_setup import sim_setup
from servescope.capacity.simulator import SchedulerConfig, SimRequest
from servescope.capacity.steptime import LinearStepModel


class DecodeBound:
    """5 ms + 2 ms per decoding sequence (+ prefill at 20 us a token): the inter-token gap
    with b sequences running is about 5 + 2b ms, so a mean ITL target of 50 ms holds up to
    about 22 sequences."""

    label = "test: 5 ms + 2 ms per sequence"

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int,
                     pairs: int = 0) -> float:
        return 0.005 + 0.002 * decode_seqs + 2e-5 * prefill_tokens


def _closed(users: int, n: int = 400, seed: int = 1) -> Workload:
    rng = random.Random(seed)
    reqs = [SimRequest(f"r{i}", 0.0, rng.randint(100, 300), rng.randint(50, 150))
            for i in range(n)]
    return Workload(reqs, closed_loop_users=users, duration_s=60.0)


def test_a_config_breaking_the_itl_slo_ranks_below_one_meeting_it():
    base = SchedulerConfig(kv_blocks=100_000)
    slos = {"itl_ms": {"mean": 50.0}}
    res = search(base, _closed(64), slos, seqs=[16, 64], tokens=[4096], step_model=DecodeBound())
    rows = {r["max_num_seqs"]: r for r in res["candidates"]}
    # 64 running sequences: gaps near 133 ms, no request meets 50 ms; 16: about 37 ms
    assert rows[64]["goodput_per_s"] == 0.0 and rows[64]["itl_ms"]["p50"] > 50
    assert rows[16]["goodput_per_s"] > 0 and rows[16]["itl_ms"]["p50"] < 50
    assert [r["max_num_seqs"] for r in res["candidates"]] == [16, 64]
    # 64 pushes more requests through: without the SLO it would have won
    assert rows[64]["requests_per_s"] > rows[16]["requests_per_s"]
    assert res["step_model"] == DecodeBound.label and not res["calibrated"]
    assert "60 simulated seconds" in res["window"]


def test_batching_wins_on_a_memory_bound_physics_model():
    inp = PlanInput(model=catalog.model("llama-3.1-8b"), hardware=catalog.hardware("h100-80gb"),
                    max_model_len=8192)
    ss = sim_setup(inp)
    res = search(ss, _closed(64), {"ttft_ms": {"p90": 5000.0}}, seqs=[1, 64],
                 tokens=[512, 8192], window=Window(30.0, 500))
    ranked = [(r["max_num_seqs"], r["max_num_batched_tokens"]) for r in res["candidates"]]
    assert ranked[0][0] == 64 and ranked[-1][0] == 1
    best, worst = res["candidates"][0], res["candidates"][-1]
    assert best["requests_per_s"] > 5 * worst["requests_per_s"]
    assert res["step_model"].startswith("uncalibrated")
    lines = format_search(res)
    assert "simulated, uncalibrated" in lines[0] and len(lines) >= 4


def test_a_load_curve_batches_up_to_max_num_seqs_then_queues():
    """The what-if's load curve on Llama 3.1 8B / one H100 (physics) with max_num_seqs 16:
    throughput and ITL rise together up to 16 users; past it the running set is full, so
    throughput stays and the new users wait (TTFT grows with them)."""
    inp = PlanInput(model=catalog.model("llama-3.1-8b"), hardware=catalog.hardware("h100-sxm"),
                    max_num_seqs=16)
    ss = sim_setup(inp)
    assert users_levels(16) == [1, 2, 4, 8, 16, 32]
    assert users_levels(16, serve=100, most=64) == [1, 2, 4, 8, 16, 32, 64]
    lengths = [(rng_p, rng_o) for rng_p, rng_o in zip(range(200, 1200, 50),
                                                      range(50, 250, 10), strict=True)]
    curve = load_curve(ss, lengths, [1, 4, 16, 32, 64], Window(60.0, 1000))
    rows = {r["users"]: r for r in curve["rows"]}
    tput = {u: r["output_tokens_per_s"] for u, r in rows.items()}
    itl = {u: r["itl_ms"]["p50"] for u, r in rows.items()}
    ttft = {u: r["ttft_ms"]["p50"] for u, r in rows.items()}
    assert tput[1] < tput[4] < tput[16]
    assert itl[1] < itl[4] < itl[16]  # batching raises throughput and ITL together
    # decode never beats reading the weights once per step
    assert itl[1] / 1000 >= ss.physics.weight_bytes / ss.physics.bandwidth_bytes_s
    assert tput[64] == pytest.approx(tput[32], rel=0.05)  # the running set is full
    assert tput[32] == pytest.approx(tput[16], rel=0.1)
    assert ttft[64] > 2 * ttft[32] > 2 * ttft[16]  # the queue grows with the users
    assert curve["ramp_s"] > 0 and "uncalibrated" in curve["step_model"]
    # more users than the window's request cap: each still sends several requests
    (crowd,) = load_curve(ss, lengths, [600], Window(600.0, 500))["rows"]
    assert crowd["requests"] == 4 * 600
    with pytest.raises(ValueError, match="lengths"):
        load_curve(ss, [], [1])


def test_pairs_vllm_refuses_are_skipped_and_bad_input_is_named():
    res = search(SchedulerConfig(), _closed(4, 50), None, seqs=[8, 64], tokens=[32],
                 step_model=DecodeBound(), window=Window(10.0, 50))
    assert [(r["max_num_seqs"], r["max_num_batched_tokens"]) for r in res["candidates"]] == \
        [(8, 32)]
    assert res["skipped"][0]["max_num_seqs"] == 64
    with pytest.raises(ValueError, match="step model"):
        search(SchedulerConfig(), _closed(4, 50))
    with pytest.raises(ValueError, match="no requests"):
        search(SchedulerConfig(), Workload([SimRequest("late", 500.0, 10, 10)]),
               step_model=DecodeBound(), window=Window(10.0, 50))


def _profile() -> Profile:
    step = LinearStepModel(0.005, 2e-5, 2e-3, 1e-8, [0.95, 1.0, 1.1])
    boots = [{"a_s": 0.0055, "prefill_s_per_token": 2e-5, "decode_s_per_seq": 2e-3,
              "kv_s_per_token": 1e-8, "ttft_overhead_s": 0.011}]
    return Profile(Calibration(step, 0.01, 0.001, 100, 0),
                   {"max_num_seqs": 8, "max_num_batched_tokens": 2048, "kv_blocks": 4000,
                    "block_size": 16}, boots, {"goodput.requests_per_s": 0.1},
                   {"target": "http://127.0.0.1:8000", "model": "tiny"})


def test_a_profile_ranks_with_its_calibrated_step_and_gives_intervals():
    p = _profile()
    res = search(p.config(), _closed(32, 200), {"itl_ms": {"mean": 50.0}}, seqs=[8, 64],
                 tokens=[2048], profile=p, window=Window(20.0, 200), top=1, replicas=2)
    assert res["calibrated"] and res["step_model"].startswith("calibrated")
    top, other = res["candidates"]
    assert top["max_num_seqs"] == 8 and other["goodput_per_s"] < top["goodput_per_s"]
    lo, hi = top["interval90"]["goodput.requests_per_s"]
    assert lo <= top["goodput_per_s"] <= hi
    assert "interval90" not in other  # only the top candidates pay for replicas


def test_plan_simulate_json_adds_the_ranked_candidates(tmp_path):
    args = ["plan", "--model", "llama-3.1-8b", "--gpu", "h100-80gb", "--max-model-len", "8192",
            "--prompt-tokens", "500", "--output-tokens", "100", "--concurrency", "32",
            "--slo", "ttft_p90=2000ms", "--simulate", "--sim-seqs", "1,32",
            "--sim-batched-tokens", "8192"]
    res = servescope(*args, "--json", db=tmp_path / "s.db")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert "sizing" in out  # the plan is all there
    sim = out["simulated_search"]
    assert sim["label"] == "simulated, uncalibrated" and not sim["calibrated"]
    assert [c["max_num_seqs"] for c in sim["candidates"]] == [32, 1]
    assert sim["candidates"][0]["goodput_per_s"] > sim["candidates"][1]["goodput_per_s"]
    assert sim["slos"] == {"ttft_ms": {"p90": 2000.0}}
    text = servescope(*args, db=tmp_path / "s.db")
    assert text.returncode == 0, text.stderr
    assert "simulated search (simulated, uncalibrated" in text.stdout
    assert text.stdout.index("simulated search") > text.stdout.index("assumptions")
    bad = servescope("plan", "--model", "llama-3.1-8b", "--gpu", "h100-80gb",
                     "--prompt-tokens", "500", "--output-tokens", "100", "--simulate",
                     db=tmp_path / "s.db")
    assert bad.returncode != 0 and "--concurrency N or --rate R" in bad.stderr


def test_plan_simulate_with_several_gpus_searches_each_replica(tmp_path):
    """With several --gpu kinds, each row's replica (its tensor parallel, its share of the
    traffic) gets its own search, printed after the cost table."""
    res = servescope("plan", "--model", "llama-3.1-8b", "--gpu", "h100-80gb,l4",
                     "--prompt-tokens", "500", "--output-tokens", "100", "--concurrency", "32",
                     "--simulate", "--sim-seqs", "1,32", "--sim-batched-tokens", "8192",
                     db=tmp_path / "s.db")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "-- h100-sxm: one replica of 1 (tp 1)" in out
    assert "-- l4: one replica of 1 (tp 2)" in out  # 8B in bf16 needs two L4s
    assert out.count("simulated search (simulated, uncalibrated") == 2
    assert out.index("$/M out tok") < out.index("-- h100-sxm")
    res = servescope("plan", "--model", "llama-3.1-8b", "--gpu", "h100-80gb,l4",
                     "--prompt-tokens", "500", "--output-tokens", "100", "--concurrency", "32",
                     "--simulate", "--sim-seqs", "32", "--sim-batched-tokens", "8192",
                     "--json", db=tmp_path / "s.db")
    rows = json.loads(res.stdout)["comparison"]
    assert all(r["simulated_search"]["candidates"][0]["max_num_seqs"] == 32 for r in rows)


def _tiny_scenario(tmp_path: Path) -> Path:
    """64-token prompts, 32-token answers, SLOs a simulated H100 meets at 16 sequences."""
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(
        "name: tiny\nseed: 1\nprompt_tokens: 64\noutput_tokens: 32\n"
        "stages:\n  - {concurrency: 1, duration: 20s}\nrequest_timeout: 60s\n"
        "slos:\n  ttft_ms: {p95: 2000}\n  itl_ms: {p95: 40}\n")
    return scenario


def test_tune_simulate_first_confirms_the_top_candidates_on_a_simulated_server(tmp_path):
    """End to end without an engine: `servescope sim-server` (physics, the same model and
    GPU) is the server tune restarts; the simulator orders the candidates first."""
    import sys

    from servescope.engines.process import free_port

    scenario = _tiny_scenario(tmp_path)
    port, out = free_port(), tmp_path / "tune.json"
    command = (f"{sys.executable} -m servescope.cli --db {tmp_path / 'srv.db'} sim-server "
               f"--model llama-3.1-8b --gpu h100-80gb --max-model-len 8192 --port {port} "
               "--max-num-seqs {max_num_seqs}")
    res = servescope("tune", str(scenario), "--command", command, "--target",
                     f"http://127.0.0.1:{port}", "--concurrency", "4,16", "--duration", "5s",
                     "--requests", "40", "--max-runs", "2", "--simulate-first", "--sim-model",
                     "llama-3.1-8b", "--sim-gpu", "h100-80gb", "--sim-values", "1,4,16",
                     "--quiet", "--out", str(out), db=tmp_path / "t.db")
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    predicted = {int(k): v for k, v in result["predicted"].items()}
    assert set(predicted) == {1, 4, 8, 16}  # --sim-values and --start
    # 16 users: 16 sequences batch them all, so the simulator puts 16 first, then 8
    assert [s["value"] for s in result["steps"]] == [16, 8]
    for s in result["steps"]:
        assert s["predicted_goodput_per_s"] == predicted[s["value"]]
        assert s["goodput_per_s"] > 0
    assert "simulated, uncalibrated (physics) goodput by max_num_seqs" in res.stderr
    assert "predicted" in res.stdout and "best: max_num_seqs" in res.stdout


def test_tune_simulate_first_confirms_pairs_with_max_num_batched_tokens(tmp_path):
    """--sim-batched-tokens: the candidates are (max_num_seqs, max_num_batched_tokens)
    pairs, and the server is restarted with both (sim-server says what it runs with)."""
    import re
    import sys

    from servescope.engines.process import free_port

    scenario = _tiny_scenario(tmp_path)
    port, out = free_port(), tmp_path / "tune.json"
    base = (f"{sys.executable} -m servescope.cli --db {tmp_path / 'srv.db'} sim-server "
            f"--model llama-3.1-8b --gpu h100-80gb --max-model-len 8192 --port {port} "
            "--max-num-seqs {max_num_seqs}")
    args = ["tune", str(scenario), "--target", f"http://127.0.0.1:{port}", "--concurrency",
            "16", "--duration", "5s", "--requests", "30", "--max-runs", "1",
            "--simulate-first", "--sim-model", "llama-3.1-8b", "--sim-gpu", "h100-80gb",
            "--sim-values", "4,16", "--start", "4", "--sim-batched-tokens", "16,8192",
            "--quiet", "--out", str(out)]
    refused = servescope(*args, "--command", base, db=tmp_path / "t.db")
    assert refused.returncode == 2 and "{max_num_batched_tokens}" in refused.stderr
    command = base + " --max-num-batched-tokens {max_num_batched_tokens}"
    res = servescope(*args, "--command", command, db=tmp_path / "t.db")
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["predicted"]) == {"4x16", "4x8192", "16x16", "16x8192"}
    # 16 users on 16 sequences, whole 64-token prompts in a step: the simulator's best
    assert max(result["predicted"], key=result["predicted"].get) == "16x8192"
    assert result["predicted"]["16x8192"] > result["predicted"]["16x16"]
    (step,) = result["steps"]
    assert step["value"] == [16, 8192] and step["goodput_per_s"] > 0
    assert result["best"] == [16, 8192]
    assert "best: max_num_seqs x max_num_batched_tokens 16 x 8192" in res.stdout
    log = re.search(r"\(log: (\S+)\)", res.stderr).group(1)
    assert "max_num_batched_tokens 8192" in Path(log).read_text()


def test_plan_simulate_with_a_profile_is_calibrated(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(_profile().to_dict()))
    res = servescope("plan", "--model", "llama-3.1-8b", "--gpu", "h100-80gb", "--max-model-len",
                     "8192", "--scenario", "chat", "--concurrency", "16", "--simulate",
                     "--profile", str(path), "--sim-seqs", "4,16", "--sim-batched-tokens",
                     "2048", "--json", db=tmp_path / "s.db")
    assert res.returncode == 0, res.stderr
    sim = json.loads(res.stdout)["simulated_search"]
    assert sim["calibrated"] and sim["label"] == "calibrated"
    assert sim["slos"]  # the chat scenario's own SLOs, no --slo given
    assert all("interval90" in c for c in sim["candidates"])  # both in the top 5
