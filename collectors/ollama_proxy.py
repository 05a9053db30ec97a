"""An observing proxy for Ollama: clients talk to it as to Ollama; it forwards every
request unchanged (streaming included), reads the server's own timings from each final
response, and serves them as Prometheus metrics on its own /metrics.

Ollama has no /metrics (ollama/ollama issue 3144); this gives an SRE Ollama metrics in
production without touching clients. The proxy adds one copy of each chunk; it never
buffers a stream before forwarding it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from servescope.collectors.ollama import phases_from_response

from servescope.core.records import Sample
from servescope.core.store import Store

log = logging.getLogger("servescope.proxy")

OBSERVED_PATHS = ("/api/generate", "/api/chat")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade", "host", "content-length"}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
PHASES = ("total", "queue_and_overhead", "load", "prefill", "decode")


class ProxyMetrics:
    """The proxy's own registry: per-response phases as histograms, tokens as counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model", "endpoint"]
        self.phase = {
            p: Histogram(f"servescope_ollama_{p}_seconds",
                         f"Ollama {p.replace('_', ' ')} time per request (server's own "
                         "durations).", labels, buckets=LATENCY_BUCKETS, registry=self.registry)
            for p in PHASES
        }
        self.ttfb = Histogram("servescope_ollama_time_to_first_chunk_seconds",
                              "Time from the request reaching the proxy to the first response "
                              "chunk from Ollama.", labels, buckets=LATENCY_BUCKETS,
                              registry=self.registry)
        self.prompt_tokens = Counter("servescope_ollama_prompt_tokens",
                                     "Prompt tokens evaluated (prompt_eval_count).", labels,
                                     registry=self.registry)
        self.output_tokens = Counter("servescope_ollama_generation_tokens",
                                     "Tokens generated (eval_count).", labels,
                                     registry=self.registry)
        self.requests = Counter("servescope_ollama_requests",
                                "Requests forwarded, by HTTP status.",
                                ["endpoint", "status"], registry=self.registry)
        self.in_flight = Gauge("servescope_ollama_requests_in_flight",
                               "Requests the proxy is forwarding now.", ["endpoint"],
                               registry=self.registry)
        self.upstream_errors = Counter("servescope_ollama_upstream_errors",
                                       "Requests that could not reach Ollama.",
                                       ["endpoint", "error"], registry=self.registry)

    def observe(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        phases = phases_from_response(body)
        model = str(body.get("model", ""))
        for p in PHASES:
            value = phases.get(f"{p}_s")
            if value is not None:
                self.phase[p].labels(model, endpoint).observe(max(0.0, value))
        if phases["prompt_tokens"]:
            self.prompt_tokens.labels(model, endpoint).inc(phases["prompt_tokens"])
        if phases["output_tokens"]:
            self.output_tokens.labels(model, endpoint).inc(phases["output_tokens"])
        return phases


class _FinalObject:
    """Finds the final object (`done: true`) in a JSON or NDJSON body as it streams by,
    keeping only the current partial line."""

    def __init__(self) -> None:
        self._buf = b""
        self.final: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            self._take(line)

    def close(self) -> None:
        self._take(self._buf)
        self._buf = b""

    def _take(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            obj = json.loads(line)
        except ValueError:
            return
        if isinstance(obj, dict) and obj.get("done"):
            self.final = obj


def make_handler(upstream: str, client: httpx.Client, metrics: ProxyMetrics,
                 store: Store | None, target_id: int | None) -> type[BaseHTTPRequestHandler]:
    upstream = upstream.rstrip("/")
    store_lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # requests are metrics, not log lines
            pass

        def do_GET(self) -> None:
            if self.path == "/metrics":
                body = generate_latest(metrics.registry)
                self.send_response(200)
                self.send_header("content-type", CONTENT_TYPE_LATEST)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self._forward()

        def _forward(self) -> None:
            received = time.perf_counter()
            endpoint = self.path.split("?", 1)[0]
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            observed = endpoint in OBSERVED_PATHS
            watcher = _FinalObject() if observed else None
            metrics.in_flight.labels(endpoint).inc()
            try:
                with client.stream(self.command, upstream + self.path, content=body,
                                   headers=headers) as resp:
                    self.send_response(resp.status_code)
                    for k, v in resp.headers.items():
                        if k.lower() not in HOP_BY_HOP:
                            self.send_header(k, v)
                    chunked = "content-length" not in resp.headers
                    if chunked:
                        self.send_header("transfer-encoding", "chunked")
                    else:
                        self.send_header("content-length", resp.headers["content-length"])
                    self.end_headers()
                    first = True
                    for chunk in resp.iter_raw():
                        if first and observed:
                            metrics.ttfb.labels(_model_of(body), endpoint).observe(
                                time.perf_counter() - received)
                            first = False
                        if watcher is not None:
                            watcher.feed(chunk)
                        if chunked:
                            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                        else:
                            self.wfile.write(chunk)
                        self.wfile.flush()
                    if chunked:
                        self.wfile.write(b"0\r\n\r\n")
                    metrics.requests.labels(endpoint, str(resp.status_code)).inc()
            except httpx.HTTPError as exc:
                metrics.upstream_errors.labels(endpoint, type(exc).__name__).inc()
                log.warning("upstream %s: %s: %s", upstream, type(exc).__name__, exc)
                self._bad_gateway(f"upstream {upstream} unreachable: {type(exc).__name__}")
                return
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client went away; nothing to answer
            finally:
                metrics.in_flight.labels(endpoint).dec()
            if watcher is not None:
                watcher.close()
                if watcher.final is not None:
                    phases = metrics.observe(endpoint, watcher.final)
                    if store is not None and target_id is not None:
                        with store_lock:
                            store.add_samples(target_id, time.time(),
                                              _phase_samples(endpoint, watcher.final, phases))

        def _bad_gateway(self, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            try:
                self.send_response(502)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                self.close_connection = True

    # Every other method is forwarded as is.
    for method in ("POST", "PUT", "DELETE", "HEAD", "PATCH"):
        setattr(Handler, f"do_{method}", Handler._forward)
    return Handler


def _model_of(body: bytes) -> str:
    try:
        return str(json.loads(body).get("model", ""))
    except (ValueError, AttributeError):
        return ""


def _phase_samples(endpoint: str, final: dict[str, Any], phases: dict[str, Any]) -> list[Sample]:
    labels = {"model": str(final.get("model", "")), "endpoint": endpoint}
    out = []
    for key, value in phases.items():
        if value is not None:
            concept = f"ollama_request_{key}"
            out.append(Sample(concept, float(value), f"{endpoint}:{key}", labels))
    return out


class OllamaProxy:
    """The proxy server; `serve_forever()` in the foreground or `start()` in a thread."""

    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 11435,
                 store: Store | None = None, timeout: float = 600.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.metrics = ProxyMetrics()
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        self.client = httpx.Client(timeout=httpx.Timeout(timeout, connect=5.0), limits=limits)
        target_id = None
        if store is not None:
            target_id = store.upsert_target(f"proxy:{host}:{port}", "ollama-proxy",
                                            self.upstream)
        handler = make_handler(self.upstream, self.client, self.metrics, store, target_id)
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()
