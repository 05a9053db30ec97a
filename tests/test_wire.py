"""The timed HTTP client (loadgen/wire.py) against the scheduled streaming server in its own
process: stamps, one connection per request in flight with reuse, and every fault the load
generator must record with its class instead of stopping (5xx, 429, a dropped connection,
a malformed event, a stall, a non-HTTP answer, a closed keep-alive connection)."""

from __future__ import annotations

import itertools
import json
import socket
import time
from pathlib import Path

import gevent
import pytest

from helpers import servescope
from servescope.core.clock import now_ns
from servescope.core.records import RequestRecord
from servescope.loadgen.openai_chat import ChatRequest, stream_chat
from servescope.loadgen.wire import KERNEL_STAMPS, HeaderError, Wire
from testsupport.streaming_server import StreamingServer

pytestmark = pytest.mark.timing  # test tier (stamps against the server's): see pyproject.toml

TOKENS = 8
PATH = "/v1/chat/completions"


@pytest.fixture(scope="module")
def server():
    with StreamingServer(first_token_ms=5, gap_ms=2) as srv:
        yield srv


def chat(wire: Wire, rid: str, fault: str | None = None, timeout: float = 30.0,
         tokens: int = TOKENS, headers: dict[str, str] | None = None) -> RequestRecord:
    req = ChatRequest("stream-test", [{"role": "user", "content": "hello"}], tokens)
    headers = {**(headers or {}), **({"x-fault": fault} if fault else {})}
    return stream_chat(wire, PATH, req, rid, now_ns(), timeout, headers)


def test_a_stream_is_timed_event_by_event(server):
    wire = Wire(server.url)
    rec = chat(wire, "ok-1", headers={"x-gap-ms": "10"})
    wire.close()
    assert rec.ok, (rec.error_class, rec.error)
    assert rec.status_code == 200
    assert rec.output_tokens == TOKENS and rec.token_count_source == "usage"
    assert len(rec.event_offsets_ns) == TOKENS
    assert rec.send_ns < rec.headers_ns <= rec.first_token_ns <= rec.last_token_ns <= rec.end_ns
    # The server spaced content events 10 ms apart; the client saw each gap as the server's
    # kernel sent it (within 1 ms), not bunched.
    sched = server.schedule()["ok-1"]
    sent = [t for kind, t in zip(sched["kinds"], sched["sent_ns"], strict=True)
            if kind == "content"]
    gaps = [b - a for a, b in itertools.pairwise(rec.event_offsets_ns)]
    server_gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert min(gaps) > 5_000_000, gaps
    assert max(abs(c - s) for c, s in zip(gaps, server_gaps, strict=True)) < 1_000_000, \
        (gaps, server_gaps)


@pytest.mark.skipif(not KERNEL_STAMPS, reason="kernel receive stamps are Linux-only")
def test_a_read_is_stamped_when_its_bytes_arrived_not_when_its_greenlet_ran(server):
    # Content events at 30, 60, 90, 120 ms after the request. The test then holds the only
    # core from 55 to 80 ms, as 255 other streams' work would: the 60 ms event arrives while
    # the reader cannot run. Stamped when the read returned it would be ~20 ms late.
    wire = Wire(server.url)
    job = gevent.spawn(chat, wire, "held", tokens=4,
                       headers={"x-first-token-ms": "30", "x-gap-ms": "30"})
    gevent.sleep(0.055)
    time.sleep(0.025)
    rec = job.get()
    wire.close()
    assert rec.ok, (rec.error_class, rec.error)
    gaps_ms = [(b - a) / 1e6 for a, b in
               zip(rec.event_offsets_ns, rec.event_offsets_ns[1:], strict=False)]
    assert all(abs(g - 30) < 5 for g in gaps_ms), gaps_ms
    assert wire.kernel_stamped > 0 and wire.user_stamped == 0


def test_one_connection_per_request_in_flight_reused_afterwards(server):
    wire = Wire(server.url)
    for wave in range(2):
        jobs = [gevent.spawn(chat, wire, f"wave{wave}-{i}") for i in range(64)]
        gevent.joinall(jobs, raise_error=True)
        assert all(j.value.ok for j in jobs), [j.value.error for j in jobs if not j.value.ok]
        # The first wave waited for its connections to open, the second reused them.
        connects = [j.value.connect_ns for j in jobs]
        assert all(c is not None and c > 0 for c in connects) if wave == 0 \
            else connects == [None] * 64
        # No cap below the concurrency: all 64 were on the wire at once ...
        assert wire.peak_in_use == 64
        # ... and the second wave reused the first wave's connections.
        assert wire.opened == 64, wave
    stats = wire.stats()
    wire.close()
    assert stats["opened"] == 64 and stats["connect_ms_p99"] is not None


@pytest.mark.parametrize(("fault", "error_class", "message"), [
    ("status:503", "http_503", "HTTP 503: "),
    ("status:429", "http_429", "injected 429"),
    ("drop:3", "dropped", "connection dropped mid-stream"),
    ("eof", "dropped", "closed before any answer"),
    ("garbage", "malformed_http", "invalid HTTP answer"),
])
def test_faults_become_error_classes(server, fault, error_class, message):
    wire = Wire(server.url)
    rec = chat(wire, f"fault-{fault}", fault)
    # The run goes on: the same client's next request succeeds.
    after = chat(wire, f"after-{fault}")
    wire.close()
    assert rec.error_class == error_class, (rec.error_class, rec.error)
    assert message in rec.error
    assert rec.end_ns >= rec.send_ns > 0
    assert after.ok, (after.error_class, after.error)
    if fault == "drop:3":  # what arrived before the drop is kept and counted
        assert len(rec.event_offsets_ns) == 3 and rec.output_tokens == 3
        assert rec.token_count_source == "events"


def test_a_malformed_event_is_recorded_and_the_rest_is_read(server):
    wire = Wire(server.url)
    rec = chat(wire, "malformed", "malformed:2")
    wire.close()
    assert rec.error_class == "malformed_event" and "{not json" in rec.error
    assert len(rec.event_offsets_ns) == TOKENS - 1  # every other content event still counted
    assert rec.output_tokens == TOKENS  # the usage chunk still arrived


def test_a_stalled_stream_times_out_on_time(server):
    wire = Wire(server.url)
    t0 = time.monotonic()
    rec = chat(wire, "stall", "stall", timeout=0.5)
    elapsed = time.monotonic() - t0
    wire.close()
    assert rec.error_class == "timeout" and "0.5s" in rec.error
    assert rec.status_code == 200 and rec.headers_ns is not None
    assert 0.5 <= elapsed < 2.0


def test_a_keep_alive_connection_the_server_closed_is_retried_fresh(server):
    wire = Wire(server.url)
    first = chat(wire, "close-after", "close-after")
    gevent.sleep(0.1)  # the server's close reaches us while the connection is idle
    second = chat(wire, "after-close")
    wire.close()
    assert first.ok and second.ok, (second.error_class, second.error)
    assert wire.opened == 2


def test_nothing_listening_is_a_connect_error():
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    wire = Wire(f"http://127.0.0.1:{port}")
    rec = chat(wire, "refused")
    assert rec.error_class == "connect" and f"127.0.0.1:{port}" in rec.error
    assert wire.opened == 0


def test_a_path_prefix_and_bad_urls():
    assert Wire("http://example.invalid:8080/proxy/").prefix == "/proxy"
    assert Wire("https://example.invalid").port == 443
    with pytest.raises(ValueError, match="ftp://x"):
        Wire("ftp://x")


def test_a_header_value_with_a_line_break_is_refused_without_showing_it(server):
    wire = Wire(server.url)
    rec = RequestRecord(request_id="h", intended_ns=0, send_ns=0)
    with pytest.raises(HeaderError) as info:
        wire.post(PATH, b"{}", {"authorization": "Bearer sk-secret\r\nx: y"}, 5, rec,
                  lambda chunk, at: None)
    assert "authorization" in str(info.value) and "sk-secret" not in str(info.value)


# -- HTTPS -----------------------------------------------------------------------------------
TLS_CERT = Path(__file__).resolve().parents[1] / "testsupport" / "tls" / "cert.pem"


def test_https_with_a_certificate_trusted_through_ssl_cert_file(monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(TLS_CERT))
    with StreamingServer(first_token_ms=5, gap_ms=2, tls=True) as srv:
        wire = Wire(srv.url)
        recs = [chat(wire, f"tls-{i}") for i in range(2)]
        wire.close()
    assert all(r.ok and r.output_tokens == TOKENS for r in recs), [r.error for r in recs]
    assert wire.opened == 1  # the TLS connection was kept alive and reused


def test_https_with_an_untrusted_certificate_is_a_connect_error(monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with StreamingServer(first_token_ms=5, gap_ms=2, tls=True) as srv:
        wire = Wire(srv.url)
        rec = chat(wire, "untrusted")
    assert rec.error_class == "connect" and "CERTIFICATE_VERIFY_FAILED" in rec.error


def run_cli(tmp_path: Path, srv: StreamingServer, users: int, output_tokens: int,
            requests: int, env_extra: dict[str, str] | None = None) -> dict:
    """`servescope load` against `srv`; its summary."""
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(f"name: wire\nseed: 1\nprompt_tokens: 16\noutput_tokens: "
                        f"{output_tokens}\nstages:\n  - {{concurrency: {users}, duration: 60s}}"
                        f"\nmax_requests: {requests}\n")
    out = tmp_path / "summary.json"
    res = servescope("load", str(scenario), "--target", srv.url, "--out", str(out), "--quiet",
                     db=tmp_path / "wire.db", env_extra=env_extra)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(out.read_text())


def test_a_run_over_https_end_to_end(tmp_path):
    with StreamingServer(first_token_ms=5, gap_ms=2, tls=True) as srv:
        summary = run_cli(tmp_path, srv, users=2, output_tokens=4, requests=6,
                          env_extra={"SSL_CERT_FILE": str(TLS_CERT)})
    assert summary["requests_ok"] == 6 and summary["requests_failed"] == 0


def test_a_run_records_every_fault_with_its_class_and_goes_on(tmp_path):
    # Of every eight requests the server answers one 503, one 429, drops one after two
    # tokens and sends one malformed event; the run must finish with all 48 accounted for.
    cycle = ("status:503", "", "status:429", "", "drop:2", "", "malformed:3", "")
    with StreamingServer(first_token_ms=2, gap_ms=1, fault_cycle=cycle) as srv:
        summary = run_cli(tmp_path, srv, users=1, output_tokens=6, requests=48)
    assert summary["status"] == "finished"
    assert summary["errors_by_class"] == {"http_503": 6, "http_429": 6, "dropped": 6,
                                          "malformed_event": 6}
    assert summary["requests_ok"] == 24 and summary["requests_failed"] == 24


def test_an_answer_delimited_by_the_close_is_read_to_its_end(server):
    wire = Wire(server.url)
    rec = chat(wire, "close-delimited", "close-delimited")
    after = chat(wire, "after-close-delimited")  # a new connection: that one was closed
    wire.close()
    assert rec.ok, (rec.error_class, rec.error)
    assert len(rec.event_offsets_ns) == 3 and rec.output_tokens == 3
    assert after.ok and wire.opened == 2
