"""Host figures: CPU, memory, network, disk and GPUs, from `servescope collect`'s host samples.

Pure like dashboard.figures, whose helpers (layout, axes, colors) these build on.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from servescope.dashboard.figures import (
    COLORS,
    GIB,
    clock_axis,
    layout,
    local_time,
    note_if_empty,
    per_key_lines,
    percent_axis,
    time_lines,
)

# Byte rates with SI prefixes ("1.2M" on a bytes/s axis): readable from B/s to GB/s.
SI_FORMAT = ".3~s"


def si_axis(fig: go.Figure) -> go.Figure:
    """SI-prefixed ticks; an axis up to at least 1k, so an idle link or disk reads as a flat
    line at the bottom rather than ticks in milli-bytes."""
    fig.update_yaxes(tickformat=SI_FORMAT, hoverformat=SI_FORMAT)
    peak = max((float(np.nanmax(t.y)) for t in fig.data if len(t.y)), default=None)
    if peak is not None and not peak >= 1000:
        fig.update_yaxes(range=[0, 1000])
    return fig


def cpu_figure(mean: pd.DataFrame, per_core: Mapping[str, pd.DataFrame]) -> go.Figure:
    """CPU use in %: the mean over cores on top of every core as thin lines.

    The cores are one trace (broken between cores) with one legend entry and no hover:
    a 64-core host would otherwise fill the legend and the unified hover box.
    """
    fig = go.Figure()
    cores = [frame for frame in per_core.values() if not frame.empty]
    if cores:
        # Each core's points plus one NaN point (at its last time) to break the line.
        ts = np.concatenate([np.append(f["ts"].to_numpy(float), f["ts"].iloc[-1]) for f in cores])
        ys = np.concatenate([np.append(f["value"].to_numpy(float) * 100.0, np.nan) for f in cores])
        fig.add_trace(
            go.Scatter(
                x=local_time(pd.Series(ts)),
                y=ys,
                name="per core",
                mode="lines",
                line={"width": 1, "color": COLORS["per core"]},
                connectgaps=False,
                hoverinfo="skip",
            )
        )
    if not mean.empty:
        fig.add_trace(
            go.Scatter(
                x=local_time(mean["ts"]),
                y=mean["value"] * 100.0,
                name="mean",
                mode="lines",
                line={"width": 2.5, "color": COLORS["mean"]},
            )
        )
    fig = note_if_empty(clock_axis(layout(fig, "CPU utilization", "local time", "busy (%)")))
    return percent_axis(fig)


def memory_figure(used: pd.DataFrame, total: pd.DataFrame) -> go.Figure:
    return time_lines(
        {"used": used, "total": total}, "Memory", "GiB", scale=1 / GIB, dashed=("total",)
    )


def network_figure(received: pd.DataFrame, transmitted: pd.DataFrame) -> go.Figure:
    """Bytes/s summed over interfaces (the caller decides which, e.g. all but loopback)."""
    return si_axis(
        time_lines(
            {"received": received, "transmitted": transmitted},
            "Network (without lo)",
            "bytes/s",
        )
    )


def disk_figure(read: pd.DataFrame, written: pd.DataFrame) -> go.Figure:
    return si_axis(time_lines({"read": read, "written": written}, "Disk I/O", "bytes/s"))


def gpu_utilization_figure(per_gpu: Mapping[str, pd.DataFrame]) -> go.Figure:
    return percent_axis(per_key_lines(per_gpu, "GPU utilization", "busy (%)", scale=100.0))
