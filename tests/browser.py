"""A real headless Chromium for the dashboard tests, driven over the DevTools protocol.

Chromium comes from Debian's package (`make test` installs it); the flags keep it from
reaching the network on its own (no component updates, sync or background traffic) and it
gets a fresh profile in a temporary folder. One page, one websocket, plain JSON calls.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import websocket

from servescope.engines.process import stop_group

REPO_ROOT = Path(__file__).resolve().parents[1]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1400,2400"]


class Browser:
    def __init__(self, port: int) -> None:
        exe = shutil.which("chromium")
        if exe is None:
            raise RuntimeError("chromium is not installed (make test installs Debian's)")
        self.profile = tempfile.TemporaryDirectory(prefix="servescope-chromium-",
                                                   ignore_cleanup_errors=True)
        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={self.profile.name}",
             f"--remote-debugging-port={port}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # its own process group: close() stops every helper
        tabs = self._wait_json(f"http://127.0.0.1:{port}/json", 30)
        page = next(t for t in tabs if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30,
                                              suppress_origin=True)
        self._id = 0

    def _wait_json(self, url: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    return json.loads(resp.read())
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"chromium's DevTools did not answer at {url}") from None
                time.sleep(0.2)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result") or {}

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60.0) -> Any:
        """Evaluate `expression` until it is truthy; its value (or TimeoutError)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout:g}s: {expression}")
            time.sleep(0.25)

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            stop_group(self.proc, 10.0)  # renderers and helpers too, before the profile goes
            self.profile.cleanup()


NO_EXCEPTION = "document.querySelectorAll('[data-testid=\"stException\"]').length === 0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:g}s")
        time.sleep(0.25)


@contextlib.contextmanager
def dashboard_in_browser(db: Path) -> Iterator[tuple[str, Browser]]:
    """`servescope dashboard` on the store `db` and a headless Chromium beside it: (its URL,
    the browser); both stopped at the end."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "servescope.cli", "--db", str(db), "dashboard", "--port",
         str(port)], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "SERVESCOPE_DB": str(db)})
    browser = None
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/_stcore/health")
        browser = Browser(free_port())
        yield url, browser
    finally:
        if browser is not None:
            browser.close()
        server.terminate()
        server.wait(10)
