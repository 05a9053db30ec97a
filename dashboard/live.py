"""Live page: what each collected server is doing now, from the store's samples.

One card per target: a vLLM-style server (running/waiting, KV cache, tokens/s, server
latency), this host (dashboard.live_host), an Ollama or the Ollama proxy
(dashboard.live_ollama).
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import streamlit as st

from servescope.analysis.series import (
    counter_rate_series,
    gauge_series,
    histogram_quantile_series,
    kv_usage_series,
)
from servescope.core.concepts import (
    HOST_RUNTIME,
    OLLAMA,
    OLLAMA_PROXY_RUNTIME,
    capacity_tokens,
    names,
)
from servescope.core.store import Store
from servescope.dashboard import figures, live_host, live_ollama
from servescope.dashboard.figures import ago, local_clock, redact_urls
from servescope.dashboard.widgets import Chart, chart_grid, last_sample_caption

REFRESH_S = 5
TIME_RANGES: dict[str, float | None] = {
    "last 5 min": 300.0,
    "last 15 min": 900.0,
    "last 1 h": 3600.0,
    "all": None,
}
QUANTILE_WINDOW_S = 30.0
EMPTY_STATE = (
    "No targets in the store yet. Start a collector against a running server, e.g. "
    "`servescope collect --target local=vllm:http://127.0.0.1:8000`, or run `make run` "
    "to start a local server, the collector and a load run together."
)
NO_SAMPLES = (
    "No samples from this target in the selected time range. Pick a longer "
    "range, or check that `servescope collect` is running against it."
)
LIVE_CONCEPTS = names("server", live=True)  # what _server_charts draws, from the table


def render(store: Store) -> None:
    st.title("Live")
    targets = store.targets()
    if not targets:
        st.info(EMPTY_STATE)
        return
    names = [t["name"] for t in targets]
    left, middle, right = st.columns([4, 4, 2], vertical_alignment="bottom")
    chosen = left.multiselect("Targets", names, default=names)
    range_label = middle.segmented_control(
        "Time range", list(TIME_RANGES), default="last 15 min", required=True
    )
    auto = right.toggle(f"Auto-refresh every {REFRESH_S} s", value=True)
    if not chosen:
        st.info("Pick at least one target.")
        return
    show = st.fragment(_render_targets, run_every=REFRESH_S if auto else None)
    show(store, chosen, TIME_RANGES[range_label])


def _render_targets(store: Store, names: list[str], range_s: float | None) -> None:
    # Re-read targets on every refresh: status and info change while we watch.
    by_name = {t["name"]: t for t in store.targets()}
    now = time.time()
    since = None if range_s is None else now - range_s
    for name in names:
        if name in by_name:
            _render_target(store, by_name[name], since)
    st.caption(f"Updated {local_clock(now)}.")


def _render_target(store: Store, target: dict[str, Any], since: float | None) -> None:
    with st.container(border=True):
        _target_header(target)
        runtime = target["runtime"]
        if runtime == HOST_RUNTIME:
            _host_card(store, target, since)
        elif runtime == OLLAMA:
            live_ollama.ollama_card(store, target, since)
        elif runtime == OLLAMA_PROXY_RUNTIME:
            live_ollama.proxy_card(store, target, since)
        else:
            _server_card(store, target, since)


def _server_card(store: Store, target: dict[str, Any], since: float | None) -> None:
    _server_facts(target.get("info") or {})
    df = store.samples(target["id"], concepts=LIVE_CONCEPTS, since=since)
    if df.empty:
        st.info(NO_SAMPLES)
        return
    last_sample_caption(df)
    chart_grid(f"live-{target['id']}", _server_charts(df))


def _host_card(store: Store, target: dict[str, Any], since: float | None) -> None:
    info = target.get("info") or {}
    df = store.samples(target["id"], concepts=live_host.HOST_CONCEPTS, since=since)
    if df.empty:
        st.info(NO_SAMPLES)
        return
    live_host.host_facts(info, df)
    last_sample_caption(df)
    chart_grid(f"live-{target['id']}", live_host.host_charts(df))
    if not df["concept"].str.startswith("gpu_").any():
        st.caption(live_host.no_gpu_note(info))


def _server_charts(df: pd.DataFrame) -> list[Chart]:
    figs = [
        figures.running_waiting_figure(gauge_series(df, "running"), gauge_series(df, "waiting")),
        figures.kv_usage_figure(kv_usage_series(df)),
        figures.kv_headroom_figure(
            gauge_series(df, "kv_free_tokens"), gauge_series(df, "kv_capacity_tokens")
        ),
        figures.throughput_figure(
            counter_rate_series(df, "prompt_tokens_total"),
            counter_rate_series(df, "generation_tokens_total"),
        ),
        figures.quantile_figure(
            histogram_quantile_series(df, "ttft_seconds", window_s=QUANTILE_WINDOW_S),
            f"TTFT (server, {QUANTILE_WINDOW_S:.0f} s window)",
        ),
        figures.quantile_figure(
            histogram_quantile_series(df, "itl_seconds", window_s=QUANTILE_WINDOW_S),
            f"ITL (server, {QUANTILE_WINDOW_S:.0f} s window)",
        ),
    ]
    return [(fig, None) for fig in figs]


def _target_header(target: dict[str, Any]) -> None:
    title_col, status_col = st.columns([3, 2], vertical_alignment="center")
    title_col.subheader(f"{target['name']}")
    runtime = target["runtime"]
    if runtime == HOST_RUNTIME:
        title_col.caption("this machine: CPU, memory, network, serving processes and GPUs")
    elif runtime == OLLAMA_PROXY_RUNTIME:
        title_col.caption(
            f"servescope proxy in front of the Ollama at {redact_urls(target['url'])}: "
            "each response's phases, from Ollama's own timings"
        )
        return  # a proxy is not scraped: it has no up/down status
    else:
        title_col.caption(f"{target['runtime']} at {redact_urls(target['url'])}")
        _simulated_badge(title_col, target)
    status, since = target.get("status"), target.get("status_since")
    when = f" since {local_clock(since)} ({ago(since)})" if since else ""
    if status == "up":
        status_col.badge(f"up{when}", icon=":material/check_circle:", color="green")
    elif status == "down":
        status_col.badge(f"down{when}", icon=":material/error:", color="red")
        if target.get("last_error"):
            status_col.caption(f"Last error: {redact_urls(target['last_error'])}")
    else:
        status_col.badge("never scraped", color="gray")


# -- a simulated engine (servescope sim-server) says so in its served model's name -----------
SIMULATED_MARK = "(simulated on "


def is_simulated(target: dict[str, Any]) -> bool:
    return SIMULATED_MARK in str((target.get("info") or {}).get("model") or "")


def _simulated_badge(col: Any, target: dict[str, Any]) -> None:
    if is_simulated(target):
        col.badge("simulated: every number comes from servescope's simulator, no real engine",
                  icon=":material/science:", color="violet")


def _server_facts(info: dict[str, Any]) -> None:
    caps = [c for c in (info.get("cache_config") or {}).values() if isinstance(c, dict)]
    if not info.get("model") and not caps:
        st.caption("No server info yet: it is read when the collector first reaches the target.")
        return
    facts = st.columns(4)
    facts[0].metric("Served model", info.get("model") or "unknown")
    facts[1].metric("max_model_len (tokens)", _count(info.get("max_model_len")))
    facts[2].metric("KV capacity (tokens)", _count(_kv_capacity_tokens(caps)))
    facts[3].metric("Engines", len(caps) or "unknown")


def _kv_capacity_tokens(cache_configs: list[dict[str, Any]]) -> int | None:
    """Summed over engines, from their cache-config labels; None when one is unknown."""
    caps = [capacity_tokens(labels) for labels in cache_configs]
    if any(c is None for c in caps):
        return None
    return int(sum(c for c in caps if c is not None)) or None


def _count(n: int | None) -> str:
    return f"{n:,}" if n else "unknown"
