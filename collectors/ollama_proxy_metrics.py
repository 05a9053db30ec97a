"""What the Ollama proxy measures: its Prometheus registry, the final-object watcher that
finds Ollama's own timings in a response as it streams by, and the store samples made from
them. No HTTP here, so the serving code (ollama_proxy_app) and these stay apart."""

from __future__ import annotations

import json
import re
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from servescope.analysis.ollama_phases import phases_from_response
from servescope.core.records import Sample

OBSERVED_PATHS = ("/api/generate", "/api/chat")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
PHASES = ("total", "queue_and_overhead", "load", "prefill", "decode")

# Ollama's API surface (0.5.x). Any other path is labelled "other": a scanner probing random
# paths must not grow one time series per path it tried.
KNOWN_PATHS = frozenset({
    "/", "/api/version", "/api/tags", "/api/ps", "/api/show", "/api/generate", "/api/chat",
    "/api/embed", "/api/embeddings", "/api/pull", "/api/push", "/api/create", "/api/copy",
    "/api/delete", "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
})
_PATTERNS = ((re.compile(r"^/api/blobs/[^/]+$"), "/api/blobs/{digest}"),
             (re.compile(r"^/v1/models/.+$"), "/v1/models/{model}"))


def endpoint_label(path: str) -> str:
    """The `endpoint` label of a request path: the path itself for Ollama's fixed
    endpoints, a template for those carrying a name, "other" for the rest."""
    if path in KNOWN_PATHS:
        return path
    for pattern, template in _PATTERNS:
        if pattern.match(path):
            return template
    return "other"


class ProxyMetrics:
    """The proxy's own registry: per-response phases as histograms, tokens as counters,
    and what the proxy itself saw (statuses, in flight, upstream errors, disconnects)."""

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
                                "Requests answered, by HTTP status (Ollama's, or the proxy's "
                                "own 413 and 502).", ["endpoint", "status"],
                                registry=self.registry)
        self.in_flight = Gauge("servescope_ollama_requests_in_flight",
                               "Requests the proxy is forwarding now.", ["endpoint"],
                               registry=self.registry)
        self.upstream_errors = Counter("servescope_ollama_upstream_errors",
                                       "Requests that could not reach Ollama or whose answer "
                                       "broke off.", ["endpoint", "error"],
                                       registry=self.registry)
        self.client_disconnects = Counter("servescope_ollama_client_disconnects",
                                          "Clients that went away before their answer ended; "
                                          "the proxy closed the upstream stream.", ["endpoint"],
                                          registry=self.registry)
        self.store_errors = Counter("servescope_ollama_store_errors",
                                    "Timings that could not be written to the store.",
                                    registry=self.registry)

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


class FinalObject:
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


def model_of(body: bytes) -> str:
    """The `model` a request body names, "" when it is not a JSON object."""
    try:
        return str(json.loads(body).get("model", ""))
    except (ValueError, AttributeError):
        return ""


def phase_samples(endpoint: str, final: dict[str, Any], phases: dict[str, Any]) -> list[Sample]:
    """One store sample per known phase of a final response."""
    labels = {"model": str(final.get("model", "")), "endpoint": endpoint}
    out = []
    for key, value in phases.items():
        if value is not None:
            concept = f"ollama_request_{key}"
            out.append(Sample(concept, float(value), f"{endpoint}:{key}", labels))
    return out
