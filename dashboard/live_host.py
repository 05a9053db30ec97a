"""The host card of the Live page: this machine's CPU, memory, network, disk, serving
processes and NVIDIA GPUs, as `servescope collect` stores them (runtime "host")."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from servescope.analysis.series import (
    counter_rate_series,
    gauge_series,
    label_is,
    latest_labels,
    latest_value,
    split_by_label,
)
from servescope.core.concepts import names
from servescope.dashboard import figures, figures_host
from servescope.dashboard.figures import GIB
from servescope.dashboard.widgets import Chart

# `servescope collect` stores its own machine as a target of this runtime (off: --no-host).
# The card reads the host and GPU concepts the concept table marks live.
HOST_CONCEPTS = names("host", live=True) + names("gpu", live=True)
# Loopback carries a local load generator's traffic to a local server: counting it would
# double the real traffic and hide the NICs, so it is shown apart.
LOOPBACK = ("lo",)
NO_PROCESSES = "no serving process found on this host"


def host_facts(info: dict[str, Any], df: pd.DataFrame) -> None:
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


def no_gpu_note(info: dict[str, Any]) -> str:
    if info.get("gpus"):
        return f"{info['gpus']} GPU(s) on this host, but no GPU samples in this time range."
    return "No NVIDIA GPU on this host (NVML found none), so there are no GPU charts."


def host_charts(df: pd.DataFrame) -> list[Chart]:
    """CPU, memory, network; the serving processes and disk; then the GPUs, if any."""
    cores = split_by_label(df, "cpu_utilization_ratio", "cpu")
    nics = df[~label_is(df, "interface", LOOPBACK)]
    charts: list[Chart] = [
        (
            figures_host.cpu_figure(
                gauge_series(df, "cpu_utilization_ratio", how="mean"),
                {cpu: gauge_series(part, "cpu_utilization_ratio") for cpu, part in cores.items()},
            ),
            None,
        ),
        (
            figures_host.memory_figure(
                gauge_series(df, "memory_used_bytes"), gauge_series(df, "memory_total_bytes")
            ),
            None,
        ),
        (
            figures_host.network_figure(
                counter_rate_series(nics, "network_received_bytes_total"),
                counter_rate_series(nics, "network_transmitted_bytes_total"),
            ),
            _loopback_note(df[label_is(df, "interface", LOOPBACK)]),
        ),
    ]
    charts += _process_charts(df)
    charts.append(
        (
            figures_host.disk_figure(
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
            figures_host.gpu_utilization_figure(named(util, "gpu_utilization_ratio")),
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
