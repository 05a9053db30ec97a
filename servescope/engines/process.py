"""What every locally started engine server needs: a home for its files, a free port, a
start with its output in a log file, a wait until it answers, a log tail for error
messages, and a clean stop of its whole process group (servers fork engine cores and
runners)."""

from __future__ import annotations

import fcntl
import functools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self

import httpx


class EngineError(RuntimeError):
    pass


Progress = Callable[[str], None]


def servescope_home() -> Path:
    return Path(os.environ.get("SERVESCOPE_HOME") or Path.home() / ".cache" / "servescope")


def _log(msg: str) -> None:
    print(f"[servescope] {msg}", file=sys.stderr, flush=True)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_taken(host: str, port: int) -> bool:
    """Whether something already listens on host:port. Bound as the servers bind (with
    SO_REUSEADDR), so a port a stopped server left in TIME_WAIT counts as free."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


@contextmanager
def file_lock(path: Path):
    """Serialize installs between processes (a test run and `make run` at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_streaming(cmd: list[str], progress: Progress, what: str,
                   env: dict[str, str] | None = None) -> None:
    """Run a command, passing its interesting lines to `progress` (pip's steps, and a
    compiler build's percentage every 5 %)."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    tail: list[str] = []
    shown = -5
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail = ([*tail, line])[-20:]
        if line.startswith(("Collecting", "Downloading", "Installing", "Successfully")):
            progress(f"{what} [{time.monotonic() - started:5.0f}s] {line[:110]}")
        elif (m := re.match(r"\s*\[\s*(\d+)%\]", line)) and int(m[1]) >= shown + 5:
            shown = int(m[1])
            progress(f"{what} [{time.monotonic() - started:5.0f}s] built {shown}%")
    if proc.wait() != 0:
        raise EngineError(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(tail))


def pip_command(python: Path) -> list[str]:
    return [str(python), "-m", "pip", "--disable-pip-version-check"]


@dataclass(frozen=True)
class Venv:
    """An engine's own virtual environment."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"


def create_venv(root: Path) -> list[str]:
    """A fresh virtual environment at `root` (made again if one is there); its pip command."""
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
    return pip_command(root / "bin" / "python")


def run_build(cmd: list[str], what: str) -> None:
    """Run a build step (a tiny model's script); its failure names `what` and ends with
    the step's stderr."""
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise EngineError(f"building {what} failed:\n{res.stderr[-2000:]}")


def start_logged(cmd: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cpus: Sequence[int] | None = None) -> subprocess.Popen:
    """Start `cmd` writing to `log_path`, as the leader of its own process group (so
    stop_group takes its children too); on `cpus` only, when given (its children inherit
    that)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pin = None if cpus is None else functools.partial(os.sched_setaffinity, 0, set(cpus))
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, preexec_fn=pin)


def wait_http_ready(proc: subprocess.Popen, url: str, what: str, log_path: Path | None,
                    timeout: float, progress: Callable[[str], None], poll_s: float = 0.1,
                    note_every_s: float | None = None) -> float:
    """Poll `url` until it answers 200 and return the seconds it took. If the process exits
    first, or `timeout` passes (the group is stopped then), raise EngineError with the
    log's last lines. Every `note_every_s` seconds of waiting, show the log's last line."""
    started = time.monotonic()
    last_note = 0.0
    while True:
        if proc.poll() is not None:
            raise EngineError(f"{what} exited with {proc.returncode} before it was ready; "
                              f"last log lines from {log_path}:\n{log_tail(log_path)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        waited = time.monotonic() - started
        if waited > timeout:
            stop_group(proc, 10.0)
            raise EngineError(f"{what} not ready after {timeout:.0f}s:\n{log_tail(log_path)}")
        if note_every_s is not None and waited - last_note >= note_every_s:
            last_note = waited
            progress(f"waiting for {what} to load ({waited:.0f}s) ... {log_tail(log_path, 1)}")
        time.sleep(poll_s)


@dataclass(kw_only=True)
class LocalServer:
    """What the engine servers (vLLM, Ollama, llama.cpp) share: start on a free port (0: any)
    with a log under servescope_home()/logs, wait until a health URL answers, their URL, the
    tail of their log, a stop of their whole process group, and `with` (start, wait, stop).
    Each one defines the class constants below and launch()."""

    host: str = "127.0.0.1"
    port: int = 0
    log_path: Path | None = None
    proc: subprocess.Popen | None = None
    name: ClassVar[str]  # in messages: "vLLM"
    log_prefix: ClassVar[str]  # logs/<log_prefix>-<port>.log
    health_path: ClassVar[str]  # answers 200 once the server is ready
    ready_timeout_s: ClassVar[float]
    ready_poll_s: ClassVar[float] = 0.1
    ready_note_every_s: ClassVar[float | None] = None  # show the log's last line this often
    stop_timeout_s: ClassVar[float] = 10.0

    def launch(self) -> tuple[list[str], dict[str, str] | None]:
        """The command and its environment (None: this process's), with self.port set."""
        raise NotImplementedError

    def server_cpus(self) -> list[int] | None:
        """The CPUs the server process tree is confined to (None: wherever it likes)."""
        return None

    def start(self) -> None:
        if not self.port:
            self.port = free_port(self.host)
        elif port_taken(self.host, self.port):
            # else another server's health answer would pass for this one's
            raise EngineError(f"cannot start {self.name} on {self.url}: something already "
                              f"listens there; stop it or choose another port")
        self.log_path = self.log_path or (
            servescope_home() / "logs" / f"{self.log_prefix}-{self.port}.log")
        cmd, env = self.launch()
        # its own process group: stop() takes what it forks too
        self.proc = start_logged(cmd, self.log_path, env, self.server_cpus())

    def wait_ready(self, timeout: float | None = None, progress: Progress = _log) -> None:
        assert self.proc is not None
        took = wait_http_ready(self.proc, f"{self.url}{self.health_path}", self.name,
                               self.log_path, timeout or self.ready_timeout_s, progress,
                               self.ready_poll_s, self.ready_note_every_s)
        progress(f"{self.name} ready at {self.url} after {took:.1f}s")

    def start_and_wait(self, progress: Progress = _log) -> None:
        """Start, say where, wait until ready; a server that never gets there is stopped."""
        self.start()
        progress(f"starting {self.name} on {self.url} (log: {self.log_path})")
        try:
            self.wait_ready(progress=progress)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, n: int = 15) -> str:
        return log_tail(self.log_path, n)

    def stop(self) -> None:
        """Stop the server and whatever it forked (the whole process group it leads)."""
        stop_group(self.proc, self.stop_timeout_s)

    def __enter__(self) -> Self:
        self.start()
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def log_tail(path: Path | None, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines() if path else []
    except OSError:
        return ""
    return "\n".join(line[:200] for line in lines[-n:])


def stop_group(proc: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM the process group `proc` leads, SIGKILL it after `timeout` seconds. Also
    when the leader already exited: its children (engine cores, runners) may not have."""
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
