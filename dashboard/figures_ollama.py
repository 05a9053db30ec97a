"""Ollama figures: loaded models over time with their load/unload events, and each
response's phases as the server timed them (through `servescope proxy`).

Pure like dashboard.figures, whose helpers (layout, axes, colors) these build on.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from servescope.dashboard.figures import (
    COLORS,
    clock_axis,
    layout,
    local_time,
    note_if_empty,
    palette,
)

# Column of a proxy response table (seconds) -> the phase's name on the charts. Queue and
# overhead is total - load - prefill - decode: mostly waiting for a free runner slot.
PHASES = {
    "queue_and_overhead_s": "queue + overhead",
    "load_s": "load",
    "prefill_s": "prefill",
    "decode_s": "decode",
}
PHASE_COLORS = {
    "queue + overhead": COLORS["queue"],
    "load": "#b07aa1",
    "prefill": COLORS["prefill"],
    "decode": COLORS["decode"],
}
EVENT_MARKERS = {"load": ("triangle-up", "#59a14f"), "unload": ("triangle-down", "#e15759")}
NO_RESPONSES = "no responses through the proxy in this time range"


def time_unit(seconds: float | None) -> tuple[str, float]:
    """ms for sub-2-second responses (a small model), seconds for the rest."""
    return ("ms", 1000.0) if seconds is None or not seconds >= 2.0 else ("s", 1.0)


def models_loaded_figure(loaded: pd.DataFrame, events: pd.DataFrame) -> go.Figure:
    """How many models were loaded at each poll (a step line), with a marker per load and
    unload event (hover: the model).

    `loaded` is DataFrame(ts, value); `events` DataFrame(ts, kind, model).
    """
    fig = go.Figure()
    if not loaded.empty:
        fig.add_trace(
            go.Scatter(
                x=local_time(loaded["ts"]),
                y=loaded["value"],
                name="models loaded",
                mode="lines",
                line={"shape": "hv", "color": COLORS["running"]},
            )
        )
    for kind, (symbol, color) in EVENT_MARKERS.items():
        part = events[events["kind"] == kind] if not events.empty else events
        if part.empty:
            continue
        fig.add_trace(
            go.Scatter(
                x=local_time(part["ts"]),
                y=_value_at(loaded, part["ts"]),
                name=kind,
                mode="markers",
                marker={"symbol": symbol, "size": 12, "color": color},
                text=part["model"],
                hovertemplate=f"{kind}: %{{text}}<extra></extra>",
            )
        )
    fig = clock_axis(layout(fig, "Models loaded", "local time", "models"))
    peak = float(loaded["value"].max()) if not loaded.empty else 0.0
    fig.update_yaxes(dtick=1 if peak <= 8 else None, range=[0, max(peak, 1.0) * 1.15])
    return note_if_empty(fig)


def _value_at(series: pd.DataFrame, ts: pd.Series) -> np.ndarray:
    """The series' value at the poll nearest each time (0 where there is none): an event is
    stamped with the poll that saw it, so it sits on the line."""
    if series.empty:
        return np.zeros(len(ts))
    times = series["ts"].to_numpy(float)
    values = series["value"].to_numpy(float)
    idx = np.clip(np.searchsorted(times, ts.to_numpy(float)), 0, len(times) - 1)
    before = np.clip(idx - 1, 0, len(times) - 1)
    nearer = np.abs(times[before] - ts.to_numpy(float)) < np.abs(times[idx] - ts.to_numpy(float))
    return np.where(nearer, values[before], values[idx])


def phase_bars_figure(responses: pd.DataFrame) -> go.Figure:
    """Each response's time stacked by phase, oldest first (hover: time, model, endpoint).

    `responses` has columns ts, model, endpoint, total_s and the PHASES columns, seconds.
    Bars are per response rather than on a clock axis: concurrent responses finish
    milliseconds apart and would be drawn as hairlines. A negative queue + overhead (the
    server rounds its durations) is drawn as 0.
    """
    fig = go.Figure()
    unit, scale = time_unit(responses["total_s"].median() if not responses.empty else None)
    if not responses.empty:
        x = np.arange(1, len(responses) + 1)
        when = [t.strftime("%H:%M:%S") for t in local_time(responses["ts"])]
        about = np.stack([when, responses["model"], responses["endpoint"]], axis=-1)
        for column, name in PHASES.items():
            values = responses[column].fillna(0.0).clip(lower=0.0) * scale
            fig.add_trace(
                go.Bar(
                    x=x,
                    y=values,
                    name=name,
                    marker={"color": PHASE_COLORS[name], "line": {"width": 0}},
                    customdata=about,
                    hovertemplate=(
                        f"{name}: %{{y:,.1f}} {unit}"
                        + (
                            "<br>%{customdata[0]} %{customdata[1]} %{customdata[2]}"
                            if column == "decode_s"
                            else ""
                        )
                        + "<extra></extra>"
                    ),
                )
            )
    fig = layout(fig, "Phases per response", "response (oldest first)", unit)
    fig.update_layout(barmode="stack", bargap=0.15, legend={"traceorder": "normal"})
    return note_if_empty(fig, NO_RESPONSES)


def decode_rate_figure(responses: pd.DataFrame) -> go.Figure:
    """Decode tokens/s of each response against when it finished, one color per model."""
    fig = go.Figure()
    rated = responses.dropna(subset=["decode_tokens_per_s"]) if not responses.empty else responses
    models = list(dict.fromkeys(rated["model"])) if not rated.empty else []
    colors = palette(models)
    for model in models:
        part = rated[rated["model"] == model]
        fig.add_trace(
            go.Scatter(
                x=local_time(part["ts"]),
                y=part["decode_tokens_per_s"],
                name=model or "?",
                mode="markers",
                marker={"color": colors[model], "size": 7, "opacity": 0.8},
                customdata=part["output_tokens"],
                hovertemplate="%{y:,.0f} tokens/s (%{customdata:.0f} tokens)",
            )
        )
    fig = clock_axis(layout(fig, "Decode tokens/s", "local time", "tokens/s"))
    fig.update_layout(hovermode="closest")
    fig.update_traces(showlegend=True)
    return note_if_empty(fig, NO_RESPONSES)


def mean_phases_figure(means_s: Mapping[str, Mapping[str, float]]) -> go.Figure:
    """Per model, the mean time per response in each phase, stacked: where a model's time
    goes on average (waiting, loading, prompt, generation)."""
    fig = go.Figure()
    totals = [sum(max(v, 0.0) for v in parts.values()) for parts in means_s.values()]
    unit, scale = time_unit(max(totals, default=None))
    models = list(means_s)
    for column, name in PHASES.items():
        values = [max(means_s[m].get(column, 0.0), 0.0) * scale for m in models]
        if not models:
            break
        fig.add_trace(
            go.Bar(
                y=models,
                x=values,
                name=name,
                orientation="h",
                marker={"color": PHASE_COLORS[name]},
                hovertemplate=f"{name}: %{{x:,.1f}} {unit}<extra>%{{y}}</extra>",
            )
        )
    fig = layout(fig, "Mean phases per model", unit, "")
    fig.update_layout(
        barmode="stack",
        hovermode="closest",
        legend={"traceorder": "normal"},
        height=140 + 30 * max(len(models), 1),  # a bar per model, not a stretched one
    )
    fig.update_yaxes(rangemode="normal", automargin=True)
    return note_if_empty(fig, NO_RESPONSES)
