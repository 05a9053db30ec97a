"""What serving a workload cost the host: CPU, memory and GPU use during a run's load
window, from the host collector's samples (collectors/host.py, collectors/gpu.py, stored
under the "host" target), so a runtime comparison can say that one runtime's tokens/s
took every core and another's half of one.

`window_use` is pure (a DataFrame of stored samples in, a dict out); `run_host_use` reads
the store for one run's window (like analysis/join.py, the one store reader here);
`combine` sums levels up to a target; `host_line` says it in words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from servescope.analysis.series import counter_rate_series, gauge_series
from servescope.core.store import Store

HOST_TARGET = "host"  # the name collectors/loop.py's HostTargetCollector stores under
CONCEPTS = ("cpu_utilization_ratio", "memory_used_bytes", "memory_total_bytes",
            "process_resident_memory_bytes", "process_cpu_seconds_total",
            "gpu_utilization_ratio", "gpu_memory_used_bytes", "gpu_memory_total_bytes")
NO_GPU = "no GPU"
LATE_SCRAPE_S = 30.0  # how far after a short window its covering scrape is looked for
NO_SAMPLES = "no host samples in the window (was the host collector on?)"


def _stats(series: pd.DataFrame, scale: float = 1.0) -> tuple[float | None, float | None]:
    if series.empty:
        return None, None
    values = series["value"] * scale
    return float(values.mean()), float(values.max())


def window_use(df: pd.DataFrame, since: float | None = None) -> dict[str, Any]:
    """Host use over the samples in `df` (the host target's samples of one window) stamped
    at or after `since`; a counter's rate from the scrape before `since` (when `df` holds
    it) to the first one after counts too, as it is the window's first interval.

    CPU %: all cores together (the mean of the per-core ratios per scrape), mean and peak
    over the scrapes. Memory: the host's peak in use, and the serving processes' peak RSS
    (summed over a server and its children per scrape). Server CPU: cores' worth of CPU
    time the serving processes used per second. GPU: NVML's utilization and memory, or
    `gpu` = "no GPU" when NVML reported none.
    """
    rates = counter_rate_series(df, "process_cpu_seconds_total")
    if since is not None and not df.empty:
        df = df[df["ts"] >= since]
        rates = rates[rates["ts"] >= since]
    cpu = gauge_series(df, "cpu_utilization_ratio", "mean")
    cpu_mean, cpu_peak = _stats(cpu, 100.0)
    _, mem_peak = _stats(gauge_series(df, "memory_used_bytes"))
    _, mem_total = _stats(gauge_series(df, "memory_total_bytes"))
    _, rss_peak = _stats(gauge_series(df, "process_resident_memory_bytes"))
    server_cpu, server_cpu_peak = _stats(rates)
    gpu_util = gauge_series(df, "gpu_utilization_ratio", "mean")
    gpu_mem = gauge_series(df, "gpu_memory_used_bytes")
    has_gpu = not (gpu_util.empty and gpu_mem.empty)
    gpu_mean, gpu_peak = _stats(gpu_util, 100.0)
    _, gpu_mem_peak = _stats(gpu_mem)
    _, gpu_mem_total = _stats(gauge_series(df, "gpu_memory_total_bytes"))
    return {
        "samples": len(cpu), "cpu_mean_pct": cpu_mean, "cpu_peak_pct": cpu_peak,
        "memory_used_peak_bytes": mem_peak, "memory_total_bytes": mem_total,
        "server_rss_peak_bytes": rss_peak, "server_cpu_cores_mean": server_cpu,
        "server_cpu_cores_peak": server_cpu_peak,
        "gpu": "present" if has_gpu else NO_GPU,
        "gpu_util_mean_pct": gpu_mean, "gpu_util_peak_pct": gpu_peak,
        "gpu_memory_used_peak_bytes": gpu_mem_peak, "gpu_memory_total_bytes": gpu_mem_total,
    }


def combine(levels: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A target's use over all its levels: means weighted by each level's scrapes, peaks
    the highest, totals as seen."""
    levels = [u for u in levels if u and u.get("samples")]
    out = window_use(pd.DataFrame(columns=["ts", "concept", "value", "raw_name", "labels"]))
    if not levels:
        return out
    weights = [u["samples"] for u in levels]
    out["samples"] = sum(weights)
    for key in ("cpu_mean_pct", "server_cpu_cores_mean", "gpu_util_mean_pct"):
        known = [(u[key], w) for u, w in zip(levels, weights, strict=True) if u[key] is not None]
        if known:
            out[key] = sum(v * w for v, w in known) / sum(w for _, w in known)
    for key in ("cpu_peak_pct", "memory_used_peak_bytes", "memory_total_bytes",
                "server_rss_peak_bytes", "server_cpu_cores_peak", "gpu_util_peak_pct",
                "gpu_memory_used_peak_bytes", "gpu_memory_total_bytes"):
        known = [u[key] for u in levels if u[key] is not None]
        out[key] = max(known) if known else None
    out["gpu"] = "present" if any(u["gpu"] != NO_GPU for u in levels) else NO_GPU
    return out


def _gib(v: float | None) -> str:
    return "–" if v is None else f"{v / 2**30:.2f} GiB"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}%"


def host_cells(use: dict[str, Any] | None) -> list[str]:
    """[CPU mean, CPU peak, memory peak / total, server RSS peak, server cores, GPU] as
    shown in both reports and on the Compare page."""
    if not use or not use.get("samples"):
        return ["–", "–", "–", "–", "–", NO_SAMPLES if use is not None else "–"]
    cores = use.get("server_cpu_cores_mean")
    gpu = NO_GPU if use["gpu"] == NO_GPU else (
        f"util {_pct(use['gpu_util_mean_pct'])} mean, {_pct(use['gpu_util_peak_pct'])} peak; "
        f"memory {_gib(use['gpu_memory_used_peak_bytes'])} of "
        f"{_gib(use['gpu_memory_total_bytes'])}")
    return [_pct(use["cpu_mean_pct"]), _pct(use["cpu_peak_pct"]),
            f"{_gib(use['memory_used_peak_bytes'])} of {_gib(use['memory_total_bytes'])}",
            _gib(use["server_rss_peak_bytes"]),
            "–" if cores is None else f"{cores:.2f}", gpu]


HOST_HEAD = ["host CPU mean", "host CPU peak", "memory used peak", "server RSS peak",
             "server CPU (cores)", "GPU"]


def host_line(use: dict[str, Any] | None) -> str:
    """One sentence: "host CPU 63% mean (98% peak), memory 5.1 GiB of 23.4 GiB, ..."."""
    cells = host_cells(use)
    if not use or not use.get("samples"):
        return NO_SAMPLES
    return (f"host CPU {cells[0]} mean ({cells[1]} peak), memory {cells[2]} at peak, "
            f"server RSS {cells[3]}, server CPU {cells[4]} cores, GPU: {cells[5]}")


# -- the one store reader ---------------------------------------------------------------
def load_window(store: Store, run: dict[str, Any], pad_s: float = 1.0) -> tuple[float, float]:
    """The run's load window: first send to last end (the run's start and end when it has
    no requests), plus `pad_s` after it: a CPU sample covers the interval BEFORE its stamp,
    so the scrape just after the end still describes the window's last second."""
    first_ns, last_ns = store.request_bounds(run["id"])
    since = first_ns / 1e9 if first_ns is not None else run["started_at"]
    until = last_ns / 1e9 if last_ns is not None else (run.get("ended_at") or since)
    return since, until + pad_s


def run_host_use(store: Store, run_id: int, pad_s: float = 1.0) -> dict[str, Any] | None:
    """Host use during one run's load window; None when no host collector stored here.
    A window shorter than the scrape interval may hold no scrape: then the first scrape
    after it, whose CPU reading covers it, stands for it."""
    host = next((t for t in store.targets() if t["name"] == HOST_TARGET), None)
    if host is None:
        return None
    since, until = load_window(store, store.run(run_id), pad_s)
    df = store.samples(host["id"], CONCEPTS, since=since - 2 * pad_s,
                       until=until + LATE_SCRAPE_S)
    cpu_stamps = df.loc[(df["concept"] == "cpu_utilization_ratio") & (df["ts"] >= since), "ts"]
    if not cpu_stamps.empty and cpu_stamps.min() > until:
        until = float(cpu_stamps.min())
    return window_use(df[df["ts"] <= until], since)
