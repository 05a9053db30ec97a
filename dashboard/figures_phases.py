"""Figures of the server's phases per request (analysis/phases.py): a timeline of requests
split into the server's phases and the client's remainder, TTFT against time in queue, and
the distribution of each phase.

Pure: RequestPhases in, plotly figures out (no Streamlit), like dashboard/figures.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from servescope.analysis.phases import (
    AFTER,
    BEFORE,
    PHASE_METRICS,
    UNREPORTED,
    UNSPLIT,
    RequestPhases,
)
from servescope.dashboard.figures import COLORS, layout, note_if_empty

# The phase boxes' log axis starts here (ms): no queue at all is drawn as this little.
LOG_FLOOR_MS = 0.01
# Requests drawn on the timeline: enough to see queueing build up, few enough to read.
TIMELINE_MAX_REQUESTS = 200
# In the order of a request's life (the legend's order too).
PIECE_COLORS = {
    BEFORE: "#d4d9de",
    "queue": COLORS["waiting"],
    "load": "#b07aa1",
    "prefill": COLORS["prefill"],
    "server other": "#edc948",
    "decode": COLORS["decode"],
    AFTER: "#b4bcc7",
    UNSPLIT: "#b4bcc7",
    UNREPORTED: "#b4bcc7",
}


def request_timeline(rows: Sequence[RequestPhases], max_requests: int = TIMELINE_MAX_REQUESTS
                     ) -> go.Figure:
    """One bar per request from its send to its end (seconds since the first send), cut
    into the client's time before the server's first token, queue, prefill, the server's
    decode and the client's time after it. The first `max_requests` requests by send."""
    rows = [r for r in rows if r.client_e2e_ms is not None][:max_requests]
    fig = go.Figure()
    if rows:
        t0 = min(r.send_ns for r in rows)
        starts: dict[str, list[float]] = {}
        widths: dict[str, list[float]] = {}
        labels: dict[str, list[str]] = {}
        for i, row in enumerate(rows):
            at = (row.send_ns - t0) / 1e9
            for name, ms in row.segments():
                starts.setdefault(name, []).append(at)
                widths.setdefault(name, []).append(ms / 1000.0)
                labels.setdefault(name, []).append(f"#{i + 1}")
                at += ms / 1000.0
        for name in PIECE_COLORS:  # the timeline's order, so the legend reads left to right
            if name not in starts:
                continue
            fig.add_trace(go.Bar(
                y=labels[name], x=widths[name], base=starts[name], name=name,
                orientation="h", marker={"color": PIECE_COLORS[name], "line": {"width": 0}},
                customdata=[w * 1000.0 for w in widths[name]],
                hovertemplate="%{y}: " + name + " %{customdata:,.1f} ms<extra></extra>",
            ))
    fig = layout(fig, "Requests over time, split into phases", "s since the first send",
                 "request (by send)")
    fig.update_layout(barmode="overlay", hovermode="closest", bargap=0.15,
                      height=max(300, min(900, 60 + 9 * len(rows))))
    fig.update_yaxes(autorange="reversed", showticklabels=len(rows) <= 40, rangemode="normal")
    return note_if_empty(fig, "no request has a server account")


def ttft_against_queue(rows: Sequence[RequestPhases]) -> go.Figure:
    """The client's TTFT against the server's time in queue, one point per request: on the
    dashed line TTFT is all queue; the height above it is prefill and the remainder."""
    points = [(r.server.queue_ms, r.client_ttft_ms, r.request_id) for r in rows
              if r.server.queue_ms is not None and r.client_ttft_ms is not None]
    fig = go.Figure()
    if points:
        xs, ys, ids = zip(*points, strict=True)
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="markers", name="request", text=ids,
            marker={"color": COLORS["TTFT"], "size": 6, "opacity": 0.7},
            hovertemplate="%{text}<br>queue %{x:,.1f} ms<br>TTFT %{y:,.1f} ms<extra></extra>",
        ))
        top = max(max(xs), 0.0)
        fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="TTFT = queue",
                                 line={"dash": "dash", "color": "gray", "width": 1}))
    fig = layout(fig, "TTFT (client) against time in queue (server)", "queue (ms)", "TTFT (ms)")
    fig.update_layout(hovermode="closest")
    return note_if_empty(fig, "the server reports no time in queue")


def phase_boxes(rows: Sequence[RequestPhases]) -> go.Figure:
    """Each phase's and remainder's distribution over the requests, one box each, on a log
    axis: remainders of milliseconds and decodes of seconds both stay readable. Values
    under LOG_FLOOR_MS (a request that did not queue) are drawn at it."""
    fig = go.Figure()
    for metric, label in reversed(PHASE_METRICS.items()):  # the first on top
        values = [max(v, LOG_FLOOR_MS) for r in rows if (v := r.value(metric)) is not None]
        if values:
            fig.add_trace(go.Box(x=values, name=label.replace(" (client - server)", ""),
                                 orientation="h", boxpoints=False,
                                 marker={"color": _metric_color(metric)}))
    fig = layout(fig, "Phases and remainder per request",
                 "ms (log scale)", "")
    fig.update_layout(hovermode="closest", showlegend=False)
    fig.update_xaxes(type="log")
    return note_if_empty(fig, "no request has a server account")


def _metric_color(metric: str) -> str:
    if "remainder" in metric:
        return PIECE_COLORS[AFTER]
    name = metric.removesuffix("_ms")
    return PIECE_COLORS.get(name, COLORS["E2E"])
