"""A distributed worker's API key comes from its own environment and goes only to a target
named on its own command line, never to whatever target a master names: a worker that holds
a key and has no --target is refused (exit 2). Real runs against two recording servers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from test_loadgen_modes import ChatServer

from helpers import REPO_ROOT, servescope

KEY = "sk-worker-secret-123"
SCENARIO = """\
name: keyed
seed: 3
prompt_tokens: 16
output_tokens: 3
stages: [{concurrency: 2, duration: 30s}]
max_requests: 6
request_timeout: 10s
"""


class RecordingChatServer(ChatServer):
    """The chat server of test_loadgen_modes, keeping every request's path and
    Authorization."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str | None]] = []
        server, base = self, self.httpd.RequestHandlerClass

        class Recording(base):  # type: ignore[misc, valid-type]
            def parse_request(self) -> bool:
                ok = super().parse_request()
                if ok:
                    server.seen.append((self.path, self.headers.get("authorization")))
                return ok

        self.httpd.RequestHandlerClass = Recording


@pytest.fixture
def servers():
    pair = RecordingChatServer(), RecordingChatServer()
    yield pair
    for s in pair:
        s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k != "SERVESCOPE_API_KEY"}
    return {**base, **extra}


@pytest.mark.parametrize("flags, variable", [
    ([], "SERVESCOPE_API_KEY"),
    (["--api-key-env", "MY_WORKER_KEY"], "MY_WORKER_KEY"),
])
def test_a_worker_holding_a_key_without_its_own_target_is_refused(tmp_path, flags, variable):
    res = servescope("load", "--worker", "--master-port", str(free_port()), *flags,
                     "--connect-timeout", "30s", env_extra={variable: KEY},
                     db=tmp_path / "runs.db", timeout=60)
    assert res.returncode == 2, res.stderr
    assert f"{variable} is set: this worker holds an API key" in res.stderr
    assert "add --target URL" in res.stderr
    assert KEY not in res.stdout + res.stderr


def test_the_key_goes_to_the_workers_own_target_never_to_the_masters(tmp_path, servers):
    named_by_master, own = servers
    path, db, out = tmp_path / "s.yaml", tmp_path / "runs.db", tmp_path / "summary.json"
    path.write_text(SCENARIO)
    port = str(free_port())
    cli = [sys.executable, "-m", "servescope.cli", "load"]
    master = subprocess.Popen(
        [*cli, str(path), "--target", named_by_master.url, "--master", "--master-port", port,
         "--expect-workers", "1", "--quiet", "--out", str(out), "--db", str(db)],
        env=env(), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # the worker retries until the master listens, up to --connect-timeout
    worker = subprocess.run(
        [*cli, "--worker", "--master-port", port, "--target", own.url, "--quiet",
         "--connect-timeout", "60s"],
        env=env(SERVESCOPE_API_KEY=KEY), cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=120)
    m_out, m_err = master.communicate(timeout=120)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    assert master.returncode == 0, m_out + m_err
    assert json.loads(out.read_text())["requests_ok"] == 6
    # The worker's requests all went to its own target, each with its key ...
    assert len(own.bodies) == 6
    assert own.seen and {auth for _, auth in own.seen} == {f"Bearer {KEY}"}
    # ... and the target the master named saw only the master's probes, keyless.
    assert named_by_master.bodies == {}
    assert named_by_master.seen and {auth for _, auth in named_by_master.seen} == {None}
    assert "/v1/chat/completions" not in {path for path, _ in named_by_master.seen}
    assert KEY not in worker.stdout + worker.stderr + m_out + m_err


def test_local_workers_get_the_target_and_use_the_key(tmp_path, servers):
    server, _ = servers
    path, out = tmp_path / "s.yaml", tmp_path / "summary.json"
    path.write_text(SCENARIO)
    res = servescope("load", str(path), "--target", server.url, "--workers", "2", "--quiet",
                     "--out", str(out), env_extra={"SERVESCOPE_API_KEY": KEY},
                     db=tmp_path / "runs.db", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(out.read_text())["requests_ok"] == 6
    assert len(server.bodies) == 6
    chats = {auth for path, auth in server.seen if path == "/v1/chat/completions"}
    assert chats == {f"Bearer {KEY}"}
    assert KEY not in res.stdout + res.stderr
