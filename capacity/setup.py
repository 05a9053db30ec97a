"""One planned setup (model, hardware, tensor-parallel size, weight format, lengths) and
what vLLM would make of it: the KV layout, the scheduler defaults, the memory budget and
the capacity it reports. Pure: everything it reads is passed in."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from servescope.capacity import perf
from servescope.capacity.catalog import (
    Hardware,
    ModelInfo,
    WeightFormat,
    kv_cache_dtype_bytes,
    weight_format,
)
from servescope.capacity.kv import (
    Capacity,
    KVLayout,
    capacity,
    dtype_bytes,
    linear_state_bytes,
    vllm_layout,
)
from servescope.capacity.model import LINEAR, ModelSpec
from servescope.capacity.vllm_budget import (
    Accounting,
    accounting,
    activation_peak_bytes,
    cpu_budget,
    default_block_size,
    gpu_budget,
    mxfp4_padding_bytes,
    rope_cache_bytes,
    scheduler_defaults,
)

TP_SIZES = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class Workload:
    """Request lengths in tokens: the prompt, the output and their sum per request."""

    prompt_mean: float
    prompt_p95: int
    output_mean: float
    output_p95: int
    total_mean: float
    total_p95: int
    source: str

    @classmethod
    def fixed(cls, prompt: int, output: int) -> Workload:
        return cls(prompt, prompt, output, output, prompt + output, prompt + output,
                   f"--prompt-tokens {prompt} --output-tokens {output}")

    @classmethod
    def from_samples(cls, pairs: list[tuple[int, int]], source: str) -> Workload:
        """From (prompt, output) pairs drawn from a scenario; p95 by nearest rank."""
        if not pairs:
            raise ValueError("no length samples")

        def p95(values: list[int]) -> int:
            ordered = sorted(values)
            return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]

        prompts, outputs = [p for p, _ in pairs], [o for _, o in pairs]
        totals = [p + o for p, o in pairs]
        n = len(pairs)
        return cls(sum(prompts) / n, p95(prompts), sum(outputs) / n, p95(outputs),
                   sum(totals) / n, p95(totals), source)


@dataclass
class PlanInput:
    model: ModelInfo
    hardware: Hardware
    gpus: int | None = None
    tp: int | None = None
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    workload: Workload | None = None
    rate: float | None = None
    concurrency: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    block_size: int | None = None
    enforce_eager: bool = False
    kv_cache_space_gib: int | None = None  # CPU: VLLM_CPU_KVCACHE_SPACE
    # linear-attention recurrent state dtype (None: the model's, vLLM's "auto"; vLLM's CPU
    # build keeps it in float32 on CPUs with AVX512-BF16: platforms/cpu.py)
    mamba_ssm_dtype: str | None = None
    assumptions: list[str] = field(default_factory=list)
    # the vLLM release to size for (None: the current one) and, for 0.8-0.10, which engine
    # ran ("v0" with VLLM_USE_V1=0): older releases leave CUDA graphs out of the KV budget,
    # V0 picks other batch defaults and reports whole blocks (vllm_budget.accounting)
    vllm_version: str | None = None
    vllm_engine: str | None = None


def resolve_dtype(spec: ModelSpec, dtype: str) -> str:
    """vLLM's --dtype auto: the config's dtype, float32 checkpoints served in bfloat16."""
    if dtype != "auto":
        dtype_bytes(dtype)  # validates
        return dtype
    return "bfloat16" if spec.dtype in {"float32", "float"} else spec.dtype


def resolve_format(info: ModelInfo, quantization: str | None, dtype: str) -> WeightFormat:
    if quantization:
        return weight_format(quantization)
    default = info.default_quantization
    if default in {"bf16", "fp16"} or default not in {"fp8", "mxfp4", "awq", "gptq"}:
        return weight_format({"float32": "fp32", "float16": "fp16"}.get(dtype, "bf16"))
    return weight_format(default)


@dataclass(frozen=True)
class Setup:
    """Everything derived for one (model, GPU, tp, format, lengths) choice."""

    tp: int
    fmt: WeightFormat
    dtype: str
    kv_bytes: int
    state_bytes: int
    layout: KVLayout
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    defaults_why: str
    weights: int
    budget: dict[str, int]
    cap: Capacity
    acct: Accounting = field(default_factory=accounting)

    @property
    def kv_budget(self) -> int:
        return self.budget["kv"]

    @property
    def fits(self) -> bool:
        """vLLM starts only when the KV pool holds one max_model_len request (plus the null
        block V1 keeps; V0 checks max_model_len against blocks x block size, worker.py
        raise_if_cache_size_invalid)."""
        if self.kv_budget <= 0:
            return False
        if self.acct.engine == "v0":
            return self.cap.num_blocks * self.layout.block_size >= self.max_model_len
        return self.cap.num_blocks - 1 >= self.cap.blocks_per_request

    def sequences_fitting(self, tokens: int) -> int:
        """Requests of `tokens` tokens the pool holds at once (null block excluded)."""
        if self.kv_budget <= 0:
            return 0
        return max(0, self.cap.num_blocks - 1) // self.layout.blocks_for(
            tokens, self.max_num_batched_tokens)


def setup(inp: PlanInput, tp: int, fmt: WeightFormat | None = None,
          max_model_len: int | None = None) -> Setup:
    spec, hw = inp.model.spec, inp.hardware
    dtype = resolve_dtype(spec, inp.dtype)
    fmt = fmt or resolve_format(inp.model, inp.quantization, dtype)
    model_bytes = dtype_bytes(dtype)
    kv_bytes = kv_cache_dtype_bytes(inp.kv_cache_dtype, model_bytes)
    ssm_bytes = dtype_bytes(inp.mamba_ssm_dtype) if inp.mamba_ssm_dtype else model_bytes
    state = linear_state_bytes(spec, model_bytes, ssm_bytes, tp) \
        if LINEAR in spec.layer_kinds else 0
    block = inp.block_size or default_block_size(spec, hw.arch)
    layout = vllm_layout(spec, kv_bytes, block, tp, model_bytes, ssm_bytes)
    length = max_model_len or inp.max_model_len or spec.max_position_embeddings or 4096
    acct = accounting(inp.vllm_version, inp.vllm_engine)
    defaults = scheduler_defaults(hw.memory_bytes, hw.arch, hw.key, tp, length, acct)
    seqs = inp.max_num_seqs or defaults.max_num_seqs
    batched = inp.max_num_batched_tokens or defaults.max_num_batched_tokens
    weights = perf.weights_bytes(spec, fmt, model_bytes)
    # every rank holds its share of the parameters, a whole rotary table and the padding
    # vLLM's kernels add to some weight layouts
    per_gpu = math.ceil(weights / tp) + rope_cache_bytes(spec, model_bytes) \
        + mxfp4_padding_bytes(spec, fmt.key, fmt.bits, hw.arch, tp)
    if hw.is_cpu and inp.kv_cache_space_gib is not None:
        budget = {"kv": cpu_budget(inp.kv_cache_space_gib), "weights": per_gpu}
    else:
        act = activation_peak_bytes(spec, batched, seqs, tp, model_bytes,
                                    acct.sampler_bytes_per_logit)
        g = gpu_budget(hw.memory_bytes, inp.gpu_memory_utilization, per_gpu, act, tp,
                       enforce_eager=inp.enforce_eager or hw.is_cpu, acct=acct)
        budget = {"kv": g.kv, "total": g.total, "requested": g.requested,
                  "weights": g.weights, "activation_peak": g.activation_peak,
                  "non_torch": g.non_torch, "cuda_graphs": g.cuda_graphs}
    # Sliding-window blocks stay held while a step is in flight: one step on CPU, two on
    # GPUs with async scheduling (VllmConfig.max_in_flight_tokens).
    in_flight = batched * (1 if hw.is_cpu else 2)
    cap = capacity(layout, max(budget["kv"], 0), length, in_flight,
                   tokens_from_blocks=acct.tokens_from_blocks and not hw.is_cpu)
    return Setup(tp=tp, fmt=fmt, dtype=dtype, kv_bytes=kv_bytes, state_bytes=state,
                 layout=layout, max_model_len=length, max_num_seqs=seqs,
                 max_num_batched_tokens=batched, defaults_why=defaults.why, weights=weights,
                 budget=budget, cap=cap, acct=acct)


def tp_choices(spec: ModelSpec) -> list[int]:
    return [t for t in TP_SIZES if spec.num_heads % t == 0]
