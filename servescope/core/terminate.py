"""SIGTERM (kill, docker stop, systemd, a CI cancellation) handled like Ctrl-C, so every
command's clean-up runs: the engines it started are stopped, what it measured is kept.

Its own module, not servescope.cli: run as `python -m servescope.cli`, that file is
`__main__`, and an exception class defined there would not be the one other modules
import."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C. Unlike Ctrl-C at a terminal, this process alone got it,
    so a command forwards it to the children it started (`demo`'s load run)."""


def _raise(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside: SIGTERM raises Terminated (where nothing else handles or ignores it, and on
    the main thread, the only one that can take signals)."""
    previous = signal.getsignal(signal.SIGTERM)
    catch = previous is signal.SIG_DFL and threading.current_thread() is threading.main_thread()
    if catch:
        signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        if catch:
            signal.signal(signal.SIGTERM, previous)
