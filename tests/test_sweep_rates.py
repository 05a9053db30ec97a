"""`servescope sweep --rates`: one open-loop run per request rate, stored as a sweep."""

from __future__ import annotations

import json

import pytest
from test_loadgen_modes import ChatServer

from helpers import servescope
from servescope.core.store import Store

SCENARIO = """\
name: rates
seed: 5
prompt_tokens: 32
output_tokens: 4
arrivals: {process: constant, stages: [{rate: 1/s, duration: 2s}]}
"""


@pytest.fixture()
def server():
    s = ChatServer()
    yield s
    s.close()


def test_rate_sweep_runs_each_rate(server, tmp_path):
    scenario, out, db = tmp_path / "rates.yaml", tmp_path / "sweep.json", tmp_path / "s.db"
    scenario.write_text(SCENARIO)
    res = servescope("sweep", str(scenario), "--target", server.url, "--rates", "5,10",
                     "--duration", "2s", "--out", str(out), "--quiet", db=db, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    curve = json.loads(out.read_text())["curve"]
    assert [row["level"] for row in curve] == [5, 10]
    assert [row["requests_ok"] for row in curve] == [10, 20]  # constant arrivals, 2 s each
    with Store(db) as store:
        (sweep,) = store.sweeps()
        assert sweep["kind"] == "rate" and sweep["levels"] == [5, 10]


def test_bad_rates_are_a_usage_error(tmp_path):
    res = servescope("sweep", "chat", "--target", "http://127.0.0.1:9", "--rates", "1,-2",
                     db=tmp_path / "s.db")
    assert res.returncode == 2 and "rates must be positive" in res.stderr
