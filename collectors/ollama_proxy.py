"""An observing proxy for Ollama: clients talk to it as to Ollama; it forwards every
request unchanged (streaming included), reads the server's own timings from each final
response, and serves them as Prometheus metrics on its own /metrics.

Ollama has no /metrics (ollama/ollama issue 3144); this gives an SRE Ollama metrics in
production without touching clients. The proxy adds one copy of each chunk; it never
buffers a stream before forwarding it.

This module runs the server (uvicorn, on a socket bound up front so a busy port is an
error here, not a log line in a thread); ollama_proxy_app holds the forwarding and
ollama_proxy_metrics what is measured.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

from servescope.collectors.ollama_proxy_app import DEFAULT_MAX_BODY, build_app
from servescope.collectors.ollama_proxy_metrics import ProxyMetrics, phase_samples
from servescope.core.net import listen
from servescope.core.store import Store

# Kept for the callers that imported them from here.
_phase_samples = phase_samples
__all__ = ["DEFAULT_MAX_BODY", "OllamaProxy", "ProxyMetrics", "_phase_samples"]


class OllamaProxy:
    """The proxy server; `serve_forever()` in the foreground (Ctrl-C and SIGTERM stop it
    after in-flight answers finish or `grace_s` passes) or `start()` in a thread."""

    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 11435,
                 store: Store | None = None, timeout: float = 600.0,
                 max_body: int = DEFAULT_MAX_BODY, grace_s: float = 5.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.metrics = ProxyMetrics()
        self.max_body = max_body
        self.grace_s = grace_s
        self._sock = listen(host, port)
        port = self._sock.getsockname()[1]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        record = None
        if store is not None:
            target_id = store.upsert_target(f"proxy:{host}:{port}", "ollama-proxy",
                                            self.upstream)

            def record(endpoint: str, final: dict[str, Any], phases: dict[str, Any]) -> None:
                store.add_samples(target_id, time.time(), phase_samples(endpoint, final, phases))

        app = build_app(self.upstream, self.metrics, max_body=max_body, timeout=timeout,
                        record=record)
        # log_config=None: uvicorn leaves the process's logging as the CLI set it up.
        # No Server/Date headers of its own: Ollama's pass through.
        config = uvicorn.Config(app, lifespan="on", log_config=None, log_level="warning",
                                access_log=False, server_header=False, date_header=False,
                                timeout_graceful_shutdown=grace_s)  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        """Serves until Ctrl-C or SIGTERM, which uvicorn re-raises once it has stopped."""
        self.server.run(sockets=[self._sock])

    def start(self) -> threading.Thread:
        """Serves from a daemon thread; returns once the proxy takes requests."""
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name="ollama-proxy", daemon=True)
        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"proxy {self.url}: the server stopped while starting")
            time.sleep(0.01)
        return self._thread

    def close(self) -> None:
        """Stops serving (in-flight answers get `grace_s`) and frees the port."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(self.grace_s + 30)
        self._sock.close()
