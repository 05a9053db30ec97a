"""The Capacity page's simulator parts, each prediction labelled "simulated".

The what-if's load curve (render_load_curve): the planned setup (vLLM's scheduler and KV
blocks from the planner, the step time from physics: uncalibrated, said plainly) under
closed-loop load at 1, 2, 4, ... users past max_num_seqs, on the workload's lengths
(capacity/sim_search.load_curve): throughput, TTFT and ITL by users.

The predicted-against-measured section (render_predicted): for a stored sweep, the
simulator's prediction of every level beside what the level measured (throughput, TTFT,
ITL).

How it predicts (pure, from the store): the step time is calibrated on the sweep's lowest
levels, half of them but at least two and one left to predict (capacity/sim_calibrate.py,
with the server's spans where they joined: the lowest level alone barely tells the cost of
one more sequence in a batch from the fixed cost of a step); the scheduler
is the measured server's as it said it (vLLM's cache_config_info: KV blocks, block size;
max_num_seqs where the artifact manifest found it, else vLLM's default of 256); each level
replays its own measured requests' lengths, in a closed loop of `level` users for the run's
length (a concurrency sweep) or at their measured send times (a rate sweep). The lowest
levels are the calibration's own, so only the levels above them test the simulator.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from servescope.analysis.join import joined_phases, run_records, same_server
from servescope.capacity.plan import PlanInput
from servescope.capacity.sim_calibrate import (
    Calibration,
    Observed,
    bootstrap,
    calibrate,
    observed_requests,
)
from servescope.capacity.sim_profile import (
    Profile,
    Workload,
    model_error_from,
    predict,
    rel_errors,
    run_summary,
)
from servescope.capacity.sim_search import load_curve, users_levels
from servescope.capacity.sim_setup import SimSetup, sim_setup
from servescope.capacity.simulator import SchedulerConfig, SimRequest
from servescope.core.store import Store
from servescope.dashboard.figures import (
    COLORS,
    PLOTLY_CONFIG,
    layout,
    legend_below,
    note_if_empty,
)
from servescope.dashboard.figures_capacity import load_curve_figures, load_curve_frame

DEFAULT_MAX_NUM_SEQS = 256  # vLLM's on a GPU when the server does not say
DEFAULT_BATCHED_TOKENS = 8192
# (figure title, y axis, [(summary key, percentile or None, series name)])
PANELS = (
    ("Output tokens/s", "tokens/s", [("output_tokens_per_s", None, "throughput")]),
    ("TTFT", "ms", [("ttft_ms", "p50", "TTFT p50"), ("ttft_ms", "p90", "TTFT p90")]),
    ("ITL", "ms", [("itl_ms", "p50", "ITL p50"), ("itl_ms", "p90", "ITL p90")]),
)
SERIES_COLORS = {"throughput": COLORS["generation"], "TTFT p50": COLORS["TTFT"],
                 "TTFT p90": "#e15759", "ITL p50": "#76b7b2", "ITL p90": "#4e79a7"}


@dataclass
class Level:
    """One measured level of the sweep."""

    level: float
    run_id: int
    observed: list[Observed]
    summary: dict[str, Any]


def calibration_count(levels: int) -> int:
    """How many of the lowest levels the step time is fitted on."""
    return max(1, min(levels - 1, max(2, -(-levels // 2))))


def measured_levels(store: Store, sweep: dict[str, Any]) -> list[Level]:
    """The sweep's finished runs, lowest level first, with their observed requests."""
    runs = sorted((r for r in store.runs() if r.get("sweep_id") == sweep["id"]
                   and r.get("summary")), key=lambda r: r["id"])
    levels = [float(v) for v in sweep.get("levels") or []]
    out = []
    for i, run in enumerate(runs):
        stages = (run.get("scenario") or {}).get("stages") or []
        key = "concurrency" if sweep.get("kind") == "concurrency" else "rate"
        level = stages[0].get(key) if len(stages) == 1 else None
        if level is None and i < len(levels):
            level = levels[i]
        if isinstance(level, str):  # a rate as the scenario writes it, "5/s"
            level = levels[i] if i < len(levels) else None
        if level is None:
            continue
        records = run_records(store, run)
        phases = {p.request_id: p.server for p in joined_phases(store, records)}
        obs = observed_requests(records, phases)
        if obs:
            out.append(Level(float(level), run["id"], obs, run["summary"]))
    return sorted(out, key=lambda lv: lv.level)


def measured_scheduler(store: Store, sweep: dict[str, Any]) -> tuple[SchedulerConfig, list[str]]:
    """The measured server's scheduler from what the store kept of it; notes say what was
    assumed."""
    notes: list[str] = []
    cache: dict[str, Any] = {}
    for t in store.targets():
        if same_server(t.get("url") or "", sweep.get("target_url") or ""):
            caches = list(((t.get("info") or {}).get("cache_config") or {}).values())
            cache = caches[0] if caches and isinstance(caches[0], dict) else {}
    seqs = _int(cache.get("max_num_seqs"))
    for run in store.runs():
        if run.get("sweep_id") == sweep["id"] and seqs is None:
            seqs = _int((store.run_manifest(run["id"]) or {}).get("concurrency_value"))
    if seqs is None:
        seqs = DEFAULT_MAX_NUM_SEQS
        notes.append(f"max_num_seqs not reported by the server: {DEFAULT_MAX_NUM_SEQS} assumed")
    batched = _int(cache.get("max_num_batched_tokens"))
    if batched is None:
        batched = DEFAULT_BATCHED_TOKENS
        notes.append(f"max_num_batched_tokens not reported: {DEFAULT_BATCHED_TOKENS} assumed")
    blocks, size = _int(cache.get("num_gpu_blocks")), _int(cache.get("block_size"))
    config = SchedulerConfig(max_num_seqs=seqs, max_num_batched_tokens=batched)
    if blocks and size:
        config = SchedulerConfig(max_num_seqs=seqs, max_num_batched_tokens=batched,
                                 kv_blocks=max(1, blocks - 1), block_size=size)
    else:
        notes.append("KV cache size not reported (no vllm:cache_config_info collected): "
                     "no KV limit simulated")
    return config, notes


def _int(v: Any) -> int | None:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


def level_workload(lv: Level, kind: str, replica: int = 0) -> Workload:
    """One level's load for the simulator: its measured requests' lengths, in a closed loop
    of `level` users for the run's length (a concurrency sweep) or at their measured send
    times (a rate sweep); a replica > 0 shuffles which lengths come when."""
    obs = sorted(lv.observed, key=lambda o: o.send_s)
    first = obs[0].send_s
    span = max(o.end_s for o in obs) - first
    closed = kind == "concurrency"
    lengths = [(o.prompt_tokens, o.output_tokens) for o in obs]
    if replica:
        random.Random(replica).shuffle(lengths)
    reqs = [SimRequest(f"m{i}", 0.0 if closed else o.send_s - first, p, n)
            for i, (o, (p, n)) in enumerate(zip(obs, lengths, strict=True))]
    return Workload(reqs, closed_loop_users=int(lv.level) if closed else None,
                    duration_s=span if closed else None)


def predict_level(lv: Level, kind: str, config: SchedulerConfig,
                  cal: Calibration) -> dict[str, Any]:
    """The simulated summary of one level, replaying its measured requests' lengths."""
    return run_summary(level_workload(lv, kind), config, cal.step, 0, cal.ttft_overhead_s,
                       cal.tail_s)


def prediction_table(levels: list[Level], kind: str, config: SchedulerConfig,
                     cal: Calibration, fitted: int, replicas: int = 0) -> pd.DataFrame:
    """One row per level and figure: measured, predicted (simulated), relative error, and
    whether the level was one the step time was fitted on. With `replicas`, also the 90 %
    interval (low, high) as `servescope simulate --profile` gives it: the replicas run on
    refits of the calibration (a block bootstrap of its steps) at server speeds drawn from
    its levels' spread, with its step noise, widened by its own replay error (the fitted
    levels' errors); no extrapolation term past them."""
    points = [predict_level(lv, kind, config, cal) for lv in levels]
    intervals: list[dict[str, Any]] = [{} for _ in levels]
    if replicas:
        checks = [{"errors": rel_errors(p, lv.summary)}
                  for lv, p in zip(levels[:fitted], points, strict=False)]
        profile = Profile(cal, {}, bootstrap([lv.observed for lv in levels[:fitted]]),
                          model_error_from(checks),
                          {"levels": [lv.level for lv in levels[:fitted]]})
        for i, lv in enumerate(levels):
            intervals[i] = predict(lambda r, lv=lv: level_workload(lv, kind, r), config,
                                   profile, replicas=replicas)["interval90"]
    rows = []
    for i, (lv, predicted) in enumerate(zip(levels, points, strict=True)):
        for _, _, series in PANELS:
            for key, pct, name in series:
                m, p = _figure(lv.summary, key, pct), _figure(predicted, key, pct)
                iv = intervals[i].get(key if pct is None else f"{key}.{pct}")
                rows.append({"level": lv.level, "series": name, "measured": m,
                             "simulated": p, "error": (p - m) / m if m and p is not None
                             else None, "calibration": i < fitted,
                             "low": iv[0] if iv else None, "high": iv[1] if iv else None})
    return pd.DataFrame(rows)


def _figure(summary: dict[str, Any], key: str, pct: str | None) -> float | None:
    value = summary.get(key) if pct is None else (summary.get(key) or {}).get(pct)
    return float(value) if value is not None else None


def predicted_figures(table: pd.DataFrame, level_name: str) -> list[go.Figure]:
    """Measured (solid) and simulated (dashed, "simulated" in its name) per panel."""
    figs = []
    for title, unit, series in PANELS:
        fig = go.Figure()
        for _, _, name in series:
            rows = table[table["series"] == name] if not table.empty else table
            if rows.empty:
                continue
            color = SERIES_COLORS.get(name)
            fig.add_trace(go.Scatter(x=rows["level"], y=rows["measured"], name=f"{name} measured",
                                     mode="lines+markers", line={"color": color, "width": 2.5}))
            band = None
            if "low" in rows and rows["low"].notna().all():  # the 90 % interval
                band = {"type": "data", "symmetric": False, "thickness": 1, "width": 4,
                        "array": rows["high"] - rows["simulated"],
                        "arrayminus": rows["simulated"] - rows["low"]}
            fig.add_trace(go.Scatter(x=rows["level"], y=rows["simulated"],
                                     name=f"{name} simulated", mode="lines+markers",
                                     line={"color": color, "dash": "dash"},
                                     marker={"symbol": "diamond-open"}, error_y=band))
        layout(fig, f"{title}: measured vs simulated", level_name, unit)
        figs.append(note_if_empty(legend_below(fig), "no level to compare"))
    return figs


def render_predicted(store: Store, sweep_id: int) -> None:
    """The section itself (dashboard/capacity.py calls it)."""
    sweep = next((s for s in store.sweeps() if s["id"] == sweep_id), None)
    if sweep is None:
        st.caption(f"No sweep #{sweep_id} in the store.")
        return
    levels = measured_levels(store, sweep)
    if len(levels) < 2:
        st.info("The simulator needs at least two finished levels of this sweep: the lowest "
                "to calibrate on, another to predict.")
        return
    n_fit = calibration_count(len(levels))
    try:
        cal = calibrate([lv.observed for lv in levels[:n_fit]])
    except ValueError as exc:
        st.info(f"Cannot calibrate the simulator on this sweep's lowest levels: {exc}")
        return
    kind = sweep.get("kind") or "concurrency"
    config, notes = measured_scheduler(store, sweep)
    key = (str(store.path), sweep_id, tuple(lv.run_id for lv in levels), repr(config))
    table = _table(levels, kind, config, cal, n_fit, REPLICAS, key)
    fitted = ", ".join(f"{lv.level:g}" for lv in levels[:n_fit])
    st.caption(f"SIMULATED: step time calibrated on {kind} {fitted} of this sweep "
               f"({cal.rows} measured steps); dashed lines are the simulator's, with 90% "
               f"intervals ({REPLICAS} replicas on refits of the calibration, at server speeds "
               "drawn from its levels' spread, widened by its replay error; nothing added "
               "for extrapolating past the fitted levels), solid the measurements. Levels "
               "above the calibration ones are predictions.")
    cols = st.columns(len(PANELS))
    for i, (col, fig) in enumerate(zip(cols, predicted_figures(table, kind), strict=True)):
        col.plotly_chart(fig, key=f"capacity-sim-{sweep_id}-{i}", config=PLOTLY_CONFIG)
    shown = table.assign(measured=table["measured"].round(1),
                         simulated=table["simulated"].round(1),
                         error=table["error"].map(
                             lambda e: None if e is None or pd.isna(e) else f"{e:+.0%}"),
                         interval=[f"{lo:.1f}-{hi:.1f}" if pd.notna(lo) and pd.notna(hi)
                                   else None for lo, hi in zip(table["low"], table["high"],
                                                               strict=True)],
                         inside=[bool(lo <= m <= hi) if pd.notna(lo) and pd.notna(m) else None
                                 for lo, m, hi in zip(table["low"], table["measured"],
                                                      table["high"], strict=True)])
    st.dataframe(shown.drop(columns=["low", "high"]).rename(columns={
        "simulated": "simulated (predicted)", "interval": "90% interval",
        "inside": "measured inside"}), hide_index=True)
    for note in notes:
        st.caption(note)


REPLICAS = 10  # per level, for the 90 % intervals


@st.cache_data(show_spinner="simulating the sweep's levels...", max_entries=8)
def _table(_levels: list[Level], kind: str, _config: SchedulerConfig, _cal: Calibration,
           fitted: int, replicas: int, key: tuple) -> pd.DataFrame:
    """prediction_table, once per store, sweep and set of runs (`key`; the underscored
    arguments follow from it and are not hashed)."""
    return prediction_table(_levels, kind, _config, _cal, fitted, replicas)


# -- the what-if's load curve ---------------------------------------------------------------
MAX_LENGTHS = 2000  # a stored run's (prompt, output) pairs drawn from, at most


@st.cache_data(show_spinner="simulating the load curve...", max_entries=16)
def _curve(inp: PlanInput, tp: int, lengths: tuple[tuple[int, int], ...],
           serve: int) -> tuple[dict[str, Any], SimSetup]:
    """The setup and its load curve at 1, 2, 4, ... users up to `serve` (0: twice its
    max_num_seqs)."""
    ss = sim_setup(inp, tp)
    users = users_levels(ss.config.max_num_seqs, serve or None, most=serve or 1024)
    return load_curve(ss, list(lengths), users), ss


def render_load_curve(inp: PlanInput, tp: int, lengths: list[tuple[int, int]],
                      fit: int | None) -> None:
    """The what-if's setup under load, simulated from physics (dashboard/capacity.py calls
    it with its PlanInput, the tensor parallelism it planned, the workload's lengths and the
    sequences the KV cache holds)."""
    st.subheader("Simulated load (physics, uncalibrated)")
    if not lengths:
        st.caption("Give the workload's lengths above to simulate it.")
        return
    left, right = st.columns(2)
    batched = int(left.number_input("max_num_batched_tokens (0: vLLM's default)", 0,
                                    10_000_000, 0, key="whatif-sim-batched"))
    serve = int(right.number_input("Users up to (0: twice max_num_seqs)", 0, 4096, 0,
                                   key="whatif-sim-users"))
    if batched:
        inp = dataclasses.replace(inp, max_num_batched_tokens=batched, assumptions=[])
    if len(lengths) > MAX_LENGTHS:
        lengths = random.Random(0).sample(lengths, MAX_LENGTHS)
    try:
        curve, ss = _curve(inp, tp, tuple(lengths), serve)
    except ValueError as exc:
        st.error(f"Cannot simulate this setup: {exc}")
        return
    seqs = ss.config.max_num_seqs
    frame = load_curve_frame(curve["rows"])
    st.caption(f"SIMULATED, uncalibrated: one replica ({ss.describe()}), "
               f"{'; '.join(ss.physics.assumptions())}. Closed-loop users, no think time, "
               f"joining over {curve['ramp_s']:.1f} s (one request's unloaded time); "
               f"{curve['window']}. For a measured answer: `servescope calibrate` on the "
               "hardware, then `servescope simulate --profile`.")
    marks = {"max_num_seqs": seqs, "sequences that fit (KV)": fit if fit and fit < seqs
             else None}
    cols = st.columns(3)
    for i, (col, fig) in enumerate(zip(cols, load_curve_figures(frame, marks), strict=True)):
        col.plotly_chart(fig, key=f"whatif-sim-{i}", config=PLOTLY_CONFIG)
    with st.expander("Simulated figures by users"):
        st.dataframe(frame.round(1), hide_index=True)
