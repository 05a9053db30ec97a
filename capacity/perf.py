"""Weights memory, and the physical lower bounds on time that no server beats.

Decode is bound by memory bandwidth: each step reads every weight a token of the batch
touches (for a mixture of experts, the experts the batch's tokens are routed to) plus
every sequence's KV cache, so
    time per output token >= bytes read per step / bandwidth.
Prefill is bound by compute: 2 FLOPs per active parameter per prompt token, plus
attention, which grows with the square of the prompt (each token attends to those before
it, or to its window):
    time to first token >= (2 x active params x P + attention FLOPs) / peak FLOPS.
Both are bounds, not predictions: real kernels reach perhaps 50-80% of peak bandwidth and
40-70% of peak FLOPS. A measurement that beats them means a cache hit (prefix caching),
speculative decoding, or a measuring error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from servescope.capacity.catalog import Hardware, WeightFormat
from servescope.capacity.kv import sequence_kv_bytes
from servescope.capacity.model import LINEAR, MLA, SLIDING, ModelSpec


def weights_bytes(model: ModelSpec, fmt: WeightFormat, dtype_bytes: int = 2) -> int:
    """Bytes of every parameter in `fmt`: the tensors the format quantizes at its bits per
    weight, the rest (embeddings, head, norms, routers) in the model's dtype."""
    p = model.params
    if fmt.applies_to == "all":
        return math.ceil(p.total * fmt.bits / 8)
    quantized = p.experts if fmt.applies_to == "experts" else p.linear + p.experts
    return math.ceil(quantized * fmt.bits / 8 + (p.total - quantized) * dtype_bytes)


def expert_bytes(model: ModelSpec, fmt: WeightFormat, dtype_bytes: int = 2) -> float:
    """Bytes of ONE routed expert in one layer."""
    if not model.is_moe:
        return 0.0
    per_param = fmt.bits / 8 if fmt.applies_to in {"all", "linear", "experts"} else dtype_bytes
    moe_layers = sum(model.moe_layers) or 1
    return model.params.experts / (model.num_experts * moe_layers) * per_param


def experts_touched(model: ModelSpec, batch: int) -> float:
    """Expected distinct experts per MoE layer that `batch` tokens route to, if routing
    were uniform: E x (1 - (1 - k/E)^B). One token reads k; a large batch reads them all."""
    if not model.is_moe:
        return 0.0
    e, k = model.num_experts, model.experts_per_token
    return e * (1 - (1 - k / e) ** batch)


@dataclass(frozen=True)
class DecodeBound:
    batch: int
    context: int
    weight_bytes_read: int
    kv_bytes_read: int
    seconds_per_step: float

    @property
    def tokens_per_second(self) -> float:
        return self.batch / self.seconds_per_step


def decode_bound(model: ModelSpec, fmt: WeightFormat, hw: Hardware, gpus: int, batch: int,
                 context: int, kv_bytes: int, state_bytes: int = 0,
                 dtype_bytes: int = 2) -> DecodeBound:
    """Lower bound on one decode step for `batch` sequences of `context` tokens each, on
    `gpus` devices whose bandwidths add up (tensor parallelism splits the reads)."""
    total = weights_bytes(model, fmt, dtype_bytes)
    if model.is_moe:
        all_experts = expert_bytes(model, fmt, dtype_bytes) * model.num_experts \
            * sum(model.moe_layers)
        touched = expert_bytes(model, fmt, dtype_bytes) * experts_touched(model, batch) \
            * sum(model.moe_layers)
        weights = int(total - all_experts + touched)
    else:
        weights = total
    # the input embedding table is gathered one row per token, not read whole
    if model.params.lm_head:
        per_param = fmt.bits / 8 if fmt.applies_to == "all" else dtype_bytes
        weights -= int(model.params.embedding * per_param)
    kv = batch * sequence_kv_bytes(model, context, kv_bytes, state_bytes, tp=gpus)
    seconds = (weights + kv) / (hw.bandwidth_gbs * 1e9 * gpus)
    return DecodeBound(batch=batch, context=context, weight_bytes_read=weights,
                       kv_bytes_read=kv, seconds_per_step=seconds)


def attention_flops(model: ModelSpec, prompt: int) -> float:
    """FLOPs of the attention scores and weighted sums over a causal prompt: per layer
    2 x heads x (qk dim + v dim) x sum over tokens of the keys each sees (t, or the window).
    Linear-attention layers do work linear in the prompt: left out."""
    full = prompt * (prompt + 1) / 2
    flops = 0.0
    for kind in model.layer_kinds:
        if kind == LINEAR:
            continue
        if kind == MLA:
            dims = model.qk_nope_head_dim + model.qk_rope_head_dim + model.v_head_dim
        else:
            dims = 2 * model.head_dim
        seen = full
        if kind == SLIDING and model.sliding_window and prompt > model.sliding_window:
            w = model.sliding_window
            seen = w * (w + 1) / 2 + (prompt - w) * w
        flops += 2 * model.num_heads * dims * seen
    return flops


@dataclass(frozen=True)
class PrefillBound:
    prompt: int
    flops: float
    tflops: float
    seconds: float


def prefill_bound(model: ModelSpec, fmt: WeightFormat, hw: Hardware, gpus: int,
                  prompt: int) -> PrefillBound:
    """Lower bound on the prefill of one `prompt`-token request on `gpus` devices, at the
    tensor-core peak of the format's compute dtype (FP8 where the format and the device
    both have it, else BF16)."""
    tflops = hw.fp8_tflops if fmt.compute == "fp8" and hw.fp8_tflops else hw.bf16_tflops
    flops = 2 * model.params.compute * prompt + attention_flops(model, prompt)
    return PrefillBound(prompt=prompt, flops=flops, tflops=tflops,
                        seconds=flops / (tflops * 1e12 * gpus))
