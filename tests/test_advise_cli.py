"""`servescope advise SWEEP`: the evidence table, the recommendations with their reasons,
the physics check where model and hardware are known, and --json."""

from __future__ import annotations

import json

from advise_sweeps import SimServer, add_sweep

from servescope.cli import main
from servescope.core.store import Store

SLOS = {"ttft_ms": {"p95": 1000.0}, "itl_ms": {"p95": 50.0}}


def _db(tmp_path):
    path = tmp_path / "s.db"
    with Store(path) as store:
        sweep_id = add_sweep(store, SimServer(8, lambda b: 10 + 2 * b), [1, 2, 4, 8, 16, 32],
                             SLOS, knob=8)
    return path, sweep_id


def test_advise_prints_the_table_and_the_reason(tmp_path, capsys):
    path, sweep_id = _db(tmp_path)
    assert main(["--db", str(path), "advise", str(sweep_id), "--kv-capacity-tokens",
                 "100000"]) == 0
    out = capsys.readouterr().out
    assert "max_num_seqs 8 (the run's target (as started))" in out
    assert "limit: queue" in out
    assert "- set max_num_seqs: 8 -> 20" in out
    assert "raise it to 20, KV allows 757" in out
    # the level rows: concurrency 32 ran 8 with 24 waiting
    row = next(line for line in out.splitlines() if line.strip().startswith("32"))
    assert row.split()[-5:-3] == ["8.0", "24.0"]
    assert "physics (decode): not checked: model unknown" in out


def test_advise_json_and_physics_with_a_model_and_gpu(tmp_path, capsys):
    path, _ = _db(tmp_path)
    assert main(["--db", str(path), "advise", "latest", "--json", "--model", "llama-3.1-8b",
                 "--gpu", "h100-sxm"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["advice"]["recommendations"][0]["value"] == 20
    assert [c["level"] for c in data["physics"]] == [1, 2, 4, 8, 16, 32]
    # a token every 12 ms (level 1) from an 8B model on an H100 is slower than its bound
    assert not data["physics"][0]["beats_bound"]
    # 8 running sequences, one token every 26 ms each
    assert data["physics"][3]["batch"] == 8 and data["physics"][3]["time_per_token_ms"] > 25


def test_advise_refuses_an_unknown_sweep(tmp_path, capsys):
    path, _ = _db(tmp_path)
    assert main(["--db", str(path), "advise", "99"]) == 2
    assert "no sweep 99" in capsys.readouterr().err
    assert main(["--db", str(path), "advise", "x"]) == 2
