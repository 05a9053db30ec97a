"""Physics checks on a measured run: how much of the memory bandwidth decode achieved, and
whether a result beats the physical bound.

A decode step reads every weight it uses once and each running sequence's KV cache
(capacity.perf.decode_bound's accounting). Bytes per step / measured time per output
token is the bandwidth the server achieved; against the hardware's peak it is the
utilization. Above 100% the measurement beats physics: tokens came from somewhere
cheaper than a full decode step (prefix caching, speculative decoding emitting several
tokens per step), or the measurement is wrong. Pure: everything it reads is passed in.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from servescope.capacity import perf
from servescope.capacity.catalog import (
    Hardware,
    ModelInfo,
    UnknownName,
    hardware,
    kv_cache_dtype_bytes,
)
from servescope.capacity.catalog import model as catalog_model
from servescope.capacity.kv import dtype_bytes, linear_state_bytes
from servescope.capacity.model import LINEAR, ConfigError
from servescope.capacity.setup import resolve_dtype, resolve_format

BEATS_BOUND = ("faster than the memory bandwidth allows: prefix caching, speculative "
               "decoding, or a measurement error")
# NVML's device names -> the hardware catalog (first match wins; order matters).
GPU_NAMES = [
    (r"h100.*(pcie|nvl)", "h100-pcie"), (r"h100", "h100-sxm"), (r"h200|gh200", "h200"),
    (r"b200", "b200"), (r"a100.*80", "a100-80gb"), (r"a100", "a100-40gb"),
    (r"l40s", "l40s"), (r"\bl4\b", "l4"), (r"a10g", "a10g"),
    (r"rtx 5090", "rtx-5090"), (r"rtx 4090", "rtx-4090"), (r"rtx 3090", "rtx-3090"),
    (r"mi300x", "mi300x"),
]


def hardware_for_gpu_name(name: str) -> str | None:
    """The catalog name of a GPU as NVML names it ("NVIDIA H100 80GB HBM3" -> h100-sxm);
    None when the catalog has no such GPU."""
    low = name.lower()
    return next((key for pattern, key in GPU_NAMES if re.search(pattern, low)), None)


def cpu_hardware(bandwidth_gbs: float) -> Hardware:
    """This machine's CPU, with the memory bandwidth the user measured or looked up."""
    if bandwidth_gbs <= 0:
        raise ValueError(f"--bandwidth-gbs {bandwidth_gbs}: must be positive")
    return dataclasses.replace(hardware("cpu-server"), key="cpu",
                               name=f"this CPU ({bandwidth_gbs:g} GB/s as given)",
                               bandwidth_gbs=float(bandwidth_gbs), source="--bandwidth-gbs",
                               unverified=())


def decode_check(model: ModelInfo, hw: Hardware, time_per_token_ms: float, batch: float,
                 context: int, tp: int = 1, quantization: str | None = None,
                 kv_cache_dtype: str = "auto", dtype: str = "auto") -> dict[str, Any]:
    """Achieved bandwidth of decode: `batch` sequences of `context` tokens each took
    `time_per_token_ms` per step (each sequence gets one token per step). Returns
    {bytes_per_step, weight_bytes_per_step, kv_bytes_per_step, time_per_token_ms,
    bound_ms, achieved_gbs, peak_gbs, utilization (0-1, above 1 beats the bound),
    beats_bound, batch, context, hardware, line}."""
    spec = model.spec
    dt = resolve_dtype(spec, dtype)
    model_bytes = dtype_bytes(dt)
    fmt = resolve_format(model, quantization, dt)
    kv = kv_cache_dtype_bytes(kv_cache_dtype, model_bytes)
    state = linear_state_bytes(spec, model_bytes, model_bytes, tp) \
        if LINEAR in spec.layer_kinds else 0
    n = max(1, round(batch))
    bound = perf.decode_bound(spec, fmt, hw, tp, n, max(1, int(context)), kv, state,
                              model_bytes)
    total = bound.weight_bytes_read + bound.kv_bytes_read
    seconds = time_per_token_ms / 1000
    achieved = total / seconds / 1e9 if seconds > 0 else float("inf")
    peak = hw.bandwidth_gbs * tp
    util = achieved / peak
    beats = util > 1
    line = (f"decode read {total / 1e6:,.1f} MB per step ({n} sequence(s) of {int(context):,} "
            f"tokens) in {time_per_token_ms:.2f} ms: {achieved:,.1f} GB/s, {util:.0%} of "
            f"{hw.key}'s {peak:,.0f} GB/s (bound {bound.seconds_per_step * 1e3:.3f} ms)")
    if beats:
        line += f"; {BEATS_BOUND}"
    return {"bytes_per_step": total, "weight_bytes_per_step": bound.weight_bytes_read,
            "kv_bytes_per_step": bound.kv_bytes_read, "time_per_token_ms": time_per_token_ms,
            "bound_ms": bound.seconds_per_step * 1e3, "achieved_gbs": achieved,
            "peak_gbs": peak, "utilization": util, "beats_bound": beats, "batch": n,
            "context": int(context), "hardware": hw.key, "line": line}


def summary_check(summary: dict[str, Any], model: ModelInfo, hw: Hardware,
                  batch: float | None = None, **kw: Any) -> dict[str, Any] | None:
    """decode_check of a run summary: time per token from its TPOT median (ITL's where no
    TPOT), the batch from the server's running requests (else `batch`, else 1), the
    context from the mean prompt plus half the mean output. None without a token time."""
    t = (summary.get("tpot_ms") or {}).get("p50") or (summary.get("itl_ms") or {}).get("p50")
    ok = summary.get("requests_ok") or 0
    if not t or not ok:
        return None
    if batch is None:
        server = summary.get("server") or {}
        batch = server.get("running_mean") or server.get("running_max") or 1
    prompt = (summary.get("prompt_tokens_total") or 0) / ok
    output = (summary.get("output_tokens_total") or 0) / ok
    return decode_check(model, hw, t, batch, round(prompt + output / 2), **kw)


def resolve(model: str | None = None, model_path: str | None = None, gpu: str | None = None,
            bandwidth_gbs: float | None = None, gpu_names: list[str] | tuple[str, ...] = ()
            ) -> tuple[ModelInfo | None, Hardware | None, list[str]]:
    """The model and hardware a check needs, from what is known: --model (a catalog name,
    config.json or folder), else the served folder when it is on this machine; --gpu, else
    --bandwidth-gbs (a CPU), else the GPU NVML named. Returns (model, hardware, why not)."""
    why: list[str] = []
    info = hw = None
    where = model or model_path
    if where:
        try:
            info = catalog_model(where)
        except (UnknownName, ConfigError) as exc:
            why.append(f"model {where}: {exc}")
    else:
        why.append("model unknown: give --model (a catalog name or a config.json)")
    if gpu:
        try:
            hw = hardware(gpu)
        except UnknownName as exc:
            why.append(str(exc))
    elif bandwidth_gbs:
        hw = cpu_hardware(bandwidth_gbs)
    else:
        keys = [k for n in gpu_names if (k := hardware_for_gpu_name(n))]
        if keys:
            hw = hardware(keys[0])
        else:
            why.append("hardware unknown: give --gpu NAME, or --bandwidth-gbs for a CPU"
                       + (f" (NVML named {', '.join(gpu_names)}: not in the catalog)"
                          if gpu_names else ""))
    return info, hw, why


def evidence_checks(ev: dict[str, Any], model: ModelInfo, hw: Hardware, tp: int = 1,
                    quantization: str | None = None, kv_cache_dtype: str = "auto",
                    dtype: str | None = None) -> list[dict[str, Any]]:
    """decode_check of each level of a sweep's evidence (analysis.sweep_evidence): the
    time per token from its TPOT median (ITL's where none), the batch from the server's
    mean running requests (else the users the knob lets in), the context from the mean
    prompt plus half the mean output. One dict per level with a token time: `level` plus
    decode_check's keys."""
    knob = (ev.get("knob") or {}).get("value")
    out = []
    for lv in ev.get("levels") or []:
        t = (lv.get("tpot_ms") or {}).get("p50") or (lv.get("itl_ms") or {}).get("p50")
        if not t or not lv.get("requests_ok"):
            continue
        batch = (lv.get("server") or {}).get("running_mean")
        if batch is None:
            batch = min(lv["level"], knob) if knob else lv["level"]
        context = (lv.get("prompt_tokens_mean") or 0) + (lv.get("output_tokens_mean") or 0) / 2
        check = decode_check(model, hw, t, batch, max(1, round(context)), tp=tp,
                             quantization=quantization, kv_cache_dtype=kv_cache_dtype,
                             dtype=dtype or ev.get("dtype") or "auto")
        out.append({"level": lv["level"], **check})
    return out
