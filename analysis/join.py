"""Join what the client saw with what the server says: the collected server-side series
of the run's target over the run's window (queue / prefill / decode, KV use, preemptions).

Used by the run summary (CLI) and the dashboard's Run page, so both explain a run the same
way.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from servescope.analysis.promql import increase
from servescope.analysis.series import HistogramWindow, gauge_series, histogram_window

from servescope.core.store import Store

PHASES = {"queue": "queue_seconds", "prefill": "prefill_seconds", "decode": "decode_seconds"}
# Scrapes just before and after a run bracket it (the collector scrapes every few seconds).
WINDOW_PAD_S = 5.0


def same_server(a: str, b: str) -> bool:
    """Whether two URLs reach the same host:port (localhost and 127.0.0.1 are one)."""
    key = _host_port(a)
    return key is not None and key == _host_port(b)


def _host_port(url: str) -> tuple[str, int] | None:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = (parts.hostname or "").lower()
    if not host:
        return None
    if host in ("localhost", "::1", "0.0.0.0"):
        host = "127.0.0.1"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return host, port


def server_split(
    store: Store, target_url: str, since: float, until: float
) -> tuple[str, dict[str, HistogramWindow], HistogramWindow | None] | None:
    """The first collected target on the run's host:port whose histograms cover the
    window: (target name, phase -> window, e2e window); None when none does."""
    for target in store.targets():
        if not same_server(target["url"], target_url):
            continue
        df = store.samples(
            target["id"], concepts=[*PHASES.values(), "e2e_seconds"], since=since, until=until
        )
        phases = {
            phase: window
            for phase, concept in PHASES.items()
            if (window := histogram_window(df, concept, since, until)) is not None
        }
        if phases:
            return target["name"], phases, histogram_window(df, "e2e_seconds", since, until)
    return None


def wait_for_scrape_after(store: Store, target_url: str, ts: float, timeout: float = 6.0) -> None:
    """If a collector is watching the run's target, wait (bounded) for its first scrape
    after `ts`, so the server's account covers the run's last requests."""
    targets = [t for t in store.targets() if same_server(t["url"], target_url)]
    if not targets:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t in targets:
            latest = store.samples(t["id"], ["running"], since=ts - 30)
            if latest.empty:  # no collector active on it lately: nothing to wait for
                return
            if latest["ts"].max() > ts:
                return
        time.sleep(0.25)


def server_side(store: Store, target_url: str, started_at: float, ended_at: float
                ) -> dict[str, Any] | None:
    """The server's account of a run window, for the summary; None without collector data.

    Means are per request finished on the server in the window (its histograms' increase),
    so they describe the same requests the client timed when nothing else loads the server.
    """
    since, until = started_at - WINDOW_PAD_S, ended_at + WINDOW_PAD_S
    found = server_split(store, target_url, since, until)
    if found is None:
        return None
    name, phases, e2e = found
    out: dict[str, Any] = {"target": name, "window": [since, until],
                           "requests_finished": e2e.count if e2e else None}
    for phase, window in phases.items():
        out[f"{phase}_ms_mean"] = window.mean * 1000 if window.mean is not None else None
    if e2e is not None and e2e.mean is not None:
        out["e2e_ms_mean"] = e2e.mean * 1000
    target = next(t for t in store.targets() if t["name"] == name)
    df = store.samples(target["id"], ["kv_usage", "waiting", "running", "preemptions_total"],
                       since=since, until=until)
    for concept, key in (("kv_usage", "kv_usage_max"), ("waiting", "waiting_max"),
                         ("running", "running_max")):
        series = gauge_series(df, concept)
        out[key] = float(series["value"].max()) if not series.empty else None
    pre = gauge_series(df, "preemptions_total")
    out["preemptions"] = (increase(list(zip(pre["ts"], pre["value"], strict=True)))
                          if not pre.empty else None)
    return out
