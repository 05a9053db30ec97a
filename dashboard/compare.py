"""Compare page: two or more runs or sweeps side by side (e.g. the runs `servescope compare`
made against vLLM, Ollama and llama.cpp), with each target's artifact manifest and the
differences that change the result highlighted, above the same figures report.html draws."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from servescope.analysis.compare import (
    MANIFEST_ROWS,
    differing_fields,
    manifest_mismatches,
    manifest_table,
    stops_scaling,
)
from servescope.analysis.host_use import HOST_HEAD, combine, host_cells, run_host_use
from servescope.analysis.sweep import curve
from servescope.core.store import Store
from servescope.dashboard.figures import redact_urls
from servescope.dashboard.figures_compare import all_figures

EMPTY_STATE = (
    "Nothing to compare yet: the store needs two runs or sweeps. Run "
    "`servescope compare scenarios/chat.yaml --target a=vllm:URL --target b=ollama:URL "
    "--concurrency 1,4` to measure two runtimes under the same workload."
)
DIFF_COLOR = "background-color: #fde2e1"


def run_level(run: dict[str, Any]) -> float:
    """A single run's place on the x axis: its peak concurrency (closed loop), else 1."""
    stages = (run.get("scenario") or {}).get("stages") or []
    return float(max((s.get("concurrency") or 0 for s in stages), default=0) or 1)


def _level_summary(store: Store, run_id: int, level: float, s: dict[str, Any]
                   ) -> dict[str, Any]:
    keep = ("requests_ok", "output_tokens_per_s", "ttft_ms", "itl_ms", "e2e_ms")
    return {"level": level, **{k: s.get(k) for k in keep},
            "server_split": (s.get("server") or {}).get("per_request"),
            "host_use": run_host_use(store, run_id)}


def _host_use(summaries: list[dict[str, Any]]) -> dict[str, Any] | None:
    uses = [s["host_use"] for s in summaries if s.get("host_use")]
    return combine(uses) if uses else None


def run_target(store: Store, run: dict[str, Any]) -> dict[str, Any]:
    manifest = store.run_manifest(run["id"]) or {}
    level, summary = run_level(run), run.get("summary") or {}
    summaries = [_level_summary(store, run["id"], level, summary)] if summary else []
    return {"name": f"run {run['id']} ({manifest.get('runtime') or '?'})",
            "url": redact_urls(run.get("target_url") or ""), "manifest": manifest,
            "curve": curve([level], [summary]) if summary else [],
            "summaries": summaries, "host_use": _host_use(summaries)}


def sweep_target(store: Store, sweep: dict[str, Any], runs: list[dict[str, Any]]
                 ) -> dict[str, Any]:
    mine = sorted((r for r in runs if r.get("sweep_id") == sweep["id"]), key=lambda r: r["id"])
    manifest = (store.run_manifest(mine[0]["id"]) if mine else None) or {}
    rows = (sweep.get("result") or {}).get("curve") or []
    summaries = [_level_summary(store, r["id"], row["level"], r.get("summary") or {})
                 for row, r in zip(rows, mine, strict=False)]
    return {"name": f"sweep {sweep['id']} ({manifest.get('runtime') or '?'})",
            "url": redact_urls(sweep.get("target_url") or ""), "manifest": manifest,
            "curve": rows, "summaries": summaries, "host_use": _host_use(summaries)}


def render(store: Store) -> None:
    st.title("Compare")
    runs = store.runs()
    sweeps = store.sweeps()
    what = st.radio("Compare", ["sweeps", "runs"], horizontal=True,
                    index=0 if len(sweeps) >= 2 else 1)
    if what == "sweeps":
        by_id = {s["id"]: s for s in sweeps}
        label = lambda i: f"{i}: {by_id[i]['name']} · {redact_urls(by_id[i]['target_url'])}"  # noqa: E731
    else:
        by_id = {r["id"]: r for r in runs}
        label = lambda i: f"{i}: {by_id[i]['name']} · {redact_urls(by_id[i]['target_url'])}"  # noqa: E731
    if len(by_id) < 2:
        st.info(EMPTY_STATE)
        return
    picked = st.multiselect(f"Pick two or more {what}", list(by_id), default=list(by_id)[:2],
                            format_func=label)
    if len(picked) < 2:
        st.info(f"Pick at least two {what}.")
        return
    targets = [sweep_target(store, by_id[i], runs) if what == "sweeps"
               else run_target(store, by_id[i]) for i in picked]
    manifests = {t["name"]: t["manifest"] for t in targets}
    warnings = manifest_mismatches(manifests)
    for w in warnings:
        (st.warning if w["kind"] == "differs" else st.info)(w["message"])
    if not warnings:
        st.success("The manifests agree on everything that changes the result.")
    marked = {n for w in warnings if w["kind"] == "differs" for n in w["targets"]}
    _manifest_table(manifests)
    if what == "sweeps":
        for t in targets:
            st.caption(f"{t['name']}: {stops_scaling(t['curve'])['text']}")
    for fig in all_figures(targets, "concurrency", marked):
        st.plotly_chart(fig, use_container_width=True)
    _host_table(targets)


def _host_table(targets: list[dict[str, Any]]) -> None:
    """CPU, memory and GPU use per target over its levels (analysis/host_use.py)."""
    st.subheader("Host use: CPU, memory, GPU")
    rows = {t["name"]: host_cells(t.get("host_use")) for t in targets}
    st.table(pd.DataFrame(list(rows.values()), index=list(rows), columns=HOST_HEAD))
    st.caption("Over each target's load windows, from the host collector (psutil, NVML): "
               "`servescope compare` runs it; a dash where no host samples were stored.")


def _manifest_table(manifests: dict[str, dict[str, Any]]) -> None:
    st.subheader("Artifact manifests")
    if not any(manifests.values()):
        st.info("These runs were stored without a manifest (made by an older servescope).")
    rows = manifest_table(manifests)
    frame = pd.DataFrame([r[1:-1] for r in rows], index=[r[0] for r in rows],
                         columns=list(manifests))
    diff = {label for key, label in MANIFEST_ROWS if key in differing_fields(manifests)}
    styled = frame.style.apply(
        lambda row: [DIFF_COLOR if row.name in diff else ""] * len(row), axis=1)
    st.table(styled)  # an HTML table: every value readable, differing rows colored
    st.caption("Rows in red differ between the targets.")
