"""Capacity page: how much more a live server holds (KV headroom in tokens and in requests
of the current mean length), what the advisor reads from a sweep (what to set, and why),
and a what-if planner (GPU, model, quantization, KV dtype, max_num_seqs, workload ->
headroom, concurrency, GPUs needed, latency bounds). The simulator's parts
(dashboard/capacity_sim.py), when it is installed: the what-if's load curve (throughput,
TTFT and ITL by users on the planned setup) and a fourth section, predicted against measured
for a sweep.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from servescope.capacity import catalog
from servescope.capacity.plan import PlanError, PlanInput, Workload, plan, setup
from servescope.core.concepts import HOST_RUNTIME, OLLAMA, OLLAMA_PROXY_RUNTIME, capacity_tokens
from servescope.core.store import Store
from servescope.dashboard import figures, figures_capacity
from servescope.dashboard.figures import redact_urls
from servescope.dashboard.live import TIME_RANGES

NO_TARGETS = ("No servers collected yet: start `servescope collect --target NAME=URL` against "
              "one to see its KV headroom here.")
NO_SWEEPS = ("No sweeps in the store yet: `servescope sweep SCENARIO --target URL "
             "--concurrency 1,2,4,8` measures one level per run; the advisor reads it.")
DEFAULT_MODEL, DEFAULT_GPU = "llama-3.1-8b", "h100-sxm"


def render(store: Store) -> None:
    st.title("Capacity")
    st.header("KV headroom of live servers")
    live_headroom(store)
    st.header("Advice from a sweep")
    sweep_id = sweep_advice(store)
    st.header("What if")
    what_if(store)
    st.header("Predicted vs measured")
    predicted(store, sweep_id)


# -- a. live headroom ----------------------------------------------------------------------
def _servers(store: Store) -> list[dict[str, Any]]:
    return [t for t in store.targets() if t["runtime"] not in (HOST_RUNTIME, OLLAMA_PROXY_RUNTIME)]


def info_capacity(info: dict[str, Any]) -> float | None:
    """KV tokens the server's stored info reports (vLLM's cache configs, summed)."""
    caps = [capacity_tokens(c) for c in (info.get("cache_config") or {}).values()
            if isinstance(c, dict)]
    return float(sum(caps)) if caps and None not in caps else None  # type: ignore[arg-type]


def live_headroom(store: Store) -> None:
    targets = _servers(store)
    if not targets:
        st.info(NO_TARGETS)
        return
    by_name = {t["name"]: t for t in targets}
    left, right = st.columns([3, 2], vertical_alignment="bottom")
    name = left.selectbox("Server", list(by_name), key="capacity-target")
    label = right.segmented_control("Range", list(TIME_RANGES), default="last 15 min",
                                    required=True, key="capacity-range")
    target = by_name[name]
    span = TIME_RANGES[label]
    since = None if span is None else time.time() - span
    st.caption(f"{target['runtime']} at {redact_urls(target['url'])}")
    if target["runtime"] == OLLAMA:
        st.info("Ollama reports no KV use. Its KV cache is num_ctx x OLLAMA_NUM_PARALLEL "
                "tokens: `servescope plan --model URL --gpu G --num-parallel N` reads num_ctx "
                "and the model from the server.")
        return
    df = store.samples(target["id"], figures_capacity.HEADROOM_CONCEPTS, since=since)
    if df.empty:
        st.info("No KV samples from this server in the range: pick a longer one, or check "
                "that `servescope collect` runs against it.")
        return
    h = figures_capacity.headroom(df, info_capacity(target.get("info") or {}))
    cols = st.columns(5)
    cols[0].metric("KV capacity (tokens)", _n(h.capacity))
    cols[1].metric("KV used now", "unknown" if h.usage is None else f"{h.usage:.1%}")
    cols[2].metric("Headroom (tokens)", _n(h.free))
    cols[3].metric("Mean tokens per request", _n(h.mean_tokens),
                   help="prompt + output tokens per request finished in the range "
                        "(the servers' token and request counters)")
    cols[4].metric("Headroom (requests)", _n(h.requests, floor=True), help=h.requests_from)
    st.plotly_chart(figures_capacity.headroom_figure(h), key="capacity-headroom",
                    config=figures.PLOTLY_CONFIG)
    st.caption(f"Requests that fit: {h.requests_from}. Free tokens are capacity x (1 - KV "
               "usage) unless the server counts them (llama.cpp's slots).")


def _n(v: float | None, floor: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "unknown"
    return f"{math.floor(v):,}" if floor else f"{v:,.0f}"


# -- b. the advisor ------------------------------------------------------------------------
def sweep_advice(store: Store) -> int | None:
    """The advisor's reading of a chosen sweep; returns the sweep's id (None: no sweep)."""
    sweeps = store.sweeps()
    if not sweeps:
        st.info(NO_SWEEPS)
        return None
    by_id = {s["id"]: s for s in sweeps}
    sweep_id = st.selectbox("Sweep", list(by_id), key="capacity-sweep",
                            format_func=lambda i: f"#{i} {by_id[i]['name']} "
                            f"({by_id[i]['status']})")
    try:
        from servescope.analysis.sweep_evidence import evidence
        from servescope.capacity.advise import advise
    except ImportError as exc:
        st.caption(f"The advisor is not installed here ({exc}).")
        return sweep_id
    ev = evidence(store, sweep_id)
    advice = advise(ev)
    kind = ev.get("kind") or "concurrency"
    knob = advice.get("knob") or "the concurrency knob"
    cols = st.columns(4)
    cols[0].metric("Limit", advice.get("limit") or "none reached",
                   help="queue: the concurrency knob; kv: KV memory; latency: the SLOs cap "
                        "the batch; prefill; compute; client: the load generator")
    cols[1].metric(f"{knob} now", "unknown" if advice.get("current") is None
                   else f"{advice['current']}")
    cols[2].metric("Measure next", "-" if advice.get("next_candidate") is None
                   else f"{advice['next_candidate']}")
    cols[3].metric("KV capacity in the sweep", _n(ev.get("kv_capacity_tokens")))
    recs = advice.get("recommendations") or []
    for rec in recs:
        st.success(f"**{rec['knob']}** -> **{rec['value']}** "
                   f"(now {'unknown' if rec.get('current') is None else rec['current']}): "
                   f"{rec['reason']}")
    if not recs:
        st.info("No change recommended from this sweep.")
    for note in advice.get("notes") or []:
        st.caption(note)
    frame = figures_capacity.evidence_frame(ev)
    marks: dict[str, float | None] = {}
    if kind == "concurrency":  # the knob counts sequences, like the level
        marks = {f"{knob} now": advice.get("current"),
                 "recommended": advice.get("next_candidate")}
    left, right = st.columns(2)
    left.plotly_chart(figures_capacity.evidence_throughput_figure(frame, kind, marks),
                      key="capacity-evidence-throughput", config=figures.PLOTLY_CONFIG)
    right.plotly_chart(figures_capacity.evidence_server_figure(frame, kind, marks),
                       key="capacity-evidence-server", config=figures.PLOTLY_CONFIG)
    with st.expander("Evidence per level"):
        st.dataframe(frame, hide_index=True)
    return sweep_id


# -- c. what-if ----------------------------------------------------------------------------
def _workload(store: Store, key: str) -> tuple[Workload, list[tuple[int, int]]] | None:
    """The workload's lengths (the planner's summary of them) and the (prompt, output)
    pairs themselves, for the simulator."""
    how = st.radio("Workload", ["fixed lengths", "a stored run's lengths"], horizontal=True,
                   key=f"{key}-how")
    if how == "fixed lengths":
        left, right = st.columns(2)
        prompt = int(left.number_input("Prompt tokens", 1, 1_000_000, 1000, key=f"{key}-prompt"))
        output = int(right.number_input("Output tokens", 1, 1_000_000, 200, key=f"{key}-output"))
        return Workload.fixed(prompt, output), [(prompt, output)]
    runs = [r for r in store.runs() if r.get("status") != "running"]
    if not runs:
        st.caption("No finished run in the store: give fixed lengths.")
        return None
    by_id = {r["id"]: r for r in runs}
    run_id = st.selectbox("Run", list(reversed(list(by_id))), key=f"{key}-run",
                          format_func=lambda i: f"#{i} {by_id[i]['name']}")
    pairs = [(r.prompt_tokens, r.output_tokens) for r in store.requests(run_id)
             if r.prompt_tokens is not None and r.output_tokens is not None]
    if not pairs:
        st.caption("That run recorded no token counts: give fixed lengths.")
        return None
    return (Workload.from_samples(pairs, f"run #{run_id} ({len(pairs):,} requests measured)"),
            pairs)


def _choice(label: str, options: list[str], default: str, key: str, where: Any = st) -> str:
    return where.selectbox(label, options, index=options.index(default)
                           if default in options else 0, key=key)


def what_if(store: Store) -> None:
    models, gpus = sorted(catalog.models()), list(catalog.hardware_table())
    formats = ["checkpoint's", *catalog.quantization_table()["weights"]]
    c = st.columns(4)
    model = _choice("Model", models, DEFAULT_MODEL, "whatif-model", c[0])
    gpu = _choice("GPU", gpus, DEFAULT_GPU, "whatif-gpu", c[1])
    count = int(c[2].number_input("GPUs", 1, 64, 1, key="whatif-gpus"))
    quant = _choice("Quantization", formats, "checkpoint's", "whatif-quant", c[3])
    c = st.columns(4)
    kv_dtype = c[0].selectbox("KV cache dtype", ["auto", "fp8"], key="whatif-kv")
    seqs = int(c[1].number_input("max_num_seqs (0: vLLM's default)", 0, 4096, 0,
                                 key="whatif-seqs"))
    length = int(c[2].number_input("max_model_len (0: the model's)", 0, 10_000_000, 0,
                                   key="whatif-len"))
    serve = int(c[3].number_input("Concurrency to serve (0: none)", 0, 1_000_000, 0,
                                  key="whatif-concurrency"))
    chosen = _workload(store, "whatif")
    work, lengths = chosen if chosen else (None, [])
    inp = PlanInput(model=catalog.model(model), hardware=catalog.hardware(gpu), gpus=count,
                    quantization=None if quant == "checkpoint's" else quant,
                    kv_cache_dtype=kv_dtype, max_num_seqs=seqs or None,
                    max_model_len=length or None, workload=work, concurrency=serve or None)
    try:
        result = plan(inp)
    except PlanError as exc:
        st.error(str(exc))
        return
    tp = result["tensor_parallel"]
    s = setup(inp, tp)
    w = result["workload"]
    full = s.max_num_seqs * w["total_p95"]
    cols = st.columns(3)
    cols[0].metric("Planned KV capacity (tokens)", f"{result['kv_capacity_tokens']:,}",
                   help=result["vllm_log_line"])
    cols[1].metric(f"Headroom with {s.max_num_seqs} sequences (tokens)",
                   f"{result['kv_capacity_tokens'] - full:,}",
                   help=f"tokens left when max_num_seqs ({s.max_num_seqs}) sequences of the "
                        f"p95 length ({w['total_p95']:,}) run at once on one replica; below 0 "
                        "vLLM preempts (recomputes) sequences")
    cols[2].metric("Sequences that fit", f"{result['max_concurrent_sequences']:,}",
                   help="at the workload's p95 length, over all replicas")
    cols = st.columns(3)
    cols[0].metric("GPUs needed", "-" if result["gpus_needed"] is None
                   else f"{result['gpus_needed']}",
                   help="for the concurrency to serve (else: the fewest that fit)")
    decode_ms = result["decode"]["time_per_output_token_ms_min"]
    cols[1].metric("Decode bound (ms/token)", f"{decode_ms:g}",
                   help=f"at batch {result['decode']['batch']}: a physical lower bound")
    cols[2].metric("Prefill bound (ms)", f"{result['prefill']['time_to_first_token_ms_min']:g}",
                   help=f"for a {result['prefill']['prompt_tokens']:,}-token prompt: a "
                        "physical lower bound")
    st.caption(f"vLLM would log: {result['vllm_log_line']}. Set --max-num-seqs "
               f"{result['recommended_max_num_seqs']} --max-num-batched-tokens "
               f"{result['recommended_max_num_batched_tokens']}. Workload: {w['source']}.")
    left, right = st.columns(2)
    left.plotly_chart(figures_capacity.gpu_options_figure(gpu_options(inp), gpu),
                      key="whatif-gpus-figure", config=figures.PLOTLY_CONFIG)
    right.plotly_chart(figures_capacity.fit_curve_figure(
        fit_curve(s, result["max_model_len"]),
        {"max_num_seqs": s.max_num_seqs, "mean": w["total_mean"], "p95": w["total_p95"]}),
        key="whatif-fit-figure", config=figures.PLOTLY_CONFIG)
    with st.expander("Assumptions"):
        for line in result["assumptions"]:
            st.markdown(f"- {line}")
    try:
        from servescope.dashboard import capacity_sim
    except ImportError:
        return
    capacity_sim.render_load_curve(inp, tp, lengths, s.sequences_fitting(w["total_p95"]))


def gpu_options(inp: PlanInput) -> list[dict[str, Any]]:
    """The same plan on every GPU of the catalog (the same count)."""
    out = []
    for key in catalog.hardware_table():
        alt = dataclasses.replace(inp, hardware=catalog.hardware(key), assumptions=[])
        try:
            r = plan(alt)
            out.append({"gpu": key, "gpus": r["gpus"], "fits": True,
                        "sequences": r["max_concurrent_sequences"], "why": r["vllm_log_line"]})
        except PlanError as exc:
            out.append({"gpu": key, "gpus": inp.gpus or 1, "fits": False, "sequences": 0,
                        "why": str(exc)[:200]})
    return out


def fit_curve(s: Any, max_model_len: int, points: int = 40) -> pd.DataFrame:
    """Sequences one replica's KV cache holds, for requests of 64 tokens up to max_model_len."""
    tokens = sorted({int(t) for t in np.geomspace(64, max(128, max_model_len), points)})
    return pd.DataFrame({"tokens": tokens, "sequences": [s.sequences_fitting(t) for t in tokens]})


# -- d. predicted vs measured (the simulator's) ---------------------------------------------
def predicted(store: Store, sweep_id: int | None) -> None:
    try:
        from servescope.dashboard import capacity_sim
    except ImportError:
        st.caption("The simulator's prediction for a sweep is not installed in this build "
                   "(dashboard/capacity_sim.py).")
        return
    if sweep_id is None:
        st.caption("Choose a sweep above to compare the simulator's prediction with it.")
        return
    capacity_sim.render_predicted(store, sweep_id)
