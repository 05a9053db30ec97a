"""Ollama cards of the Live page.

An Ollama target (`servescope collect --target NAME=ollama:URL`) shows what the server has
loaded, from the collector's /api/ps and /api/show polls, and when models were loaded and
unloaded. A proxy target (`servescope proxy`) shows how each response spent its time, from
the server's own timings in the response.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import streamlit as st

from servescope.analysis.series import gauge_series, latest_value, samples_table, split_by_label
from servescope.core.concepts import names
from servescope.core.store import Store
from servescope.dashboard import figures, figures_ollama
from servescope.dashboard.figures import GIB, local_clock
from servescope.dashboard.widgets import chart_grid, last_sample_caption

MODEL_CONCEPTS = names("ollama", live=True)  # models_loaded first, then per-model figures
PROXY_CONCEPTS = names("ollama-proxy", live=True)
# The proxy's per-response figures, named without the concepts' common prefix.
RESPONSE_FIELDS = tuple(c.removeprefix("ollama_request_") for c in PROXY_CONCEPTS)
MODEL_EVENTS = ("load", "unload")
# The phase chart draws one bar per response: the newest this many.
MAX_BARS = 200
MIB = 1024**2
NO_POLLS = (
    "No polls of this Ollama in the selected time range. Pick a longer range, or check "
    "that `servescope collect` is running against it."
)
NO_RESPONSES = (
    "No responses through this proxy in the selected time range. Send requests to the "
    "proxy's address instead of Ollama's to see each response's queue, load, prefill and "
    "decode time."
)


def ollama_card(store: Store, target: Mapping[str, Any], since: float | None) -> None:
    info = target.get("info") or {}
    df = store.samples(target["id"], concepts=MODEL_CONCEPTS, since=since)
    events = model_events(store.target_events(target["id"]), since)
    loaded = latest_value(df, "models_loaded")
    st.markdown(f"Ollama version **{info.get('version') or 'unknown'}**")
    memory = latest_value(df, "model_size_bytes")
    facts = st.columns(4)
    facts[0].metric("Models loaded now", "unknown" if loaded is None else f"{loaded:.0f}")
    facts[1].metric("Their memory", human_bytes(memory if loaded else 0.0) or "unknown")
    facts[2].metric("Loads in range", int((events["kind"] == "load").sum()))
    facts[3].metric("Unloads in range", int((events["kind"] == "unload").sum()))
    if df.empty:
        st.info(NO_POLLS)
        return
    last_sample_caption(df, "polls")
    st.markdown("**Loaded now**")
    table = loaded_models_table(df, info)
    if table.empty:
        st.caption("No model is loaded now: Ollama loads one on its first request.")
    else:
        st.dataframe(table, hide_index=True)
        st.caption(
            "Size and VRAM from /api/ps at the newest poll; processor as `ollama ps` "
            "shows it; context is the runtime context where Ollama reports it, else the "
            "model's trained context (/api/show); family, parameters and quantization from "
            "/api/show."
        )
    sizes = split_by_label(df, "model_size_bytes", "model")
    vram = split_by_label(df, "model_vram_bytes", "model")
    peak = max((float(p["value"].max()) for p in sizes.values()), default=0.0)
    unit, scale = ("GiB", 1 / GIB) if peak >= GIB else ("MiB", 1 / MIB)
    charts = [
        (figures_ollama.models_loaded_figure(gauge_series(df, "models_loaded"), events), None),
        (
            figures.paired_lines(
                {m: gauge_series(p, "model_size_bytes") for m, p in sizes.items()},
                {m: gauge_series(p, "model_vram_bytes") for m, p in vram.items()},
                ("size", "VRAM"),
                "Model memory",
                unit,
                scale=scale,
            ),
            None,
        ),
    ]
    chart_grid(f"ollama-{target['id']}", charts, per_row=2)
    _event_list(events)


def model_events(events: list[dict[str, Any]], since: float | None) -> pd.DataFrame:
    """The target's load and unload events in the range as DataFrame(ts, kind, model)."""
    rows = [
        (e["ts"], e["kind"], e.get("message") or "?")
        for e in events
        if e["kind"] in MODEL_EVENTS and (since is None or e["ts"] >= since)
    ]
    return pd.DataFrame(rows, columns=["ts", "kind", "model"]).astype({"ts": float})


def _event_list(events: pd.DataFrame) -> None:
    if events.empty:
        st.caption("No model was loaded or unloaded in this time range.")
        return
    with st.expander(f"Model loads and unloads ({len(events)})", expanded=len(events) <= 10):
        st.dataframe(
            pd.DataFrame(
                {
                    "time": [local_clock(ts) for ts in events["ts"]],
                    "event": events["kind"],
                    "model": events["model"],
                }
            ).iloc[::-1],
            hide_index=True,
        )


def loaded_models_table(df: pd.DataFrame, info: Mapping[str, Any]) -> pd.DataFrame:
    """One row per model loaded at the newest poll: its size, VRAM, context and the
    /api/show details the collector kept in the target's info."""
    polls = gauge_series(df, "models_loaded")
    table = samples_table(df, MODEL_CONCEPTS[1:], ("model",))
    if polls.empty or table.empty:
        return pd.DataFrame()
    table = table[table["ts"] == polls["ts"].max()]
    known = {m.get("name"): m for m in info.get("models") or [] if isinstance(m, dict)}
    rows = []
    for _, row in table.iterrows():
        about = known.get(row["model"]) or {}
        size, vram = row["model_size_bytes"], row["model_vram_bytes"]
        context = row["model_context_length"]
        rows.append(
            {
                "model": row["model"],
                "size": human_bytes(size),
                "VRAM": human_bytes(vram),
                "processor": processor(size, vram),
                "context (tokens)": None if pd.isna(context) else f"{context:,.0f}",
                "family": _detail(about, "family"),
                "parameters": _detail(about, "parameter_size"),
                "quantization": _detail(about, "quantization_level"),
            }
        )
    return pd.DataFrame(rows)


def _detail(model_info: Mapping[str, Any], key: str) -> Any:
    """From /api/show's summary, else from /api/ps's details (which carry the same keys)."""
    return (model_info.get("show") or {}).get(key) or (model_info.get("details") or {}).get(key)


def processor(size: float, vram: float) -> str | None:
    """Where the model sits, as `ollama ps` says it: "100% GPU", "100% CPU" or a split."""
    if pd.isna(size) or pd.isna(vram) or size <= 0:
        return None
    gpu = round(100 * vram / size)
    if gpu >= 100:
        return "100% GPU"
    if gpu <= 0:
        return "100% CPU"
    return f"{100 - gpu}%/{gpu}% CPU/GPU"


def human_bytes(n: float | None) -> str | None:
    if n is None or pd.isna(n):
        return None
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def proxy_card(store: Store, target: Mapping[str, Any], since: float | None) -> None:
    df = store.samples(target["id"], concepts=PROXY_CONCEPTS, since=since)
    if df.empty:
        st.info(NO_RESPONSES)
        return
    responses = proxy_responses(df)
    facts = st.columns(4)
    facts[0].metric("Responses in range", f"{len(responses):,}")
    median_total = responses["total_s"].median()
    unit, scale = figures_ollama.time_unit(median_total)
    facts[1].metric(f"Median total ({unit})", f"{median_total * scale:,.1f}")
    waited = (responses["queue_and_overhead_s"].clip(lower=0) / responses["total_s"]).median()
    facts[2].metric("Median share queued", f"{waited:.0%}" if pd.notna(waited) else "n/a")
    rate = responses["decode_tokens_per_s"].median()
    facts[3].metric("Median decode tokens/s", f"{rate:,.0f}" if pd.notna(rate) else "n/a")
    last_sample_caption(df, "responses", count=len(responses))
    shown = responses.tail(MAX_BARS)
    means = {
        model or "?": part[list(figures_ollama.PHASES)].mean().fillna(0.0).to_dict()
        for model, part in responses.groupby("model", sort=True)
    }
    charts = [
        (
            figures_ollama.phase_bars_figure(shown),
            f"The newest {MAX_BARS} of {len(responses):,} responses."
            if len(responses) > MAX_BARS
            else None,
        ),
        (figures_ollama.decode_rate_figure(responses), None),
    ]
    # Two to a row: four phases in the legend need half a page to stay on one line.
    chart_grid(f"proxy-{target['id']}", charts, per_row=2)
    st.plotly_chart(
        figures_ollama.mean_phases_figure(means),
        key=f"proxy-{target['id']}-means",
        config=figures.PLOTLY_CONFIG,
    )
    st.caption(
        "Phases from Ollama's own timings in each final response: prefill is "
        "prompt_eval_duration, decode eval_duration, load load_duration; queue + overhead "
        "is what is left of total_duration, mostly waiting for a free slot when "
        "OLLAMA_NUM_PARALLEL requests are already running."
    )


def proxy_responses(df: pd.DataFrame) -> pd.DataFrame:
    """One row per proxied response: ts, model, endpoint and RESPONSE_FIELDS."""
    table = samples_table(df, PROXY_CONCEPTS, ("model", "endpoint"))
    return table.rename(columns=dict(zip(PROXY_CONCEPTS, RESPONSE_FIELDS, strict=True)))
