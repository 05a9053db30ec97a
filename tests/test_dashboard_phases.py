"""The Run page's server phases per request: a run whose requests have the server's spans
shows the phases table, the request timeline, TTFT against queue and the distributions."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_dashboard import TIMEOUT_S, chart_specs, frame_with, texts, trace_names, ys

from servescope.analysis.phases import BEFORE, request_phases
from servescope.core.records import RequestRecord, ServerSpan
from servescope.core.store import Store
from servescope.dashboard import figures_phases

S, MS = 1_000_000_000, 1_000_000
REQUESTS = 12


def run_page() -> None:
    from servescope.core.store import Store
    from servescope.dashboard import run

    run.render(Store())


def _requests(t0_ns: int) -> tuple[list[RequestRecord], list[ServerSpan]]:
    """Request i queues 10 * i ms on the server; the client sees 5 ms more at each end."""
    recs, spans = [], []
    for i in range(REQUESTS):
        send = t0_ns + i * 100 * MS
        queue_ms = 10.0 * i
        ttft_ms, e2e_ms = queue_ms + 25.0, queue_ms + 225.0  # the server's
        recs.append(RequestRecord(
            f"local-{i:07d}", send, send, first_token_ns=send + int((ttft_ms + 5) * MS),
            last_token_ns=send + int((e2e_ms + 9) * MS), end_ns=send + int((e2e_ms + 10) * MS),
            event_offsets_ns=[int((ttft_ms + 5) * MS), int((e2e_ms + 9) * MS)],
            prompt_tokens=64, output_tokens=20, target_output_tokens=20))
        start = send + 5 * MS
        spans.append(ServerSpan(
            trace_id=f"{i:032x}", span_id=f"{i:016x}", name="llm_request", start_ns=start,
            end_ns=start + int(e2e_ms * MS), request_id=f"chatcmpl-local-{i:07d}",
            queue_s=queue_ms / 1000, prefill_s=0.02, decode_s=0.2, ttft_s=ttft_ms / 1000,
            e2e_s=e2e_ms / 1000, prompt_tokens=64, output_tokens=20))
    return recs, spans


@pytest.fixture
def traced_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "traced.db"
    with Store(path) as store:
        run_id = store.create_run("traced", "chat", {"name": "chat"},
                                  "http://127.0.0.1:8000", {"model": "tiny"})
        recs, spans = _requests(int(store.run(run_id)["started_at"] * S) + S)
        store.add_requests(run_id, recs)
        store.add_server_spans(spans)
        store.finish_run(run_id, "finished", None)
    monkeypatch.setenv("SERVESCOPE_DB", str(path))
    return path


def test_run_page_shows_each_requests_server_phases(traced_db: Path) -> None:
    at = AppTest.from_function(run_page, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert "12 of 12 successful requests joined" in texts(at.caption)
    table = frame_with(at, "phase")
    rows = dict(zip(table["phase"], table["p50 (ms)"], strict=True))
    assert rows["queue (server)"] == pytest.approx(55.0)  # 10 * i ms, i = 0..11
    assert rows["TTFT remainder (client - server)"] == pytest.approx(5.0)
    assert rows["E2E remainder (client - server)"] == pytest.approx(10.0)
    charts = {c["layout"]["title"]["text"]: c for c in chart_specs(at)}
    timeline = charts["Requests over time, split into phases"]
    assert trace_names(timeline)[:3] == [BEFORE, "queue", "prefill"]
    assert ys(timeline["data"][1], "x") == pytest.approx([i * 0.01 for i in range(1, 12)])
    scatter = charts["TTFT (client) against time in queue (server)"]
    assert ys(scatter["data"][0], "x") == pytest.approx([10.0 * i for i in range(12)])
    assert "Phases and remainder per request" in charts
    # "Where the time went" takes the server's means from the same requests.
    split = charts["Mean time per request: server phases and client view"]
    queue = next(t for t in split["data"] if t["name"] == "queue")
    assert queue["x"][0] == pytest.approx(55.0)


def test_the_timeline_shows_the_first_requests_only():
    recs, spans = _requests(10**18)
    rows = request_phases(recs, spans)
    fig = figures_phases.request_timeline(rows, max_requests=5)
    assert {len(t.y) for t in fig.data if t.name == "queue"} == {4}  # #1 has no queue
    assert not figures_phases.request_timeline([]).data
