"""Re-export the normalized series for Prometheus, named by its conventions (base units
in names, ``_total`` counters, one `target` and `runtime` label on every series).

A prometheus-client custom collector: each scrape of the exporter renders the latest
snapshot of every target, so no state is duplicated in client-library metric objects.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from servescope.core.records import Sample

# concept -> (exported name, kind, help). Counters are named without _total here;
# prometheus-client appends it.
EXPORTED: dict[str, tuple[str, str, str]] = {
    "running": ("servescope_requests_running", "gauge", "Requests being processed."),
    "waiting": ("servescope_requests_waiting", "gauge", "Requests queued, not yet scheduled."),
    "waiting_by_reason": ("servescope_requests_waiting_by_reason", "gauge",
                          "Requests waiting, by why they wait (vLLM)."),
    "kv_usage": ("servescope_kv_cache_usage_ratio", "gauge", "KV cache used, 0-1."),
    "prefix_cache_queries_total": ("servescope_prefix_cache_queried_tokens", "counter",
                                   "Prompt tokens looked up in the prefix cache."),
    "prefix_cache_hits_total": ("servescope_prefix_cache_hit_tokens", "counter",
                                "Prompt tokens found in the prefix cache."),
    "kv_capacity_tokens": ("servescope_kv_cache_capacity_tokens", "gauge",
                           "KV cache capacity in tokens."),
    "kv_free_tokens": ("servescope_kv_cache_free_tokens", "gauge", "KV cache headroom in tokens."),
    "prompt_tokens_total": ("servescope_prompt_tokens", "counter", "Prompt tokens processed."),
    "generation_tokens_total": ("servescope_generation_tokens", "counter",
                                "Output tokens generated."),
    "preemptions_total": ("servescope_preemptions", "counter", "Requests preempted."),
    "requests_finished_total": ("servescope_requests_finished", "counter", "Requests finished."),
    "prompt_tokens_cached_total": ("servescope_prompt_tokens_cached", "counter",
                                   "Prompt tokens served from a prefix cache."),
    "prefill_seconds_total": ("servescope_prefill_seconds", "counter", "Time spent in prefill."),
    "decode_seconds_total": ("servescope_decode_seconds", "counter", "Time spent in decode."),
    "ttft_seconds": ("servescope_time_to_first_token_seconds", "histogram",
                     "Server-side time to first token."),
    "itl_seconds": ("servescope_inter_token_latency_seconds", "histogram",
                    "Server-side inter-token latency."),
    "tpot_seconds": ("servescope_time_per_output_token_seconds", "histogram",
                     "Server-side mean time per output token, per request."),
    "e2e_seconds": ("servescope_request_duration_seconds", "histogram",
                    "Server-side end-to-end request latency."),
    "queue_seconds": ("servescope_request_queue_seconds", "histogram", "Time waiting in queue."),
    "prefill_seconds": ("servescope_request_prefill_seconds", "histogram", "Prefill time."),
    "decode_seconds": ("servescope_request_decode_seconds", "histogram", "Decode time."),
}


@dataclass
class _TargetState:
    runtime: str
    up: bool
    samples: list[Sample]


class SnapshotExporter:
    """Holds the latest samples per target and renders them on every exporter scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._targets: dict[str, _TargetState] = {}

    def update(self, target: str, runtime: str, samples: Iterable[Sample] | None) -> None:
        """Record a scrape: `samples` None means the target is down (its last values are
        dropped, so a dashboard never shows stale numbers as live)."""
        with self._lock:
            self._targets[target] = _TargetState(runtime, samples is not None, list(samples or []))

    def describe(self) -> list[Metric]:
        return []  # families vary with what targets expose; render on collect only

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            targets = dict(self._targets)
        up = GaugeMetricFamily("servescope_target_up", "1 if the last scrape of the target "
                               "succeeded.", labels=["target", "runtime"])
        for name, state in sorted(targets.items()):
            up.add_metric([name, state.runtime], 1.0 if state.up else 0.0)
        yield up
        by_concept: dict[str, list[tuple[str, str, Sample]]] = {}
        for name, state in targets.items():
            for s in state.samples:
                if s.concept in EXPORTED or state.runtime == "host":
                    by_concept.setdefault(s.concept, []).append((name, state.runtime, s))
        for concept, rows in sorted(by_concept.items()):
            yield _family(concept, rows)


def _family(concept: str, rows: list[tuple[str, str, Sample]]) -> Metric:
    name, kind, doc = EXPORTED.get(concept) or _host_metric(concept)
    extra_keys = sorted({k for _, _, s in rows for k in s.labels if k != "le"})
    label_names = ["target", "runtime", *extra_keys]
    cls = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily,
           "histogram": HistogramMetricFamily}[kind]
    family = cls(name, doc, labels=label_names)
    for target, runtime, s in rows:
        values = [target, runtime, *(s.labels.get(k, "") for k in extra_keys)]
        if kind == "histogram":
            buckets = [(_le(le), n) for le, n in s.extra["buckets"]]
            family.add_metric(values, buckets=buckets, sum_value=s.extra["sum"])
        else:
            family.add_metric(values, s.value)
    return family


def _host_metric(concept: str) -> tuple[str, str, str]:
    """Host and GPU concepts already carry their base unit in the name (e.g.
    memory_used_bytes, gpu_power_draw_watts); counters end in _total."""
    if concept.endswith("_total"):
        return f"servescope_host_{concept.removesuffix('_total')}", "counter", f"Host {concept}."
    return f"servescope_host_{concept}", "gauge", f"Host {concept}."


def _le(le: float) -> str:
    return "+Inf" if math.isinf(le) else repr(float(le))


def serve(exporter: SnapshotExporter, host: str = "127.0.0.1", port: int = 9465):
    """Serve /metrics on host:port in a background thread; returns (server, thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter)
    return start_http_server(port, addr=host, registry=registry)
