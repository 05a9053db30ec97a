"""A model's architecture as far as memory and compute go, read from a Hugging Face
`config.json` (a dict): layers and their kinds (full, sliding-window, MLA, linear
attention), attention geometry, mixture-of-experts shape, and a parameter count built
from the tensors the architecture holds.

Why a count of our own: weights memory needs EVERY parameter (all experts), compute needs
only those a token touches, and a quantization applies to some tensors (the linear layers)
and not others (embeddings, norms, routers). A published "8B" is neither split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# layer kinds
FULL, SLIDING, MLA, LINEAR = "full", "sliding", "mla", "linear"

_LAYER_TYPE_NAMES = {
    "full_attention": FULL, "attention": FULL, "global": FULL,
    "sliding_attention": SLIDING, "sliding": SLIDING, "local": SLIDING,
    "linear_attention": LINEAR,
}


class ConfigError(ValueError):
    """A config.json lacks a field the math needs, or has a value it cannot use; str()
    names the field."""


@dataclass(frozen=True)
class ParamCounts:
    """Parameters by what they are: `linear` are the dense matmul weights a weight
    quantization applies to (attention projections, dense MLPs); `experts` the routed
    experts' matmul weights; `embedding` the input table and `lm_head` the output one (one
    table when tied); `other` norms, biases, routers, convolutions, sinks."""

    linear: int
    experts: int
    embedding: int
    lm_head: int
    other: int
    active_experts: int  # routed-expert weights one token uses (top-k of them)

    @property
    def total(self) -> int:
        return self.linear + self.experts + self.embedding + self.lm_head + self.other

    @property
    def active(self) -> int:
        """Parameters one token's forward pass reads, the input embedding table included
        (one row of it, really; counted whole as model cards do)."""
        return self.total - self.experts + self.active_experts

    @property
    def compute(self) -> int:
        """Parameters in a token's matmuls: active, less the input embedding lookup (a
        gather, not a matmul) unless that table is also the output head."""
        return self.active - (self.embedding if self.lm_head else 0)


@dataclass(frozen=True)
class ModelSpec:
    """What the capacity math needs of a model. Built by `from_hf_config`."""

    name: str
    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    intermediate_size: int
    tie_word_embeddings: bool
    layer_kinds: tuple[str, ...]
    sliding_window: int | None = None
    dtype: str = "bfloat16"
    max_position_embeddings: int | None = None
    # MLA (DeepSeek-V2/V3): one latent of kv_lora_rank + qk_rope_head_dim per token and layer
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    q_lora_rank: int = 0
    # mixture of experts
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    moe_layers: tuple[bool, ...] = ()
    # linear attention (gated delta net, Qwen3-Next): a fixed state per sequence and layer
    linear_num_key_heads: int = 0
    linear_num_value_heads: int = 0
    linear_key_head_dim: int = 0
    linear_value_head_dim: int = 0
    linear_conv_kernel_dim: int = 0
    quant_method: str | None = None
    params: ParamCounts = field(default=None)  # type: ignore[assignment]

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def uses_mla(self) -> bool:
        return self.kv_lora_rank > 0

    def count(self, kind: str) -> int:
        return sum(1 for k in self.layer_kinds if k == kind)


def _get(cfg: dict[str, Any], *names: str, default: Any = None) -> Any:
    for n in names:
        if cfg.get(n) is not None:
            return cfg[n]
    return default


def _need(cfg: dict[str, Any], *names: str) -> Any:
    value = _get(cfg, *names)
    if value is None:
        raise ConfigError(f"config.json has no {' / '.join(names)}")
    return value


def text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a config: multimodal models (Gemma 3, Qwen3.5) nest it
    under `text_config`; top-level fields such as the dtype or a quantization still apply."""
    inner = cfg.get("text_config")
    if not isinstance(inner, dict):
        return cfg
    merged = {k: v for k, v in cfg.items() if k != "text_config"}
    merged.update(inner)
    return merged


def _layer_kinds(cfg: dict[str, Any], n: int, mla: bool) -> tuple[tuple[str, ...], int | None]:
    """Each layer's kind and the sliding window. The rules follow the model code:
    `layer_types` when given; Gemma 3's `sliding_window_pattern` (every Nth layer global);
    Qwen3-Next's `full_attention_interval`; Qwen2/3's `use_sliding_window` switch; a bare
    `sliding_window` (Mistral 7B v0.1) windows every layer, which is also what vLLM does
    when no layer_types say otherwise (engine/arg_utils.py, CacheConfig.sliding_window)."""
    window = _get(cfg, "sliding_window")
    if window == 0:  # some checkpoints say 0 for "no window" (vLLM treats it as None)
        window = None
    if cfg.get("use_sliding_window") is False:
        window = None
    types = cfg.get("layer_types")
    if types:
        if len(types) != n:
            raise ConfigError(f"layer_types has {len(types)} entries for {n} layers")
        kinds = []
        for i, t in enumerate(types):
            if t not in _LAYER_TYPE_NAMES:
                raise ConfigError(f"layer_types[{i}] is {t!r}, not a kind this planner knows")
            kinds.append(_LAYER_TYPE_NAMES[t])
        if SLIDING in kinds and not window:
            raise ConfigError("layer_types has sliding_attention layers but no sliding_window")
        if not window:
            kinds = [FULL if k == SLIDING else k for k in kinds]
    elif interval := cfg.get("full_attention_interval"):
        kinds = [FULL if (i + 1) % interval == 0 else LINEAR for i in range(n)]
    elif (pattern := cfg.get("sliding_window_pattern")) and window:
        kinds = [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n)]
    elif window and cfg.get("use_sliding_window") and cfg.get("max_window_layers") is not None:
        # Qwen2-style: layers from max_window_layers on use the window
        kinds = [SLIDING if i >= cfg["max_window_layers"] else FULL for i in range(n)]
    elif window:
        kinds = [SLIDING] * n
    else:
        kinds = [FULL] * n
    if mla:
        kinds = [MLA if k == FULL else k for k in kinds]
    return tuple(kinds), (window if SLIDING in kinds else None)


def _moe_layers(cfg: dict[str, Any], n: int, experts: int) -> tuple[bool, ...]:
    """Which layers hold experts: DeepSeek's first_k_dense_replace (and moe_layer_freq),
    Qwen-MoE's mlp_only_layers and decoder_sparse_step; otherwise every layer."""
    if not experts:
        return (False,) * n
    first_dense = int(_get(cfg, "first_k_dense_replace", default=0))
    dense_only = set(_get(cfg, "mlp_only_layers", default=[]) or [])
    step = int(_get(cfg, "decoder_sparse_step", default=1)) or 1
    freq = int(_get(cfg, "moe_layer_freq", default=1)) or 1
    return tuple(i >= first_dense and i not in dense_only and (i + 1) % step == 0
                 and (i - first_dense) % freq == 0 for i in range(n))


def from_hf_config(config: dict[str, Any], name: str = "model") -> ModelSpec:
    """A ModelSpec from a Hugging Face config.json dict (raises ConfigError naming the
    missing or unusable field)."""
    cfg = text_config(config)
    n = int(_need(cfg, "num_hidden_layers", "n_layer", "num_layers"))
    hidden = int(_need(cfg, "hidden_size", "n_embd", "d_model"))
    heads = int(_need(cfg, "num_attention_heads", "n_head"))
    kv_heads = int(_get(cfg, "num_key_value_heads", default=heads))
    head_dim = int(_get(cfg, "head_dim", default=hidden // heads))
    mla = bool(_get(cfg, "kv_lora_rank"))
    experts = int(_get(cfg, "num_experts", "num_local_experts", "n_routed_experts", default=0))
    kinds, window = _layer_kinds(cfg, n, mla)
    quant = cfg.get("quantization_config") or {}
    moe_inter = int(_get(cfg, "moe_intermediate_size", default=0)) or (
        int(_get(cfg, "intermediate_size", default=0)) if experts else 0)
    shared_inter = int(_get(cfg, "shared_expert_intermediate_size", default=0))
    if not shared_inter and _get(cfg, "n_shared_experts"):
        shared_inter = int(cfg["n_shared_experts"]) * moe_inter
    spec = ModelSpec(
        name=name,
        model_type=str(_get(cfg, "model_type", default="unknown")),
        num_layers=n, hidden_size=hidden, num_heads=heads, num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=int(_need(cfg, "vocab_size")),
        intermediate_size=int(_get(cfg, "intermediate_size", "ffn_dim", default=4 * hidden)),
        tie_word_embeddings=bool(_get(cfg, "tie_word_embeddings", default=False)),
        layer_kinds=kinds, sliding_window=window,
        dtype=str(_get(cfg, "torch_dtype", "dtype", default="bfloat16")),
        max_position_embeddings=_get(cfg, "max_position_embeddings"),
        kv_lora_rank=int(_get(cfg, "kv_lora_rank", default=0)),
        qk_rope_head_dim=int(_get(cfg, "qk_rope_head_dim", default=0)),
        qk_nope_head_dim=int(_get(cfg, "qk_nope_head_dim", default=0)),
        v_head_dim=int(_get(cfg, "v_head_dim", default=0)),
        q_lora_rank=int(_get(cfg, "q_lora_rank", default=0) or 0),
        num_experts=experts,
        experts_per_token=int(_get(cfg, "num_experts_per_tok", "experts_per_token",
                                   "moe_topk", default=0)),
        moe_intermediate_size=moe_inter,
        shared_expert_intermediate_size=shared_inter,
        moe_layers=_moe_layers(cfg, n, experts),
        linear_num_key_heads=int(_get(cfg, "linear_num_key_heads", default=0)),
        linear_num_value_heads=int(_get(cfg, "linear_num_value_heads", default=0)),
        linear_key_head_dim=int(_get(cfg, "linear_key_head_dim", default=0)),
        linear_value_head_dim=int(_get(cfg, "linear_value_head_dim", default=0)),
        linear_conv_kernel_dim=int(_get(cfg, "linear_conv_kernel_dim", default=0)),
        quant_method=quant.get("quant_method") if isinstance(quant, dict) else None,
    )
    if LINEAR in kinds and not (spec.linear_num_value_heads and spec.linear_key_head_dim):
        raise ConfigError("linear-attention layers need linear_num_key_heads, "
                          "linear_num_value_heads, linear_key_head_dim, linear_value_head_dim")
    if experts and not spec.experts_per_token:
        raise ConfigError("a mixture-of-experts config needs num_experts_per_tok")
    return _with_params(spec, cfg)


# -- parameter count ------------------------------------------------------------------------
def _attention_params(m: ModelSpec, cfg: dict[str, Any], kind: str) -> tuple[int, int]:
    """(matmul weights, other) of one attention layer."""
    h = m.hidden_size
    if kind == MLA:
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        if m.q_lora_rank:
            q = h * m.q_lora_rank + m.q_lora_rank * m.num_heads * qk
            other = m.q_lora_rank  # q_a_layernorm
        else:
            q = h * m.num_heads * qk
            other = 0
        kv = h * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank * m.num_heads * (
            m.qk_nope_head_dim + m.v_head_dim)
        o = m.num_heads * m.v_head_dim * h
        return q + kv + o, other + m.kv_lora_rank  # kv_a_layernorm
    if kind == LINEAR:  # gated delta net (Qwen3-Next)
        nk, nv = m.linear_num_key_heads, m.linear_num_value_heads
        dk, dv = m.linear_key_head_dim, m.linear_value_head_dim
        conv_dim = 2 * nk * dk + nv * dv
        mats = h * (2 * nk * dk + 2 * nv * dv) + h * 2 * nv + nv * dv * h
        other = conv_dim * m.linear_conv_kernel_dim + 2 * nv + dv
        return mats, other
    q_out = m.num_heads * m.head_dim
    kv_out = m.num_kv_heads * m.head_dim
    gated = bool(cfg.get("attn_output_gate"))  # Qwen3-Next: q_proj also emits a gate
    mats = h * q_out * (2 if gated else 1) + 2 * h * kv_out + q_out * h
    other = 0
    if m.model_type == "qwen2" or cfg.get("attention_bias"):
        other += q_out + 2 * kv_out
        if cfg.get("attention_bias") and m.model_type in {"gpt_oss"}:
            other += h  # o_proj bias
    if m.model_type in {"qwen3", "qwen3_moe", "qwen3_next", "gemma3", "gemma3_text"}:
        other += 2 * m.head_dim  # q_norm, k_norm
    if m.model_type == "gpt_oss":
        other += m.num_heads  # attention sinks
    return mats, other


def _with_params(m: ModelSpec, cfg: dict[str, Any]) -> ModelSpec:
    h, gated_mlp = m.hidden_size, 3  # gate, up, down
    linear = experts = active_experts = other = 0
    norms_per_layer = 4 if m.model_type.startswith("gemma") else 2
    expert_bias = m.model_type == "gpt_oss"
    for i, kind in enumerate(m.layer_kinds):
        mats, extra = _attention_params(m, cfg, kind)
        linear += mats
        other += extra + norms_per_layer * h
        if m.moe_layers and m.moe_layers[i]:
            per_expert = gated_mlp * h * m.moe_intermediate_size
            if expert_bias:
                per_expert += 2 * m.moe_intermediate_size + h
            experts += m.num_experts * per_expert
            active_experts += m.experts_per_token * per_expert
            other += h * m.num_experts + (m.num_experts if expert_bias else 0)  # router
            if m.model_type.startswith("deepseek"):
                other += m.num_experts if m.model_type == "deepseek_v3" else 0  # score bias
            if m.shared_expert_intermediate_size:
                linear += gated_mlp * h * m.shared_expert_intermediate_size
                if m.model_type in {"qwen3_next", "qwen2_moe"}:
                    other += h  # shared_expert_gate
        else:
            linear += gated_mlp * h * m.intermediate_size
    embedding = m.vocab_size * h
    lm_head = 0 if m.tie_word_embeddings else m.vocab_size * h
    other += h  # final norm
    counts = ParamCounts(linear=linear, experts=experts, embedding=embedding, lm_head=lm_head,
                         other=other, active_experts=active_experts)
    object.__setattr__(m, "params", counts)
    return m
