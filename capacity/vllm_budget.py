"""vLLM's memory budget for the KV cache, and the defaults it picks.

GPU (vLLM v1, gpu_worker.determine_available_memory):
    KV budget = gpu_memory_utilization x device total
                - weights - activation peak of a profiling forward pass
                - non-torch memory (CUDA context, cuBLAS/NCCL buffers) - CUDA graphs
vLLM measures the last three at start-up; here they are ESTIMATES (documented below and
listed in every plan's assumptions). The weights are counted exactly from the config.

CPU (platforms/cpu.py, cpu_worker.py): the budget is VLLM_CPU_KVCACHE_SPACE GiB, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from servescope.capacity.model import LINEAR, MLA, ModelSpec

GIB = 2**30

# Estimates of what vLLM measures at start-up (see each function for the reasoning).
NON_TORCH_TP1_BYTES = int(0.25 * GIB)    # cuBLAS workspace, allocator slack, one GPU
NON_TORCH_TP_BYTES = int(0.75 * GIB)     # plus NCCL buffers when tensor parallel
CUDA_GRAPHS_BYTES = int(0.5 * GIB)       # captured decode graphs (about 0.3-1 GiB seen)
SAMPLER_COPIES = 3                       # float32 logits, probabilities, sort buffers


@dataclass(frozen=True)
class SchedulerDefaults:
    max_num_seqs: int
    max_num_batched_tokens: int
    why: str


def scheduler_defaults(memory_bytes: int, arch: str, name: str, world_size: int,
                       max_model_len: int) -> SchedulerDefaults:
    """The OpenAI server's defaults (engine/arg_utils.py get_batch_defaults, vLLM 0.32):
    CPU 128 sequences / 2048 tokens per rank; GPUs of 160 GiB or more 1024 / 16384; of 70
    GiB or more (A100 excepted) 1024 / 8192; others 256 / 2048. With chunked prefill the
    token budget is capped at max_num_seqs x max_model_len."""
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
                          tp: int = 1, act_bytes: int = 2) -> int:
    """ESTIMATE of the PyTorch activation peak vLLM's profiling run sees: a forward pass of
    max_num_batched_tokens tokens (one layer's activations live at a time: the residual
    stream, the attention projections' outputs and the MLP's gate/up/act outputs, or the
    fused-MoE caches of top-k expert outputs), or the sampler on max_num_seqs rows of
    float32 logits, whichever is larger."""
    h = model.hidden_size
    per_token = 4 * h  # residual, normed input, attention output, MLP output
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
    sampler = min(max_num_seqs, max_num_batched_tokens) * model.vocab_size * 4 * SAMPLER_COPIES
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
               activation_peak: int, tp: int, enforce_eager: bool = False) -> GpuBudget:
    """One GPU's KV budget as vLLM computes it (the requested share minus everything else).
    Negative when the weights alone do not fit."""
    return GpuBudget(total=total_bytes, requested=int(total_bytes * utilization),
                     weights=weights_per_gpu, activation_peak=activation_peak,
                     non_torch=NON_TORCH_TP1_BYTES if tp == 1 else NON_TORCH_TP_BYTES,
                     cuda_graphs=0 if enforce_eager else CUDA_GRAPHS_BYTES)


def cpu_budget(kv_cache_space_gib: int) -> int:
    """The CPU build's budget: VLLM_CPU_KVCACHE_SPACE GiB (an integer), nothing measured."""
    return int(kv_cache_space_gib) * GIB
