"""The collect loop: one thread per target, each on its own schedule, so a slow or dead
target never delays the others. State changes (up/down) are logged once, not per scrape,
and recorded in the store. A collector's own failure (the store locked past its busy
timeout, a bug) never ends its thread: it is logged once per kind, counted, exported as
``servescope_collector_errors_total``, and the recovery is logged too."""

from __future__ import annotations

import logging
import re
import socket
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

import httpx

from servescope.collectors.exporter import SnapshotExporter
from servescope.collectors.gpu import GpuCollector
from servescope.collectors.host import HostCollector, find_serving_pids
from servescope.collectors.normalize import Snapshot
from servescope.collectors.ollama import OllamaSnapshot, model_events
from servescope.collectors.scrape import ScrapeError, server_info
from servescope.collectors.sources import (
    RUNTIMES,
    is_http_url,
    redact_credentials,
    snapshot,
    split_credentials,
)
from servescope.core.concepts import is_counter
from servescope.core.store import Store, StoreError

log = logging.getLogger("servescope.collect")
HOST_TARGET = "host"

# NAME=RUNTIME:URL, NAME=URL, RUNTIME:URL or URL. A name holds no ":" or "/", so the "=" of
# a URL's query or password is never read as the name's.
_TARGET = re.compile(r"(?:(?P<name>[^=:/]+)=)?(?:(?P<runtime>[\w.-]+):(?!//))?(?P<url>.*)",
                     re.DOTALL)


@dataclass(frozen=True)
class TargetSpec:
    """One target. Credentials in `url` (``user:password@``) move to `auth` (HTTP basic
    auth): the name, the URL, logs, the store and the exporter never carry them."""

    name: str
    runtime: str
    url: str
    auth: tuple[str, str] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        url, auth = split_credentials(self.url)
        object.__setattr__(self, "url", url)
        object.__setattr__(self, "name", redact_credentials(self.name))
        if self.auth is None:
            object.__setattr__(self, "auth", auth)

    @classmethod
    def parse(cls, text: str, default_runtime: str = "auto") -> TargetSpec:
        """``NAME=RUNTIME:URL``, ``NAME=URL``, ``RUNTIME:URL`` or ``URL``; ValueError names
        the bad part (credentials never shown)."""
        shown = redact_credentials(text)
        m = _TARGET.fullmatch(text.strip())
        assert m is not None  # every part is optional but the URL, which takes anything
        url, runtime = m["url"], m["runtime"] or default_runtime
        if not is_http_url(url):
            raise ValueError(f"--target {shown!r}: expected NAME=RUNTIME:URL with an http:// or "
                             "https:// URL, e.g. local=vllm:http://127.0.0.1:8000")
        if runtime not in RUNTIMES:
            raise ValueError(f"--target {shown!r}: unknown runtime {runtime!r}; known: "
                             f"{', '.join(RUNTIMES)}")
        url, auth = split_credentials(url.rstrip("/"))
        name = m["name"] or url.split("://", 1)[1]
        return cls(name=name, runtime=runtime, url=url, auth=auth)


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
        # The collector's own errors (not the target's): count by kind, and those failing now.
        self.errors: Counter[str] = Counter()
        self._failing: Counter[str] = Counter()
        # A timeout shorter than the interval keeps this target on its own schedule.
        self.timeout = max(0.5, min(10.0, interval * 0.8))

    def run(self) -> None:
        with httpx.Client(timeout=self.timeout, follow_redirects=False,
                          auth=self.spec.auth) as client:
            next_at = time.monotonic()
            while not self.stop_event.is_set():
                try:
                    self.scrape_once(client)
                except Exception as exc:  # the thread must outlive any fault
                    self._failed(exc)
                else:
                    self._recovered()
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
            if self.exporter is not None:
                self.exporter.update(self.spec.name, self.spec.runtime, None)
            self._set_state(False, str(exc))
            return
        if self.exporter is not None:  # live even while the store refuses writes
            self.exporter.update(self.spec.name, snap.runtime, snap.samples)
        if self.up is not True:
            if self.spec.runtime == "auto":  # detected: keep it for the store and later scrapes
                self.store.upsert_target(self.spec.name, snap.runtime, self.spec.url)
                self.spec = replace(self.spec, runtime=snap.runtime)
            info = server_info(self.spec.url, snap.runtime, client, self.timeout)
            info.update(snap.info)
            self.store.set_target_info(self.target_id, info)
        self.store.add_samples(self.target_id, snap.ts, snap.samples)
        self.scrapes_ok += 1
        if (self.up is False or self._failing) and self.last_ok_ts is not None:
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
            if is_counter(s.concept)
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
        self.store.set_target_status(self.target_id, up, error)  # first: retried if it fails
        self.up = up
        if up:
            log.info("target %s is up (%s)", self.spec.name, self.spec.url)
        else:
            log.warning("target %s is down: %s", self.spec.name, error)

    def _failed(self, exc: Exception) -> None:
        """Count the error; log its kind the first time it occurs in a row of failures."""
        kind = type(exc).__name__
        self.errors[kind] += 1
        if self.exporter is not None:
            self.exporter.count_error(self.spec.name, kind)
        self._failing[kind] += 1
        if self._failing[kind] == 1:
            known = isinstance(exc, sqlite3.Error | StoreError)  # anything else is a bug
            log.error("target %s: collecting failed (%s: %s); still collecting, counting "
                      "errors of this kind until it recovers", self.spec.name, kind,
                      redact_credentials(str(exc)), exc_info=None if known else exc)

    def _recovered(self) -> None:
        if self._failing:
            log.info("target %s: collecting and storing again, after %s", self.spec.name,
                     ", ".join(f"{n} {kind}" for kind, n in self._failing.items()))
            self._failing.clear()


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


class Retention(threading.Thread):
    """Deletes samples older than `keep` seconds: at start, then every tenth of `keep`
    (at least every second, at most every hour). Store errors are logged and retried."""

    def __init__(self, store: Store, keep: float, stop: threading.Event) -> None:
        super().__init__(name="retention", daemon=True)
        self.store, self.keep, self.stop_event = store, keep, stop
        self.period = min(3600.0, max(1.0, keep / 10))
        self.deleted = 0
        self.passes = 0
        self.error: str | None = None

    def run(self) -> None:
        while True:
            self.run_once()
            if self.stop_event.wait(self.period):
                return

    def run_once(self) -> None:
        cutoff = time.time() - self.keep
        try:
            n = self.store.delete_samples_before(cutoff)
        except Exception as exc:  # retried next period; logged once until it recovers
            if self.error is None:
                log.error("retention: deleting old samples failed (%s: %s); trying again "
                          "every %.0fs", type(exc).__name__, exc, self.period)
            self.error = str(exc)
            return
        if self.error is not None:
            log.info("retention: deleting old samples again")
            self.error = None
        self.deleted += n
        self.passes += 1
        if n or self.passes == 1:
            log.info("retention: deleted %d samples older than %s", n,
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(cutoff)))


class Collector:
    """Runs one TargetCollector per target until stopped (and the retention, if asked)."""

    def __init__(
        self,
        specs: list[TargetSpec],
        store: Store,
        interval: float = 2.0,
        exporter: SnapshotExporter | None = None,
        host: bool = False,
        retain: float | None = None,
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
        self.retention = Retention(store, retain, self.stop_event) if retain else None

    def start(self) -> None:
        for w in self.workers:
            w.start()
        if self.retention is not None:
            self.retention.start()

    def stop(self, timeout: float = 15.0) -> None:
        self.stop_event.set()
        for w in self.workers:
            w.join(timeout)
        if self.retention is not None:
            self.retention.join(timeout)

    def __enter__(self) -> Collector:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
