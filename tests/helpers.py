"""Small test helpers: run the CLI as a user would, serve captured pages on loopback."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def servescope(*args: str, db: Path | None = None, timeout: float = 300,
               env_extra: dict[str, str] | None = None, **kw):
    env = {**os.environ, **(env_extra or {})}
    if db is not None:
        env["SERVESCOPE_DB"] = str(db)
    return subprocess.run(
        [sys.executable, "-m", "servescope.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT, **kw,
    )


class PageServer:
    """Serves captured pages from a real server on 127.0.0.1: `routes` maps a path to its
    body (a single body answers /metrics); anything else is a 404. Faults on demand:
    `status` (e.g. 500), `delay` seconds before answering, `truncate` (promise the whole
    page, send half, hang up)."""

    def __init__(self, routes: bytes | dict[str, bytes], status: int = 200, port: int = 0,
                 delay: float = 0.0, truncate: bool = False) -> None:
        page = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if page.delay:
                    time.sleep(page.delay)
                body = page.routes.get(self.path)
                status = page.status if body is not None else 404
                body = body if body is not None else b"not found"
                self.send_response(status)
                self.send_header("content-type", "text/plain; version=0.0.4")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if page.truncate else body)
                if page.truncate:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.routes = routes if isinstance(routes, dict) else {"/metrics": routes}
        self.status, self.delay, self.truncate = status, delay, truncate
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
