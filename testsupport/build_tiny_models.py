"""Build tiny random-weights models of the architectures whose KV cache the capacity
planner sizes differently, for checking its numbers against the real vLLM CPU server.

Run with the vLLM environment's Python (it needs torch and transformers, which servescope's
own environment never has):  ENV/bin/python build_tiny_models.py OUT_DIR [NAME ...]

Each model gets its own folder OUT_DIR/NAME with config.json, safetensors weights and the
tokenizer servescope's tiny Qwen2 uses (a byte-level BPE trained offline, ChatML template).
The weights are random: the text is noise, the server's KV accounting is the real thing.

- qwen3       head_dim 128 while hidden / heads is 64 (the planner must read head_dim)
- mistral-sw  every layer windowed at 256 tokens (Mistral 7B v0.1's shape)
- qwen3-moe   8 experts, 2 per token
- deepseek-v2 MLA: one 512 + 64 latent per token and layer (bfloat16; vLLM's CPU MLA
              kernel refuses a smaller latent, and the router needs n_group/topk_group)
- gemma3      5 sliding-window layers to 1 full-attention layer (a hybrid KV layout)
- qwen3-next  3 gated-delta-net (linear attention) layers to 1 full-attention layer
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "servescope" / "engines"))
import build_tiny_qwen2  # the shared tokenizer recipe (found on the path above)

VOCAB = build_tiny_qwen2.VOCAB
COMMON = dict(vocab_size=VOCAB, hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=4096, tie_word_embeddings=True)


def _qwen3() -> transformers.PreTrainedModel:
    cfg = transformers.Qwen3Config(**COMMON, head_dim=128, intermediate_size=512,
                                   num_hidden_layers=4)
    return transformers.Qwen3ForCausalLM(cfg)


def _mistral_sw() -> transformers.PreTrainedModel:
    cfg = transformers.MistralConfig(**COMMON, intermediate_size=512, num_hidden_layers=4,
                                     sliding_window=256)
    return transformers.MistralForCausalLM(cfg)


def _qwen3_moe() -> transformers.PreTrainedModel:
    cfg = transformers.Qwen3MoeConfig(**COMMON, head_dim=64, intermediate_size=512,
                                      moe_intermediate_size=128, num_experts=8,
                                      num_experts_per_tok=2, decoder_sparse_step=1,
                                      mlp_only_layers=[], num_hidden_layers=4)
    return transformers.Qwen3MoeForCausalLM(cfg)


def _deepseek_v2() -> transformers.PreTrainedModel:
    cfg = transformers.DeepseekV2Config(
        **{**COMMON, "num_key_value_heads": 4}, intermediate_size=512, num_hidden_layers=2,
        kv_lora_rank=512, q_lora_rank=None, qk_rope_head_dim=64, qk_nope_head_dim=64,
        v_head_dim=64, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
        moe_intermediate_size=128, first_k_dense_replace=1, n_group=1, topk_group=1,
        torch_dtype="bfloat16")
    return transformers.DeepseekV2ForCausalLM(cfg).to(torch.bfloat16)


def _gemma3() -> transformers.PreTrainedModel:
    cfg = transformers.Gemma3TextConfig(
        **COMMON, head_dim=64, intermediate_size=512, num_hidden_layers=6, sliding_window=128,
        layer_types=["sliding_attention"] * 5 + ["full_attention"])
    return transformers.Gemma3ForCausalLM(cfg)


def _qwen3_next() -> transformers.PreTrainedModel:
    cfg = transformers.Qwen3NextConfig(
        **COMMON, head_dim=64, intermediate_size=512, num_hidden_layers=4,
        full_attention_interval=4, linear_num_key_heads=2, linear_num_value_heads=4,
        linear_key_head_dim=64, linear_value_head_dim=64, linear_conv_kernel_dim=4,
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=128,
        shared_expert_intermediate_size=128, decoder_sparse_step=1, mlp_only_layers=[])
    return transformers.Qwen3NextForCausalLM(cfg)


BUILDERS: dict[str, Callable[[], transformers.PreTrainedModel]] = {
    "qwen3": _qwen3, "mistral-sw": _mistral_sw, "qwen3-moe": _qwen3_moe,
    "deepseek-v2": _deepseek_v2, "gemma3": _gemma3, "qwen3-next": _qwen3_next,
}


def build(out: Path, names: list[str]) -> None:
    unknown = sorted(set(names) - set(BUILDERS))
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; known: {sorted(BUILDERS)}")
    with tempfile.TemporaryDirectory() as tmp:
        # the tiny Qwen2 build trains the tokenizer; its files are copied into every model
        build_tiny_qwen2.build(Path(tmp))
        tokenizer_files = [p for p in Path(tmp).iterdir()
                           if p.name.startswith(("tokenizer", "special_tokens", "chat_template"))]
        for name in names:
            target = out / name
            if (target / "servescope-model.json").exists():
                continue
            target.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(0)
            model = BUILDERS[name]()
            model.save_pretrained(target)
            for f in tokenizer_files:
                shutil.copy(f, target / f.name)
            (target / "servescope-model.json").write_text(json.dumps(
                {"builder": "build_tiny_models", "name": name,
                 "parameters": model.num_parameters()}))


if __name__ == "__main__":
    build(Path(sys.argv[1]), sys.argv[2:] or list(BUILDERS))
