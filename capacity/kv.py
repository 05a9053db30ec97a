"""KV-cache bytes per token and per layer kind, and vLLM's way of packing them into blocks.

Per token and layer (bytes = bytes per element of the KV dtype):
- full attention: 2 x kv_heads x head_dim x bytes (K and V; head_dim from the config,
  which for Qwen3 and Gemma is not hidden/heads);
- MLA (DeepSeek): one latent of kv_lora_rank + qk_rope_head_dim per token, no V;
- sliding window: as full attention, but a sequence never holds more than the window;
- linear attention / state space: no per-token cache; a fixed state per sequence.

Tensor parallelism splits KV heads across ranks; with fewer KV heads than ranks each rank
keeps one (replicated). MLA's single latent is replicated on every rank.

The block accounting mirrors vLLM v1 (read in vllm/v1/core/kv_cache_utils.py and
vllm/v1/kv_cache_interface.py of vLLM 0.32): layers are grouped by kind, each group draws
blocks from one shared pool, a block costs the sum of its group's per-layer pages, and a
request needs, per group, the blocks of its longest possible use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from servescope.capacity.model import FULL, LINEAR, MLA, SLIDING, ModelSpec

DTYPE_BYTES = {
    "float32": 4, "fp32": 4, "float": 4,
    "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2,
    "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "int8": 1,
}


def dtype_bytes(name: str) -> int:
    try:
        return DTYPE_BYTES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r} (known: {', '.join(sorted(DTYPE_BYTES))})")\
            from None


def kv_heads_per_rank(model: ModelSpec, tp: int) -> int:
    """vLLM's rule (ModelConfig.get_num_kv_heads): heads split evenly, at least one per rank."""
    return max(1, model.num_kv_heads // tp)


def layer_bytes_per_token(model: ModelSpec, kind: str, kv_bytes: int, tp: int = 1) -> int:
    """KV bytes one token adds to one layer on one tensor-parallel rank (0 for linear
    attention, whose state does not grow)."""
    if kind in (FULL, SLIDING):
        return 2 * kv_heads_per_rank(model, tp) * model.head_dim * kv_bytes
    if kind == MLA:
        return (model.kv_lora_rank + model.qk_rope_head_dim) * kv_bytes
    return 0


def linear_state_bytes(model: ModelSpec, conv_bytes: int, ssm_bytes: int, tp: int = 1) -> int:
    """One sequence's state in one gated-delta-net layer on one rank: a causal-conv window
    of (kernel - 1) steps over the q, k and v channels, plus a value x key matrix per value
    head (vLLM's MambaStateShapeCalculator.gated_delta_net_state_shape)."""
    conv_dim = (2 * model.linear_num_key_heads * model.linear_key_head_dim
                + model.linear_num_value_heads * model.linear_value_head_dim) // tp
    conv = conv_dim * (model.linear_conv_kernel_dim - 1) * conv_bytes
    recurrent = (model.linear_num_value_heads // tp) * model.linear_value_head_dim \
        * model.linear_key_head_dim * ssm_bytes
    return conv + recurrent


def kv_bytes_per_token(model: ModelSpec, kv_bytes: int, tp: int = 1,
                       context: int | None = None) -> int:
    """KV bytes one more token costs the whole model, summed over tensor-parallel ranks
    (replicated heads count once per rank). With `context`, sliding-window layers count
    only while the context is inside their window."""
    total = 0
    for kind in model.layer_kinds:
        if kind == SLIDING and context is not None and model.sliding_window \
                and context > model.sliding_window:
            continue
        total += layer_bytes_per_token(model, kind, kv_bytes, tp) * tp
    return total


def sequence_kv_bytes(model: ModelSpec, tokens: int, kv_bytes: int, state_bytes: int = 0,
                      tp: int = 1) -> int:
    """Bytes one sequence of `tokens` holds, all ranks together, without block rounding:
    full and MLA layers grow with it, sliding layers stop at the window, linear layers hold
    `state_bytes` (per layer, per rank) whatever the length."""
    total = 0
    for kind in model.layer_kinds:
        per_token = layer_bytes_per_token(model, kind, kv_bytes, tp) * tp
        if kind == SLIDING and model.sliding_window:
            total += per_token * min(tokens, model.sliding_window)
        elif kind == LINEAR:
            total += state_bytes * tp
        else:
            total += per_token * tokens
    return total


# -- vLLM's blocks ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Group:
    """One KV-cache group: layers of one kind sharing a block table."""

    kind: str
    layers: int
    page_bytes: int  # one layer's page (block) in this group, padded
    window: int | None = None
    # linear attention: states a request holds; 2 with prefix caching (vLLM's "align" mamba
    # cache mode, its default then: the running state and the last block-aligned one)
    state_blocks: int = 2

    def blocks_per_request(self, block_size: int, max_model_len: int,
                           max_in_flight_tokens: int) -> int:
        """Blocks one request may need at most (vLLM's max_memory_usage_bytes / page)."""
        if self.kind == LINEAR:
            return self.state_blocks
        if self.kind == SLIDING and self.window:
            tokens = min(self.window - 1 + max_in_flight_tokens, max_model_len)
            # +1: the window need not start on a block boundary
            return math.ceil(tokens / block_size) + 1
        return math.ceil(max_model_len / block_size)

    def blocks_held(self, block_size: int, tokens: int, chunk: int) -> int:
        """Blocks a request of `tokens` holds at its end (sliding layers free blocks that
        left the window; `chunk` tokens may be in flight)."""
        if self.kind == LINEAR:
            return self.state_blocks
        if self.kind == SLIDING and self.window and tokens > self.window:
            return math.ceil(min(self.window - 1 + chunk, tokens) / block_size) + 1
        return math.ceil(tokens / block_size)


@dataclass(frozen=True)
class KVLayout:
    block_size: int
    groups: tuple[Group, ...]

    @property
    def bytes_per_block(self) -> int:
        """One block of the shared pool: the largest group's pages side by side."""
        return max(g.layers * g.page_bytes for g in self.groups)

    def blocks_per_request(self, max_model_len: int, max_in_flight_tokens: int) -> int:
        return sum(g.blocks_per_request(self.block_size, max_model_len, max_in_flight_tokens)
                   for g in self.groups)

    def blocks_for(self, tokens: int, chunk: int) -> int:
        return sum(g.blocks_held(self.block_size, tokens, chunk) for g in self.groups)


def vllm_layout(model: ModelSpec, kv_bytes: int, block_size: int, tp: int = 1,
                conv_bytes: int = 2, ssm_bytes: int = 2,
                prefix_caching: bool = True) -> KVLayout:
    """The groups vLLM builds for this model (one rank). All-alike layers form one group.
    Hybrids are split by kind into groups of equal layer counts (the smallest kind's count,
    or the largest's when within 1.5x: vLLM's _get_kv_cache_groups_uniform_page_size);
    for linear attention the block size first grows until an attention page holds a whole
    state, then the state page is padded to it (Platform._align_hybrid_block_size)."""
    kinds = model.layer_kinds
    attn_token = max((layer_bytes_per_token(model, k, kv_bytes, tp) for k in kinds
                      if k != LINEAR), default=0)
    state = linear_state_bytes(model, conv_bytes, ssm_bytes, tp) if LINEAR in kinds else 0
    if state and attn_token:  # whole multiples of the block size the backend already chose
        block_size *= max(1, math.ceil(state / (block_size * attn_token)))
    page = attn_token * block_size
    states = 2 if prefix_caching else 1
    buckets: dict[tuple[str, int | None], int] = {}
    for kind in kinds:
        key = (kind, model.sliding_window if kind == SLIDING else None)
        buckets[key] = buckets.get(key, 0) + 1
    if len(buckets) == 1:
        (kind, window), n = next(iter(buckets.items()))
        return KVLayout(block_size, (Group(kind, n, page or state, window, states),))
    counts = list(buckets.values())
    size = max(counts) if max(counts) < 1.5 * min(counts) else min(counts)
    groups = []
    for (kind, window), n in buckets.items():
        parts = math.ceil(n / size)
        for i in range(parts):
            members = len(range(i, n, parts))
            groups.append(Group(kind, members, page, window, states))
    return KVLayout(block_size, tuple(groups))


@dataclass(frozen=True)
class Capacity:
    """What vLLM logs at start-up: "<device> KV cache size: N tokens, Maximum concurrency
    for L tokens per request: X"."""

    num_blocks: int
    bytes_per_block: int
    blocks_per_request: int
    max_model_len: int
    # V0 and V1 before 0.10 report whole blocks: N x block_size tokens, and a concurrency
    # of that over max_model_len (vllm_budget.accounting)
    block_size: int = 0
    tokens_from_blocks: bool = False

    @property
    def max_concurrency(self) -> float:
        if self.tokens_from_blocks:
            return self.num_blocks * self.block_size / self.max_model_len
        return self.num_blocks / self.blocks_per_request

    @property
    def tokens(self) -> int:
        if self.tokens_from_blocks:
            return self.num_blocks * self.block_size
        # the same float arithmetic as vLLM's get_kv_cache_capacity
        return int(self.max_concurrency * self.max_model_len)


def capacity(layout: KVLayout, budget_bytes: int, max_model_len: int,
             max_in_flight_tokens: int, tokens_from_blocks: bool = False) -> Capacity:
    """vLLM's num_blocks (budget // bytes per block) and the capacity it reports."""
    per_block = layout.bytes_per_block
    return Capacity(num_blocks=budget_bytes // per_block, bytes_per_block=per_block,
                    blocks_per_request=layout.blocks_per_request(max_model_len,
                                                                 max_in_flight_tokens),
                    max_model_len=max_model_len, block_size=layout.block_size,
                    tokens_from_blocks=tokens_from_blocks)
