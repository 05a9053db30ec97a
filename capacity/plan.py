"""`servescope plan`: weights, KV budget and capacity as vLLM would compute them for a model
on some GPUs, the concurrency the workload's real lengths fit, what to set, how many GPUs,
and the physical bounds on latency. Pure: everything it reads is passed in."""

from __future__ import annotations

import math
from typing import Any

from servescope.capacity import perf
from servescope.capacity.catalog import UnknownName, WeightFormat, weight_format
from servescope.capacity.kv import dtype_bytes, kv_bytes_per_token
from servescope.capacity.model import LINEAR
from servescope.capacity.setup import (
    TP_SIZES,
    PlanInput,
    Setup,
    Workload,
    setup,
    tp_choices,
)
from servescope.capacity.vllm_budget import GIB, scheduler_defaults

__all__ = ["PlanError", "PlanInput", "Setup", "Workload", "plan", "setup", "sizing"]


class PlanError(ValueError):
    """Bad or unsatisfiable input; `flag` is the command-line option at fault."""

    def __init__(self, message: str, flag: str) -> None:
        super().__init__(message)
        self.flag = flag


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _what_fits(inp: PlanInput, tp: int, fmt: WeightFormat) -> list[str]:
    """Suggestions for a setup that does not fit: more GPUs, a smaller format, a shorter
    max_model_len."""
    out = []
    spec = inp.model.spec
    for t in tp_choices(spec):
        if t > tp and setup(inp, t, fmt).fits:
            out.append(f"--gpus {t} (tensor parallel {t})")
            break
    for q in ("fp8", "awq"):
        alt = weight_format(q)
        if alt.bits < fmt.bits * (1 if fmt.applies_to == "all" else 0.99) \
                and setup(inp, tp, alt).fits:
            out.append(f"--quantization {q} on {tp} GPU{'s' if tp > 1 else ''}")
            break
    s = setup(inp, tp, fmt)
    if s.kv_budget > 0 and s.cap.num_blocks > 1:
        lo, hi = 1, s.max_model_len
        while lo < hi:  # the longest max_model_len whose one request fits
            mid = (lo + hi + 1) // 2
            if setup(inp, tp, fmt, max_model_len=mid).fits:
                lo = mid
            else:
                hi = mid - 1
        if lo > 1:
            out.append(f"--max-model-len {lo}")
    return out


def _check(inp: PlanInput, s: Setup) -> None:
    if s.fits:
        return
    hw, spec = inp.hardware, inp.model.spec
    where = f"{s.tp} x {hw.key}"
    fixes = _what_fits(inp, s.tp, s.fmt)
    would = f" Would fit: {'; or '.join(fixes)}." if fixes else \
        " Nothing tried fits (up to 16 GPUs, fp8, awq): try a larger GPU."
    if s.kv_budget <= 0:
        short = -s.kv_budget
        if hw.is_cpu and inp.kv_cache_space_gib is not None:
            msg = f"{spec.name} cannot be planned on {where}"
        else:
            usable = s.budget["requested"] - s.budget.get("activation_peak", 0) \
                - s.budget.get("non_torch", 0) - s.budget.get("cuda_graphs", 0)
            msg = (f"{spec.name} in {s.fmt.key} needs {_gib(s.weights)} of weights, "
                   f"{_gib(s.budget['weights'])} per GPU on {where}; each GPU offers "
                   f"{_gib(usable)} for weights and KV at --gpu-memory-utilization "
                   f"{inp.gpu_memory_utilization}: {_gib(short)} per GPU missing, before any "
                   "KV cache.")
        raise PlanError(msg + would, "--model")
    need = s.cap.blocks_per_request * s.layout.bytes_per_block
    raise PlanError(
        f"{spec.name} on {where} leaves {_gib(s.kv_budget)} per GPU for the KV cache, but one "
        f"request of --max-model-len {s.max_model_len} needs {_gib(need)}: vLLM would refuse "
        f"to start ({_gib(need - s.kv_budget)} missing).{would}", "--max-model-len")


# -- the plan --------------------------------------------------------------------------------
def _step_seconds(inp: PlanInput, s: Setup, batch: int, work: Workload) -> float:
    return perf.decode_bound(inp.model.spec, s.fmt, inp.hardware, s.tp, max(1, batch),
                             round(work.prompt_mean + work.output_mean / 2), s.kv_bytes,
                             s.state_bytes, dtype_bytes(s.dtype)).seconds_per_step


def _replica_rate(inp: PlanInput, s: Setup, batch: int, work: Workload) -> float:
    """Requests per second one replica can finish at most with `batch` sequences decoding
    together: each request costs its prefill plus its share of the batch's decode steps
    (prefill and decode take turns on the same GPUs)."""
    ttft = perf.prefill_bound(inp.model.spec, s.fmt, inp.hardware, s.tp,
                              max(1, round(work.prompt_mean))).seconds
    return 1 / (ttft + work.output_mean * _step_seconds(inp, s, batch, work) / batch)


def slo_batch(inp: PlanInput, s: Setup, work: Workload, slos: dict[str, dict[str, float]],
              most: int) -> tuple[int, str | None]:
    """The most sequences (up to `most`) one replica may decode together and still meet
    the ITL/TPOT SLOs at the physical bound on its step time; 0 when no batch does, or
    when the prefill bound alone breaks the TTFT SLO. Returns (batch, why it is capped)."""
    step_ms = min([t for m in ("itl_ms", "tpot_ms") for t in (slos.get(m) or {}).values()],
                  default=None)
    ttft_ms = min((slos.get("ttft_ms") or {}).values(), default=None)
    if ttft_ms is not None:
        prefill = perf.prefill_bound(inp.model.spec, s.fmt, inp.hardware, s.tp,
                                     max(1, round(work.prompt_mean))).seconds * 1e3
        if prefill > ttft_ms:
            return 0, (f"TTFT SLO {ttft_ms:g} ms < the prefill bound {prefill:.1f} ms on "
                       f"{s.tp} x {inp.hardware.key}")
    if step_ms is None:
        return most, None
    lo, hi = 0, most
    while lo < hi:  # the step time grows with the batch
        mid = (lo + hi + 1) // 2
        if _step_seconds(inp, s, mid, work) * 1e3 <= step_ms:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return 0, (f"ITL SLO {step_ms:g} ms < the decode bound "
                   f"{_step_seconds(inp, s, 1, work) * 1e3:.2f} ms of one sequence on "
                   f"{s.tp} x {inp.hardware.key}")
    return lo, (f"ITL SLO {step_ms:g} ms caps the batch at {lo}" if lo < most else None)


def _sizing(inp: PlanInput, work: Workload,
            slos: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """Fewest GPUs of this kind for the traffic: for each tensor-parallel size that fits
    the weights and one max_model_len request, the replicas needed for --concurrency at the
    workload's p95 length, or for --rate at the physical bounds (each replica running as
    many sequences as its KV holds, and no more than the latency SLOs allow at the bound
    on the step time); the size needing the fewest GPUs wins (the smaller on a tie). With
    --rate, the concurrency the traffic keeps in flight follows by Little's law: rate x
    (time to first token + output tokens x time per token). `output_tokens_per_s` is what
    the chosen GPUs serve: the traffic's, or one replica's at its full batch."""
    best: dict[str, Any] | None = None
    why_not: list[str] = []
    for t in tp_choices(inp.model.spec):
        s = setup(inp, t)
        if not s.fits:
            continue
        per_replica = max(1, min(s.sequences_fitting(work.total_p95), s.max_num_seqs))
        capped = None
        if slos:
            per_replica, capped = slo_batch(inp, s, work, slos, per_replica)
            if per_replica == 0:
                why_not.append(capped or "")
                continue
        needed = inp.concurrency
        replicas = math.ceil((needed or 1) / per_replica)
        if inp.rate:
            replicas = math.ceil(inp.rate / _replica_rate(inp, s, per_replica, work))
            ttft = perf.prefill_bound(inp.model.spec, s.fmt, inp.hardware, t,
                                      max(1, round(work.prompt_mean))).seconds
            c = 1.0
            for _ in range(30):  # converges: the batch per replica is capped
                batch = min(per_replica, math.ceil(c / replicas))
                c = inp.rate * (ttft + work.output_mean * _step_seconds(inp, s, batch, work))
            needed = max(1, math.ceil(c))
            served = inp.rate * work.output_mean
        else:
            batch = min(per_replica, math.ceil((needed or per_replica) / replicas))
            served = replicas * _replica_rate(inp, s, batch, work) * work.output_mean
        option = {"gpus_needed": t * replicas, "tensor_parallel": t, "replicas": replicas,
                  "sequences_per_replica": per_replica, "needed_concurrency": needed,
                  "output_tokens_per_s": served, "slo_cap": capped}
        if best is None or option["gpus_needed"] < best["gpus_needed"]:
            best = option
        if not (inp.rate or inp.concurrency):
            break  # no traffic given: the smallest size that fits
    return best or {"gpus_needed": None, "tensor_parallel": None, "replicas": None,
                    "sequences_per_replica": 0, "needed_concurrency": inp.concurrency,
                    "output_tokens_per_s": None,
                    "slo_cap": "; ".join(w for w in why_not if w) or None}


def sizing(inp: PlanInput, slos: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """GPUs of `inp.hardware`'s kind for the traffic under `slos` ({metric: {stat: ms}},
    as a scenario's), whatever tensor-parallel size it takes: gpus_needed (None: nothing
    up to 16 GPUs fits or meets the SLOs; slo_cap says why), tensor_parallel, replicas,
    sequences_per_replica, needed_concurrency, output_tokens_per_s, slo_cap."""
    first = setup(inp, 1)
    work = inp.workload or Workload(first.max_model_len, first.max_model_len, 0, 0,
                                    first.max_model_len, first.max_model_len,
                                    "no workload given: max_model_len")
    return _sizing(inp, work, slos)


def _next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def plan(inp: PlanInput, slos: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """The plan as a JSON-able dict (raises PlanError, naming the flag at fault); `slos`
    ({metric: {stat: ms}}) caps the batch per replica at the physical latency bounds."""
    spec, hw = inp.model.spec, inp.hardware
    if not 0 < inp.gpu_memory_utilization <= 1:
        raise PlanError(f"--gpu-memory-utilization {inp.gpu_memory_utilization} is not in "
                        "(0, 1]", "--gpu-memory-utilization")
    tp = inp.tp or inp.gpus or 1
    gpus = inp.gpus or tp
    if tp not in TP_SIZES or spec.num_heads % tp:
        raise PlanError(f"--tp {tp}: vLLM needs the {spec.num_heads} attention heads of "
                        f"{spec.name} to divide evenly (try {tp_choices(spec)})", "--tp")
    if gpus % tp:
        raise PlanError(f"--gpus {gpus} is not a multiple of --tp {tp}", "--gpus")
    try:
        s = setup(inp, tp)
    except UnknownName as exc:
        flag = "--quantization" if "quantization" in str(exc) else "--kv-cache-dtype"
        raise PlanError(str(exc), flag) from None
    except ValueError as exc:
        raise PlanError(str(exc), "--dtype") from None
    if inp.max_model_len and spec.max_position_embeddings \
            and inp.max_model_len > spec.max_position_embeddings:
        raise PlanError(f"--max-model-len {inp.max_model_len} exceeds {spec.name}'s "
                        f"max_position_embeddings {spec.max_position_embeddings}",
                        "--max-model-len")
    _check(inp, s)
    work = inp.workload or Workload(s.max_model_len, s.max_model_len, 0, 0, s.max_model_len,
                                    s.max_model_len, "no workload given: max_model_len")
    replicas = gpus // tp
    model_bytes = dtype_bytes(s.dtype)
    fit_p95 = s.sequences_fitting(work.total_p95)
    fit_mean = s.sequences_fitting(max(1, round(work.total_mean)))
    sizing = _sizing(inp, work, slos)
    needed = sizing.pop("needed_concurrency")
    # as many sequences as the KV pool holds at p95 length, within vLLM's default cap
    default_seqs = scheduler_defaults(hw.memory_bytes, hw.arch, hw.key, tp,
                                      s.max_model_len).max_num_seqs
    rec_seqs = max(1, min(fit_p95, default_seqs))
    rec_tokens = min(max(s.max_num_batched_tokens,
                         _next_pow2(min(work.prompt_p95, s.max_model_len))), 16384)
    batch = max(1, min(needed or rec_seqs, fit_p95 or 1))
    decode = perf.decode_bound(spec, s.fmt, hw, tp, batch,
                               round(work.prompt_mean + work.output_mean / 2), s.kv_bytes,
                               s.state_bytes, model_bytes)
    decode1 = perf.decode_bound(spec, s.fmt, hw, tp, 1,
                                round(work.prompt_mean + work.output_mean / 2), s.kv_bytes,
                                s.state_bytes, model_bytes)
    prefill = perf.prefill_bound(spec, s.fmt, hw, tp, max(1, work.prompt_p95))
    device = "CPU" if hw.is_cpu else "GPU"
    p = spec.params
    return {
        "model": {"name": spec.name, "source": inp.model.source,
                  "model_type": spec.model_type, "layers": spec.num_layers,
                  "layer_kinds": {k: spec.count(k) for k in sorted(set(spec.layer_kinds))},
                  "sliding_window": spec.sliding_window,
                  "parameters_total": p.total, "parameters_active": p.active,
                  "experts": spec.num_experts or None,
                  "experts_per_token": spec.experts_per_token or None},
        "hardware": {"name": hw.key, "description": hw.name, "memory_bytes": hw.memory_bytes,
                     "memory_from": hw.memory_from, "bandwidth_gbs": hw.bandwidth_gbs,
                     "bf16_tflops": hw.bf16_tflops, "fp8_tflops": hw.fp8_tflops,
                     "source": hw.source, "unverified": list(hw.unverified)},
        "gpus": gpus, "tensor_parallel": tp, "replicas": replicas,
        "quantization": s.fmt.key, "dtype": s.dtype, "kv_cache_dtype": inp.kv_cache_dtype,
        "weights_bytes": s.weights,
        "weights_bytes_per_gpu": s.budget["weights"],
        "kv_bytes_per_token": kv_bytes_per_token(spec, s.kv_bytes, tp),
        "kv_bytes_per_token_per_gpu": kv_bytes_per_token(spec, s.kv_bytes, tp) // tp,
        "linear_state_bytes_per_sequence": s.state_bytes * tp * spec.count(LINEAR),
        "kv_budget_bytes_per_gpu": s.kv_budget,
        "kv_budget": s.budget,
        "block_size": s.layout.block_size,
        "kv_groups": [{"kind": g.kind, "layers": g.layers, "page_bytes": g.page_bytes,
                       "window": g.window} for g in s.layout.groups],
        "bytes_per_block": s.layout.bytes_per_block,
        "num_blocks": s.cap.num_blocks,
        "max_model_len": s.max_model_len,
        "kv_capacity_tokens": s.cap.tokens,
        "vllm_max_concurrency": round(s.cap.max_concurrency, 2),
        "vllm_log_line": _log_line(s, device),
        "vllm_accounting": s.acct.why,
        "workload": {"source": work.source, "prompt_mean": round(work.prompt_mean, 1),
                     "prompt_p95": work.prompt_p95, "output_mean": round(work.output_mean, 1),
                     "output_p95": work.output_p95, "total_mean": round(work.total_mean, 1),
                     "total_p95": work.total_p95},
        "max_concurrent_sequences": fit_p95 * replicas,
        "max_concurrent_sequences_at_mean_length": fit_mean * replicas,
        "needed_concurrency": needed,
        "recommended_max_num_seqs": rec_seqs,
        "recommended_max_num_batched_tokens": rec_tokens,
        "gpus_needed": sizing["gpus_needed"],
        "sizing": sizing,
        "slos": slos or {},
        "decode": {"batch": batch, "context": decode.context,
                   "time_per_output_token_ms_min": round(decode.seconds_per_step * 1e3, 3),
                   "tokens_per_second_max": round(decode.tokens_per_second, 1),
                   "single_stream_time_per_token_ms_min":
                       round(decode1.seconds_per_step * 1e3, 3),
                   "bytes_read_per_step": decode.weight_bytes_read + decode.kv_bytes_read},
        "prefill": {"prompt_tokens": prefill.prompt, "tflops": prefill.tflops,
                    "time_to_first_token_ms_min": round(prefill.seconds * 1e3, 3)},
        "assumptions": _assumptions(inp, s),
    }


def _assumptions(inp: PlanInput, s: Setup) -> list[str]:
    hw = inp.hardware
    out = [
        f"weights: every parameter ({inp.model.spec.params.total:,}) in {s.fmt.key} "
        f"({s.fmt.bits:g} bits for {s.fmt.applies_to} tensors; {s.fmt.source}); the rest "
        f"in {s.dtype}; split evenly over {s.tp} tensor-parallel rank(s)",
        f"KV cache in {inp.kv_cache_dtype} = {s.kv_bytes} byte(s) per element; block size "
        f"{s.layout.block_size} (vLLM's default for this device and attention kind unless "
        "--block-size)",
        f"max_num_seqs {s.max_num_seqs}, max_num_batched_tokens {s.max_num_batched_tokens} "
        f"({s.defaults_why} unless given)",
        "max_concurrent_sequences: requests of the workload's p95 total length (prompt + "
        "output) the KV pool holds at once; vLLM's own figure is for max_model_len",
        "decode and prefill figures are physical bounds at peak bandwidth and tensor "
        "throughput, not predictions; MoE decode reads the experts a uniform router would "
        "touch for the batch",
    ]
    if hw.is_cpu and inp.kv_cache_space_gib is not None:
        out.append(f"CPU: the KV budget is VLLM_CPU_KVCACHE_SPACE={inp.kv_cache_space_gib} "
                   "GiB, exactly as vLLM's CPU build sizes it")
    else:
        out += [
            f"device memory: {hw.memory_from} ({hw.source})",
            "KV budget = gpu_memory_utilization x memory - weights - activation peak - "
            "non-torch memory - CUDA graphs, as vLLM computes it; the last three are "
            "ESTIMATES of what vLLM measures at start-up (capacity/vllm_budget.py)",
        ]
    if hw.unverified:
        out.append(f"unverified hardware figures: {', '.join(hw.unverified)}")
    if inp.model.catalog and inp.model.catalog.get("unverified"):
        out.append(f"unverified model fields: {', '.join(inp.model.catalog['unverified'])}")
    if inp.rate:
        out.append("needed concurrency from --rate by Little's law at the latency bounds: a "
                   "lower bound")
    if LINEAR in inp.model.spec.layer_kinds:
        out.append("linear-attention layers: a fixed state per sequence (conv + recurrent "
                   "state in the model dtype), padded to an attention page as vLLM does; two "
                   "per request and layer with prefix caching on (vLLM's default)")
    return out


def _log_line(s: Setup, device: str) -> str:
    """The start-up line vLLM prints for this KV cache: V0 counts blocks (executor_base.py),
    V1 tokens (kv_cache_utils.py)."""
    tail = (f"Maximum concurrency for {s.max_model_len:,} tokens per request: "
            f"{s.cap.max_concurrency:.2f}x")
    if s.acct.engine == "v0":
        return f"# {device} blocks: {s.cap.num_blocks}, {tail}"
    return f"{device} KV cache size: {s.cap.tokens:,} tokens, {tail}"
