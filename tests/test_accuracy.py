"""The load generator's stamps checked against the server's truth.

testsupport/streaming_server.py runs in its own process and records, from its kernel's stamps,
when every request arrived and when every SSE event left (epoch ns): truth that holds even
when the server's own process is kept off its core. The load runs through the real CLI with 64
closed-loop users; every stored request is then joined with the server's schedule by its
x-request-id and compared: TTFT, every inter-token gap, E2E, and the token count.

Client stamps are perf_counter_ns anchored once to the wall clock (loadgen/clock.py); the
server stamps time.time_ns() on the same machine, so both sides can also be compared
directly (how long the request took to reach the server, how late a token was stamped).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from helpers import servescope
from servescope.core.records import RequestRecord
from servescope.core.store import Store
from testsupport.streaming_server import StreamingServer

pytestmark = pytest.mark.timing  # test tier (accuracy under load): see pyproject.toml

TOKENS = 16
FIRST_TOKEN_MS = 50.0
GAP_MS = 20.0
MS = 1e6

SCENARIO = """\
name: accuracy
seed: 7
prompt_tokens: 48
output_tokens: {tokens}
stages:
  - {{concurrency: {concurrency}, duration: 120s}}
max_requests: {requests}
request_timeout: 30s
"""

# Two cores: the server on one, the load generator on the other, so neither waits for the
# other's CPU (on one core everything still runs, only less precisely).
TWO_CORES = len(os.sched_getaffinity(0)) >= 2
SERVER_CPU = 1 if TWO_CORES else None


def _pin_client() -> None:
    if TWO_CORES:
        os.sched_setaffinity(0, {0})


def run_load(server: StreamingServer, tmp_path: Path, concurrency: int,
             requests: int) -> list[RequestRecord]:
    scenario = tmp_path / "accuracy.yaml"
    scenario.write_text(SCENARIO.format(tokens=TOKENS, concurrency=concurrency,
                                        requests=requests))
    db, out = tmp_path / "accuracy.db", tmp_path / "summary.json"
    res = servescope("load", str(scenario), "--target", server.url, "--out", str(out),
                     "--quiet", db=db, timeout=180, preexec_fn=_pin_client)
    assert res.returncode == 0, res.stdout + res.stderr
    run_id = json.loads(out.read_text())["run_id"]
    with Store(db) as store:
        return store.requests(run_id)


@dataclass
class Errors:
    """Client minus server, in ms, per metric; plus the two one-way legs behind TTFT."""

    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    request_leg: list[float] = field(default_factory=list)  # server arrival - client send
    token_leg: list[float] = field(default_factory=list)  # client stamp - server write
    # how long the server itself took to read and parse a request that had arrived (it
    # delays the server's tokens, which the client rightly counts; not a client error)
    server_read: list[float] = field(default_factory=list)
    stamps: set[str] = field(default_factory=set)  # the server's stamp sources

    def add(self, rec: RequestRecord, sched: dict) -> None:
        sent = sched["sent_ns"]
        content = [t for k, t in zip(sched["kinds"], sent, strict=True) if k == "content"]
        recv = sched["recv_ns"]
        assert rec.first_token_ns is not None and rec.end_ns is not None
        self.ttft.append(((rec.first_token_ns - rec.send_ns) - (content[0] - recv)) / MS)
        client_gaps = [b - a for a, b in itertools.pairwise(rec.event_offsets_ns)]
        server_gaps = [b - a for a, b in itertools.pairwise(content)]
        self.itl += [(c - s) / MS for c, s in zip(client_gaps, server_gaps, strict=True)]
        self.e2e.append(((rec.end_ns - rec.send_ns) - (sent[-1] - recv)) / MS)
        self.request_leg.append((recv - rec.send_ns) / MS)
        self.server_read.append((sched["parsed_ns"] - recv) / MS)
        self.stamps.add(sched["stamps"])
        self.token_leg += [(rec.send_ns + off - t) / MS
                           for off, t in zip(rec.event_offsets_ns, content, strict=True)]

    def report(self) -> str:
        lines = [f"{'client - server, ms':22}{'p50':>8}{'p99':>8}{'max':>8}{'min':>8}{'n':>7}"]
        for name in ("ttft", "itl", "e2e", "request_leg", "token_leg", "server_read"):
            v = np.asarray(getattr(self, name))
            lines.append(f"{name:22}{np.percentile(v, 50):8.3f}{np.percentile(v, 99):8.3f}"
                         f"{v.max():8.3f}{v.min():8.3f}{len(v):7d}")
        lines.append(f"server stamps: {', '.join(sorted(self.stamps))}")
        return "\n".join(lines)


def compare(records: list[RequestRecord], schedule: dict[str, dict]) -> Errors:
    errors = Errors()
    for rec in records:
        assert rec.ok, (rec.request_id, rec.error_class, rec.error)
        assert rec.output_tokens == TOKENS and rec.token_count_source == "usage"
        assert len(rec.event_offsets_ns) == TOKENS, rec.request_id
        errors.add(rec, schedule[rec.request_id])
    return errors


# What holds (64 streams, 512 requests, 2-core machine; client - server): TTFT p50 0.2 ms,
# p99 0.8 ms; ITL p99 0.03 ms; E2E p99 0.8-0.9 ms. What is left of TTFT's and E2E's error
# is the request's way in (client send stamp to the kernel's receive stamp on the server's
# side); tokens are stamped with the kernel's receive time (loadgen/wire.py), 10-15 us
# after the server's kernel sent them. The server's stamps come from its kernel, not from
# its loop: a CI run once had the server's loop read requests up to 18 ms late (p99 8.7 ms),
# which a parse-time stamp had put on the client; with two CPU hogs on this 2-core machine
# the server was also preempted for up to 8 ms between a write and its stamp, and the
# kernel deferred a transmit by 13 ms after the write had returned.
# This test found four client bugs, all fixed: send_ns was stamped before httpx's pool
# checkout (which yields to the gevent hub once per idle connection: p99 up to 40 ms of
# other users' work counted as latency), end_ns after httpx's response close (the same
# pool scan), full garbage collections stopped every stream for 80-110 ms (gc.freeze()
# after start-up), and SQLite commits on the hub stalled every stream for up to 6 ms at a
# WAL checkpoint (now committed from a thread, loadgen/writer.py). httpx itself is gone from
# the timed path. The bound is the goal: 2 ms at p99.
GOAL_MS = 2.0
TTFT_P50_MS, ITL_P50_MS, E2E_P50_MS = 1.0, 0.5, 1.0
REQUESTS = 512


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(np.abs(values), q))


@pytest.fixture(scope="module")
def run64(tmp_path_factory) -> Errors:
    tmp = tmp_path_factory.mktemp("accuracy64")
    with StreamingServer(FIRST_TOKEN_MS, GAP_MS, cpu=SERVER_CPU) as server:
        records = run_load(server, tmp, concurrency=64, requests=REQUESTS)
        schedule = server.schedule()
    assert len(records) == REQUESTS
    errors = compare(records, schedule)
    print(f"\n64 streams, {REQUESTS} requests (load average {os.getloadavg()[0]:.2f}):")
    print(errors.report())
    return errors


def test_every_request_counts_its_tokens_from_usage(run64):
    # compare() checked each record: ok, 16 tokens from usage, 16 content events
    assert len(run64.ttft) == REQUESTS and len(run64.itl) == REQUESTS * (TOKENS - 1)


def test_stamps_within_2ms_of_the_server_at_64_streams(run64):
    context = f"{run64.report()}\nload average {os.getloadavg()}"
    for name, p50 in (("ttft", TTFT_P50_MS), ("itl", ITL_P50_MS), ("e2e", E2E_P50_MS)):
        values = getattr(run64, name)
        assert _p(values, 50) <= p50, f"{name} p50\n{context}"
        assert _p(values, 99) <= GOAL_MS, f"{name} p99\n{context}"
    # a client never sees a token before the server sent it (the two clocks agree)
    assert min(run64.token_leg) > -5.0, context
    if sys.platform == "linux":  # the truth is the kernel's on both sides
        assert run64.stamps == {"kernel"}, context


def test_role_only_and_empty_chunks_are_not_the_first_token(tmp_path):
    with StreamingServer(FIRST_TOKEN_MS, GAP_MS, lead=("role", "empty"),
                         cpu=SERVER_CPU) as server:
        records = run_load(server, tmp_path, concurrency=4, requests=8)
        schedule = server.schedule()
    assert len(records) == 8
    errors = compare(records, schedule)  # 16 content events each: the leads not counted
    # Taking the role chunk as the first token would make TTFT two gaps (40 ms) short;
    # the client's own overhead is ~1-3 ms.
    assert max(abs(e) for e in errors.ttft) < GAP_MS / 2, errors.report()
    for rec in records:
        assert schedule[rec.request_id]["kinds"][:3] == ["role", "empty", "content"]
