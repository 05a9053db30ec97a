"""Sweep page: one `servescope sweep` (a run per load level) as a capacity curve, with
where throughput stopped growing (saturation) and the highest level meeting the SLOs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import streamlit as st

from servescope.analysis.sweep import MIN_LATENCY_GROWTH, MIN_THROUGHPUT_GAIN
from servescope.core.store import Store
from servescope.dashboard import figures, figures_sweep
from servescope.dashboard.figures import local_clock, redact_urls
from servescope.dashboard.widgets import header_caption

EMPTY_STATE = (
    "No sweeps in the store yet. Run one with "
    "`servescope sweep scenarios/chat.yaml --target URL --concurrency 1,2,4,8`: a load run "
    "per concurrency level, and where the server saturates."
)
SATURATION = "saturation"
MEETS_SLOS = "meets SLOs up to"
CURVE_COLUMNS = {
    "level": "level",
    "run": "run",
    "requests_ok": "requests ok",
    "requests_failed": "failed",
    "output_tokens_per_s": "output tokens/s",
    "requests_per_s": "requests/s",
    "goodput_per_s": "goodput (req/s)",
    "ttft_p95_ms": "TTFT p95 (ms)",
    "itl_p95_ms": "ITL p95 (ms)",
    "e2e_p95_ms": "E2E p95 (ms)",
    "slos": "SLOs",
    "client": "load generator",
}
CURVE_KEYS = [
    "level",
    "requests_ok",
    "requests_failed",
    "output_tokens_per_s",
    "requests_per_s",
    "goodput_per_s",
    "ttft_p95_ms",
    "itl_p95_ms",
    "e2e_p95_ms",
    "slos_met",
    "client_limited",
]
SLO_METRICS = {"ttft_ms": "TTFT p95", "itl_ms": "ITL p95", "e2e_ms": "E2E p95"}


def render(store: Store, run_page: Any = None) -> None:
    """`run_page` is the Run page's st.Page: the runs of the sweep then link to it."""
    st.title("Sweep")
    sweeps = store.sweeps()
    if not sweeps:
        st.info(EMPTY_STATE)
        return
    by_id = {s["id"]: s for s in sweeps}
    sweep_id = st.selectbox("Sweep", list(by_id), format_func=lambda i: sweep_label(by_id[i]))
    sweep = by_id[sweep_id]
    _sweep_header(sweep)
    runs = sorted((r for r in store.runs() if r.get("sweep_id") == sweep_id), key=lambda r: r["id"])
    result = sweep.get("result") or {}
    rows = result.get("curve") or []
    if not rows:
        st.info(
            "No level of this sweep has finished yet."
            if sweep["status"] == "running"
            else "This sweep measured no level."
        )
        _run_links(runs, run_page, sweep.get("levels") or [])
        return
    # Every column analysis.sweep writes, also for a curve stored by an older version.
    curve = pd.DataFrame(rows).reindex(columns=CURVE_KEYS)
    saturation, meets = result.get("saturation_level"), result.get("max_level_meeting_slos")
    _verdicts(sweep, curve, saturation, meets)
    limited = limited_levels(curve)
    if limited:
        st.warning(
            f"The load generator itself was the bottleneck at {level_name(sweep)} "
            f"{', '.join(f'{v:g}' for v in limited)} (marked ✕ on the throughput chart; "
            "each run's page says why). Their throughput is not the server's, so no "
            "saturation is read from them. Run the load generator on cores the server does "
            "not use (taskset) or on another machine, and sweep again."
        )
    marks = {SATURATION: saturation, MEETS_SLOS: meets}
    left, right = st.columns(2)
    left.plotly_chart(
        figures_sweep.throughput_figure(curve, marks, level_name(sweep)),
        key="sweep-throughput",
        config=figures.PLOTLY_CONFIG,
    )
    right.plotly_chart(
        figures_sweep.latency_figure(curve, marks, slo_lines(runs), level_name(sweep)),
        key="sweep-latency",
        config=figures.PLOTLY_CONFIG,
    )
    st.caption(
        f"Saturation: the last level before a step that added less than "
        f"{MIN_THROUGHPUT_GAIN:.0%} throughput while the p95 E2E grew more than "
        f"{MIN_LATENCY_GROWTH:.0%}. The SLO search stops at the first level that misses an "
        "SLO or fails a request: levels above it are not trusted."
    )
    st.subheader("Curve")
    st.dataframe(
        curve_table(curve, runs),
        hide_index=True,
        column_config={
            label: st.column_config.NumberColumn(format="%.1f")
            for key, label in CURVE_COLUMNS.items()
            if key.endswith(("_per_s", "_ms"))
        },
    )
    _run_links(runs, run_page, curve["level"].tolist())


def level_name(sweep: Mapping[str, Any]) -> str:
    return sweep.get("kind") or "level"


def limited_levels(curve: pd.DataFrame) -> list[float]:
    """The levels where the load generator reported itself the bottleneck."""
    return curve.loc[curve["client_limited"].eq(True), "level"].tolist()


def sweep_label(sweep: Mapping[str, Any]) -> str:
    return f"#{sweep['id']} {sweep['name']} {sweep['status']} {local_clock(sweep['started_at'])}"


def _sweep_header(sweep: Mapping[str, Any]) -> None:
    levels = ", ".join(f"{v:g}" for v in sweep.get("levels") or [])
    header_caption([f"scenario {sweep['scenario_name']}",
                    f"target {redact_urls(sweep['target_url'])}",
                    f"{sweep.get('kind') or 'level'} {levels}"], sweep, "sweep", "levels")


def _verdicts(sweep: Mapping[str, Any], curve: pd.DataFrame, saturation: Any, meets: Any) -> None:
    kind = level_name(sweep)
    cols = st.columns(4)
    cols[0].metric("Levels measured", f"{len(curve)} of {len(sweep.get('levels') or curve)}")
    cols[1].metric(
        f"Saturation ({kind})", "not reached" if saturation is None else f"{saturation:g}"
    )
    if curve["slos_met"].isna().all():
        slo_text = "no SLOs set"
    else:
        slo_text = "none" if meets is None else f"{meets:g}"
    cols[2].metric(f"Highest {kind} meeting SLOs", slo_text)
    tokens = curve["output_tokens_per_s"]
    if tokens.notna().any():
        best = curve.loc[tokens.idxmax()]
        cols[3].metric(
            "Peak output tokens/s",
            f"{best['output_tokens_per_s']:,.0f}",
            help=f"at {kind} {best['level']:g}",
        )
    else:
        cols[3].metric("Peak output tokens/s", "n/a")


def curve_table(curve: pd.DataFrame, runs: list[dict[str, Any]]) -> pd.DataFrame:
    """The curve as displayed: readable column names, the run of each level, SLO verdicts."""
    by_level = runs_by_level(runs, curve["level"].tolist())
    table = curve.assign(
        run=[f"#{by_level[v]}" if v in by_level else None for v in curve["level"]],
        slos=curve["slos_met"].map(lambda met: {True: "met", False: "MISS"}.get(met, "-")),
        client=curve["client_limited"].map(
            lambda lim: {True: "LIMITED", False: "ok"}.get(lim, "-")),
    )
    return table[list(CURVE_COLUMNS)].rename(columns=CURVE_COLUMNS)


def runs_by_level(runs: list[dict[str, Any]], levels: list[float]) -> dict[float, int]:
    """Level -> run id: a sweep's run is one closed-loop stage at its level; runs without
    one are matched to the levels in the order they ran."""
    out: dict[float, int] = {}
    for i, run in enumerate(runs):
        stages = (run.get("scenario") or {}).get("stages") or []
        if len(stages) == 1 and stages[0].get("concurrency") is not None:
            out[float(stages[0]["concurrency"])] = run["id"]
        elif i < len(levels):
            out[float(levels[i])] = run["id"]
    return out


def slo_lines(runs: list[dict[str, Any]]) -> dict[str, float]:
    """The p95 SLO targets of the sweep's scenario (its first run's), by chart series."""
    slos = ((runs[0].get("scenario") or {}).get("slos") or {}) if runs else {}
    return {
        name: float(slos[metric]["p95"])
        for metric, name in SLO_METRICS.items()
        if (slos.get(metric) or {}).get("p95") is not None
    }


def _run_links(runs: list[dict[str, Any]], run_page: Any, levels: list[float]) -> None:
    if not runs:
        return
    st.subheader("Runs of this sweep")
    level_of = {run_id: level for level, run_id in runs_by_level(runs, levels).items()}
    cols = st.columns(min(len(runs), 6))
    for i, run in enumerate(runs):
        level = level_of.get(run["id"])
        label = f"Run #{run['id']}" + (f" at {level:g}" if level is not None else "")
        label += f" ({run['status']})"
        column = cols[i % len(cols)]
        if run_page is not None:
            column.page_link(run_page, label=label, query_params={"run": str(run["id"])})
        else:
            column.markdown(label)
