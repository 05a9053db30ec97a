"""The Sweep page: a stored sweep's curve, its saturation level and the highest level that
met the SLOs, from runs measured at each level."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_dashboard import TIMEOUT_S, chart_specs, frame_with, texts, trace_names, ys

from servescope.analysis.latency import summarize
from servescope.analysis.slo import evaluate_slos
from servescope.analysis.sweep import analyze
from servescope.core.records import RequestRecord
from servescope.core.store import Store

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
MS = 1_000_000
LEVELS = [1, 2, 4, 8, 16]
SLOTS = 4  # the simulated server decodes 4 requests at once; more wait their turn
SERVICE_MS = 200  # 20 ms to the first token, then 10 tokens 20 ms apart
ROUNDS = 6
SLOS = {"e2e_ms": {"p95": 450.0}, "ttft_ms": {"p95": 1000.0}}


def sweep_page() -> None:
    from servescope.core.store import Store
    from servescope.dashboard import sweep

    sweep.render(Store())  # SERVESCOPE_DB names the store


def run_page() -> None:
    from servescope.core.store import Store
    from servescope.dashboard import run

    run.render(Store())


def level_records(level: int, start_ns: int) -> list[RequestRecord]:
    """`level` closed-loop users against a server with SLOTS slots: each request waits
    (level / SLOTS - 1) service times, then takes SERVICE_MS."""
    wait_ms = max(0, level // SLOTS - 1) * SERVICE_MS
    e2e_ms = wait_ms + SERVICE_MS
    records = []
    for user in range(level):
        for k in range(ROUNDS):
            send = start_ns + k * e2e_ms * MS
            first = wait_ms + 20
            offsets = [(first + 20 * j) * MS for j in range(10)]
            records.append(
                RequestRecord(
                    request_id=f"u{user}-{k}",
                    intended_ns=send,
                    send_ns=send,
                    headers_ns=send + MS,
                    first_token_ns=send + first * MS,
                    last_token_ns=send + offsets[-1],
                    end_ns=send + e2e_ms * MS,
                    event_offsets_ns=offsets,
                    prompt_tokens=100,
                    output_tokens=10,
                    status_code=200,
                )
            )
    return records


def add_sweep(store: Store, client_limited_at: int | None = None) -> tuple[int, list[int]]:
    """A finished sweep over LEVELS, a run per level, analyzed like `servescope sweep`; the
    level `client_limited_at` carries a client health that says the load generator limited
    it (the others say it did not)."""
    sweep_id = store.create_sweep(
        "chat-sweep", "chat", "http://127.0.0.1:8000", "concurrency", LEVELS
    )
    summaries, run_ids = [], []
    for level in LEVELS:
        scenario = {"name": "chat", "stages": [{"concurrency": level}], "slos": SLOS}
        run_id = store.create_run("chat", "chat", scenario, "http://127.0.0.1:8000", {})
        records = level_records(level, time.time_ns())
        store.add_requests(run_id, records)
        summary = summarize(records, slos=SLOS)
        summary["slos"] = evaluate_slos(SLOS, summary)
        summary["client"] = {"limited_by_client": level == client_limited_at, "reasons": []}
        store.finish_run(run_id, "finished", summary)
        store.add_run_to_sweep(run_id, sweep_id)
        summaries.append(summary)
        run_ids.append(run_id)
    store.finish_sweep(sweep_id, "finished", analyze(LEVELS, summaries))
    return sweep_id, run_ids


@pytest.fixture
def sweep_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "sweep.db"
    with Store(path) as store:
        add_sweep(store)
    monkeypatch.setenv("SERVESCOPE_DB", str(path))
    return path


def test_sweep_page_empty_store_says_how_to_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVESCOPE_DB", str(tmp_path / "empty.db"))
    at = AppTest.from_function(sweep_page, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert "servescope sweep scenarios/chat.yaml --target URL --concurrency 1,2,4,8" in texts(
        at.info
    )
    assert not at.get("plotly_chart")


def test_sweep_page_marks_saturation_and_the_slo_limit(sweep_db: Path) -> None:
    at = AppTest.from_function(sweep_page, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert "chat-sweep" in at.selectbox[0].format_func(at.selectbox[0].value)
    metrics = {m.label: m.value for m in at.metric}
    # 10 tokens per 200 ms per slot: 50, 100, 200 tokens/s, then flat at 200 while E2E
    # doubles (400 ms at 8 users, 800 ms at 16): saturation at 4. E2E p95 <= 450 ms holds
    # up to 8 users.
    assert metrics["Levels measured"] == "5 of 5"
    assert metrics["Saturation (concurrency)"] == "4"
    assert metrics["Highest concurrency meeting SLOs"] == "8"
    assert metrics["Peak output tokens/s"] == "200"

    throughput, latency = chart_specs(at)
    assert trace_names(throughput) == ["output tokens/s", "requests/s", "goodput (req/s)"]
    assert ys(throughput["data"][0]) == pytest.approx([50, 100, 200, 200, 200])
    assert ys(throughput["data"][2]) == pytest.approx([5, 10, 20, 20, 0])  # goodput req/s
    assert throughput["layout"]["yaxis"]["title"]["text"] == "output tokens/s"
    assert throughput["layout"]["yaxis2"]["title"]["text"] == "requests/s"
    assert throughput["layout"]["xaxis"]["type"] == "log"
    assert throughput["layout"]["xaxis"]["tickvals"] == LEVELS
    marks = [(s["x0"], s["line"]["dash"]) for s in throughput["layout"]["shapes"]]
    assert marks == [(4, "dash"), (8, "dash")]
    labels = [a["text"] for a in throughput["layout"]["annotations"]]
    assert labels == ["saturation: 4", "meets SLOs up to: 8"]
    assert trace_names(latency) == ["TTFT p95", "TTFT p95 SLO", "ITL p95", "E2E p95", "E2E p95 SLO"]
    assert ys(latency["data"][3]) == pytest.approx([200, 200, 200, 400, 800])
    assert ys(latency["data"][4]) == pytest.approx([450, 450])
    assert latency["layout"]["yaxis"]["type"] == "log"

    curve = frame_with(at, "output tokens/s")
    assert list(curve["level"]) == LEVELS
    assert list(curve["SLOs"]) == ["met", "met", "met", "met", "MISS"]
    assert list(curve["run"]) == ["#1", "#2", "#3", "#4", "#5"]
    assert list(curve["requests ok"]) == [level * 6 for level in LEVELS]
    links = texts(at.markdown)
    assert "Run #5 at 16 (finished)" in links


def test_sweep_page_marks_a_level_the_load_generator_limited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "limited.db"
    with Store(path) as store:
        add_sweep(store, client_limited_at=8)
    monkeypatch.setenv("SERVESCOPE_DB", str(path))
    at = AppTest.from_function(sweep_page, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    # 4 -> 8 is where the unflagged sweep saturates; a client-limited 8 says nothing
    assert {m.label: m.value for m in at.metric}["Saturation (concurrency)"] == "not reached"
    assert "load generator itself was the bottleneck at concurrency 8 " in texts(at.warning)
    throughput, _ = chart_specs(at)
    cross = next(t for t in throughput["data"] if t["name"] == "client-limited")
    assert ys(cross, "x") == [8] and ys(cross) == pytest.approx([200])
    assert cross["marker"]["symbol"] == "x"
    curve = frame_with(at, "output tokens/s")
    assert list(curve["load generator"]) == ["ok", "ok", "ok", "LIMITED", "ok"]


def test_a_sweep_still_going_shows_what_it_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "running.db"
    with Store(path) as store:
        store.create_sweep("chat-sweep", "chat", "http://127.0.0.1:8000", "concurrency", [1, 2])
    monkeypatch.setenv("SERVESCOPE_DB", str(path))
    at = AppTest.from_function(sweep_page, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    info = texts(at.info)
    assert "This sweep is still going" in info
    assert "No level of this sweep has finished yet." in info


def test_app_has_a_sweep_page_linking_its_runs(
    sweep_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.argv", ["app.py"])
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S).run()
    pages = {info["page_name"]: h for h, info in at._registered_pages.items()}
    # the first: "/", hidden
    assert list(pages) == ["servescope", "Live", "Run", "Sweep", "Compare", "Capacity"]
    # Function pages have no file for AppTest.switch_page: go by the page's hash.
    at._page_hash = pages["Sweep"]
    at.run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Sweep"]
    assert len(at.get("plotly_chart")) == 2
    links = at.get("page_link")
    assert [link.proto.label for link in links][-1] == "Run #5 at 16 (finished)"
    assert links[-1].proto.page_script_hash == pages["Run"]
    assert links[-1].proto.query_string == "run=5"


def test_run_page_opens_the_run_a_link_names(sweep_db: Path) -> None:
    at = AppTest.from_function(run_page, default_timeout=TIMEOUT_S)
    at.query_params["run"] = "3"
    at.run()
    assert not at.exception
    assert at.selectbox[0].value == 3
    assert {m.label: m.value for m in at.metric}["Requests ok"] == "24"  # 4 users x 6
