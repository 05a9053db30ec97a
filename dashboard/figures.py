"""Plotly figure builders (and the few display formatters they share with the pages).

Pure: DataFrames and numbers in, figures out, no Streamlit, so each chart can be built and
checked in a test (or reused in a static report) without a running app.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

CHART_HEIGHT = 300
# At most this many clock labels on a time axis: what fits in a third of a wide page.
CLOCK_TICKS = 4
GIB = 1024**3
# One color per CPU, GPU or process, from the palette the fixed COLORS come from.
PALETTE = qualitative.T10
ECDF_MAX_POINTS = 1000
# A short modebar (no logo, no select/lasso tools) that leaves room for chart titles.
PLOTLY_CONFIG = {
    "displaylogo": False,
    "modeBarButtonsToRemove": [
        "zoom2d",
        "pan2d",
        "select2d",
        "lasso2d",
        "zoomIn2d",
        "zoomOut2d",
        "autoScale2d",
    ],
}
QUANTILE_NAMES = {0.5: "p50", 0.9: "p90", 0.95: "p95", 0.99: "p99"}
# Fixed colors per series name, so "waiting" or "p99" look the same on every chart and
# lines on one chart never come out as two shades of one hue.
COLORS = {
    "running": "#4e79a7",
    "waiting": "#e15759",
    "KV cache used": "#4e79a7",
    "free": "#59a14f",
    "capacity": "#9aa5b1",
    "prompt": "#f28e2b",
    "generation": "#4e79a7",
    "p50": "#4e79a7",
    "p90": "#76b7b2",
    "p95": "#f28e2b",
    "p99": "#e15759",
    "TTFT": "#f28e2b",
    "E2E": "#4e79a7",
    "after first token": "#4e79a7",
    "queue": "#9aa5b1",
    "prefill": "#f28e2b",
    "decode": "#4e79a7",
    "ok": "#4e79a7",
    "error": "#e15759",
    "mean": "#4e79a7",
    "per core": "#b4bcc7",
    "used": "#4e79a7",
    "total": "#9aa5b1",
    "received": "#4e79a7",
    "transmitted": "#f28e2b",
    "read": "#4e79a7",
    "written": "#f28e2b",
}

_URL_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")


def local_time(ts: pd.Series) -> pd.Series:
    """Unix seconds -> naive local datetimes: plotly would otherwise label axes in UTC."""
    tz = datetime.now().astimezone().tzinfo
    return pd.to_datetime(ts, unit="s", utc=True).dt.tz_convert(tz).dt.tz_localize(None)


def local_clock(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def ago(ts: float, now: float | None = None) -> str:
    """A rough age ("3 min ago"): easier to judge at a glance than a clock time."""
    seconds = max(0.0, (time.time() if now is None else now) - ts)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


def redact_urls(text: str) -> str:
    """Text with user:password@ removed from any URL in it (a target URL or an error
    message quoting one), so credentials are never shown."""
    return _URL_CREDENTIALS.sub(r"\1", text)


def layout(fig: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    # Title on its own line, legend left-aligned under it: the modebar (top right) then
    # covers neither.
    fig.update_layout(
        title={"text": title, "font": {"size": 15}, "x": 0, "xanchor": "left", "y": 0.98},
        height=CHART_HEIGHT,
        margin={"l": 10, "r": 10, "t": 70, "b": 10},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0},
        hovermode="x unified",
    )
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title, rangemode="tozero")
    return fig


def legend_below(fig: go.Figure) -> go.Figure:
    """The legend under the plot, for a narrow chart whose legend would wrap into its
    title."""
    fig.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.3, "xanchor": "left",
                              "x": 0},
                      margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      height=CHART_HEIGHT + 40)
    return fig


def clock_axis(fig: go.Figure) -> go.Figure:
    """Clock-time ticks (dates only when the range spans days), never rotated."""
    fig.update_xaxes(
        tickformatstops=[
            # Milliseconds only below 1 s ticks: stops include both ends.
            {"dtickrange": [None, 999], "value": "%H:%M:%S.%L"},
            {"dtickrange": [1000, 60_000], "value": "%H:%M:%S"},
            {"dtickrange": [60_000, 86_400_000], "value": "%H:%M"},
            {"dtickrange": [86_400_000, None], "value": "%b %d"},
        ],
        tickangle=0,
        nticks=CLOCK_TICKS,
        hoverformat="%Y-%m-%d %H:%M:%S",
    )
    # Over a few seconds plotly picks 1 s ticks, and five or more clock labels overlap in
    # a third of the page: 2 s ticks instead.
    spans = [
        (np.min(x), np.max(x))
        for x in (np.asarray(t.x, dtype="datetime64[ns]") for t in fig.data if t.x is not None)
        if x.size
    ]
    if spans and max(hi for _, hi in spans) - min(lo for lo, _ in spans) < np.timedelta64(
        2 * CLOCK_TICKS, "s"
    ):
        fig.update_xaxes(dtick=2000)
    return fig


def note_if_empty(fig: go.Figure, message: str = "no data in this time range") -> go.Figure:
    if not fig.data:
        fig.add_annotation(
            text=message,
            showarrow=False,
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
            font={"color": "gray"},
        )
        fig.update_xaxes(showticklabels=False)
        fig.update_yaxes(showticklabels=False)
    return fig


def time_lines(
    series: Mapping[str, pd.DataFrame],
    title: str,
    y_title: str,
    scale: float = 1.0,
    dashed: Sequence[str] = (),
    colors: Mapping[str, str] | None = None,
    empty_message: str = "no data in this time range",
) -> go.Figure:
    """One line per named DataFrame(ts, value), values multiplied by `scale`."""
    fig = go.Figure()
    for name, frame in series.items():
        if frame.empty:
            continue
        color = (colors or {}).get(name) or COLORS.get(name)
        fig.add_trace(
            go.Scatter(
                x=local_time(frame["ts"]),
                y=frame["value"] * scale,
                name=name,
                mode="lines",
                line={"dash": "dash" if name in dashed else "solid", "color": color},
            )
        )
    return note_if_empty(clock_axis(layout(fig, title, "local time", y_title)), empty_message)


def percent_axis(fig: go.Figure) -> go.Figure:
    # A little above 100 so a line at exactly 100 % is not drawn on the plot's edge.
    if fig.data:
        fig.update_yaxes(range=[0, 102])
    return fig


def running_waiting_figure(running: pd.DataFrame, waiting: pd.DataFrame) -> go.Figure:
    return time_lines(
        {"running": running, "waiting": waiting}, "Requests running / waiting", "requests"
    )


def kv_usage_figure(usage: pd.DataFrame) -> go.Figure:
    return percent_axis(
        time_lines({"KV cache used": usage}, "KV cache usage", "used (%)", scale=100.0)
    )


def kv_headroom_figure(free: pd.DataFrame, capacity: pd.DataFrame) -> go.Figure:
    """Free KV tokens against the capacity: how many more tokens of context fit now."""
    return time_lines(
        {"free": free, "capacity": capacity},
        "KV cache headroom",
        "tokens",
        dashed=("capacity",),
    )


def throughput_figure(prompt_rate: pd.DataFrame, generation_rate: pd.DataFrame) -> go.Figure:
    return time_lines(
        {"prompt": prompt_rate, "generation": generation_rate},
        "Tokens/s (server)",
        "tokens/s",
    )


def palette(keys: Sequence[str]) -> dict[str, str]:
    return {key: PALETTE[i % len(PALETTE)] for i, key in enumerate(keys)}


def per_key_lines(
    series: Mapping[str, pd.DataFrame],
    title: str,
    y_title: str,
    scale: float = 1.0,
    empty_message: str = "no data in this time range",
) -> go.Figure:
    """One line per key (a process, a GPU), each in its own palette color, always in the
    legend: the key is what the line means, even when it is the only one."""
    fig = time_lines(
        series,
        title,
        y_title,
        scale=scale,
        colors=palette(list(series)),
        empty_message=empty_message,
    )
    return fig.update_traces(showlegend=True)


def paired_lines(
    solid: Mapping[str, pd.DataFrame],
    dashed: Mapping[str, pd.DataFrame],
    names: tuple[str, str],
    title: str,
    y_title: str,
    scale: float = 1.0,
) -> go.Figure:
    """Per key a solid line and a dashed one in the same color, e.g. each GPU's memory
    used against its total, named "<key> <names[0]>" and "<key> <names[1]>"."""
    keys = list(dict.fromkeys([*solid, *dashed]))
    colors = palette(keys)
    series: dict[str, pd.DataFrame] = {}
    line_colors: dict[str, str] = {}
    for key in keys:
        for part, suffix in ((solid, names[0]), (dashed, names[1])):
            if key in part:
                series[f"{key} {suffix}"] = part[key]
                line_colors[f"{key} {suffix}"] = colors[key]
    return time_lines(
        series,
        title,
        y_title,
        scale=scale,
        dashed=[f"{key} {names[1]}" for key in keys],
        colors=line_colors,
    )


def quantile_figure(quantiles: pd.DataFrame, title: str, scale: float = 1000.0) -> go.Figure:
    """Lines per quantile from DataFrame(ts, q, value); seconds -> ms by default."""
    series = (
        {
            QUANTILE_NAMES.get(q, f"q{q:g}"): frame[["ts", "value"]]
            for q, frame in quantiles.groupby("q", sort=True)
        }
        if not quantiles.empty
        else {}
    )
    fig = time_lines(series, title, "ms", scale=scale)
    fig.update_traces(connectgaps=False)
    return fig


def latency_histogram(
    values_ms: Sequence[float],
    title: str,
    x_title: str,
    marks: Mapping[str, float | None] | None = None,
    bins: int = 60,
) -> go.Figure:
    """Histogram with a vertical line for each mark (percentiles, SLO targets).

    Binned here, not in the browser: pooled ITL easily holds a million gaps. Bins stop at
    3 x p99 so one stray outlier cannot squash the shape into a single bar; how many lie
    beyond is said on the chart.
    """
    fig = go.Figure()
    values = np.asarray(values_ms, dtype=float)
    values = values[np.isfinite(values)]
    if values.size:
        upper = min(float(values.max()), 3 * float(np.percentile(values, 99)))
        upper = upper if upper > values.min() else float(values.min()) + 1.0
        counts, edges = np.histogram(values, bins=bins, range=(float(values.min()), upper))
        fig.add_trace(
            go.Bar(
                x=(edges[:-1] + edges[1:]) / 2,
                y=counts,
                width=np.diff(edges),
                name="requests",
                marker={"line": {"width": 0}},
            )
        )
        beyond = int((values > upper).sum())
        if beyond:
            fig.add_annotation(
                text=f"{beyond:,} above {upper:,.0f} ms not shown",
                showarrow=False,
                xref="paper",
                yref="paper",
                x=1,
                y=1,
                xanchor="right",
                font={"color": "gray"},
            )
        for label, x in (marks or {}).items():
            if x is None or not np.isfinite(x):
                continue
            is_slo = label.startswith("SLO")
            fig.add_vline(
                x=x,
                line={
                    "dash": "dot" if is_slo else "dash",
                    "width": 1,
                    "color": "crimson" if is_slo else "gray",
                },
                annotation_text=label,
                annotation_position="bottom right" if is_slo else "top",
            )
    fig = layout(fig, title, x_title, "count")
    fig.update_layout(hovermode="closest", showlegend=False, bargap=0)
    return note_if_empty(fig, "no successful requests")


def ecdf_figure(values_ms: Mapping[str, Sequence[float]], title: str) -> go.Figure:
    """Empirical CDFs: the share of requests at or below each latency."""
    fig = go.Figure()
    for name, values in values_ms.items():
        if not len(values):
            continue
        arr = np.asarray(values, dtype=float)
        if arr.size > ECDF_MAX_POINTS:  # the curve, not every request, goes to the browser
            ys = np.linspace(0.0, 100.0, ECDF_MAX_POINTS + 1)
            xs = np.percentile(arr, ys)
        else:
            xs = np.sort(arr)
            ys = np.arange(1, arr.size + 1) / arr.size * 100.0
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                name=name,
                mode="lines",
                line={"shape": "hv", "color": COLORS.get(name)},
            )
        )
    fig = layout(fig, title, "latency (ms)", "requests at or below (%)")
    fig.update_layout(hovermode="closest")
    return note_if_empty(fig, "no successful requests")


def latency_scatter(requests: pd.DataFrame, start_s: float) -> go.Figure:
    """E2E per request against when it was sent, ok and failed apart.

    `requests` has columns send_s, e2e_ms, ok (as from servescope.analysis.latency.request_table).
    """
    fig = go.Figure()
    if not requests.empty:
        for ok, name in ((True, "ok"), (False, "error")):
            part = requests[(requests["ok"] == ok) & requests["e2e_ms"].notna()]
            if part.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=part["send_s"] - start_s,
                    y=part["e2e_ms"],
                    name=name,
                    mode="markers",
                    marker={"color": COLORS[name], "size": 5, "opacity": 0.7},
                )
            )
    fig = layout(fig, "E2E latency over the run", "sent at (s since run start)", "E2E (ms)")
    fig.update_layout(hovermode="closest")
    return note_if_empty(fig, "no requests with an end time")


def time_split_figure(
    server_ms: Mapping[str, float | None], client_ms: Mapping[str, float | None]
) -> go.Figure:
    """Where the time went: the server's mean queue/prefill/decode per request stacked next
    to the client's mean TTFT and the rest of its E2E, so the gap (HTTP, tokenization,
    network, the client itself) is visible."""
    fig = go.Figure()
    rows = (("server (mean per request)", server_ms), ("client (mean per request)", client_ms))
    for row_name, parts in rows:
        for phase, ms in parts.items():
            if ms is None:
                continue
            fig.add_trace(
                go.Bar(
                    y=[row_name],
                    x=[ms],
                    name=phase,
                    orientation="h",
                    marker={"color": COLORS.get(phase)},
                    text=[f"{phase} {ms:,.0f} ms"],
                    textposition="inside",
                    insidetextanchor="middle",
                )
            )
    fig = layout(fig, "Mean time per request: server phases and client view", "ms", "")
    fig.update_layout(
        barmode="stack", hovermode="closest", height=230, legend={"traceorder": "normal"}
    )
    fig.update_yaxes(rangemode="normal")
    return note_if_empty(fig, "no server or client timings")
