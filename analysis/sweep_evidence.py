"""What a stored sweep shows about the server's limits, level by level: the client's figures
(throughput, latency percentiles, goodput under the sweep's SLOs) beside the server's own
series inside each level's window (requests running and waiting, KV use, preemptions) and,
where the server gave an account of each request, the share of its time spent queued.

The advisor (capacity/advise.py) reads this plain, JSON-able dict; `servescope advise` and
the Capacity page show it. Reads the store (like analysis/join.py); nothing else.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from servescope.analysis.join import run_records, run_window, same_server
from servescope.analysis.promql import increase
from servescope.analysis.series import gauge_series, kv_usage_series
from servescope.analysis.sweep import analyze
from servescope.core.store import Store, StoreError

# Each runtime's concurrency knob (what caps the sequences it runs at once).
KNOBS = {"vllm": "max_num_seqs", "sglang": "max_running_requests",
         "ollama": "OLLAMA_NUM_PARALLEL", "llamacpp": "--parallel"}
SERIES = ["running", "waiting", "kv_usage", "kv_free_tokens", "kv_capacity_tokens",
          "preemptions_total"]
PERCENTILES = ("p50", "p90", "p95", "p99", "mean")


def _pick(d: dict[str, Any] | None) -> dict[str, float | None]:
    d = d or {}
    return {k: d.get(k) for k in PERCENTILES}


def _stats(series: Any) -> tuple[float | None, float | None]:
    if series.empty:
        return None, None
    return float(series["value"].max()), float(series["value"].mean())


def _server_target(store: Store, url: str) -> dict[str, Any] | None:
    """The collected target on the sweep's host:port (the one with samples, if several)."""
    found = [t for t in store.targets() if same_server(t["url"], url)]
    return found[0] if found else None


def _level_series(store: Store, target: dict[str, Any] | None,
                  run: dict[str, Any]) -> dict[str, Any] | None:
    """The server's gauges while the level's requests were in flight (max and mean), and
    the preemptions over its padded window (a counter needs the scrapes bracketing it)."""
    if target is None:
        return None
    win = run_window(store, run)
    df = store.samples(target["id"], SERIES, since=win.since, until=win.until)
    if df.empty:
        return None
    lo = win.first_send if win.first_send is not None else win.since
    hi = win.last_end if win.last_end is not None else win.until
    busy = df[(df["ts"] >= lo) & (df["ts"] <= hi)]
    if busy.empty:  # a level shorter than one scrape interval: the padded window
        busy = df
    out: dict[str, Any] = {"scrapes": int(busy["ts"].nunique())}
    for concept in ("running", "waiting"):
        out[f"{concept}_max"], out[f"{concept}_mean"] = _stats(gauge_series(busy, concept))
    out["kv_usage_max"], out["kv_usage_mean"] = _stats(kv_usage_series(busy))
    pre = gauge_series(df, "preemptions_total")
    out["preemptions"] = (increase(list(zip(pre["ts"], pre["value"], strict=True)))
                          if not pre.empty else None)
    cap = gauge_series(df, "kv_capacity_tokens")
    out["kv_capacity_tokens"] = int(cap["value"].iloc[-1]) if not cap.empty else None
    return out


def _phases(summary: dict[str, Any]) -> dict[str, Any]:
    """Queue share of the server's time per request: from the per-request account (spans,
    timings) where there is one, else the window's histogram means."""
    server = summary.get("server") or {}
    per = server.get("per_request") or {}
    queue = (per.get("queue_ms") or {}).get("mean")
    e2e = (per.get("server_e2e_ms") or {}).get("mean")
    source = "per request" if queue is not None else None
    if queue is None:
        queue, e2e = server.get("queue_ms_mean"), server.get("e2e_ms_mean")
        source = "window histograms" if queue is not None else None
    prefill = (per.get("prefill_ms") or {}).get("mean", server.get("prefill_ms_mean"))
    share = queue / e2e if queue is not None and e2e else None
    return {"queue_ms_mean": queue, "prefill_ms_mean": prefill, "server_e2e_ms_mean": e2e,
            "queue_share": share, "phases_from": source}


def _lengths(store: Store, run: dict[str, Any]) -> dict[str, float | None]:
    """Mean and p95 of the successful requests' prompt and prompt + output tokens (the
    KV a request holds at its end), from the stored records."""
    ok = [r for r in run_records(store, run) if r.ok]
    prompts = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    outputs = [r.output_tokens for r in ok if r.output_tokens is not None]
    totals = [(r.prompt_tokens or 0) + (r.output_tokens or 0) for r in ok]

    def p95(v: list[int]) -> float | None:
        return float(np.percentile(v, 95)) if v else None

    return {"prompt_tokens_mean": float(np.mean(prompts)) if prompts else None,
            "prompt_tokens_p95": p95(prompts),
            "output_tokens_mean": float(np.mean(outputs)) if outputs else None,
            "total_tokens_p95": p95(totals)}


def _level(store: Store, target: dict[str, Any] | None, level: float,
           run: dict[str, Any]) -> dict[str, Any]:
    s = run.get("summary") or {}
    g = s.get("goodput") or {}
    slos = s.get("slos") or []
    client = s.get("client") or {}
    lengths = _lengths(store, run)
    return {
        "level": level, "run_id": run["id"], "status": run.get("status"),
        "requests_ok": s.get("requests_ok"), "requests_failed": s.get("requests_failed"),
        "output_tokens_per_s": s.get("output_tokens_per_s"),
        "requests_per_s": s.get("requests_per_s"),
        "goodput_per_s": g.get("requests_per_s"), "goodput_ratio": g.get("ratio"),
        "ttft_ms": _pick(s.get("ttft_ms")), "itl_ms": _pick(s.get("itl_ms")),
        "e2e_ms": _pick(s.get("e2e_ms")), "tpot_ms": _pick(s.get("tpot_ms")),
        "slos": [{k: r.get(k) for k in ("metric", "stat", "target_ms", "observed_ms", "met")}
                 for r in slos],
        "slos_met": all(r["met"] for r in slos) if slos else None,
        "client_limited": bool(client.get("limited_by_client")) if client else None,
        **lengths,
        "server": _level_series(store, target, run),
        "phases": _phases(s),
    }


def _knob(runtime: str | None, runs: list[dict[str, Any]],
          manifests: list[dict[str, Any] | None], settings: dict[str, Any]) -> dict[str, Any]:
    """The concurrency knob's value during the sweep, if anything recorded it: the sweep's
    settings (`servescope tune` records the value it started the server with), the run's
    target metadata (llama.cpp's /props says total_slots), else the artifact manifest."""
    name = KNOBS.get(runtime or "")
    if settings.get("value") is not None:
        return {"name": settings.get("knob") or name, "value": int(settings["value"]),
                "source": settings.get("source") or "the sweep's settings"}
    for run in runs:
        target = run.get("target") or {}
        for key, source in (("max_num_seqs", "the run's target (as started)"),
                            ("num_parallel", "the run's target (as started)"),
                            ("total_slots", "llama.cpp /props total_slots")):
            if target.get(key) is not None:
                return {"name": name, "value": int(target[key]), "source": source}
    for m in manifests:
        if m and m.get("concurrency_value") is not None:
            return {"name": name, "value": int(m["concurrency_value"]),
                    "source": "the run's artifact manifest"}
    return {"name": name, "value": None, "source": None}


def host_gpu_names(store: Store, since: float | None = None,
                   until: float | None = None) -> list[str]:
    """The GPU names (NVML's) the host collector saw in [since, until], each once."""
    names: dict[str, None] = {}
    for target in store.targets():
        if target["runtime"] != "host":
            continue
        df = store.samples(target["id"], ["gpu_memory_total_bytes"], since=since, until=until)
        for labels in df["labels"] if not df.empty else []:
            if (labels or {}).get("name"):
                names[labels["name"]] = None
    return list(names)


def evidence(store: Store, sweep_id: int) -> dict[str, Any]:
    """The evidence of sweep `sweep_id` as a JSON-able dict (StoreError: no such sweep).

    Keys: sweep_id, name, scenario, kind ("concurrency" or "rate"), status, target_url,
    runtime (vllm, ollama, llamacpp ... or None), target (the collected target's name or
    None), model, knob {name, value, source} (the concurrency knob and its value if
    known), kv_capacity_tokens (from the manifest or the series), model_path (the served
    folder, from the manifest), dtype (as served, where `servescope tune` recorded it in
    the sweep's result `settings`), gpu_names (NVML's, from the host collector), slos
    (the scenario's {metric: {stat: ms}}), saturation_level, max_level_meeting_slos, and
    levels: one dict per measured level, in order, with level, run_id, status,
    requests_ok, requests_failed, output_tokens_per_s, requests_per_s, goodput_per_s,
    goodput_ratio, ttft_ms / itl_ms / e2e_ms / tpot_ms ({p50, p90, p95, p99, mean}),
    slos (rows with metric, stat, target_ms, observed_ms, met), slos_met,
    client_limited, prompt_tokens_mean, prompt_tokens_p95, output_tokens_mean,
    total_tokens_p95 (prompt + output), server (None without collected series, else
    scrapes, running_max/_mean, waiting_max/_mean, kv_usage_max/_mean (0-1),
    preemptions, kv_capacity_tokens) and phases (queue_ms_mean, prefill_ms_mean,
    server_e2e_ms_mean, queue_share (0-1), phases_from: "per request", "window
    histograms" or None)."""
    sweep = next((s for s in store.sweeps() if s["id"] == sweep_id), None)
    if sweep is None:
        raise StoreError(f"no sweep {sweep_id} in store {store.path}")
    settings = (sweep.get("result") or {}).get("settings") or {}
    runs = sorted((r for r in store.runs() if r.get("sweep_id") == sweep_id),
                  key=lambda r: r["started_at"])
    levels = list(sweep["levels"])[:len(runs)]
    target = _server_target(store, sweep["target_url"])
    manifests = [store.run_manifest(r["id"]) for r in runs]
    runtime = target["runtime"] if target and target["runtime"] != "auto" else None
    runtime = runtime or next((m["runtime"] for m in manifests if m and m.get("runtime")), None)
    rows = [_level(store, target, lvl, run) for lvl, run in zip(levels, runs, strict=False)]
    kv_cap = next((m["kv_capacity_tokens"] for m in manifests
                   if m and m.get("kv_capacity_tokens")), None)
    kv_cap = kv_cap or next((r["server"]["kv_capacity_tokens"] for r in rows
                             if r["server"] and r["server"]["kv_capacity_tokens"]), None)
    found = analyze([r["level"] for r in rows], [run.get("summary") or {} for run in runs])
    scenario = (runs[0].get("scenario") or {}) if runs else {}
    return {
        "sweep_id": sweep_id, "name": sweep["name"], "scenario": sweep["scenario_name"],
        "kind": sweep["kind"], "status": sweep["status"], "target_url": sweep["target_url"],
        "runtime": runtime, "target": target["name"] if target else None,
        "model": next(((r.get("summary") or {}).get("model") for r in runs
                       if (r.get("summary") or {}).get("model")), None),
        "knob": _knob(runtime, runs, manifests, settings),
        "kv_capacity_tokens": kv_cap,
        "model_path": next((m["model_path"] for m in manifests if m and m.get("model_path")),
                           None),
        "dtype": settings.get("dtype"),
        "gpu_names": host_gpu_names(store, runs[0]["started_at"] - 60,
                                    (runs[-1].get("ended_at") or runs[-1]["started_at"]) + 60)
        if runs else [],
        "slos": scenario.get("slos") or {},
        "saturation_level": found["saturation_level"],
        "max_level_meeting_slos": found["max_level_meeting_slos"],
        "levels": rows,
    }
