"""Server phases per request (vLLM spans, llama.cpp timings, Ollama durations) joined to
the client's records, and the window fallback that never reaches into a neighbouring run."""

from __future__ import annotations

import json
import math

import pytest

from servescope.analysis.join import WINDOW_PAD_S, run_window, server_section
from servescope.analysis.phases import (
    LLAMACPP_TIMINGS,
    OLLAMA_NATIVE,
    VLLM_SPAN,
    from_timings,
    match_spans,
    request_phases,
    summarize_phases,
)
from servescope.collectors.ollama import phases_from_response
from servescope.core.records import RequestRecord, Sample, ServerSpan

S = 1_000_000_000  # ns per second
MS = 1_000_000


def record(rid: str, send_s: float, ttft_ms: float, e2e_ms: float, **kw) -> RequestRecord:
    send = int(send_s * S)
    return RequestRecord(rid, send, send, first_token_ns=send + int(ttft_ms * MS),
                         end_ns=send + int(e2e_ms * MS), output_tokens=64, **kw)


def span(rid: str, start_s: float, e2e_s: float = 0.9, n: int = 0, **kw) -> ServerSpan:
    start = int(start_s * S)
    fields = {"queue_s": 0.2, "prefill_s": 0.05, "decode_s": 0.6, "ttft_s": 0.28,
              "e2e_s": e2e_s, **kw}
    return ServerSpan(trace_id=f"{n:032x}", span_id=f"{n:016x}", name="llm_request",
                      start_ns=start, end_ns=start + int(e2e_s * S),
                      request_id=f"chatcmpl-{rid}", **fields)


def test_each_record_joins_the_span_of_its_own_run():
    # Two runs of one seed send the same ids; the spans of both are in the store.
    rec = record("local-0000001-ab", 100.0, ttft_ms=300, e2e_ms=1000)
    earlier = span("local-0000001-ab", 40.0, n=1)   # the previous run's request
    own = span("local-0000001-ab", 100.05, n=2)
    other_id = span("local-0000002-cd", 100.05, n=3)
    assert match_spans([rec], [earlier, own, other_id]) == [own]
    (row,) = request_phases([rec], [earlier, own, other_id])
    assert row.server.source == VLLM_SPAN
    assert row.server.queue_ms == pytest.approx(200) and row.server.ttft_ms == pytest.approx(280)
    assert row.ttft_remainder_ms == pytest.approx(20)
    assert row.e2e_remainder_ms == pytest.approx(100)


def test_completions_spans_join_too():
    """vLLM's /v1/completions names its one engine request `cmpl-` + the header + `-0`."""
    rec = record("local-0000003-ef", 100.0, ttft_ms=300, e2e_ms=1000)
    s = span("x", 100.05, n=1)
    s.request_id = "cmpl-local-0000003-ef-0"
    assert match_spans([rec], [s]) == [s]


def test_a_span_joins_one_record_only():
    a = record("r", 100.0, 300, 1000)
    b = record("r", 101.0, 300, 1000)  # the same id twice (another worker's run)
    s = span("r", 100.05, n=1)
    assert match_spans([a, b], [s]) == [s, None]
    assert len(request_phases([a, b], [s])) == 1


def test_timeline_pieces_add_up_to_the_clients_e2e():
    rec = record("r", 100.0, ttft_ms=300, e2e_ms=1000)
    (row,) = request_phases([rec], [span("r", 100.01, n=1)])
    pieces = dict(row.segments())
    assert sum(pieces.values()) == pytest.approx(1000)
    assert pieces["queue"] == pytest.approx(200) and pieces["prefill"] == pytest.approx(50)
    assert pieces["decode"] == pytest.approx(900 - 280)  # server E2E - server TTFT
    assert next(iter(pieces)).startswith("client + HTTP (before")
    # The first token's way to the client took longer than the last's (TTFT remainder 20 ms,
    # E2E remainder 10 ms): the server's decode is cut to fit, never the client's E2E.
    (row,) = request_phases([rec], [span("r", 100.01, e2e_s=0.99, n=1)])
    assert (row.ttft_remainder_ms, row.e2e_remainder_ms) == pytest.approx((20, 10))
    assert sum(v for _, v in row.segments()) == pytest.approx(1000)


def test_llamacpp_timings_from_the_captured_stream(fixtures_dir):
    text = (fixtures_dir / "llamacpp-b11434-chat-completions-stream.txt").read_text()
    last = [line for line in text.splitlines() if line.startswith("data: {")][-1]
    timings = json.loads(last.removeprefix("data: "))["timings"]
    phases = from_timings(timings)
    assert phases.source == LLAMACPP_TIMINGS
    assert (phases.prefill_ms, phases.decode_ms) == (0.448, 6.378)
    assert phases.queue_ms is None and phases.e2e_ms is None  # llama.cpp does not say
    assert phases.prompt_tokens == 66 and phases.output_tokens == 24  # 1 computed + 65 cached
    rec = record("r", 100.0, 2.0, 9.0, server_timings=timings)
    (row,) = request_phases([rec])
    assert row.e2e_remainder_ms is None
    assert sum(v for _, v in row.segments()) == pytest.approx(9.0)


def test_ollama_durations_from_the_captured_reply(fixtures_dir):
    body = json.loads((fixtures_dir / "ollama-0.5.4-ipexllm-generate.json").read_text())
    timings = phases_from_response(body)
    phases = from_timings(timings)
    assert phases.source == OLLAMA_NATIVE
    assert phases.e2e_ms == pytest.approx(body["total_duration"] / 1e6)
    assert phases.decode_ms == pytest.approx(body["eval_duration"] / 1e6)
    e2e_ms = body["total_duration"] / 1e6 + 5
    (row,) = request_phases([record("r", 100.0, 1.0, e2e_ms, server_timings=timings)])
    assert row.e2e_remainder_ms == pytest.approx(5)
    assert sum(v for _, v in row.segments()) == pytest.approx(e2e_ms)


def test_the_summary_counts_joined_requests_and_remainders():
    recs = [record(f"r{i}", 100.0 + i, 300, 1000) for i in range(4)]
    recs.append(RequestRecord("failed", 1, 1, error_class="http_500"))
    rows = request_phases(recs, [span(f"r{i}", 100.01 + i, n=i) for i in range(3)])
    got = summarize_phases(rows, requests_ok=4)
    assert got["sources"] == {VLLM_SPAN: 3}
    assert (got["joined"], got["missing"]) == (3, 1)
    assert got["queue_ms"]["p50"] == pytest.approx(200)
    assert got["e2e_remainder_ms"]["count"] == 3 and got["negative_remainders"] == 0
    assert summarize_phases([], 4) is None


# -- the window fallback -----------------------------------------------------------------
def _histograms(count: float) -> list[Sample]:
    """vLLM's phase and E2E histograms after `count` requests of 0.1 s each."""
    out = []
    for concept in ("queue_seconds", "prefill_seconds", "decode_seconds", "e2e_seconds"):
        buckets = [[0.5, count], [math.inf, count]]
        out.append(Sample(concept, count, f"vllm:{concept}", {},
                          {"sum": 0.1 * count, "buckets": buckets}))
    return out


def _run(store, url: str, started: float, ended: float, sends: list[float]) -> int:
    run_id = store.create_run("r", "chat", {}, url, {})
    store.add_requests(run_id, [record(f"q{i}", t, 50, 900) for i, t in enumerate(sends)])
    with store._write() as conn:  # the runs' clock, as if they had run then
        conn.execute("UPDATE runs SET started_at=?, ended_at=? WHERE id=?",
                     (started, ended, run_id))
    return run_id


def test_the_window_never_pads_into_the_previous_run(store):
    """Two runs back to back (a sweep's levels): the first ends 1.1 s before the second
    starts. A 5 s pad would take in the first run's last two requests."""
    url = "http://127.0.0.1:8000"
    tid = store.upsert_target("vllm", "vllm", url)
    first = _run(store, url, 1000.0, 1011.0, [1000.0 + i for i in range(10)])  # ends ..1009.9
    second = _run(store, url, 1011.0, 1021.0, [1012.0, 1013.0, 1014.0, 1015.0])
    finished = {1000: 0, 1002: 2, 1004: 4, 1006: 6, 1008: 8, 1010: 10, 1012: 10, 1014: 11,
                1016: 13, 1018: 14, 1020: 14, 1022: 14}
    for ts, n in finished.items():
        store.add_samples(tid, float(ts), _histograms(n))
    win = run_window(store, store.run(second))
    assert win.since == pytest.approx(1009.9)  # the first run's last end, not 1011 - 5 s
    assert win.until == pytest.approx(1021.0 + WINDOW_PAD_S)
    server = server_section(store, second, wait=False)
    assert server["requests_finished"] == 4 and server["requests_made"] == 4
    assert server["other_traffic"] is False
    assert server["window_notes"][0] == (
        "the server finished 4 requests in the window, the client made 4")
    # ... and the first run's window ends where the second run's load began.
    assert run_window(store, store.run(first)).until == pytest.approx(1012.0)
    assert server_section(store, first, wait=False)["requests_finished"] == 10
    assert server["per_request"] is None  # no spans, no timings: the window is all there is


def test_the_window_flags_other_traffic(store):
    url = "http://127.0.0.1:8000"
    tid = store.upsert_target("vllm", "vllm", url)
    run_id = _run(store, url, 1000.0, 1010.0, [1001.0, 1002.0])
    for ts, n in {998: 0, 1004: 3, 1012: 7}.items():  # 7 finished, 2 of them ours
        store.add_samples(tid, float(ts), _histograms(n))
    server = server_section(store, run_id, wait=False)
    assert server["requests_finished"] == 7 and server["other_traffic"] is True
    assert "other traffic reached the server" in server["window_notes"][0]
