"""Live page: what each collected server is doing now, from the store's samples."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from capacity.series import (
    counter_rate_series,
    gauge_series,
    histogram_quantile_series,
    kv_usage_series,
    label_is,
    latest_labels,
    latest_value,
    split_by_label,
)
from dashboard import figures
from dashboard.figures import GIB, ago, local_clock, redact_urls
from servescope.store import Store

REFRESH_S = 5
TIME_RANGES: dict[str, float | None] = {
    "last 5 min": 300.0,
    "last 15 min": 900.0,
    "last 1 h": 3600.0,
    "all": None,
}
QUANTILE_WINDOW_S = 30.0
EMPTY_STATE = (
    "No targets in the store yet. Start a collector against a running server, e.g. "
    "`servescope collect --target local=vllm:http://127.0.0.1:8000`, or run `make run` "
    "to start a local server, the collector and a load run together."
)
LIVE_CONCEPTS = (
    "running",
    "waiting",
    "kv_usage",
    "kv_capacity_tokens",
    "kv_free_tokens",
    "prompt_tokens_total",
    "generation_tokens_total",
    "ttft_seconds",
    "itl_seconds",
)
# `servescope collect` stores its own machine as a target of this runtime (off: --no-host).
HOST_RUNTIME = "host"
HOST_CONCEPTS = (
    "cpu_utilization_ratio",
    "memory_total_bytes",
    "memory_used_bytes",
    "disk_read_bytes_total",
    "disk_written_bytes_total",
    "network_received_bytes_total",
    "network_transmitted_bytes_total",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "gpu_utilization_ratio",
    "gpu_memory_used_bytes",
    "gpu_memory_total_bytes",
    "gpu_power_draw_watts",
    "gpu_power_limit_watts",
)
# Loopback carries a local load generator's traffic to a local server: counting it would
# double the real traffic and hide the NICs, so it is shown apart.
LOOPBACK = ("lo",)
NO_PROCESSES = "no serving process found on this host"
Chart = tuple[go.Figure, str | None]  # a figure and an optional caption under it


def render(store: Store) -> None:
    st.title("Live")
    targets = store.targets()
    if not targets:
        st.info(EMPTY_STATE)
        return
    names = [t["name"] for t in targets]
    left, middle, right = st.columns([4, 4, 2], vertical_alignment="bottom")
    chosen = left.multiselect("Targets", names, default=names)
    range_label = middle.segmented_control(
        "Time range", list(TIME_RANGES), default="last 15 min", required=True
    )
    auto = right.toggle(f"Auto-refresh every {REFRESH_S} s", value=True)
    if not chosen:
        st.info("Pick at least one target.")
        return
    show = st.fragment(_render_targets, run_every=REFRESH_S if auto else None)
    show(store, chosen, TIME_RANGES[range_label])


def _render_targets(store: Store, names: list[str], range_s: float | None) -> None:
    # Re-read targets on every refresh: status and info change while we watch.
    by_name = {t["name"]: t for t in store.targets()}
    now = time.time()
    since = None if range_s is None else now - range_s
    for name in names:
        if name in by_name:
            _render_target(store, by_name[name], since)
    st.caption(f"Updated {local_clock(now)}.")


def _render_target(store: Store, target: dict[str, Any], since: float | None) -> None:
    host = target["runtime"] == HOST_RUNTIME
    with st.container(border=True):
        _target_header(target)
        if not host:
            _server_facts(target.get("info") or {})
        concepts = HOST_CONCEPTS if host else LIVE_CONCEPTS
        df = store.samples(target["id"], concepts=concepts, since=since)
        if df.empty:
            st.info(
                "No samples from this target in the selected time range. Pick a longer "
                "range, or check that `servescope collect` is running against it."
            )
            return
        if host:
            _host_facts(target.get("info") or {}, df)
        last = float(df["ts"].max())
        st.caption(
            f"Last sample {local_clock(last)} ({ago(last)}), "
            f"{df['ts'].nunique():,} scrapes in this range."
        )
        charts = _host_charts(df) if host else _server_charts(df)
        _chart_grid(f"live-{target['id']}", charts)
        if host and not df["concept"].str.startswith("gpu_").any():
            st.caption(_no_gpu_note(target.get("info") or {}))


def _no_gpu_note(info: dict[str, Any]) -> str:
    if info.get("gpus"):
        return f"{info['gpus']} GPU(s) on this host, but no GPU samples in this time range."
    return "No NVIDIA GPU on this host (NVML found none), so there are no GPU charts."


def _server_charts(df: pd.DataFrame) -> list[Chart]:
    figs = [
        figures.running_waiting_figure(gauge_series(df, "running"), gauge_series(df, "waiting")),
        figures.kv_usage_figure(kv_usage_series(df)),
        figures.kv_headroom_figure(
            gauge_series(df, "kv_free_tokens"), gauge_series(df, "kv_capacity_tokens")
        ),
        figures.throughput_figure(
            counter_rate_series(df, "prompt_tokens_total"),
            counter_rate_series(df, "generation_tokens_total"),
        ),
        figures.quantile_figure(
            histogram_quantile_series(df, "ttft_seconds", window_s=QUANTILE_WINDOW_S),
            f"TTFT (server, {QUANTILE_WINDOW_S:.0f} s window)",
        ),
        figures.quantile_figure(
            histogram_quantile_series(df, "itl_seconds", window_s=QUANTILE_WINDOW_S),
            f"ITL (server, {QUANTILE_WINDOW_S:.0f} s window)",
        ),
    ]
    return [(fig, None) for fig in figs]


def _host_charts(df: pd.DataFrame) -> list[Chart]:
    """CPU, memory, network; the serving processes and disk; then the GPUs, if any."""
    cores = split_by_label(df, "cpu_utilization_ratio", "cpu")
    nics = df[~label_is(df, "interface", LOOPBACK)]
    charts: list[Chart] = [
        (
            figures.cpu_figure(
                gauge_series(df, "cpu_utilization_ratio", how="mean"),
                {cpu: gauge_series(part, "cpu_utilization_ratio") for cpu, part in cores.items()},
            ),
            None,
        ),
        (
            figures.memory_figure(
                gauge_series(df, "memory_used_bytes"), gauge_series(df, "memory_total_bytes")
            ),
            None,
        ),
        (
            figures.network_figure(
                counter_rate_series(nics, "network_received_bytes_total"),
                counter_rate_series(nics, "network_transmitted_bytes_total"),
            ),
            _loopback_note(df[label_is(df, "interface", LOOPBACK)]),
        ),
    ]
    charts += _process_charts(df)
    charts.append(
        (
            figures.disk_figure(
                counter_rate_series(df, "disk_read_bytes_total"),
                counter_rate_series(df, "disk_written_bytes_total"),
            ),
            None,
        )
    )
    return charts + _gpu_charts(df)


def _process_charts(df: pd.DataFrame) -> list[Chart]:
    """RSS and CPU (cores busy = the rate of CPU seconds) of each serving process."""
    names = {
        pid: f"{labels.get('name') or '?'} ({pid})"
        for pid, labels in latest_labels(df, "process_resident_memory_bytes", "pid").items()
    }
    rss = split_by_label(df, "process_resident_memory_bytes", "pid")
    cpu = split_by_label(df, "process_cpu_seconds_total", "pid")
    caption = (
        "Serving processes: those listening on the local ports of the collected targets, "
        "with their child processes."
    )
    return [
        (
            figures.per_key_lines(
                {
                    names.get(pid, pid): gauge_series(part, "process_resident_memory_bytes")
                    for pid, part in rss.items()
                },
                "Process memory (RSS)",
                "GiB",
                scale=1 / GIB,
                empty_message=NO_PROCESSES,
            ),
            caption,
        ),
        (
            figures.per_key_lines(
                {
                    names.get(pid, pid): counter_rate_series(part, "process_cpu_seconds_total")
                    for pid, part in cpu.items()
                },
                "Process CPU",
                "cores busy",
                empty_message=NO_PROCESSES,
            ),
            None,
        ),
    ]


def _gpu_charts(df: pd.DataFrame) -> list[Chart]:
    util = split_by_label(df, "gpu_utilization_ratio", "gpu")
    used = split_by_label(df, "gpu_memory_used_bytes", "gpu")
    total = split_by_label(df, "gpu_memory_total_bytes", "gpu")
    draw = split_by_label(df, "gpu_power_draw_watts", "gpu")
    limit = split_by_label(df, "gpu_power_limit_watts", "gpu")
    if not (util or used or total or draw or limit):
        return []
    models = {
        gpu: labels.get("name")
        for concept in ("gpu_utilization_ratio", "gpu_memory_total_bytes")
        for gpu, labels in latest_labels(df, concept, "gpu").items()
    }

    def named(parts: dict[str, pd.DataFrame], concept: str) -> dict[str, pd.DataFrame]:
        return {f"GPU {gpu}": gauge_series(part, concept) for gpu, part in parts.items()}

    described = ", ".join(f"GPU {gpu}: {name}" for gpu, name in models.items() if name)
    return [
        (
            figures.gpu_utilization_figure(named(util, "gpu_utilization_ratio")),
            described or None,
        ),
        (
            figures.paired_lines(
                named(used, "gpu_memory_used_bytes"),
                named(total, "gpu_memory_total_bytes"),
                ("used", "total"),
                "GPU memory",
                "GiB",
                scale=1 / GIB,
            ),
            None,
        ),
        (
            figures.paired_lines(
                named(draw, "gpu_power_draw_watts"),
                named(limit, "gpu_power_limit_watts"),
                ("draw", "limit"),
                "GPU power",
                "W",
            ),
            None,
        ),
    ]


def _loopback_note(loopback: pd.DataFrame) -> str | None:
    rx = counter_rate_series(loopback, "network_received_bytes_total")
    tx = counter_rate_series(loopback, "network_transmitted_bytes_total")
    if rx.empty and tx.empty:
        return None
    mean = max(
        float(rx["value"].mean()) if not rx.empty else 0.0,
        float(tx["value"].mean()) if not tx.empty else 0.0,
    )
    return (
        f"Loopback (lo) is left out: local traffic such as a load generator on this host, "
        f"{_bytes_rate(mean)} on average in this range."
    )


def _bytes_rate(value: float) -> str:
    for unit, size in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if value >= size:
            return f"{value / size:,.1f} {unit}"
    return f"{value:,.0f} B/s"


def _chart_grid(key: str, charts: list[Chart]) -> None:
    """Three charts to a row, each with its caption under it."""
    for start in range(0, len(charts), 3):
        row = charts[start : start + 3]
        for offset, (column, (fig, caption)) in enumerate(zip(st.columns(3), row, strict=False)):
            column.plotly_chart(fig, key=f"{key}-{start + offset}", config=figures.PLOTLY_CONFIG)
            if caption:
                column.caption(caption)


def _host_facts(info: dict[str, Any], df: pd.DataFrame) -> None:
    cores = len(latest_labels(df, "cpu_utilization_ratio", "cpu"))
    memory = latest_value(df, "memory_total_bytes")
    gpus = len(
        latest_labels(df, "gpu_memory_total_bytes", "gpu")
        or latest_labels(df, "gpu_utilization_ratio", "gpu")
    )
    facts = st.columns(4)
    facts[0].metric("Host", info.get("hostname") or "unknown")
    facts[1].metric("CPU cores", cores or "unknown")
    facts[2].metric("Memory (GiB)", "unknown" if memory is None else f"{memory / GIB:,.1f}")
    facts[3].metric("NVIDIA GPUs", gpus or info.get("gpus") or 0)


def _target_header(target: dict[str, Any]) -> None:
    title_col, status_col = st.columns([3, 2], vertical_alignment="center")
    title_col.subheader(f"{target['name']}")
    if target["runtime"] == HOST_RUNTIME:
        title_col.caption("this machine: CPU, memory, network, serving processes and GPUs")
    else:
        title_col.caption(f"{target['runtime']} at {redact_urls(target['url'])}")
    status, since = target.get("status"), target.get("status_since")
    when = f" since {local_clock(since)} ({ago(since)})" if since else ""
    if status == "up":
        status_col.badge(f"up{when}", icon=":material/check_circle:", color="green")
    elif status == "down":
        status_col.badge(f"down{when}", icon=":material/error:", color="red")
        if target.get("last_error"):
            status_col.caption(f"Last error: {redact_urls(target['last_error'])}")
    else:
        status_col.badge("never scraped", color="gray")


def _server_facts(info: dict[str, Any]) -> None:
    caps = [c for c in (info.get("cache_config") or {}).values() if isinstance(c, dict)]
    if not info.get("model") and not caps:
        st.caption("No server info yet: it is read when the collector first reaches the target.")
        return
    facts = st.columns(4)
    facts[0].metric("Served model", info.get("model") or "unknown")
    facts[1].metric("max_model_len (tokens)", _count(info.get("max_model_len")))
    facts[2].metric("KV capacity (tokens)", _count(_kv_capacity_tokens(caps)))
    facts[3].metric("Engines", len(caps) or "unknown")


def _kv_capacity_tokens(cache_configs: list[dict[str, Any]]) -> int | None:
    """Summed over engines, from cache_config_info labels (blocks x block size)."""
    total = 0
    for labels in cache_configs:
        try:
            total += int(float(labels["num_gpu_blocks"]) * float(labels["block_size"]))
        except (KeyError, TypeError, ValueError):
            try:
                total += int(float(labels["kv_cache_size_tokens"]))
            except (KeyError, TypeError, ValueError):
                return None
    return total or None


def _count(n: int | None) -> str:
    return f"{n:,}" if n else "unknown"
