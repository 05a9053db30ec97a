"""What every locally started engine server needs: a log tail for error messages and a
clean stop of its whole process group (servers fork engine cores and runners)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


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
