"""A planner model read from a RUNNING server, and the KV capacity the server itself reports.

Pure: the collector (collectors/model_info.py) fetches the payloads, this module reads them.

- vLLM: `/v1/models` (id, root, max_model_len) and the `vllm:cache_config_info` labels of
  /metrics (block_size, num_gpu_blocks, cache_dtype, gpu_memory_utilization,
  kv_cache_memory_bytes). vLLM's API carries no architecture: it comes from the config.json
  of the folder /v1/models' root names, when that folder is readable here.
- Ollama: `/api/show`'s model_info is the GGUF metadata (`<arch>.block_count`,
  `<arch>.attention.head_count` ...), which holds the architecture; `details` the
  quantization. Its KV is num_ctx x OLLAMA_NUM_PARALLEL, and no API says the latter.
- llama.cpp: `/props` (model path, n_ctx per slot, total_slots) and `/v1/models` meta
  (n_params, n_ctx_train, n_embd, size); the architecture is the GGUF file's metadata, read
  when that file is on this machine. Its KV is n_ctx per slot x slots (the -c total).

The same GGUF-to-config mapping (`gguf_config`) serves Ollama and llama.cpp.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from servescope.capacity.catalog import ModelInfo, UnknownName, weight_format
from servescope.capacity.kv import vllm_layout
from servescope.capacity.model import ConfigError, from_hf_config

VLLM, OLLAMA, LLAMACPP = "vllm", "ollama", "llamacpp"

# GGUF general.architecture -> the Hugging Face model_type the parameter count knows.
GGUF_MODEL_TYPES = {
    "llama": "llama", "mistral3": "mistral", "qwen2": "qwen2", "qwen3": "qwen3",
    "qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "qwen3next": "qwen3_next",
    "gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3_text", "phi3": "phi3",
    "deepseek2": "deepseek_v3", "gpt-oss": "gpt_oss", "granite": "granite",
}
# Layers with a window when the GGUF gives only `attention.sliding_window`: llama.cpp
# hard-codes the pattern per architecture (every 6th layer global in Gemma 3, every other
# one in gpt-oss and Gemma 2).
GGUF_WINDOW_PATTERN = {"gemma3": 6, "gemma2": 2, "gpt-oss": 2}
# GGUF general.file_type (llama_ftype) -> the planner's weight format.
GGUF_FILE_FORMATS = {0: "fp32", 1: "fp16", 7: "gguf-q8_0", 15: "gguf-q4_k_m",
                     17: "gguf-q5_k_m", 18: "gguf-q6_k", 30: "gguf-iq4_xs", 32: "bf16"}
GGUF_DTYPES = {0: "float32", 1: "float16", 32: "bfloat16"}


@dataclass(frozen=True)
class ServerKV:
    """The KV cache as the server reports it: `tokens` in all (None when it does not say),
    `how` the arithmetic, `sequences` its parallel slots when it has a fixed number."""

    tokens: int | None
    how: str
    sequences: int | None = None
    context_per_sequence: int | None = None
    bytes: int | None = None  # the KV pool's memory, when reported (vLLM)

    @property
    def bytes_per_token(self) -> float | None:
        return self.bytes / self.tokens if self.bytes and self.tokens else None


@dataclass(frozen=True)
class LiveModel:
    """What a running server serves: its model for the planner (`info`, None with `missing`
    saying why), the KV it reports, and the settings the plan should follow unless the
    user gives their own (PlanInput field -> value)."""

    runtime: str
    served_name: str
    info: ModelInfo | None
    kv: ServerKV
    settings: dict[str, Any] = field(default_factory=dict)
    missing: str | None = None
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The JSON form `servescope plan --json` adds as "server"."""
        return {"runtime": self.runtime, "served_model": self.served_name,
                "model_source": self.info.source if self.info else None,
                "kv_capacity_tokens": self.kv.tokens, "kv_how": self.kv.how,
                "sequences": self.kv.sequences,
                "context_per_sequence": self.kv.context_per_sequence,
                "kv_bytes": self.kv.bytes, "settings": dict(self.settings),
                "missing": self.missing, "notes": list(self.notes)}


def _int(v: Any) -> int | None:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


def _one(v: Any) -> Any:
    """A GGUF field that may be per layer (an array): its largest value."""
    if isinstance(v, list | tuple):
        numbers = [x for x in v if isinstance(x, int | float)]
        return max(numbers) if numbers else None
    return v


# -- GGUF --------------------------------------------------------------------------------------
def gguf_config(meta: Mapping[str, Any], tensor_names: Collection[str] | None = None
                ) -> dict[str, Any]:
    """A Hugging Face-style config dict from GGUF metadata (Ollama's model_info, or the
    key/values of a .gguf file). `tensor_names`, when known, say whether the output head
    is its own tensor (tied embeddings otherwise). Raises ConfigError naming the key."""
    arch = meta.get("general.architecture")
    if not arch:
        raise ConfigError("GGUF metadata has no general.architecture")

    def get(key: str) -> Any:
        return _one(meta.get(f"{arch}.{key}"))

    def need(key: str) -> Any:
        value = get(key)
        if value is None:
            raise ConfigError(f"GGUF metadata has no {arch}.{key}")
        return value

    heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    vocab = get("vocab_size")
    if vocab is None and isinstance(meta.get("tokenizer.ggml.tokens"), list | tuple):
        vocab = len(meta["tokenizer.ggml.tokens"])
    if vocab is None:
        raise ConfigError(f"GGUF metadata has neither {arch}.vocab_size nor "
                          "tokenizer.ggml.tokens")
    cfg: dict[str, Any] = {
        "model_type": GGUF_MODEL_TYPES.get(str(arch), str(arch)),
        "num_hidden_layers": int(need("block_count")),
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv") or heads),
        "vocab_size": int(vocab),
        "max_position_embeddings": _int(get("context_length")),
    }
    if (ffn := get("feed_forward_length")) is not None:
        cfg["intermediate_size"] = int(ffn)
    ftype = _int(meta.get("general.file_type"))
    cfg["torch_dtype"] = GGUF_DTYPES.get(ftype, "bfloat16") if ftype is not None else "bfloat16"
    if tensor_names is not None:
        cfg["tie_word_embeddings"] = "output.weight" not in tensor_names
    rope = _int(get("rope.dimension_count"))
    if kv_lora := _int(get("attention.kv_lora_rank")):  # MLA (DeepSeek-V2/V3)
        key = _int(get("attention.key_length_mla")) or _int(get("attention.key_length"))
        cfg.update(kv_lora_rank=kv_lora, qk_rope_head_dim=rope or 0,
                   qk_nope_head_dim=max(0, (key or 0) - (rope or 0)),
                   v_head_dim=_int(get("attention.value_length_mla"))
                   or _int(get("attention.value_length")) or 0,
                   q_lora_rank=_int(get("attention.q_lora_rank")) or 0)
    elif (key := _int(get("attention.key_length"))) is not None:
        cfg["head_dim"] = key
    if window := _int(get("attention.sliding_window")):
        cfg["sliding_window"] = window
        if pattern := GGUF_WINDOW_PATTERN.get(str(arch)):
            n = cfg["num_hidden_layers"]
            cfg["layer_types"] = ["full_attention" if (i + 1) % pattern == 0
                                  else "sliding_attention" for i in range(n)]
    if experts := _int(get("expert_count")):
        cfg.update(num_experts=experts,
                   num_experts_per_tok=_int(get("expert_used_count")) or 0,
                   moe_intermediate_size=_int(get("expert_feed_forward_length"))
                   or cfg.get("intermediate_size", 0))
        if shared := _int(get("expert_shared_count")):
            per = _int(get("expert_shared_feed_forward_length")) or cfg["moe_intermediate_size"]
            cfg["shared_expert_intermediate_size"] = shared * per
        if dense := _int(get("leading_dense_block_count")):
            cfg["first_k_dense_replace"] = dense
    return cfg


def gguf_format(file_type: Any, quantization_level: str | None = None) -> str | None:
    """The planner's weight format of a GGUF: Ollama's quantization_level ("Q4_K_M"), else
    general.file_type; None when neither names one the catalog knows."""
    level = (quantization_level or "").strip().lower()
    if level and level != "unknown":
        key = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}.get(level, f"gguf-{level}")
        try:
            return weight_format(key).key
        except UnknownName:
            return None
    return GGUF_FILE_FORMATS.get(_int(file_type))  # type: ignore[arg-type]


def _from_gguf(meta: Mapping[str, Any], name: str, source: str,
               tensor_names: Collection[str] | None = None) -> tuple[ModelInfo | None, str | None]:
    try:
        spec = from_hf_config(gguf_config(meta, tensor_names), name=name)
    except ConfigError as exc:
        return None, f"{source}: {exc}"
    return ModelInfo(spec=spec, source=source), None


# -- vLLM --------------------------------------------------------------------------------------
def _vllm_entry(models: Mapping[str, Any] | None, model: str | None) -> dict[str, Any]:
    data = [d for d in (models or {}).get("data") or [] if isinstance(d, dict)]
    if not data:
        raise ConfigError("/v1/models lists no model")
    return next((d for d in data if d.get("id") == model), data[0])


def vllm_kv(cache_config: Mapping[str, str] | None) -> ServerKV:
    """vLLM's KV pool from cache_config_info: num_gpu_blocks x block_size tokens."""
    labels = cache_config or {}
    blocks, size = _int(labels.get("num_gpu_blocks")), _int(labels.get("block_size"))
    memory = _int(labels.get("kv_cache_memory_bytes"))
    if blocks and size:
        return ServerKV(blocks * size, f"num_gpu_blocks {blocks:,} x block_size {size}",
                        bytes=memory)
    if tokens := _int(labels.get("kv_cache_size_tokens")):
        return ServerKV(tokens, "kv_cache_size_tokens", bytes=memory)
    return ServerKV(None, "vllm:cache_config_info not on /metrics")


def from_vllm(models: Mapping[str, Any] | None, cache_config: Mapping[str, str] | None,
              config: Mapping[str, Any] | None = None, config_source: str | None = None,
              model: str | None = None, info: ModelInfo | None = None) -> LiveModel:
    """From /v1/models and the cache_config_info labels; the architecture from `config`
    (the config.json of /v1/models' root, read by the caller) or a resolved `info`."""
    entry = _vllm_entry(models, model)
    name = str(entry.get("id"))
    root = str(entry.get("root") or name)
    missing = None
    if info is None and config is not None:
        try:
            info = ModelInfo(spec=from_hf_config(dict(config), name=name),
                             source=config_source or f"{root}/config.json")
        except ConfigError as exc:
            missing = f"{config_source or root}: {exc}"
    if info is None and missing is None:
        missing = (f"vLLM's API carries no architecture and its model {root!r} (the root "
                   "/v1/models names) is neither a folder readable here, a catalog model nor "
                   "a Hugging Face id in the local cache")
    labels = cache_config or {}
    settings: dict[str, Any] = {}
    if mml := _int(entry.get("max_model_len")):
        settings["max_model_len"] = mml
    dtype = str(labels.get("cache_dtype") or "auto").lower()
    if dtype != "auto":
        settings["kv_cache_dtype"] = "fp8" if dtype.startswith("fp8") else dtype
    if (util := labels.get("gpu_memory_utilization")) not in (None, "None"):
        settings["gpu_memory_utilization"] = float(util)
    if block := _int(labels.get("block_size")):
        settings["block_size"] = block
    if labels.get("user_specified_block_size") == "True":  # --block-size, not a default
        settings["block_size_given"] = True
    memory = _int(labels.get("kv_cache_memory_bytes"))
    if memory and memory % 2**30 == 0:  # the CPU build's VLLM_CPU_KVCACHE_SPACE, in GiB
        settings["kv_cache_space_gib"] = memory // 2**30
    notes = []
    if info is not None and dtype == "auto" and (served := served_dtype(info, labels)):
        settings["dtype"] = served
        notes.append(f"dtype {served}: the only one whose KV blocks fill the server's "
                     "kv_cache_memory_bytes to its num_gpu_blocks (vLLM's API does not say)")
    if labels and labels.get("enable_prefix_caching") == "False":
        notes.append("prefix caching is off on this server")
    return LiveModel(VLLM, name, info, vllm_kv(cache_config), settings, missing, tuple(notes))


def served_dtype(info: ModelInfo, labels: Mapping[str, str]) -> str | None:
    """The model dtype a vLLM server runs (its KV cache dtype "auto" follows it), read back
    from the KV pool it reports: the one dtype whose block size divides its KV memory into
    exactly num_gpu_blocks blocks on one rank; None when that is not exactly one."""
    memory, blocks = _int(labels.get("kv_cache_memory_bytes")), _int(labels.get("num_gpu_blocks"))
    size = _int(labels.get("block_size"))
    if not (memory and blocks and size):
        return None
    found = [name for name, n in (("float32", 4), ("bfloat16", 2))
             if memory // vllm_layout(info.spec, n, size).bytes_per_block == blocks]
    return found[0] if len(found) == 1 else None


# -- Ollama ------------------------------------------------------------------------------------
def _ollama_num_ctx(show: Mapping[str, Any]) -> int | None:
    for line in str(show.get("parameters") or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "num_ctx":
            return _int(parts[1])
    return None


def from_ollama(show: Mapping[str, Any], model: str, num_parallel: int | None = None,
                default_num_ctx: int = 2048) -> LiveModel:
    """From POST /api/show (model_info: the GGUF metadata; details; the Modelfile's
    parameters). `num_parallel` is OLLAMA_NUM_PARALLEL, which no API reports."""
    meta = show.get("model_info") or {}
    details = show.get("details") or {}
    info, missing = _from_gguf(meta, model, f"Ollama /api/show model_info of {model}")
    num_ctx = _ollama_num_ctx(show)
    notes = []
    if num_ctx is None:
        num_ctx = default_num_ctx
        notes.append(f"num_ctx not set in the Modelfile: Ollama's default {default_num_ctx} "
                     "(0.5.x) assumed")
    if num_parallel:
        kv = ServerKV(num_ctx * num_parallel, f"num_ctx {num_ctx:,} x OLLAMA_NUM_PARALLEL "
                      f"{num_parallel}", num_parallel, num_ctx)
    else:
        kv = ServerKV(None, f"num_ctx {num_ctx:,} x OLLAMA_NUM_PARALLEL (not reported by "
                      "Ollama's API: give --num-parallel)", None, num_ctx)
    settings: dict[str, Any] = {"max_model_len": num_ctx}
    fmt = gguf_format(meta.get("general.file_type"), details.get("quantization_level"))
    if fmt:
        settings["quantization"] = fmt
    elif details.get("quantization_level") not in (None, "", "unknown"):
        notes.append(f"quantization {details['quantization_level']} is not in the catalog: "
                     "give --quantization")
    if details.get("parameter_size"):
        notes.append(f"Ollama says {details['parameter_size']} parameters")
    return LiveModel(OLLAMA, model, info, kv, settings, missing, tuple(notes))


# -- llama.cpp ---------------------------------------------------------------------------------
def from_llamacpp(props: Mapping[str, Any], models: Mapping[str, Any] | None = None,
                  gguf_meta: Mapping[str, Any] | None = None,
                  tensor_names: Collection[str] | None = None) -> LiveModel:
    """From /props and /v1/models; the architecture from the GGUF file's metadata
    (`gguf_meta`, read by the caller when /props' model_path is on this machine)."""
    gen = props.get("default_generation_settings") or {}
    per_slot = _int(gen.get("n_ctx"))
    slots = _int(props.get("total_slots"))
    path = str(props.get("model_path") or "")
    name = str(props.get("model_alias") or path or "model")
    data = [d for d in (models or {}).get("data") or [] if isinstance(d, dict)]
    meta = (data[0].get("meta") or {}) if data else {}
    if per_slot and slots:
        kv = ServerKV(per_slot * slots, f"n_ctx {per_slot:,} per slot x {slots} slots",
                      slots, per_slot)
    else:
        kv = ServerKV(None, "/props gives no n_ctx or total_slots", slots, per_slot)
    notes = []
    if meta:
        notes.append(f"llama.cpp says {meta.get('n_params')} parameters, trained context "
                     f"{meta.get('n_ctx_train')}, file {meta.get('size')} bytes")
    if gguf_meta:
        info, missing = _from_gguf(gguf_meta, name, f"GGUF metadata of {path}", tensor_names)
        fmt = gguf_format(gguf_meta.get("general.file_type"))
        if info is not None and meta.get("n_embd") and info.spec.hidden_size != meta["n_embd"]:
            notes.append(f"the GGUF's embedding_length {info.spec.hidden_size} differs from "
                         f"the server's n_embd {meta['n_embd']}")
    else:
        info, fmt = None, None
        missing = (f"llama.cpp's API carries no architecture and its model file {path!r} "
                   "is not readable on this machine")
    settings: dict[str, Any] = {}
    if per_slot:
        settings["max_model_len"] = per_slot
    if fmt:
        settings["quantization"] = fmt
    return LiveModel(LLAMACPP, name, info, kv, settings, missing, tuple(notes))
