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

from servescope.core.concepts import CONCEPTS
from servescope.core.records import Sample

# concept -> (exported name, kind, help), from the concept table. Counters are named
# without _total here; prometheus-client appends it.
EXPORTED: dict[str, tuple[str, str, str]] = {
    c.name: (c.exported, c.kind, c.help) for c in CONCEPTS if c.exported is not None
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
        self._errors: dict[tuple[str, str], int] = {}  # (target, kind) -> collector errors

    def update(self, target: str, runtime: str, samples: Iterable[Sample] | None) -> None:
        """Record a scrape: `samples` None means the target is down (its last values are
        dropped, so a dashboard never shows stale numbers as live)."""
        with self._lock:
            self._targets[target] = _TargetState(runtime, samples is not None, list(samples or []))

    def count_error(self, target: str, kind: str) -> None:
        """One more error of the collector itself (e.g. the store stayed locked) for a
        target, by kind (the exception type)."""
        with self._lock:
            self._errors[target, kind] = self._errors.get((target, kind), 0) + 1

    def describe(self) -> list[Metric]:
        return []  # families vary with what targets expose; render on collect only

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            targets = dict(self._targets)
            errors = dict(self._errors)
        if errors:
            family = CounterMetricFamily(
                "servescope_collector_errors", "Errors of the collector itself (not the "
                "target's), e.g. the store locked past its busy timeout.",
                labels=["target", "kind"])
            for (target, kind), n in sorted(errors.items()):
                family.add_metric([target, kind], n)
            yield family
        up = GaugeMetricFamily("servescope_target_up", "1 if the last scrape of the target "
                               "succeeded.", labels=["target", "runtime"])
        for name, state in sorted(targets.items()):
            up.add_metric([name, state.runtime], 1.0 if state.up else 0.0)
        yield up
        by_concept: dict[str, list[tuple[str, str, Sample]]] = {}
        for name, state in targets.items():
            for s in state.samples:
                if s.concept in EXPORTED:
                    by_concept.setdefault(s.concept, []).append((name, state.runtime, s))
        for concept, rows in sorted(by_concept.items()):
            yield _family(concept, rows)


def _family(concept: str, rows: list[tuple[str, str, Sample]]) -> Metric:
    name, kind, doc = EXPORTED[concept]
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


def _le(le: float) -> str:
    return "+Inf" if math.isinf(le) else repr(float(le))


def serve(exporter: SnapshotExporter, host: str = "127.0.0.1", port: int = 9465):
    """Serve /metrics on host:port in a background thread; returns (server, thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter)
    return start_http_server(port, addr=host, registry=registry)
