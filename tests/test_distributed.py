"""Distributed runs for real: `servescope load --workers 2` is a Locust master that starts two
worker processes on loopback; they drive the small streaming chat server of
test_loadgen_modes and send every request record back to the master's store."""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections import Counter
from pathlib import Path

import pytest
from test_loadgen_modes import ChatServer

from helpers import servescope
from servescope.core.store import Store

MS = 1_000_000


@pytest.fixture(scope="module")
def server():
    s = ChatServer()
    yield s
    s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_distributed(server: ChatServer, tmp_path: Path, scenario: str, *flags: str):
    """`servescope load` with two local workers; returns (summary, records, run row)."""
    path, db, out = tmp_path / "scenario.yaml", tmp_path / "runs.db", tmp_path / "summary.json"
    path.write_text(scenario)
    server.bodies.clear()
    res = servescope("load", str(path), "--target", server.url, "--workers", "2", "--out",
                     str(out), "--quiet", *flags, db=db, timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads(out.read_text())
    with Store(db) as store:
        records = store.requests(summary["run_id"])
        run = store.run(summary["run_id"])
        assert store.count_requests(summary["run_id"]) == len(records)
    return summary, records, run


def test_two_workers_deliver_every_record_to_the_master_exactly_once(server, tmp_path):
    started = time.monotonic()
    summary, records, run = run_distributed(server, tmp_path, """\
name: distributed
seed: 7
prompt_tokens: {dist: uniform, min: 20, max: 40}
output_tokens: {dist: uniform, min: 4, max: 10}
shared_prefix_tokens: 8
stages: [{concurrency: 8, duration: 30s}]
max_requests: 60
request_timeout: 10s
""")
    assert time.monotonic() - started < 60
    assert run["status"] == summary["status"] == "finished"
    ids = [r.request_id for r in records]
    # Every record once: stored rows == distinct ids == what the workers sent == the summary.
    sent_by = {name: w["requests"] for name, w in summary["client"]["workers"].items()}
    assert len(ids) == len(set(ids)) == sum(sent_by.values()) == 60
    assert summary["requests_ok"] + summary["requests_failed"] == 60
    assert summary["requests_ok"] == 60
    # ... and the server saw each request once.
    assert sorted(server.bodies) == sorted(ids)
    # Both workers sent, each its share of max_requests, with ids that name the worker.
    by_worker = Counter(r.worker for r in records)
    assert by_worker == {"w0": 30, "w1": 30} == sent_by
    assert all(r.request_id.startswith(f"{r.worker}-") for r in records)
    # Together they sent what one process would: conversations 0..59, each once; worker k
    # takes every second one, and its users have their own ids.
    index = {r.request_id: int(r.request_id.split("-")[1]) for r in records}
    assert sorted(index.values()) == list(range(60))
    assert all(index[r.request_id] % 2 == int(r.worker[1]) for r in records)
    assert {r.user_id % 2 for r in records if r.worker == "w1"} == {1}
    assert {r.user_id for r in records} <= set(range(8))
    assert all(r.prompt_tokens == r.target_prompt_tokens for r in records)
    # Client health: the worst worker at the top level, one entry per worker.
    client = summary["client"]
    assert set(client["workers"]) == {"w0", "w1"}
    assert client["worst_worker"] in ("w0", "w1")
    assert client["workers_lost"] == []
    for w in client["workers"].values():
        assert w["loop_lag_ms"]["p99"] is not None
        assert 1 <= w["connections"]["peak_in_use"] <= 4  # 8 users over 2 workers
        assert w["peak_concurrency"] == 4  # 8 users over 2 workers
    assert client["limited_by_client"] == any(
        w["limited_by_client"] for w in client["workers"].values())
    assert run["summary"]["client"]["workers"].keys() == {"w0", "w1"}


def test_open_loop_arrivals_are_split_by_worker_index(server, tmp_path):
    summary, records, _ = run_distributed(server, tmp_path, """\
name: distributed-open
seed: 1
prompt_tokens: {dist: uniform, min: 30, max: 60}
output_tokens: 4
arrivals: {process: constant, rate: 20/s, duration: 2s}
request_timeout: 10s
""")
    assert summary["status"] == "finished" and summary["requests_ok"] == 40
    arrival = {r.request_id: int(r.request_id.split("-")[1]) for r in records}
    assert sorted(arrival.values()) == list(range(40))  # 20/s x 2 s, each arrival once
    for k in (0, 1):  # worker k takes arrivals k, k + 2, ...: every 100 ms on its own clock
        mine = sorted((r for r in records if r.worker == f"w{k}"), key=lambda r: r.intended_ns)
        assert [arrival[r.request_id] for r in mine] == list(range(k, 40, 2))
        gaps = [(b.intended_ns - a.intended_ns) / MS for a, b in itertools.pairwise(mine)]
        assert gaps == pytest.approx([100.0] * 19, abs=1e-5)


def test_a_worker_without_a_master_fails_with_one_line(tmp_path):
    started = time.monotonic()
    res = servescope("load", "--worker", "--master-port", str(free_port()),
                     "--connect-timeout", "2s", db=tmp_path / "runs.db", timeout=30)
    assert time.monotonic() - started < 20
    assert res.returncode == 1
    assert res.stderr.strip().count("\n") == 0, res.stderr
    assert "no master answered at 127.0.0.1:" in res.stderr


def test_a_master_without_workers_fails_with_one_line_and_no_run(server, tmp_path):
    path, db = tmp_path / "scenario.yaml", tmp_path / "runs.db"
    path.write_text("name: lonely\nprompt_tokens: 10\noutput_tokens: 2\n"
                    "stages: [{concurrency: 2, duration: 2s}]\n")
    res = servescope("load", str(path), "--target", server.url, "--master", "--master-port",
                     str(free_port()), "--connect-timeout", "1s", "--quiet", db=db, timeout=30)
    assert res.returncode == 1
    assert "0 of 1 workers connected" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("servescope load: error:")
    with Store(db) as store:
        assert store.runs() == []


@pytest.mark.parametrize("flags, message", [
    (["--worker", "--concurrency", "3"], "--concurrency: set on the master"),
    (["SCENARIO", "--target", "http://127.0.0.1:1", "--workers", "2", "--master"],
     "choose one"),
    (["SCENARIO", "--target", "http://127.0.0.1:1", "--expect-workers", "2"],
     "--expect-workers applies with --master"),
])
def test_contradictory_distributed_flags_are_refused(tmp_path, flags, message):
    res = servescope("load", *flags, db=tmp_path / "runs.db", timeout=30)
    assert res.returncode == 2
    assert message in res.stderr
