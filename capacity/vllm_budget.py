"""vLLM's memory budget for the KV cache, and the defaults it picks.

GPU (vLLM v1, gpu_worker.determine_available_memory):
    KV budget = gpu_memory_utilization x device total
                - weights - activation peak of a profiling forward pass
                - non-torch memory (CUDA context, cuBLAS/NCCL buffers) - CUDA graphs
vLLM measures the last three at start-up; here they are ESTIMATES (documented below and
listed in every plan's assumptions). The weights are counted exactly from the config.

CPU (platforms/cpu.py, cpu_worker.py): the budget is VLLM_CPU_KVCACHE_SPACE GiB, exactly.

Older releases size it differently (`accounting`): V0 and V1 before 0.21 leave CUDA graphs
out of the budget, releases before the Triton sampler kernel profile a sampler that sorts
the whole vocabulary, V0 picks other scheduler defaults and reports whole blocks. Published
start-up logs of several releases check these rules (tests/test_capacity_gpu_logs.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from servescope.capacity.model import LINEAR, MLA, ModelSpec

GIB = 2**30

# Estimates of what vLLM measures at start-up (see each function for the reasoning).
# cuBLAS workspace, allocator slack, one GPU: the largest vLLM logged in the released
# versions quoted in tests/fixtures/vllm_gpu_startup_logs.yaml (0.35 GiB on an RTX 3090 with
# 0.6.4; 0.16-0.25 GiB elsewhere), so that the KV estimate errs on the small side
NON_TORCH_TP1_BYTES = int(0.35 * GIB)
NON_TORCH_TP_BYTES = int(0.75 * GIB)     # plus NCCL buffers when tensor parallel
CUDA_GRAPHS_BYTES = int(0.5 * GIB)       # captured decode graphs (about 0.3-1 GiB seen)
SAMPLER_COPIES = 3                       # float32 logits, probabilities, sort buffers
# Bytes per (dummy request x vocabulary entry) of the profiling run's sampler pass where it
# sorts the whole vocabulary: V0's profile_run samples with top_p=0.99, top_k=vocab-1
# (worker/model_runner.py) and V1's _dummy_sampler_run with top_p=0.9, top_k=vocab-1
# (v1/worker/gpu_model_runner.py), both through the PyTorch sort path (float32 logits,
# sorted values, int64 indices, softmax, cumsum, masks, the scattered result). Measured:
# 1.25 GB for 256 rows of a 131,072-token vocabulary (vllm-project/vllm PR 32558's table),
# 37 bytes each. The Triton top-k/top-p kernel (PR 33538, merged 2026-02-02) needs no sort.
SAMPLER_SORT_BYTES = 37
TRITON_SAMPLER_FROM = (0, 16, 0)  # first release after PR 33538 (assumed)


@dataclass(frozen=True)
class Accounting:
    """What differs in the KV-cache sizing between vLLM release lines."""

    engine: str                  # "v0" (LLMEngine, worker.py) or "v1" (EngineCore)
    version: tuple[int, int, int]
    cuda_graphs_in_budget: bool  # graph memory profiled and subtracted before the KV cache
    tokens_from_blocks: bool     # logged KV tokens = num_blocks x block_size
    why: str
    # bytes per (dummy request x vocab entry) the profiling run's sampler pass peaks at
    sampler_bytes_per_logit: int = 4 * SAMPLER_COPIES


CURRENT = (0, 32, 0)  # the release whose V1 accounting this module follows by default


def parse_version(text: str) -> tuple[int, int, int]:
    """"0.6.4.post1", "v0.11.2", "0.7.1.dev" -> (0, 6, 4); missing parts are 0."""
    parts = []
    for piece in text.strip().lstrip("v").split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    if not parts:
        raise ValueError(f"vLLM version {text!r} is not of the form 0.11.2")
    return tuple([*parts, 0, 0, 0][:3])  # type: ignore[return-value]


def accounting(version: str | None = None, engine: str | None = None) -> Accounting:
    """The sizing rules of a vLLM release (None: the current one). `engine` forces V0 or V1
    for the releases that shipped both (0.8 to 0.10, VLLM_USE_V1); otherwise releases before
    0.8.0 are V0.

    - CUDA graphs: V0 captures them after the KV cache is allocated (vllm/worker/worker.py
      determine_num_available_blocks runs before _warm_up_model's capture_model), and so did
      V1 (vllm/v1/worker/gpu_worker.py: compile_or_warm_up_model after the KV cache) until
      0.21.0 made CUDA-graph memory profiling the default ("CUDA graph memory profiling is
      enabled (default since v0.21.0)" in gpu_worker.py's start-up log, quoted in
      noonghunna/club-3090 issue 104; VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS turns it
      off): before 0.21 the graphs come out of the headroom above gpu_memory_utilization,
      not out of the KV budget.
    - Reported size: V0 logs "# GPU blocks: N" and the concurrency N x block_size /
      max_model_len (vllm/executor/executor_base.py); V1 logged N x block_size tokens
      (vllm/v1/core/kv_cache_utils.py, PR 13596) until the hybrid KV cache manager (0.10.0)
      reported int(max concurrency x max_model_len) instead.
    - Sampler: the profiling run's sampler pass sorts the whole vocabulary (top-k and top-p
      on every dummy request) until the Triton top-k/top-p kernel (SAMPLER_SORT_BYTES). In
      V0 only the driver rank samples, but every rank gets the driver's smaller block count.
    """
    v = parse_version(version) if version else CURRENT
    eng = engine or ("v0" if v < (0, 8, 0) else "v1")
    if eng not in {"v0", "v1"}:
        raise ValueError(f"vLLM engine {engine!r}: v0 or v1")
    graphs = eng == "v1" and v >= (0, 21, 0)
    blocks = eng == "v0" or v < (0, 10, 0)
    sort = eng == "v0" or v < TRITON_SAMPLER_FROM
    why = (f"vLLM {'.'.join(map(str, v))} {eng.upper()}: CUDA graphs "
           f"{'in' if graphs else 'outside'} the KV budget; profiling sampler "
           f"{'sorts the vocabulary' if sort else 'without a sort'}; KV tokens "
           f"{'= blocks x block size' if blocks else '= max concurrency x max_model_len'}")
    return Accounting(eng, v, graphs, blocks, why,
                      SAMPLER_SORT_BYTES if sort else 4 * SAMPLER_COPIES)


@dataclass(frozen=True)
class SchedulerDefaults:
    max_num_seqs: int
    max_num_batched_tokens: int
    why: str


def scheduler_defaults(memory_bytes: int, arch: str, name: str, world_size: int,
                       max_model_len: int, acct: Accounting | None = None) -> SchedulerDefaults:
    """The OpenAI server's defaults (engine/arg_utils.py get_batch_defaults, vLLM 0.32):
    CPU 128 sequences / 2048 tokens per rank; GPUs of 160 GiB or more 1024 / 16384; of 70
    GiB or more (A100 excepted) 1024 / 8192; others 256 / 2048. With chunked prefill the
    token budget is capped at max_num_seqs x max_model_len.

    V0 (`acct.engine == "v0"`): 256 sequences; chunked prefill only for max_model_len over
    32K ("Chunked prefill is enabled by default for models with max_model_len > 32K",
    engine/arg_utils.py), with 512 tokens a step before 0.6.5 (0.6.4.post1 logs
    "max_num_batched_tokens=512") and 2048 from 0.6.5 (the OpenAI server's default then:
    0.7.2 measured 0.19 GiB of activations for a 14B model at 131072 tokens, a ~2048-token
    step, in vllm-project/vllm issue 13061);
    without it a step holds a whole max_model_len prompt: max(max_model_len, 2048)
    (config.py SchedulerConfig), which is what V0's profiling run pushes through."""
    if acct is not None and acct.engine == "v0" and arch != "cpu":
        if max_model_len > 32768:
            tokens = 512 if acct.version < (0, 6, 5) else 2048
            why = f"vLLM V0 defaults: chunked prefill above 32K, {tokens} tokens a step"
        else:
            tokens, why = max(max_model_len, 2048), "vLLM V0 defaults: whole prompts a step"
        return SchedulerDefaults(max_num_seqs=256, max_num_batched_tokens=tokens, why=why)
    if arch == "cpu":
        seqs, tokens, why = 128 * world_size, 2048 * world_size, "vLLM CPU defaults"
    elif memory_bytes >= 160 * GIB:
        seqs, tokens, why = 1024, 16384, "vLLM defaults for GPUs of 160 GiB or more"
    elif memory_bytes >= 70 * GIB and "a100" not in name.lower():
        seqs, tokens, why = 1024, 8192, "vLLM defaults for GPUs of 70 GiB or more (not A100)"
    else:
        seqs, tokens, why = 256, 2048, "vLLM defaults for other GPUs"
    tokens = min(seqs * max_model_len, tokens)
    return SchedulerDefaults(max_num_seqs=min(seqs, tokens), max_num_batched_tokens=tokens,
                             why=why)


def default_block_size(model: ModelSpec, arch: str) -> int:
    """vLLM's block size: 128 on CPU (16 for MLA, whose CPU kernel needs it: platforms/
    cpu.py), 16 on GPUs (CacheConfig.DEFAULT_BLOCK_SIZE), 64 for MLA with FlashMLA on
    Hopper and older, 128 for MLA on Blackwell (CUTLASS MLA)."""
    if arch == "cpu":
        return 16 if model.uses_mla else 128
    if model.uses_mla:
        return 128 if arch == "blackwell" else 64
    return 16


def activation_peak_bytes(model: ModelSpec, max_num_batched_tokens: int, max_num_seqs: int,
                          tp: int = 1, act_bytes: int = 2,
                          sampler_bytes_per_logit: int = 4 * SAMPLER_COPIES) -> int:
    """ESTIMATE of the PyTorch activation peak vLLM's profiling run sees: a forward pass of
    max_num_batched_tokens tokens (one layer's activations live at a time), or the sampler
    on max_num_seqs rows of float32 logits, whichever is larger.

    One layer at its peak holds three hidden-size tensors per token (the residual, the
    normed input the caller keeps, the block's output) beside the widest block's own: the
    MLP's gate_up output (2 x intermediate) still referenced while its SiluAndMul output
    (intermediate) feeds down_proj (model_executor/models/llama.py LlamaMLP.forward), or
    the attention projections' outputs, or the fused-MoE caches of top-k expert outputs.
    On an RTX 3090 vLLM 0.6.4 measured 2.07 and 2.99 GiB for Llama 3.1 8B at 20,000 and
    29,000 tokens; this gives 2.06 and 2.99 (tests/fixtures/vllm_gpu_startup_logs.yaml)."""
    h = model.hidden_size
    per_token = 3 * h  # residual, normed input, the block's output
    attn = 0
    for kind in set(model.layer_kinds):
        if kind == MLA:
            qk = model.qk_nope_head_dim + model.qk_rope_head_dim
            width = model.num_heads * (2 * qk + model.v_head_dim) // tp \
                + model.kv_lora_rank + model.qk_rope_head_dim
        elif kind == LINEAR:
            width = (2 * model.linear_num_key_heads * model.linear_key_head_dim
                     + 2 * model.linear_num_value_heads * model.linear_value_head_dim) // tp
        else:
            width = (2 * model.num_heads + 2 * model.num_kv_heads) * model.head_dim // tp
        attn = max(attn, width)
    mlp = 3 * model.intermediate_size // tp
    if model.is_moe:
        mlp = max(mlp, model.experts_per_token * (3 * model.moe_intermediate_size // tp + h))
    forward = max_num_batched_tokens * (per_token + max(attn, mlp)) * act_bytes
    # the sampler sees the whole vocabulary on every rank (the logits are gathered)
    sampler = min(max_num_seqs, max_num_batched_tokens) * model.vocab_size \
        * sampler_bytes_per_logit
    return max(forward, sampler)


@dataclass(frozen=True)
class GpuBudget:
    total: int
    requested: int
    weights: int
    activation_peak: int
    non_torch: int
    cuda_graphs: int

    @property
    def kv(self) -> int:
        return self.requested - self.weights - self.activation_peak - self.non_torch \
            - self.cuda_graphs


def gpu_budget(total_bytes: int, utilization: float, weights_per_gpu: int,
               activation_peak: int, tp: int, enforce_eager: bool = False,
               acct: Accounting | None = None) -> GpuBudget:
    """One GPU's KV budget as vLLM computes it (the requested share minus everything else).
    Negative when the weights alone do not fit. CUDA graphs count only where the release
    subtracts them (`accounting`)."""
    graphs = (acct or accounting()).cuda_graphs_in_budget and not enforce_eager
    return GpuBudget(total=total_bytes, requested=int(total_bytes * utilization),
                     weights=weights_per_gpu, activation_peak=activation_peak,
                     non_torch=NON_TORCH_TP1_BYTES if tp == 1 else NON_TORCH_TP_BYTES,
                     cuda_graphs=CUDA_GRAPHS_BYTES if graphs else 0)


def rope_cache_bytes(model: ModelSpec, dtype_bytes: int) -> int:
    """The rotary-embedding table vLLM keeps on every GPU beside the weights, and counts in
    "Model loading took": cos_sin_cache of max_position_embeddings x rotary dim in the
    model dtype (model_executor/layers/rotary_embedding: RotaryEmbedding registers it as a
    buffer; YaRN's table spans original length x factor, the same max_position_embeddings).
    It is why Llama 3.1 8B loads as 14.9888 GiB for 14.9575 GiB of parameters (131072 x 128
    x 2 bytes = 0.03125 GiB)."""
    rotary = model.qk_rope_head_dim if model.uses_mla else model.head_dim
    return (model.max_position_embeddings or 0) * rotary * dtype_bytes


def cpu_budget(kv_cache_space_gib: int) -> int:
    """The CPU build's budget: VLLM_CPU_KVCACHE_SPACE GiB (an integer), nothing measured."""
    return int(kv_cache_space_gib) * GIB


def mxfp4_padding_bytes(model: ModelSpec, fmt_key: str, fmt_bits: float, arch: str,
                        tp: int = 1) -> int:
    """Bytes vLLM's MXFP4 mixture-of-experts layers add to one rank's experts by padding
    them for their kernels (model_executor/layers/quantization/mxfp4.py create_weights):
    the hidden size to a multiple of 256, the per-rank intermediate size to 128 (Marlin,
    the path of GPUs without FP4 tensor cores) or 256 (FlashInfer on Blackwell). Logged:
    gpt-oss-20b loads as 13.72 GiB on an A100 (this gives 13.68), gpt-oss-120b as 65.97 GiB
    with Marlin on an H100 (65.86) and 64.38 GiB with 0.14's Triton backend, which pads the
    hidden size only (65.86 is 2.3% above: the planner keeps the larger)."""
    if fmt_key != "mxfp4" or not model.is_moe:
        return 0
    h, inter = model.hidden_size, model.moe_intermediate_size // tp

    def up(n: int, m: int) -> int:
        return -(-n // m) * m

    inter_pad = up(inter, 256 if arch == "blackwell" else 128)
    per_expert_extra = 3 * (up(h, 256) * inter_pad - h * inter)
    return int(sum(model.moe_layers) * model.num_experts * per_expert_extra * fmt_bits / 8)
