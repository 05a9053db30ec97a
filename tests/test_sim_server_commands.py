"""The simulated server as commands run it: `servescope sim-server` in its own process under
`servescope load`, Ctrl-C, and `servescope demo --engine sim` (what `make run ENGINE=sim`
runs) down to the Live page's "simulated" badge."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from browser import free_port
from helpers import REPO_ROOT, servescope
from servescope.engines.process import EngineError
from servescope.engines.sim_driver import SimSpec
from servescope.engines.sim_server import SimLocalServer

pytestmark = pytest.mark.slow  # whole commands in several processes (see tests/conftest.py)

SCENARIO = """\
name: sim-mini
description: A few seconds of chat against the simulated server.
seed: 7
prompt_tokens: {dist: lognormal, median: 96, sigma: 0.5, min: 64, max: 512}
output_tokens: {dist: uniform, min: 16, max: 48}
shared_prefix_tokens: 24
stages:
  - {concurrency: 4, duration: 3s}
max_requests: 60
request_timeout: 60s
"""


@pytest.fixture()
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "sim-mini.yaml"
    path.write_text(SCENARIO)
    return path


def test_a_server_is_not_started_on_a_port_another_one_answers_on(tmp_path):
    """Another server on the port would answer the health check for this one (CI saw
    `engine serve` on 8000 take a stray server's answer as its vLLM's)."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        server = SimLocalServer(SimSpec("qwen3-8b", "a100-80gb"), port=port,
                                log_path=tmp_path / "sim.log")
        with pytest.raises(EngineError, match=f"127.0.0.1:{port}: something already listens"):
            server.start()
        assert server.proc is None  # nothing was launched
    server.start_and_wait(progress=lambda _msg: None)  # the port free again: it starts
    try:
        assert httpx.get(f"{server.url}/health").status_code == 200
    finally:
        server.stop()


def test_load_chat_runs_against_the_sim_server_with_server_usage(tmp_path):
    server = SimLocalServer(SimSpec("qwen3-8b", "a100-80gb", max_num_seqs=32),
                            port=free_port(), log_path=tmp_path / "sim.log")
    server.start_and_wait(progress=lambda _msg: None)
    try:
        out = tmp_path / "summary.json"
        res = servescope("load", "chat", "--target", server.url, "--concurrency", "4",
                         "--duration", "3s", "--requests", "60", "--out", str(out), "--quiet",
                         db=tmp_path / "s.db", timeout=240)
        assert res.returncode == 0, res.stderr[-3000:]
        summary = json.loads(out.read_text())
        assert summary["model"] == "qwen3-8b (simulated on a100-80gb)"
        assert summary["requests_ok"] > 4 and summary["requests_failed"] == 0
        assert summary["token_count_sources"] == ["usage"]
        assert summary["prompt_tokens_total"] > 64 * summary["requests_ok"]
        # the server's own count of what it generated matches what the client was told
        page = httpx.get(f"{server.url}/metrics").text
        generated = sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
                        if line.startswith("vllm:generation_tokens_total{"))
        assert generated >= summary["output_tokens_total"]
        assert summary["prompt_lengths"]["max_abs_error"] <= 2  # /tokenize counts as usage
    finally:
        server.stop()


def test_ctrl_c_stops_it_cleanly_ending_open_answers(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "servescope.cli", "sim-server", "--model", "llama-3.1-8b",
         "--gpu", "l40s", "--port", str(port)],
        cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def listen() -> None:  # an answer of 5000 tokens: still streaming when Ctrl-C comes
        body = {"prompt": "long", "max_tokens": 5000, "stream": True}
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body,
                          timeout=60) as r:
            lines.extend(line for line in r.iter_lines() if line)

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
        client = threading.Thread(target=listen)
        client.start()
        while len(lines) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        client.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "SIMULATED llama-3.1-8b (simulated on l40s)" in err and "stopped" in err
    assert "Traceback" not in err and "ERROR" not in err, err
    assert lines[-1] == "data: [DONE]" and "the simulated server is stopping" in lines[-2]


def test_a_model_that_does_not_fit_is_refused_in_one_line(tmp_path):
    res = servescope("sim-server", "--model", "llama-3.1-70b", "--gpu", "l4",
                     db=tmp_path / "s.db", timeout=60)
    assert res.returncode == 2
    assert "does not fit" in res.stderr and "Traceback" not in res.stderr


def test_demo_with_the_simulated_engine(tmp_path, scenario, monkeypatch):
    db = tmp_path / "demo.db"
    res = servescope("--db", str(db), "demo", "--engine", "sim", "--scenario", str(scenario),
                     "--exit-after-run", "--no-dashboard", "--vllm-port", str(free_port()),
                     timeout=300, env_extra={"SERVESCOPE_HOME": str(tmp_path / "home")})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "SIMULATED engine" in res.stderr
    summary = json.loads((tmp_path / "demo-summary.json").read_text())
    assert summary["requests_ok"] > 4 and summary["requests_failed"] == 0
    assert summary["model"] == "llama-3.1-8b (simulated on h100-80gb)"

    # The Live page labels the target simulated.
    monkeypatch.setenv("SERVESCOPE_DB", str(db))
    at = AppTest.from_function(_live_page, default_timeout=30).run()
    assert not at.exception
    assert "demo-simulated" in [s.value for s in at.subheader]
    assert any("simulated: every number" in m.value for m in at.markdown)
    assert os.path.exists(tmp_path / "home" / "logs")


def _live_page() -> None:
    from servescope.core.store import Store
    from servescope.dashboard import live

    live.render(Store())
