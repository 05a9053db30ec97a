"""`servescope calibrate` against the REAL vLLM CPU server (the session's, sending its
spans to the session's OTLP receiver, pointed here at the command's store): a tiny sweep,
a fitted step model that uses the spans, the server's KV blocks read from its /metrics,
and a profile `simulate --profile` accepts."""

from __future__ import annotations

import json
import random

import pytest

from helpers import servescope
from servescope.capacity.catalog import model
from servescope.capacity.steptime import pair_tokens
from servescope.core.store import Store

SCENARIO = """\
name: calib-live
seed: {seed}
prompt_tokens: {{dist: uniform, min: 32, max: 96}}
output_tokens: {{dist: uniform, min: 16, max: 32}}
stages: [{{concurrency: 1, duration: 1m}}]
request_timeout: 120s
"""


def test_calibrate_fits_the_real_server_and_simulate_uses_it(vllm_server, vllm_spans,
                                                             tmp_path):
    path, db, out = tmp_path / "s.yaml", tmp_path / "c.db", tmp_path / "profile.json"
    # a fresh seed: vLLM's prefix cache must not know these prompts from another test
    path.write_text(SCENARIO.format(seed=random.randrange(1 << 30)))
    with Store(db) as store, vllm_spans.into(store):
        res = servescope("calibrate", "--target", vllm_server.url, "--scenario", str(path),
                         "--concurrency", "1,2", "--duration", "20", "--requests", "10",
                         "--max-num-seqs", "8", "--max-num-batched-tokens", "2048",
                         "--out", str(out), "--quiet", db=db, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    p = json.loads(out.read_text())
    cal = p["calibration"]
    assert cal["spans_used"] >= 15  # the server's queue and prefill joined per request
    sm = cal["step_model"]
    assert sm["a_s"] + sm["decode_s_per_seq"] > 0.0005  # a CPU step takes its time
    assert 0 <= cal["ttft_overhead_s"] < 1.0
    assert sm["ratios"] and min(sm["ratios"]) > 0
    assert p["scheduler"]["kv_blocks"] > 1000 and p["scheduler"]["block_size"] >= 16
    assert p["scheduler"]["max_num_seqs"] == 8
    # each level twice, the second pass mirrored, every run replayed
    assert [c["concurrency"] for c in p["checks"]] == [1, 2, 2, 1] == p["source"]["order"]
    assert p["source"]["target"] == vllm_server.url and len(p["source"]["runs"]) == 4
    assert "replay of concurrency 2" in res.stdout
    # each run's own speed against the fit, kept and said
    speeds = cal["run_speeds"]
    assert len(speeds) == 4 and all(0.5 < v < 2 for v in speeds), speeds
    assert "each run's step time against the fit" in res.stdout
    # attention's price per prefill pair, from the config.json of the folder the server
    # names (the architecture the calibration cannot fit from short prompts)
    arch = p["source"]["pair_tokens_from"]
    assert arch.endswith("config.json"), arch
    assert sm["pair_tokens"] == pytest.approx(pair_tokens(model(arch).spec))
    assert 1e-4 < sm["pair_tokens"] < 1e-2  # 4 layers x 4 heads x 64 over 2.6 M params
    assert "prefill attention: a (query, key) pair costs" in res.stdout
    # the warm-up at the highest level ran first and is not among the fitted runs
    assert "warm-up at concurrency 2" in res.stderr
    with Store(db) as store:
        runs = store.runs()
    assert len(runs) == 5 and sorted(r["id"] for r in runs)[0] not in p["source"]["runs"]
    # half the level's requests each (--requests 10 per level)
    with Store(db) as store:
        done = [store.run(i)["summary"]["requests_ok"] for i in p["source"]["runs"]]
    assert all(1 <= n <= 5 for n in done), done
    sim = servescope("simulate", str(path), "--profile", str(out), "--concurrency", "8",
                     "--requests", "40", "--replicas", "3", "--json", db=db)
    assert sim.returncode == 0, sim.stderr
    s = json.loads(sim.stdout)
    assert s["step_model"] == "calibrated" and s["requests_ok"] == 40
