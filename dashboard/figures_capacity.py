"""Capacity page: the pure parts. KV headroom of a live target from its stored series (in
tokens, and in requests of the mean length its finished requests had), the advisor's
evidence per sweep level, and the what-if planner's curves.

Pure like dashboard.figures: DataFrames and dicts in, DataFrames, numbers and figures out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from servescope.analysis.promql import increase
from servescope.analysis.series import gauge_series, kv_usage_series
from servescope.dashboard.figures import (
    COLORS,
    layout,
    legend_below,
    note_if_empty,
    time_lines,
)

# The series the headroom section reads (Store.samples concepts).
HEADROOM_CONCEPTS = ("kv_usage", "kv_capacity_tokens", "kv_free_tokens", "running", "waiting",
                     "prompt_tokens_total", "generation_tokens_total",
                     "requests_finished_total", "request_prompt_tokens", "slot_processing")
NO_LEVELS = "no level of this sweep has finished"


# -- KV headroom of a live target ----------------------------------------------------------
def counter_increase(df: pd.DataFrame, concept: str) -> float | None:
    """What a counter (or a histogram's count) gained over the frame, summed over its
    series, resets counted as PromQL does; None when it was never sampled twice."""
    rows = df[df["concept"] == concept].sort_values("ts", kind="stable") if not df.empty \
        else df
    if rows.empty:
        return None
    keys = rows["raw_name"] + rows["labels"].map(lambda d: json.dumps(d or {}, sort_keys=True))
    total, seen = 0.0, False
    for _, series in rows.groupby(keys, sort=False):
        if len(series) >= 2:
            total += increase(list(zip(series["ts"], series["value"], strict=True)))
            seen = True
    return total if seen else None


def mean_request_tokens(df: pd.DataFrame) -> float | None:
    """Prompt + output tokens per finished request over the frame: the token counters'
    increase over the finished-requests counter's (else the prompt-length histogram's
    count); None when nothing finished or a counter is missing."""
    prompt = counter_increase(df, "prompt_tokens_total")
    output = counter_increase(df, "generation_tokens_total")
    finished = counter_increase(df, "requests_finished_total")
    if not finished and "extra" in df:
        finished = _histogram_count_increase(df, "request_prompt_tokens")
    if prompt is None or output is None or not finished:
        return None
    return (prompt + output) / finished


def _histogram_count_increase(df: pd.DataFrame, concept: str) -> float | None:
    rows = df[df["concept"] == concept] if not df.empty else df
    if rows.empty:
        return None
    counts = rows.assign(value=rows["extra"].map(lambda e: float((e or {}).get("count", 0))))
    return counter_increase(counts, concept)


@dataclass(frozen=True)
class Headroom:
    """A target's KV headroom over time (DataFrame ts, capacity, used, free, requests) and
    its newest values; `requests` counts requests of `mean_tokens` (or free slots)."""

    series: pd.DataFrame
    capacity: float | None
    free: float | None
    usage: float | None
    mean_tokens: float | None
    requests: float | None
    requests_from: str


def headroom(df: pd.DataFrame, capacity: float | None = None) -> Headroom:
    """KV headroom from a target's stored samples (HEADROOM_CONCEPTS). Capacity: the stored
    kv_capacity_tokens gauge, else `capacity` (what the server's info reports). Free tokens:
    the stored kv_free_tokens (llama.cpp's slots), else capacity x (1 - KV usage). Headroom
    in requests: free slots where the server has fixed slots (llama.cpp), else free tokens
    over the mean tokens per finished request."""
    usage = kv_usage_series(df).rename(columns={"value": "usage"})
    cap = gauge_series(df, "kv_capacity_tokens").rename(columns={"value": "capacity"})
    free = gauge_series(df, "kv_free_tokens").rename(columns={"value": "free"})
    out = usage
    for part in (cap, free):
        if not part.empty:
            out = part if out.empty else out.merge(part, on="ts", how="outer")
    out = out.sort_values("ts").reset_index(drop=True)
    for col in ("usage", "capacity", "free"):
        if col not in out:
            out[col] = float("nan")
    out["capacity"] = out["capacity"].ffill()
    if capacity:
        out["capacity"] = out["capacity"].fillna(capacity)
    known = out["free"].isna() & out["capacity"].notna() & out["usage"].notna()
    out.loc[known, "free"] = out.loc[known, "capacity"] * (1 - out.loc[known, "usage"])
    out["used"] = out["capacity"] - out["free"]
    mean = mean_request_tokens(df)
    slots = _free_slots(df)
    if not slots.empty:
        out = out.merge(slots, on="ts", how="left")
        how = "free slots (one request each)"
    else:
        out["requests"] = out["free"] / mean if mean else float("nan")
        how = f"free tokens / {mean:,.0f} tokens per request" if mean else \
            "unknown: no finished requests in this range"
    last = out.dropna(subset=["free"]).iloc[-1] if out["free"].notna().any() else None

    def value(col: str) -> float | None:
        if last is None or pd.isna(last[col]):
            return None
        return float(last[col])

    return Headroom(out[["ts", "capacity", "used", "free", "requests"]],
                    value("capacity") if last is not None else capacity, value("free"),
                    value("usage") if last is not None else None, mean, value("requests"), how)


def _free_slots(df: pd.DataFrame) -> pd.DataFrame:
    """llama.cpp: slots not processing, per scrape."""
    rows = df[df["concept"] == "slot_processing"] if not df.empty else df
    if rows.empty:
        return pd.DataFrame(columns=["ts", "requests"])
    per = rows.groupby("ts")["value"].agg(["count", "sum"]).reset_index()
    return pd.DataFrame({"ts": per["ts"], "requests": per["count"] - per["sum"]})


def headroom_figure(h: Headroom) -> go.Figure:
    """Free and used KV tokens against the capacity over time; headroom in requests on the
    right axis."""
    s = h.series
    fig = time_lines({"free": s[["ts"]].assign(value=s["free"]),
                      "used": s[["ts"]].assign(value=s["used"]),
                      "capacity": s[["ts"]].assign(value=s["capacity"])}
                     if not s.empty else {}, "KV headroom", "tokens", dashed=("capacity",))
    fig.update_traces(connectgaps=True)
    if not s.empty and s["requests"].notna().any():
        x = fig.data[0].x if fig.data else None
        fig.add_trace(go.Scatter(x=x, y=s["requests"], name="requests that fit",
                                 mode="lines", yaxis="y2",
                                 line={"color": COLORS["waiting"], "dash": "dot"}))
        fig.update_layout(yaxis2={"title": {"text": "requests"}, "overlaying": "y",
                                  "side": "right", "rangemode": "tozero", "showgrid": False})
    return fig


# -- the advisor's evidence per level --------------------------------------------------------
def evidence_frame(evidence: Mapping[str, Any]) -> pd.DataFrame:
    """One row per measured level of analysis.sweep_evidence's dict: the client's figures
    and the server's series flattened (KV usage in percent)."""
    rows = []
    for lv in evidence.get("levels") or []:
        srv = lv.get("server") or {}
        rows.append({
            "level": lv.get("level"), "output_tokens_per_s": lv.get("output_tokens_per_s"),
            "requests_per_s": lv.get("requests_per_s"), "goodput_per_s": lv.get("goodput_per_s"),
            "running_mean": srv.get("running_mean"), "waiting_mean": srv.get("waiting_mean"),
            "running_max": srv.get("running_max"), "waiting_max": srv.get("waiting_max"),
            "kv_usage_max_pct": None if srv.get("kv_usage_max") is None
            else 100 * srv["kv_usage_max"],
            "preemptions": srv.get("preemptions"), "slos_met": lv.get("slos_met"),
            "ttft_p95_ms": (lv.get("ttft_ms") or {}).get("p95"),
            "itl_p95_ms": (lv.get("itl_ms") or {}).get("p95"),
        })
    cols = ["level", "output_tokens_per_s", "requests_per_s", "goodput_per_s", "running_mean",
            "waiting_mean", "running_max", "waiting_max", "kv_usage_max_pct", "preemptions",
            "slos_met", "ttft_p95_ms", "itl_p95_ms"]
    return pd.DataFrame(rows, columns=cols).astype({c: float for c in cols if c != "slos_met"})


def _level_lines(fig: go.Figure, frame: pd.DataFrame, columns: Mapping[str, tuple[str, str]],
                 axis: str = "y") -> None:
    for col, (name, color) in columns.items():
        if col in frame and frame[col].notna().any():
            fig.add_trace(go.Scatter(x=frame["level"], y=frame[col], name=name,
                                     mode="lines+markers", line={"color": color}, yaxis=axis))


def _mark_knob(fig: go.Figure, marks: Mapping[str, float | None]) -> go.Figure:
    for (label, value), color in zip(marks.items(), ("#9aa5b1", "#59a14f"), strict=False):
        if value is not None and fig.data:
            fig.add_vline(x=value, line={"dash": "dash", "color": color},
                          annotation_text=f"{label} {value:g}", annotation_position="top")
    return fig


def evidence_throughput_figure(frame: pd.DataFrame, level_name: str = "concurrency",
                               marks: Mapping[str, float | None] | None = None) -> go.Figure:
    """Output tokens/s (left) and requests/s with goodput (right) per level."""
    fig = go.Figure()
    _level_lines(fig, frame, {"output_tokens_per_s": ("output tokens/s", COLORS["generation"])})
    _level_lines(fig, frame, {"requests_per_s": ("requests/s", COLORS["capacity"]),
                              "goodput_per_s": ("goodput (req/s)", "#59a14f")}, "y2")
    fig = layout(fig, "Throughput and goodput by level", level_name, "output tokens/s")
    if any(t.yaxis == "y2" for t in fig.data):
        fig.update_layout(yaxis2={"title": {"text": "requests/s"}, "overlaying": "y",
                                  "side": "right", "rangemode": "tozero", "showgrid": False})
    return note_if_empty(_mark_knob(fig, marks or {}), NO_LEVELS)


def evidence_server_figure(frame: pd.DataFrame, level_name: str = "concurrency",
                           marks: Mapping[str, float | None] | None = None) -> go.Figure:
    """The server per level: requests running and waiting (mean, left) and the KV cache's
    peak use (percent, right)."""
    fig = go.Figure()
    _level_lines(fig, frame, {"running_mean": ("running (mean)", COLORS["running"]),
                              "waiting_mean": ("waiting (mean)", COLORS["waiting"])})
    _level_lines(fig, frame, {"kv_usage_max_pct": ("KV used (peak %)", "#f28e2b")}, "y2")
    fig = layout(fig, "Server by level: running, waiting, KV", level_name, "requests")
    if any(t.yaxis == "y2" for t in fig.data):
        fig.update_layout(yaxis2={"title": {"text": "KV used (%)"}, "overlaying": "y",
                                  "side": "right", "range": [0, 102], "showgrid": False})
    return note_if_empty(_mark_knob(fig, marks or {}),
                         "no server series in this sweep's windows (collect during a sweep)")


def recommendations_table(advice: Mapping[str, Any]) -> pd.DataFrame:
    """The advisor's recommendations as rows: knob, now, set to, why."""
    rows = [{"runtime": r.get("runtime"), "knob": r.get("knob"),
             "now": "unknown" if r.get("current") is None else str(r.get("current")),
             "set to": str(r.get("value")), "why": r.get("reason")}
            for r in advice.get("recommendations") or []]
    return pd.DataFrame(rows, columns=["runtime", "knob", "now", "set to", "why"])


# -- what-if ------------------------------------------------------------------------------
def gpu_options_figure(options: Sequence[Mapping[str, Any]], chosen: str | None = None
                       ) -> go.Figure:
    """Sequences of the workload's p95 length that fit, per GPU option (rows: gpu, gpus,
    sequences, fits, why); the chosen GPU highlighted, those that don't fit marked."""
    fig = go.Figure()
    if options:
        names = [f"{o['gpus']} x {o['gpu']}" for o in options]
        colors = ["#4e79a7" if o["gpu"] == chosen else ("#b4bcc7" if o["fits"] else "#e15759")
                  for o in options]
        fig.add_trace(go.Bar(x=names, y=[o["sequences"] if o["fits"] else 0 for o in options],
                             marker={"color": colors}, name="sequences that fit",
                             text=[f"{o['sequences']:,}" if o["fits"] else "doesn't fit"
                                   for o in options], textposition="outside",
                             hovertext=[o.get("why") or "" for o in options]))
    fig = layout(fig, "Concurrent sequences that fit, per GPU option", "GPUs",
                 "sequences (p95 length)")
    fig.update_layout(hovermode="closest", showlegend=False)
    return note_if_empty(fig, "no GPU option")


def fit_curve_figure(curve: pd.DataFrame, marks: Mapping[str, float | None]) -> go.Figure:
    """Sequences that fit against the tokens per request (DataFrame tokens, sequences),
    with the workload's lengths and the max_num_seqs cap marked."""
    fig = go.Figure()
    if not curve.empty:
        fig.add_trace(go.Scatter(x=curve["tokens"], y=curve["sequences"], mode="lines",
                                 name="sequences the KV cache holds",
                                 line={"color": COLORS["running"], "width": 2.5}))
        cap = marks.get("max_num_seqs")
        if cap:
            fig.add_hline(y=cap, line={"dash": "dot", "color": COLORS["waiting"]},
                          annotation_text=f"max_num_seqs {cap:g}")
        for (label, x), color in zip(((k, v) for k, v in marks.items() if k != "max_num_seqs"),
                                     ("#59a14f", "#f28e2b", "#9aa5b1"), strict=False):
            if x:
                fig.add_vline(x=x, line={"dash": "dash", "color": color},
                              annotation_text=f"{label} {x:,.0f}")
    fig = layout(fig, "Sequences that fit by request length", "tokens per request (prompt + "
                 "output)", "sequences")
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    fig.update_layout(hovermode="closest")
    return note_if_empty(fig, "the model does not fit")


# -- the what-if's simulated load curve ------------------------------------------------------
# (title, y axis, log y, [(row key, percentile or None, series name, color)]); TTFT's axis
# is logarithmic: from one prefill to minutes of queue
LOAD_PANELS = (
    ("Throughput by users (simulated)", "output tokens/s", False,
     [("output_tokens_per_s", None, "output tokens/s", COLORS["running"])]),
    ("TTFT by users (simulated)", "ms", True,
     [("ttft_ms", "p50", "TTFT p50", "#f28e2b"), ("ttft_ms", "p90", "TTFT p90", "#e15759")]),
    ("ITL by users (simulated)", "ms", False,
     [("itl_ms", "p50", "ITL p50", "#76b7b2"), ("itl_ms", "p90", "ITL p90", "#4e79a7")]),
)


def load_curve_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """sim_search.load_curve's rows as one row per users count: users, the panels' series,
    requests/s and preemptions."""
    out = []
    for r in rows:
        row: dict[str, Any] = {"users": r["users"]}
        for *_, series in LOAD_PANELS:
            for key, pct, name, _ in series:
                row[name] = r[key] if pct is None else (r.get(key) or {}).get(pct)
        row["requests/s"] = r.get("requests_per_s")
        row["preemptions"] = r.get("preemptions")
        out.append(row)
    return pd.DataFrame(out)


def load_curve_figures(frame: pd.DataFrame, marks: Mapping[str, float | None]
                       ) -> list[go.Figure]:
    """Throughput, TTFT and ITL against closed-loop users (log axis), dashed "simulated",
    with `marks` (max_num_seqs, the sequences the KV cache holds) as vertical lines."""
    figs = []
    for title, unit, log_y, series in LOAD_PANELS:
        fig = go.Figure()
        if not frame.empty:
            for _, _, name, color in series:
                fig.add_trace(go.Scatter(x=frame["users"], y=frame[name],
                                         name=f"{name} simulated", mode="lines+markers",
                                         line={"color": color, "dash": "dash"},
                                         marker={"symbol": "diamond-open"}))
            top = max((v for _, _, n, _ in series for v in frame[n].dropna()), default=0.0)
            for (label, x), color in zip(marks.items(), ("#9aa5b1", "#e15759"), strict=False):
                if x and top:  # a line as a trace: named in the legend, right on a log axis
                    fig.add_trace(go.Scatter(x=[x, x], y=[0, top], mode="lines",
                                             name=f"{label} {x:,.0f}", hoverinfo="skip",
                                             line={"dash": "dot", "color": color}))
        fig = layout(fig, title, "closed-loop users", unit)
        fig.update_xaxes(type="log")
        if log_y:
            fig.update_yaxes(type="log")
        figs.append(note_if_empty(legend_below(fig), "nothing simulated"))
    return figs
