"""Worker processes on this machine, for `servescope load --workers N`: starting them, stopping
them in order, and the last line each wrote when it fails. Kept apart from the master's
protocol, which treats a local worker like any other once it connects."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

from servescope.loadgen.distributed_protocol import PARENT_ENV


def start_local_workers(n: int, port: int, api_key_env: str | None,
                        log_dir: Path, target: str) -> list[subprocess.Popen]:
    """`servescope load --worker` processes on this machine, each in its own session (a
    Ctrl-C in the terminal reaches the master, which stops them in order). They get the
    target on their command line, as a worker holding an API key requires."""
    cmd = [sys.executable, "-m", "servescope.cli", "load", "--worker", "--master-host",
           "127.0.0.1", "--master-port", str(port), "--quiet", "--target", target]
    if api_key_env:
        cmd += ["--api-key-env", api_key_env]
    env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})
    procs = []
    for i in range(n):
        with open(log_dir / f"worker-{i}.log", "wb") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env,
                                          start_new_session=True))
        procs[-1].log_path = log_dir / f"worker-{i}.log"  # type: ignore[attr-defined]
    return procs


def stop_local_workers(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    """Give the workers `grace` seconds to exit (the master told them they are done), then
    terminate, then kill."""
    deadline = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.1, deadline - time.monotonic()))
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def worker_tail(proc: subprocess.Popen | None) -> str:
    """The last line a local worker wrote (its error)."""
    path = getattr(proc, "log_path", None)
    with contextlib.suppress(OSError):
        if path is not None:
            lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln]
            if lines:
                return lines[-1]
    return "(no output)"

