"""The collect loop: one thread per target, each on its own schedule, so a slow or dead
target never delays the others. State changes (up/down) are logged once, not per scrape,
and recorded in the store."""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from servescope.collectors.exporter import SnapshotExporter
from servescope.collectors.gpu import GpuCollector
from servescope.collectors.host import HostCollector, find_serving_pids
from servescope.collectors.normalize import Snapshot
from servescope.collectors.ollama import OllamaSnapshot, model_events
from servescope.collectors.scrape import ScrapeError, server_info
from servescope.collectors.sources import snapshot

from servescope.core.store import Store

log = logging.getLogger("servescope.collect")
HOST_TARGET = "host"


@dataclass(frozen=True)
class TargetSpec:
    name: str
    runtime: str
    url: str

    @classmethod
    def parse(cls, text: str, default_runtime: str = "auto") -> TargetSpec:
        """``NAME=RUNTIME:URL``, ``NAME=URL`` or ``URL``."""
        name, sep, rest = text.partition("=")
        if not sep:
            name, rest = "", text
        runtime = default_runtime
        head, colon, tail = rest.partition(":")
        if colon and not tail.startswith("//"):
            runtime, rest = head, tail
        if not rest.startswith(("http://", "https://")):
            raise ValueError(
                f"--target {text!r}: expected NAME=RUNTIME:URL, e.g. local=vllm:http://127.0.0.1:8000"
            )
        if not name:
            name = rest.split("://", 1)[1].rstrip("/")
        return cls(name=name, runtime=runtime, url=rest.rstrip("/"))


class TargetCollector(threading.Thread):
    def __init__(
        self,
        spec: TargetSpec,
        store: Store,
        interval: float,
        stop: threading.Event,
        exporter: SnapshotExporter | None = None,
    ) -> None:
        super().__init__(name=f"collect-{spec.name}", daemon=True)
        self.spec = spec
        self.store = store
        self.interval = interval
        self.stop_event = stop
        self.exporter = exporter
        self.target_id = store.upsert_target(spec.name, spec.runtime, spec.url)
        self.up: bool | None = None
        self.scrapes_ok = 0
        self.scrapes_failed = 0
        self.last_ok_ts: float | None = None
        self._last_counters: dict[tuple, float] = {}
        self._last_ps: OllamaSnapshot | None = None
        # A timeout shorter than the interval keeps this target on its own schedule.
        self.timeout = max(0.5, min(10.0, interval * 0.8))

    def run(self) -> None:
        with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
            next_at = time.monotonic()
            while not self.stop_event.is_set():
                self.scrape_once(client)
                next_at += self.interval
                now = time.monotonic()
                if next_at < now:  # fell behind (a slow scrape): skip, don't burst
                    next_at = now + self.interval
                self.stop_event.wait(next_at - now)

    def _snapshot(self, client: httpx.Client) -> Snapshot:
        snap, polled = snapshot(self.spec.url, self.spec.runtime, client, self.timeout,
                                keep_raw=False)
        if polled is not None:
            self._model_events(polled)
        return snap

    def _model_events(self, polled: OllamaSnapshot) -> None:
        """Ollama model loads and unloads between two polls, as target events."""
        if self._last_ps is not None:  # the first poll is the starting state
            events = model_events(self._last_ps, polled)
            for kind, model in events:
                self.store.add_target_event(self.target_id, kind, model, polled.ts)
                log.info("target %s: model %s %sed", self.spec.name, model, kind)
            if events:  # the loaded models' details changed
                self.store.set_target_info(self.target_id, polled.info)
        self._last_ps = polled

    def scrape_once(self, client: httpx.Client) -> None:
        try:
            snap = self._snapshot(client)
        except ScrapeError as exc:
            self.scrapes_failed += 1
            self._set_state(False, str(exc))
            if self.exporter is not None:
                self.exporter.update(self.spec.name, self.spec.runtime, None)
            return
        if self.up is not True:
            if self.spec.runtime == "auto":  # detected: keep it for the store and later scrapes
                self.spec = TargetSpec(self.spec.name, snap.runtime, self.spec.url)
                self.store.upsert_target(self.spec.name, snap.runtime, self.spec.url)
            info = server_info(self.spec.url, snap.runtime, client, self.timeout)
            info.update(snap.info)
            self.store.set_target_info(self.target_id, info)
        self.store.add_samples(self.target_id, snap.ts, snap.samples)
        if self.exporter is not None:
            self.exporter.update(self.spec.name, snap.runtime, snap.samples)
        self.scrapes_ok += 1
        if self.up is False and self.last_ok_ts is not None:
            self.store.add_target_event(
                self.target_id, "gap", f"no samples from {self.last_ok_ts:.3f} to {snap.ts:.3f}",
                snap.ts,
            )
        self._check_reset(snap)
        self.last_ok_ts = snap.ts
        self._set_state(True, None)

    def _check_reset(self, snap: Snapshot) -> None:
        """A counter that went down means the server restarted: record it once, so rates
        over the reset are read as a restart (never as a negative rate)."""
        counters = {
            (s.concept, s.raw_name, tuple(sorted(s.labels.items()))): s.value
            for s in snap.samples
            if s.concept.endswith("_total")
        }
        dropped = [k[1] for k, v in counters.items() if v < self._last_counters.get(k, v)]
        if dropped:
            self.store.add_target_event(
                self.target_id, "reset", f"counters went down ({dropped[0]}): restarted?",
                snap.ts,
            )
            log.warning("target %s restarted: its counters reset", self.spec.name)
        self._last_counters = counters

    def _set_state(self, up: bool, error: str | None) -> None:
        if self.up == up:
            return
        self.up = up
        self.store.set_target_status(self.target_id, up, error)
        if up:
            log.info("target %s is up (%s)", self.spec.name, self.spec.url)
        else:
            log.warning("target %s is down: %s", self.spec.name, error)


class HostTargetCollector(TargetCollector):
    """This machine as a target: psutil host metrics, NVML GPU metrics, and the serving
    processes of the other targets that listen on this host."""

    def __init__(self, store: Store, interval: float, stop: threading.Event,
                 exporter: SnapshotExporter | None, serving_urls: list[str]) -> None:
        super().__init__(TargetSpec(HOST_TARGET, "host", "host://localhost"), store, interval,
                         stop, exporter)
        self.serving_urls = serving_urls
        self.host = HostCollector()
        self.gpu = GpuCollector()

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.gpu.close()

    def _snapshot(self, client: httpx.Client) -> Snapshot:
        pids = sorted({pid for url in self.serving_urls for pid in _local_pids(url)})
        snap = Snapshot(runtime="host", source="host", ts=time.time())
        snap.samples = self.host.collect(pids) + self.gpu.collect()
        snap.info = {"hostname": socket.gethostname(), "gpus": len(self.gpu.gpus)}
        return snap


def _local_pids(url: str) -> list[int]:
    parsed = urlsplit(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1") or not parsed.port:
        return []
    return find_serving_pids(parsed.port)


class Collector:
    """Runs one TargetCollector per target until stopped."""

    def __init__(
        self,
        specs: list[TargetSpec],
        store: Store,
        interval: float = 2.0,
        exporter: SnapshotExporter | None = None,
        host: bool = False,
    ) -> None:
        self.stop_event = threading.Event()
        self.workers = [
            TargetCollector(s, store, interval, self.stop_event, exporter) for s in specs
        ]
        if host:
            urls = [s.url for s in specs]
            self.workers.append(
                HostTargetCollector(store, interval, self.stop_event, exporter, urls)
            )

    def start(self) -> None:
        for w in self.workers:
            w.start()

    def stop(self, timeout: float = 15.0) -> None:
        self.stop_event.set()
        for w in self.workers:
            w.join(timeout)

    def __enter__(self) -> Collector:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
