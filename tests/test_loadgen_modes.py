"""Open-loop arrivals, trace replay and multi-turn conversations, run for real: the load
generator runs in its own process (`servescope load`; Locust monkey-patches the process it
runs in) against a small streaming chat server on 127.0.0.1 written here."""

from __future__ import annotations

import http.server
import itertools
import json
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from helpers import servescope
from servescope.analysis.latency import e2e_from_intended_ms, e2e_ms, send_lag_ms
from servescope.core.records import RequestRecord
from servescope.core.store import Store
from servescope.loadgen.arrivals import RateStage, schedule

# Test tier: real load runs of seconds each, and sends checked against their schedule.
pytestmark = pytest.mark.timing

FIRST_TOKEN_S = 0.02
TOKEN_GAP_S = 0.005
MS = 1_000_000


def count_tokens(messages: list[dict[str, str]]) -> int:
    """The fake tokenizer: a word is a token, each message costs 4 more (the template)."""
    return sum(len(m["content"].split()) + 4 for m in messages)


class ChatServer:
    """OpenAI-style chat streaming on 127.0.0.1: after FIRST_TOKEN_S, one content event per
    output token every TOKEN_GAP_S (token i is the word "w<i>"), then a usage event and
    [DONE]. /tokenize counts like `count_tokens`. Every chat body is kept by request id."""

    def __init__(self) -> None:
        server = self
        self.bodies: dict[str, dict] = {}

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def reply(self, obj, status=200):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/v1/models":
                    self.reply({"data": [{"id": "fake-model"}]})
                else:
                    self.reply({"error": "not found"}, 404)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if self.path == "/tokenize":
                    return self.reply({"count": count_tokens(body["messages"])})
                if self.path != "/v1/chat/completions":
                    return self.reply({"error": "not found"}, 404)
                server.bodies[self.headers["x-request-id"]] = body
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                time.sleep(FIRST_TOKEN_S)
                n = body["max_tokens"]
                for i in range(n):
                    self.event({"choices": [{"index": 0, "delta": {"content": f"w{i} "}}]})
                    time.sleep(TOKEN_GAP_S)
                self.event({"choices": [], "usage": {
                    "prompt_tokens": count_tokens(body["messages"]), "completion_tokens": n}})
                self.event("[DONE]")
                self.wfile.write(b"0\r\n\r\n")

            def event(self, obj):
                data = obj if isinstance(obj, str) else json.dumps(obj)
                chunk = f"data: {data}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    s = ChatServer()
    yield s
    s.close()


def run(server: ChatServer, tmp_path: Path, scenario: str, *flags: str):
    """Run a scenario through `servescope load`; returns (records by intended send time,
    summary, chat bodies the server received)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path, db, out = tmp_path / "scenario.yaml", tmp_path / "runs.db", tmp_path / "summary.json"
    path.write_text(scenario)
    server.bodies.clear()
    res = servescope("load", str(path), "--target", server.url, "--db", str(db),
                     "--out", str(out), "--quiet", *flags, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads(out.read_text())
    with Store(db) as store:
        records = sorted(store.requests(summary["run_id"]), key=lambda r: r.intended_ns)
    return records, summary, dict(server.bodies)


def offsets_s(records: list[RequestRecord]) -> list[float]:
    return [(r.intended_ns - records[0].intended_ns) / 1e9 for r in records]


def assert_latency_from_intended_includes_the_client(records: list[RequestRecord]) -> None:
    for r in records:
        assert r.ok, r.error
        assert r.send_ns >= r.intended_ns
        assert e2e_from_intended_ms(r) >= e2e_ms(r)


def test_open_loop_sends_on_the_constant_schedule(server, tmp_path):
    records, summary, _ = run(server, tmp_path, """\
name: constant
seed: 1
prompt_tokens: {dist: uniform, min: 30, max: 60}
output_tokens: 8
arrivals: {process: constant, rate: 20/s, duration: 2s}
request_timeout: 10s
""")
    assert len(records) == 40 == summary["requests_ok"]  # 20/s x 2 s, exactly
    gaps = [(b.intended_ns - a.intended_ns) / MS for a, b in itertools.pairwise(records)]
    assert gaps == pytest.approx([50.0] * 39, abs=1e-5)  # the schedule, to the nanosecond
    assert_latency_from_intended_includes_the_client(records)
    lags = sorted(send_lag_ms(r) for r in records)
    assert lags[len(lags) // 2] < 50, lags  # sent on time, not when a user was free
    # Each request asked for what the scenario says, counted by the server.
    assert all(r.prompt_tokens == r.target_prompt_tokens for r in records)
    assert all(r.output_tokens == 8 for r in records)


POISSON = """\
name: poisson
seed: {seed}
prompt_tokens: {{dist: lognormal, median: 40, sigma: 0.5, min: 12, max: 200}}
output_tokens: {{dist: uniform, min: 4, max: 12}}
correlation: 0.5
shared_prefix_tokens: 8
prefix_groups: 2
arrivals: {{process: poisson, rate: 25/s, duration: 3s}}
request_timeout: 10s
"""


@pytest.fixture(scope="module")
def poisson_runs(server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("poisson")
    return [run(server, tmp / name, POISSON.format(seed=seed))
            for name, seed in (("a", 3), ("b", 3), ("c", 4))]


def test_poisson_arrivals_follow_the_seeded_schedule(poisson_runs):
    records, summary, _ = poisson_runs[0]
    expected = schedule([RateStage(25, 3)], "poisson", seed=3)
    assert len(records) == len(expected) == summary["requests_ok"]
    assert abs(len(records) - 75) < 4 * 75**0.5  # rate x duration
    # Intended send times are the schedule's offsets (relative to the first arrival).
    assert offsets_s(records) == pytest.approx([t - expected[0] for t in expected], abs=1e-6)
    assert_latency_from_intended_includes_the_client(records)


def test_the_same_seed_sends_the_same_requests_at_the_same_times(poisson_runs):
    (a, _, bodies_a), (b, _, bodies_b), (c, _, bodies_c) = poisson_runs

    def sent(records, bodies):
        return [(round(off, 6), r.request_id, r.target_prompt_tokens, r.target_output_tokens,
                 json.dumps(bodies[r.request_id]["messages"]))
                for off, r in zip(offsets_s(records), records, strict=True)]

    assert sent(a, bodies_a) == sent(b, bodies_b)  # lengths, prompts and arrival times
    assert sent(a, bodies_a) != sent(c, bodies_c)
    assert offsets_s(a) != offsets_s(c)


def test_trace_replay_follows_the_scaled_timestamps(server, tmp_path):
    trace = [(100.0, 30, 5), (100.4, 60, 8), (101.0, 45, 3), (102.0, 20, 12), (102.2, 25, 6)]
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "trace.jsonl").write_text("".join(
        json.dumps({"t": t, "prompt_tokens": p, "output_tokens": o}) + "\n" for t, p, o in trace))
    records, _, _ = run(server, tmp_path, """\
name: replay
trace: {file: trace.jsonl, time_scale: 0.5}
request_timeout: 10s
""")
    assert len(records) == len(trace)
    assert offsets_s(records) == pytest.approx([0.0, 0.2, 0.5, 1.0, 1.1], abs=1e-6)
    assert [(r.target_prompt_tokens, r.output_tokens) for r in records] == [
        (p, o) for _, p, o in trace]
    assert all(r.prompt_tokens == r.target_prompt_tokens for r in records)
    assert_latency_from_intended_includes_the_client(records)


def conversations(records: list[RequestRecord]) -> dict[str, list[RequestRecord]]:
    convs: dict[str, list[RequestRecord]] = defaultdict(list)
    for r in records:
        convs[r.request_id.rpartition("-t")[0]].append(r)
    return {k: sorted(v, key=lambda r: int(r.request_id.rpartition("-t")[2]))
            for k, v in convs.items()}


@pytest.mark.parametrize("shape", [
    "stages: [{concurrency: 2, duration: 3s, think_time: 50ms}]",
    "arrivals: {process: poisson, rate: 3/s, duration: 2s, think_time: 50ms}",
], ids=["closed", "open"])
def test_multi_turn_context_grows_turn_by_turn(server, tmp_path, shape):
    records, _, bodies = run(server, tmp_path, f"""\
name: turns
seed: 9
prompt_tokens: {{dist: uniform, min: 20, max: 40}}
output_tokens: {{dist: uniform, min: 5, max: 15}}
turns: 3
shared_prefix_tokens: 16
{shape}
request_timeout: 10s
""")
    convs = conversations(records)
    complete = [turns for turns in convs.values() if len(turns) == 3]
    assert complete, convs.keys()
    for turns in complete:
        for prev, this in itertools.pairwise(turns):
            # The previous prompt and its whole answer are in this prompt, plus a new message.
            assert this.prompt_tokens > prev.prompt_tokens + prev.output_tokens
            assert this.prompt_tokens == this.target_prompt_tokens
            # A turn is due only after the previous answer (and the think time).
            assert this.intended_ns >= prev.end_ns + 50 * MS
            sent = bodies[this.request_id]["messages"]
            answer = " ".join(f"w{i}" for i in range(prev.output_tokens)) + " "
            assert sent[-2] == {"role": "assistant", "content": answer}
            assert sent[:-2] == bodies[prev.request_id]["messages"]  # history, unchanged


def test_arrivals_over_max_in_flight_are_recorded_as_client_overload(server, tmp_path):
    # Each request takes ~20 + 20 x 5 = 120 ms; at 40/s about five would be in flight.
    records, summary, _ = run(server, tmp_path, """\
name: overload
seed: 2
prompt_tokens: 30
output_tokens: 20
arrivals: {process: constant, rate: 40/s, duration: 2s}
request_timeout: 10s
""", "--max-in-flight", "1")
    assert len(records) == 80  # every arrival is a record, sent or not
    dropped = [r for r in records if r.error_class == "client_overload"]
    sent = [r for r in records if r.ok]
    assert len(dropped) + len(sent) == 80
    assert len(dropped) > 40 and len(sent) >= 10
    gaps = [(b.intended_ns - a.intended_ns) / MS for a, b in itertools.pairwise(records)]
    assert gaps == pytest.approx([25.0] * 79, abs=1e-5)  # dropped ones keep their arrival
    for r in dropped:
        assert r.first_token_ns is None and r.end_ns is None and r.send_ns >= r.intended_ns
        assert "max_in_flight 1" in r.error
    assert summary["errors_by_class"] == {"client_overload": len(dropped)}
    assert summary["requests_failed"] == len(dropped)
