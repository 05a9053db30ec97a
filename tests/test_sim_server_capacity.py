"""The Capacity page's predicted-against-measured section (dashboard/capacity_sim.py) on a
real sweep of the simulated server: calibrated on the lowest levels, it predicts the
levels above them, past the server's max_num_seqs knee, and labels its lines simulated.

The sweep's server is itself the simulator (with its physics step time), so the prediction
has a known answer; the bounds stay generous all the same (a short sweep on a busy machine)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from browser import free_port
from helpers import servescope
from servescope.core.store import Store
from servescope.dashboard import capacity_sim
from servescope.engines.sim_driver import SimSpec
from servescope.engines.sim_server import SimLocalServer

pytestmark = pytest.mark.slow  # a whole sweep against a server in its own process

LEVELS = (1, 2, 3, 4, 8)


@pytest.fixture(scope="module")
def sweep_db(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sim-sweep")
    server = SimLocalServer(SimSpec("llama-3.1-8b", "h100-80gb", max_num_seqs=4),
                            port=free_port(), log_path=tmp / "sim.log")
    server.start_and_wait(progress=lambda _msg: None)
    db = tmp / "sweep.db"
    try:
        res = servescope("sweep", "chat", "--target", server.url, "--concurrency",
                         ",".join(map(str, LEVELS)), "--duration", "3s", "--requests", "150",
                         "--quiet", db=db, timeout=400)
    finally:
        server.stop()
    assert res.returncode == 0, res.stderr[-3000:]
    return db


def test_the_simulator_predicts_the_levels_above_its_calibration(sweep_db):
    with Store(sweep_db) as store:
        sweep = store.sweeps()[0]
        levels = capacity_sim.measured_levels(store, sweep)
        assert [lv.level for lv in levels] == list(map(float, LEVELS))
        config, _ = capacity_sim.measured_scheduler(store, sweep)
        assert config.max_num_seqs == 4  # from /server_info, through the run's manifest
        n_fit = capacity_sim.calibration_count(len(levels))
        assert n_fit == 3
        cal = capacity_sim.calibrate([lv.observed for lv in levels[:n_fit]])
        table = capacity_sim.prediction_table(levels, "concurrency", config, cal, n_fit,
                                              replicas=10)
    top = table[(table["level"] == 8) & (table["series"] == "throughput")].iloc[0]
    assert not top["calibration"]
    assert 0.5 < top["simulated"] / top["measured"] < 2, top.to_dict()
    # every prediction has its 90 % interval around it; the simulated server's own
    # throughput falls inside at most levels (a short, noisy sweep: not all)
    assert (table["low"] <= table["simulated"]).all() and \
        (table["simulated"] <= table["high"]).all()
    tput = table[table["series"] == "throughput"]
    inside = ((tput["low"] <= tput["measured"]) & (tput["measured"] <= tput["high"])).sum()
    assert inside >= 3, tput.to_dict("records")
    # Past max_num_seqs the extra users queue: TTFT grows several-fold, in both.
    ttft = table[table["series"] == "TTFT p50"].set_index("level")
    assert ttft.loc[8.0, "measured"] > 3 * ttft.loc[1.0, "measured"]
    assert ttft.loc[8.0, "simulated"] > 3 * ttft.loc[1.0, "simulated"]


def test_the_capacity_section_draws_it_labelled_simulated(sweep_db, monkeypatch):
    monkeypatch.setenv("SERVESCOPE_DB", str(sweep_db))
    at = AppTest.from_function(_section, default_timeout=60).run()
    assert not at.exception
    assert any(c.value.startswith("SIMULATED: step time calibrated") for c in at.caption)
    charts = at.get("plotly_chart")
    assert len(charts) == 3
    traces = {t["name"]: t for c in charts for t in _spec(c)["data"]}
    assert "throughput simulated" in traces and "throughput measured" in traces
    assert traces["throughput simulated"]["error_y"]["array"]  # its 90 % intervals drawn
    shown = at.dataframe[0].value
    assert shown["series"].nunique() == 5
    assert shown["90% interval"].notna().all() and shown["measured inside"].notna().all()


def _spec(chart) -> dict:
    import json

    return json.loads(chart.proto.spec)


def _section() -> None:
    from servescope.core.store import Store
    from servescope.dashboard import capacity_sim

    store = Store()
    capacity_sim.render_predicted(store, store.sweeps()[0]["id"])
