"""Join what the client saw with what the server says.

Per request where the server gives an account of each one (vLLM's OpenTelemetry spans,
llama.cpp's `timings`, Ollama's durations: analysis/phases.py), else over the run's
window from the collected series of its target (queue / prefill / decode means from the
histograms, KV use, preemptions). The window never reaches into a neighbouring run on the
same server (a sweep's other levels included), and it says how many requests the server
finished in it against how many the client made.

Used by the run summary (CLI) and the dashboard's Run page, so both explain a run the same
way.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from servescope.analysis.latency import trim_warmup
from servescope.analysis.phases import (
    PHASE_METRICS,
    SOURCE_LABELS,
    RequestPhases,
    needs_spans,
    request_phases,
    span_ids,
    summarize_phases,
)
from servescope.analysis.promql import increase
from servescope.analysis.series import HistogramWindow, gauge_series, histogram_window
from servescope.core.records import RequestRecord
from servescope.core.store import Store

PHASES = {"queue": "queue_seconds", "prefill": "prefill_seconds", "decode": "decode_seconds"}
# Scrapes just before and after a run bracket it (the collector scrapes every few seconds),
# but never past the last request of the run before or the first of the run after it.
WINDOW_PAD_S = 5.0
# vLLM's span exporter sends its batch every few seconds (5 s unless OTEL_BSP_SCHEDULE_DELAY
# says otherwise): how long a finished run waits for its last spans.
SPAN_WAIT_S = 12.0


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


# -- per request -----------------------------------------------------------------------
def joined_phases(store: Store, records: list[RequestRecord]) -> list[RequestPhases]:
    """The successful records with the server's account of each: their own timings, or the
    stored span of the same request."""
    spans = store.server_spans(span_ids(needs_spans(records)))
    return request_phases(records, spans)


def wait_for_spans(store: Store, records: list[RequestRecord], since: float,
                   timeout: float = SPAN_WAIT_S) -> None:
    """If a receiver has stored spans since `since` (the run's start), wait (bounded) until
    every successful record that needs one has its span."""
    need = needs_spans(records)
    if not need or store.count_server_spans(since=since) == 0:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(request_phases(need, store.server_spans(span_ids(need)))) == len(need):
            return
        time.sleep(0.5)


def run_records(store: Store, run: dict[str, Any]) -> list[RequestRecord]:
    """A run's records without its warm-up (as its client summary counts them)."""
    records = store.requests(run["id"])
    warmup = int((run.get("scenario") or {}).get("warmup_requests") or 0)
    return trim_warmup(records, warmup) if warmup else records


# -- over the run's window (the fallback) ----------------------------------------------
@dataclass
class RunWindow:
    """The time window the server's series are read over for one run, Unix seconds.

    `since`/`until` are the run's start/end padded by WINDOW_PAD_S, cut at the previous
    run's last request end and the next run's first send on the same server. `first_send`
    and `last_end` are this run's own requests' (None: it has none)."""

    since: float
    until: float
    first_send: float | None = None
    last_end: float | None = None
    notes: list[str] = field(default_factory=list)


def run_window(store: Store, run: dict[str, Any]) -> RunWindow:
    """The window of `run` (a store.run() dict) that holds no other run of the same server."""
    first_ns, last_ns = store.request_bounds(run["id"])
    first = first_ns / 1e9 if first_ns is not None else None
    last = last_ns / 1e9 if last_ns is not None else None
    start = run["started_at"]
    end = run.get("ended_at") or time.time()  # still running: up to now
    if last is not None:
        end = max(end, last)
    win = RunWindow(start - WINDOW_PAD_S, end + WINDOW_PAD_S, first, last)
    others = sorted((r for r in store.runs() if r["id"] != run["id"]
                     and same_server(r["target_url"], run["target_url"])),
                    key=lambda r: r["started_at"])
    before = [r for r in others if r["started_at"] < start]
    after = [r for r in others if r["started_at"] >= start]
    if (prev := _nearest_with_requests(store, reversed(before))) is not None:
        other, (_, o_last) = prev
        if o_last > win.since:
            win.since = o_last
        if first is not None and o_last > first:
            win.notes.append(f"run #{other['id']} on the same server overlapped this one")
    if (nxt := _nearest_with_requests(store, after)) is not None:
        other, (o_first, _) = nxt
        if o_first < win.until:
            win.until = o_first
        if last is not None and o_first < last:
            win.notes.append(f"run #{other['id']} on the same server overlapped this one")
    win.until = max(win.until, win.since)
    return win


def _nearest_with_requests(store: Store, runs: Iterable[dict[str, Any]]
                           ) -> tuple[dict[str, Any], tuple[float, float]] | None:
    """The first of `runs` that sent requests, with its (first send, last end) in seconds."""
    for other in runs:
        first_ns, last_ns = store.request_bounds(other["id"])
        if first_ns is not None and last_ns is not None:
            return other, (first_ns / 1e9, last_ns / 1e9)
    return None


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


def server_side(store: Store, target_url: str, since: float, until: float,
                requests_made: int | None = None) -> dict[str, Any] | None:
    """The server's account of a window, for the summary; None without collector data.

    Means are per request finished on the server in the window (its histograms' increase),
    so they describe the requests the client timed only when nothing else loads the server:
    with `requests_made`, `other_traffic` says whether it finished more than the client sent.
    """
    found = server_split(store, target_url, since, until)
    if found is None:
        return None
    name, phases, e2e = found
    finished = e2e.count if e2e else None
    out: dict[str, Any] = {"target": name, "window": [since, until],
                           "requests_finished": finished, "requests_made": requests_made}
    if finished is not None and requests_made is not None:
        out["other_traffic"] = finished > requests_made + 0.5
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


def window_check(account: dict[str, Any]) -> str:
    """One line comparing the server's finished requests in the window with the client's."""
    finished, made = account.get("requests_finished"), account.get("requests_made")
    if finished is None or made is None:
        return "the server's request count over the window is unknown"
    line = f"the server finished {finished:g} requests in the window, the client made {made}"
    if account.get("other_traffic"):
        return line + ": other traffic reached the server, so its means are not this run's"
    if finished < made - 0.5:
        return line + ": the scrapes did not cover the whole run (or requests never arrived)"
    return line


# -- the summary's server section ------------------------------------------------------
def server_section(store: Store, run_id: int, wait: bool = True) -> dict[str, Any] | None:
    """The run summary's `server` section: per request (`per_request`) where the server
    gives an account of each request, and over the run's window (the keys of
    `server_side`, plus `window_notes`) where a collector scraped its target. None when
    neither is there. With `wait`, first waits (bounded) for the last spans and scrape."""
    run = store.run(run_id)
    records = run_records(store, run)
    if wait:
        wait_for_scrape_after(store, run["target_url"], time.time())
        wait_for_spans(store, records, run["started_at"])
    rows = joined_phases(store, records)
    per_request = summarize_phases(rows, sum(1 for r in records if r.ok))
    win = run_window(store, run)
    account = server_side(store, run["target_url"], win.since, win.until,
                          store.count_requests(run_id))
    if per_request is None and account is None:
        return None
    out: dict[str, Any] = dict(account or {})
    if account is not None:
        out["window_notes"] = [window_check(account), *win.notes]
    out["per_request"] = per_request
    return out


def server_lines(server: dict[str, Any] | None) -> list[str]:
    """The summary's server section as the CLI prints it."""
    if not server:
        return []
    lines = []
    per = server.get("per_request")
    if per:
        sources = ", ".join(SOURCE_LABELS.get(s, s) for s in per["sources"])
        lines.append(f"server per request ({sources}): {per['joined']} of "
                     f"{per['requests_ok']} successful requests joined")
        for metric, label in PHASE_METRICS.items():
            d = per[metric]
            if d["count"]:
                lines.append(f"  {label:34} p50 {_f(d['p50']):>9} p95 {_f(d['p95']):>9} "
                             f"p99 {_f(d['p99']):>9} mean {_f(d['mean']):>9} ms")
    if server.get("target"):
        lines.append(
            f"server {server['target']} over the run's window: per request queue "
            f"{_f(server.get('queue_ms_mean'))} ms, prefill {_f(server.get('prefill_ms_mean'))}"
            f" ms, decode {_f(server.get('decode_ms_mean'))} ms (means); waiting up to "
            f"{_f(server.get('waiting_max'))}")
        lines += [f"  {note}" for note in server.get("window_notes") or []]
    return lines


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"
