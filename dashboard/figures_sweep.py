"""Sweep figures: throughput and p95 latency against the load level, with the saturation
level and the highest level meeting the SLOs marked.

Pure like dashboard.figures. `curve` is analysis.sweep's curve as a DataFrame (level,
output_tokens_per_s, requests_per_s, goodput_per_s, ttft_p95_ms, itl_p95_ms, e2e_p95_ms,
client_limited).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd
import plotly.graph_objects as go

from servescope.dashboard.figures import COLORS, layout, note_if_empty

LATENCIES = {"ttft_p95_ms": "TTFT p95", "itl_p95_ms": "ITL p95", "e2e_p95_ms": "E2E p95"}
LATENCY_COLORS = {"TTFT p95": COLORS["TTFT"], "ITL p95": "#76b7b2", "E2E p95": COLORS["E2E"]}
MARK_COLORS = ("#e15759", "#59a14f")  # the first mark (saturation), the second (SLOs)
NO_LEVELS = "no level of this sweep has finished"


def throughput_figure(
    curve: pd.DataFrame, marks: Mapping[str, float | None], level_name: str = "concurrency"
) -> go.Figure:
    """Output tokens/s (left axis) and requests/s with goodput (right axis) per level."""
    fig = go.Figure()
    if not curve.empty:
        fig.add_trace(
            go.Scatter(
                x=curve["level"],
                y=curve["output_tokens_per_s"],
                name="output tokens/s",
                mode="lines+markers",
                line={"color": COLORS["generation"], "width": 2.5},
            )
        )
        for column, name, color, dash in (
            ("requests_per_s", "requests/s", COLORS["capacity"], "dot"),
            ("goodput_per_s", "goodput (req/s)", "#59a14f", "dash"),
        ):
            if curve[column].notna().any():
                fig.add_trace(
                    go.Scatter(
                        x=curve["level"],
                        y=curve[column],
                        name=name,
                        mode="lines+markers",
                        line={"color": color, "dash": dash},
                        yaxis="y2",
                    )
                )
        if "client_limited" in curve and curve["client_limited"].eq(True).any():
            limited = curve[curve["client_limited"].eq(True)]
            fig.add_trace(
                go.Scatter(
                    x=limited["level"],
                    y=limited["output_tokens_per_s"],
                    name="client-limited",
                    mode="markers",
                    marker={"symbol": "x", "size": 13, "color": MARK_COLORS[0]},
                    hovertemplate="the load generator limited this level<extra></extra>",
                )
            )
    fig = layout(fig, "Throughput by load level", level_name, "output tokens/s")
    if any(t.yaxis == "y2" for t in fig.data):  # after layout(), which titles all y axes alike
        fig.update_layout(
            yaxis2={
                "title": {"text": "requests/s"},
                "overlaying": "y",
                "side": "right",
                "rangemode": "tozero",
                "showgrid": False,
            }
        )
    return note_if_empty(_level_axis(_marks(fig, curve, marks), curve), NO_LEVELS)


def latency_figure(
    curve: pd.DataFrame,
    marks: Mapping[str, float | None],
    slos_ms: Mapping[str, float] | None = None,
    level_name: str = "concurrency",
) -> go.Figure:
    """p95 TTFT, ITL and E2E per level on a log axis (ITL is ms where E2E is seconds), with
    each p95 SLO target as a dotted line in its metric's color."""
    fig = go.Figure()
    levels = curve["level"].tolist() if not curve.empty else []
    for column, name in LATENCIES.items():
        if curve.empty or not curve[column].notna().any():
            continue
        color = LATENCY_COLORS[name]
        fig.add_trace(
            go.Scatter(
                x=curve["level"],
                y=curve[column],
                name=name,
                mode="lines+markers",
                line={"color": color},
            )
        )
        target = (slos_ms or {}).get(name)
        if target is not None and levels:
            fig.add_trace(
                go.Scatter(
                    x=[min(levels), max(levels)],
                    y=[target, target],
                    name=f"{name} SLO",
                    mode="lines",
                    line={"color": color, "dash": "dot", "width": 1.5},
                )
            )
    fig = layout(fig, "p95 latency by load level", level_name, "ms (log)")
    if fig.data:
        values = [y for trace in fig.data for y in trace.y if y is not None and y > 0]
        ticks = log_ticks(min(values), max(values)) if values else None
        fig.update_yaxes(type="log", rangemode="normal", tickvals=ticks)
    return note_if_empty(_level_axis(_marks(fig, curve, marks), curve), NO_LEVELS)


def log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 steps covering [lo, hi], each labelled in full: plotly's own log ticks label
    the steps between decades with a bare "2" or "5"."""
    ticks = []
    for exponent in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for step in (1, 2, 5):
            value = step * 10.0**exponent
            if lo / 2.5 <= value <= hi * 2.5:
                ticks.append(value)
    return ticks


def _log_levels(curve: pd.DataFrame) -> bool:
    """Levels spanning 8x or more (1, 2, 4, 8 ...) read best on a log axis."""
    if curve.empty:
        return False
    lo, hi = float(curve["level"].min()), float(curve["level"].max())
    return lo > 0 and hi / lo >= 8


def _level_axis(fig: go.Figure, curve: pd.DataFrame) -> go.Figure:
    """A tick at every level measured and none between."""
    if curve.empty:
        return fig
    levels = curve["level"].tolist()
    fig.update_xaxes(
        type="log" if _log_levels(curve) else "linear",
        tickvals=levels,
        ticktext=[f"{v:g}" for v in levels],
    )
    fig.update_layout(hovermode="x unified")
    return fig


def _marks(fig: go.Figure, curve: pd.DataFrame, marks: Mapping[str, float | None]) -> go.Figure:
    """A labelled vertical line at each marked level (labels stacked, so two marks on one
    level stay readable). Shapes take data values on a log axis; annotations take log10."""
    log = _log_levels(curve)
    shown = [(label, level) for label, level in marks.items() if level is not None]
    top = float(curve["level"].max()) if not curve.empty else None
    for i, (label, level) in enumerate(shown):
        color = MARK_COLORS[i % len(MARK_COLORS)]
        fig.add_shape(
            type="line",
            x0=level,
            x1=level,
            xref="x",
            y0=0,
            y1=1,
            yref="paper",
            line={"color": color, "dash": "dash", "width": 1.5},
        )
        fig.add_annotation(
            x=math.log10(level) if log else level,
            xref="x",
            y=1 - 0.1 * i,
            yref="paper",
            text=f"{label}: {level:g}",
            showarrow=False,
            # Labels read to the right of their line, except at the highest level.
            xanchor="right" if level == top else "left",
            yanchor="top",
            xshift=-4 if level == top else 4,
            font={"color": color, "size": 12},
            bgcolor="rgba(255,255,255,0.8)",
        )
    return fig
