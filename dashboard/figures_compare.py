"""Comparison figures: one line (or bar group) per target, the same axes for all, so two or
more runtimes can be read side by side. Pure (plotly only, no Streamlit, no store): the
dashboard's Compare page and `servescope compare`'s report.html both draw these.

`targets` is compare.json's list: each {name, curve (analysis.sweep rows), summaries (per
level: ttft_ms/itl_ms/e2e_ms distributions, server_split)}; `marked` names the targets whose
numbers a mismatch warning affects (drawn dashed, legend suffixed with "†").
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

PALETTE = qualitative.T10
LATENCY_METRICS = {"ttft_ms": "TTFT", "itl_ms": "ITL", "e2e_ms": "E2E"}
PERCENTILES = ("p50", "p95", "p99")
PHASES = {"queue_ms": "queue", "prefill_ms": "prefill", "decode_ms": "decode"}
MARK = " †"


def _label(name: str, marked: Collection[str]) -> str:
    return name + (MARK if name in marked else "")


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(title=title, template="plotly_white", height=380,
                      margin={"l": 60, "r": 20, "t": 50, "b": 50},
                      legend={"orientation": "h", "y": -0.2})
    fig.update_xaxes(title_text=x)
    fig.update_yaxes(title_text=y, rangemode="tozero")
    return fig


def _line(targets: Sequence[dict[str, Any]], key: str, title: str, y: str, kind: str,
          marked: Collection[str]) -> go.Figure:
    fig = go.Figure()
    for i, t in enumerate(targets):
        rows = t.get("curve") or []
        fig.add_trace(go.Scatter(
            x=[r["level"] for r in rows], y=[r.get(key) for r in rows],
            name=_label(t["name"], marked), mode="lines+markers",
            line={"color": PALETTE[i % len(PALETTE)],
                  "dash": "dash" if t["name"] in marked else "solid"}))
    return _layout(fig, title, kind, y)


def throughput_figure(targets: Sequence[dict[str, Any]], kind: str = "concurrency",
                      marked: Collection[str] = ()) -> go.Figure:
    """Output tokens/s against the level: where a line goes flat, that target stopped
    scaling."""
    return _line(targets, "output_tokens_per_s", "Throughput", "output tokens/s", kind, marked)


def goodput_figure(targets: Sequence[dict[str, Any]], kind: str = "concurrency",
                   marked: Collection[str] = ()) -> go.Figure:
    """Requests/s that met every SLO, against the level."""
    return _line(targets, "goodput_per_s", "Goodput (requests/s meeting the SLOs)",
                 "requests/s", kind, marked)


def latency_figure(targets: Sequence[dict[str, Any]], kind: str = "concurrency",
                   marked: Collection[str] = ()) -> go.Figure:
    """TTFT, ITL and E2E: p95 solid, p50 dotted, p99 dashed, against the level."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=list(LATENCY_METRICS.values()))
    dashes = {"p50": "dot", "p95": "solid", "p99": "dash"}
    for i, t in enumerate(targets):
        color = PALETTE[i % len(PALETTE)]
        levels = [s["level"] for s in t.get("summaries") or []]
        for col, metric in enumerate(LATENCY_METRICS, start=1):
            for p in PERCENTILES:
                ys = [((s.get(metric) or {}).get(p)) for s in t.get("summaries") or []]
                fig.add_trace(go.Scatter(
                    x=levels, y=ys, mode="lines+markers", legendgroup=t["name"],
                    name=f"{_label(t['name'], marked)} {p}",
                    showlegend=col == 1, line={"color": color, "dash": dashes[p]}),
                    row=1, col=col)
    _layout(fig, "Latency percentiles (ms)", "", "ms")
    fig.update_xaxes(title_text=kind)
    return fig


def phase_figure(targets: Sequence[dict[str, Any]], marked: Collection[str] = ()
                 ) -> go.Figure:
    """The server's own queue / prefill / decode split (mean ms per request), per target
    and level: per request where the server accounts for each, else its histograms over
    the run's window; a target whose server gives neither has no bar."""
    fig = go.Figure()
    colors = {"queue": "#e15759", "prefill": "#f28e2b", "decode": "#4e79a7"}
    for key, phase in PHASES.items():
        xs, ys = [], []
        for t in targets:
            for s in t.get("summaries") or []:
                split = s.get("server_split") or {}
                mean = (split.get(key) or {}).get("mean")
                if mean is None:  # no per-request account: the window's histogram means
                    mean = (s.get("server_window") or {}).get(f"{phase}_ms_mean")
                if mean is not None:
                    xs.append(f"{_label(t['name'], marked)} @ {s['level']:g}")
                    ys.append(mean)
        fig.add_trace(go.Bar(x=xs, y=ys, name=phase, marker_color=colors[phase]))
    fig.update_layout(barmode="stack")
    if not any(len(tr.x or ()) for tr in fig.data):
        fig.add_annotation(text="no server reported per-request phases", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5)
    return _layout(fig, "Server-side split (mean ms per request)", "target @ level", "ms")


HOST_PANELS = ("host CPU % (mean solid, peak dotted)", "memory GiB (host solid, server dotted)",
               "GPU util % (mean solid, peak dotted)")


def host_figure(targets: Sequence[dict[str, Any]], kind: str = "concurrency",
                marked: Collection[str] = ()) -> go.Figure:
    """What each level cost the host (summaries' host_use, analysis/host_use.py): CPU %,
    memory in use (the host's and the serving processes'), GPU utilization; a host
    without a GPU says so in its panel."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=list(HOST_PANELS))
    gib = 2.0 ** 30
    panels = ((1, "cpu_mean_pct", "cpu_peak_pct", 1.0), (2, "memory_used_peak_bytes",
              "server_rss_peak_bytes", gib), (3, "gpu_util_mean_pct", "gpu_util_peak_pct", 1.0))
    any_gpu = False
    for i, t in enumerate(targets):
        uses = [(s["level"], s.get("host_use") or {}) for s in t.get("summaries") or []]
        any_gpu = any_gpu or any(u.get("gpu") == "present" for _, u in uses)
        for col, solid, dotted, scale in panels:
            for key, dash in ((solid, "solid"), (dotted, "dot")):
                ys = [u[key] / scale if u.get(key) is not None else None for _, u in uses]
                fig.add_trace(go.Scatter(
                    x=[lvl for lvl, _ in uses], y=ys, mode="lines+markers",
                    name=_label(t["name"], marked), legendgroup=t["name"],
                    showlegend=col == 1 and dash == "solid",
                    line={"color": PALETTE[i % len(PALETTE)], "dash": dash}), row=1, col=col)
    if not any_gpu:
        fig.add_annotation(text="no GPU", showarrow=False, xref="x3 domain", yref="y3 domain",
                           x=0.5, y=0.5, font={"size": 16})
    _layout(fig, "Host use during each level", "", "")
    fig.update_xaxes(title_text=kind)
    return fig


def all_figures(targets: Sequence[dict[str, Any]], kind: str = "concurrency",
                marked: Collection[str] = ()) -> list[go.Figure]:
    return [throughput_figure(targets, kind, marked), latency_figure(targets, kind, marked),
            goodput_figure(targets, kind, marked), phase_figure(targets, marked),
            host_figure(targets, kind, marked)]
