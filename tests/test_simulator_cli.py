"""`servescope simulate`: the load summary's shape, marked simulated, with intervals; from
physics (said to be uncalibrated) or a calibration profile; bad input refused by name."""

from __future__ import annotations

import json

from helpers import servescope
from servescope.capacity.sim_calibrate import Calibration
from servescope.capacity.sim_profile import Profile
from servescope.capacity.steptime import LinearStepModel


def test_simulate_from_physics_prints_a_simulated_summary(tmp_path):
    res = servescope("simulate", "chat", "--model", "llama-3.1-8b", "--gpu", "h100",
                     "--concurrency", "16", "--duration", "30", "--replicas", "3", "--json",
                     db=tmp_path / "s.db")
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["simulated"] is True and s["status"] == "simulated"
    assert s["step_model"].startswith("uncalibrated")
    for m in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
        assert s[m]["p50"] > 0 and s[m]["p99"] >= s[m]["p50"]
        assert s["interval90"][f"{m}.p50"][0] <= s[m]["p50"] <= s["interval90"][f"{m}.p50"][1]
    assert s["output_tokens_per_s"] > 0 and s["requests_per_s"] > 0
    assert s["goodput"]["attainment"]  # the chat scenario's SLOs judged
    assert s["scheduler"]["kv_blocks"] > 1000


def test_simulate_with_a_profile_is_calibrated(tmp_path):
    profile = Profile(Calibration(LinearStepModel(0.005, 2e-5, 4e-4, 1e-8, [0.95, 1.0, 1.1]),
                                  0.01, 0.001, 100, 0),
                      {"max_num_seqs": 8, "max_num_batched_tokens": 2048, "kv_blocks": 4000,
                       "block_size": 128},
                      [{"a_s": 0.0055, "prefill_s_per_token": 2e-5, "decode_s_per_seq": 4e-4,
                        "kv_s_per_token": 1e-8, "ttft_overhead_s": 0.011}],
                      {"ttft_ms.p50": 0.1}, {"target": "http://127.0.0.1:8000",
                                              "model": "tiny", "levels": [1, 2]})
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile.to_dict()))
    res = servescope("simulate", "chat", "--profile", str(path), "--concurrency", "16",
                     "--duration", "20", "--replicas", "2", db=tmp_path / "s.db")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("SIMULATED, calibrated: ")
    # the window ends at the scenario's request cap or the duration (as a load run stops)
    assert "16 users, 2000 requests or 20s, whichever ends first" in res.stdout.splitlines()[0]
    assert "widened by the calibration's own error" in res.stdout
    js = servescope("simulate", "chat", "--profile", str(path), "--concurrency", "16",
                    "--duration", "20", "--replicas", "2", "--json", db=tmp_path / "s.db")
    s = json.loads(js.stdout)
    assert s["scheduler"]["max_num_seqs"] == 8
    assert s["queue_ms"]["p50"] > 0  # 16 users on 8 sequences wait
    lo, hi = s["interval90"]["ttft_ms.p50"]
    assert lo <= s["ttft_ms"]["p50"] * 0.9 and hi >= s["ttft_ms"]["p50"] * 1.1


def test_simulate_refuses_what_it_cannot_use(tmp_path):
    res = servescope("simulate", "chat", "--concurrency", "4", db=tmp_path / "s.db")
    assert res.returncode == 2 and "--model and --gpu" in res.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "something else"}')
    res = servescope("simulate", "chat", "--profile", str(bad), db=tmp_path / "s.db")
    assert res.returncode == 2 and str(bad) in res.stderr and "schema" in res.stderr
    res = servescope("simulate", "chat", "--model", "llama-3.1-8b", "--gpu", "h100",
                     "--max-num-seqs", "0", db=tmp_path / "s.db")
    assert res.returncode == 2 and "--max-num-seqs 0" in res.stderr
    assert "Traceback" not in res.stderr


def test_simulate_slots_policy_serializes(tmp_path):
    def tput(users: str) -> float:
        res = servescope("simulate", "chat", "--model", "llama-3.1-8b", "--gpu", "h100",
                         "--policy", "slots", "--slots", "1", "--concurrency", users,
                         "--duration", "20", "--replicas", "0", "--json", db=tmp_path / "s.db")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)["output_tokens_per_s"]

    one, eight = tput("1"), tput("8")
    assert abs(eight - one) / one < 0.1


def test_calibrate_refuses_an_unknown_architecture_before_any_load(tmp_path):
    # the port is closed: the error must come before calibrate sends anything
    res = servescope("calibrate", "--target", "http://127.0.0.1:9", "--architecture",
                     "no-such-model", "--out", str(tmp_path / "p.json"), "--quiet",
                     db=tmp_path / "c.db")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "--architecture" in res.stderr and "no-such-model" in res.stderr
    assert not (tmp_path / "p.json").exists()
