"""SIGTERM, as `kill`, `docker stop`, systemd and CI cancellations send it: a load run stops
the way Ctrl-C stops it (what was measured is kept), and `servescope engine serve` takes
the vLLM it started down with it instead of leaving it running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from helpers import REPO_ROOT
from servescope.core.store import Store
from servescope.engines.process import free_port
from servescope.engines.vllm_cpu import split_cpus
from testsupport.streaming_server import StreamingServer


def _cli(*args: str, db=None) -> subprocess.Popen:
    env = {**os.environ, **({"SERVESCOPE_DB": str(db)} if db else {})}
    return subprocess.Popen([sys.executable, "-m", "servescope.cli", *args], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _requests_stored(db) -> int:
    if not db.exists():
        return 0
    with Store(db) as store:
        runs = store.runs()
        return len(store.requests(runs[0]["id"])) if runs else 0


def test_sigterm_stops_a_load_run_and_keeps_what_it_measured(tmp_path):
    db, scenario = tmp_path / "s.db", tmp_path / "long.yaml"
    scenario.write_text("name: long\nseed: 1\nprompt_tokens: 16\noutput_tokens: 8\n"
                        "stages:\n  - {concurrency: 4, duration: 120s}\n")
    with StreamingServer(first_token_ms=5, gap_ms=5) as srv:
        proc = _cli("load", str(scenario), "--target", srv.url, "--quiet", db=db)
        try:
            deadline = time.monotonic() + 60
            while _requests_stored(db) < 20:  # the writer commits every second
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "no requests stored within 60 s"
                time.sleep(0.2)
            before = _requests_stored(db)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "run 1 interrupted" in out
    with Store(db) as store:
        (run,) = store.runs()
        assert run["status"] == "interrupted"
        kept = store.requests(run["id"])
    assert len(kept) >= before and all(r.ok for r in kept)
    assert run["summary"]["requests_ok"] == len(kept)


@pytest.mark.engine  # starts the real vLLM through the CLI
def test_engine_serve_confines_vllm_and_sigterm_stops_it(tmp_path):
    proc = _cli("engine", "serve", "--max-num-seqs", "2", "--port", str(free_port()))
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 600
        line = ""
        while "Ctrl-C stops it" not in line:  # the line printed once vLLM answers
            line = proc.stdout.readline()
            assert line or proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "vLLM not ready within 600 s"
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert any("vllm" in " ".join(p.cmdline()) for p in tree)
        server_cpus, rest = split_cpus()
        if server_cpus is not None:  # two or more CPUs: vLLM's model keeps off the last one
            core = [p for p in tree if p.name().startswith("VLLM::EngineCor")]
            assert len(core) == 1, [p.cmdline() for p in tree]
            # the model's thread (the engine core's main one) on the server's CPUs; with
            # one of them, the API server apart from it, on the CPUs left to the rest
            apart = rest if len(server_cpus) == 1 else server_cpus
            assert {p.pid: sorted(p.cpu_affinity()) for p in tree} == {
                p.pid: server_cpus if p in core else apart for p in tree}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0  # stopped as on Ctrl-C
    finally:
        if proc.poll() is None:
            proc.kill()
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, [p.cmdline() for p in alive]


@pytest.mark.engine  # starts the real vLLM through the CLI
def test_demo_on_sigterm_stops_its_load_run_and_its_vllm(tmp_path):
    """`demo` is one process with children: a SIGTERM to it alone (unlike a Ctrl-C at a
    terminal, which reaches them all) is passed to its load run, which keeps what it
    measured; its vLLM is stopped."""
    db, log = tmp_path / "demo.db", tmp_path / "demo.log"
    with open(log, "w") as out:  # a file, not a pipe nobody reads while the demo runs
        proc = subprocess.Popen(
            [sys.executable, "-m", "servescope.cli", "--db", str(db), "demo", "--no-dashboard",
             "--vllm-port", "0"], cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 600
        while _requests_stored(db) < 10:
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the demo stored no requests within 600 s"
            time.sleep(0.5)
        tree = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log.read_text()[-3000:]
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    with Store(db) as store:
        (run,) = store.runs()
        assert run["status"] == "interrupted"
        assert run["summary"]["requests_ok"] == len(store.requests(run["id"])) >= 10
