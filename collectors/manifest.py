"""The artifact manifest of a serving target: WHAT is served (weights, format, quantization,
context, template, sampling defaults, concurrency knob) and on what (host, GPU), built from
the server's own answers, so that a comparison compares artifacts, not model names.

One pure builder per runtime (from the JSON / text the server returned, unit-tested on the
captured payloads in tests/fixtures/), and `fetch_manifest`, which asks a live server.
A field the server does not expose is None, and the endpoints each field came from are
listed in `sources`: "unknown" stays visibly unknown instead of being guessed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import re
from pathlib import Path
from typing import Any

import httpx
import psutil

from servescope.collectors.scrape import ScrapeError, scrape

SCHEMA = "servescope.manifest/1"

# Ollama's context when neither the Modelfile nor the request sets num_ctx (0.5.x: 2048;
# newer versions pick it from the GPU's memory, so a newer server's answer is preferred).
OLLAMA_DEFAULT_NUM_CTX = 2048

# GGUF general.file_type (llama_ftype) -> the name llama.cpp prints.
GGUF_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
                   10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S",
                   15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}


# GGUF tokenizer.ggml.model (Ollama's /api/show) in llama.cpp's vocab_type order (1..5).
GGUF_TOKENIZERS = {"llama": "llama (SPM)", "gpt2": "gpt2 (BPE)", "bert": "bert (WPM)",
                   "t5": "t5 (UGM)", "rwkv": "rwkv"}


def tokenizer_name(kind: str | None, vocab: int | None) -> str | None:
    """One spelling for every runtime, so equal tokenizers compare equal."""
    if kind is None:
        return None
    return f"{kind}, {vocab} tokens" if vocab else kind


def sha256_text(text: str | None) -> str | None:
    """The hash of a chat template: equal hashes, the same prompt formatting."""
    return hashlib.sha256(text.encode()).hexdigest() if text else None


def _empty(runtime: str) -> dict[str, Any]:
    return {
        "schema": SCHEMA, "runtime": runtime, "runtime_version": None, "model": None,
        "model_path": None, "weights_format": None, "weights_digest": None,
        "quantization": None, "parameters": None, "architecture": None,
        "context_configured": None, "context_effective": None, "context_train": None,
        "kv_capacity_tokens": None, "kv_cache_dtype": None, "chat_template_sha256": None,
        "chat_template_format": None,
        "tokenizer": None, "sampling_defaults": {}, "concurrency_knob": None,
        "concurrency_value": None, "sources": [], "notes": [],
    }


def _int(v: Any) -> int | None:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


# -- vLLM -------------------------------------------------------------------------------
VLLM_MAX_NUM_SEQS_UNKNOWN = (
    "max_num_seqs: unknown. vLLM 0.32 shows it on no production endpoint (not in /v1/models, "
    "/version or the vllm:cache_config_info labels); only the development endpoint "
    "/server_info does, when the server runs with VLLM_SERVER_DEV_MODE=1 (read when it "
    "answers); else see the server's --max-num-seqs (its default depends on the device)")


def vllm_manifest(models: dict[str, Any] | None, cache_config: dict[str, str] | None,
                  version: dict[str, Any] | None = None, model: str | None = None,
                  server_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """From /v1/models, the `vllm:cache_config_info` labels of /metrics, /version and,
    where the server answers it, /server_info?config_format=json (the whole engine config;
    vLLM serves it only with VLLM_SERVER_DEV_MODE=1). vLLM serves a Hugging Face folder
    (safetensors) unless its root names a .gguf file."""
    m = _empty("vllm")
    data = [d for d in (models or {}).get("data") or [] if isinstance(d, dict)]
    entry = next((d for d in data if d.get("id") == model), data[0] if data else None)
    if entry:
        m["sources"].append("/v1/models")
        m["model"] = entry.get("id")
        m["model_path"] = entry.get("root")
        m["context_configured"] = m["context_effective"] = _int(entry.get("max_model_len"))
        root = str(entry.get("root") or "")
        m["weights_format"] = "gguf" if root.endswith(".gguf") else "safetensors"
        m["notes"].append("weights format inferred from /v1/models root (a folder: "
                          "safetensors); vLLM exposes no weights digest")
    if version and version.get("version"):
        m["runtime_version"] = str(version["version"])
        m["sources"].append("/version")
    if cache_config:
        m["sources"].append("/metrics vllm:cache_config_info")
        m["kv_capacity_tokens"] = _int(cache_config.get("kv_cache_size_tokens"))
        if m["kv_capacity_tokens"] is None:
            blocks, size = _int(cache_config.get("num_gpu_blocks")), \
                _int(cache_config.get("block_size"))
            if blocks and size:
                m["kv_capacity_tokens"] = blocks * size
        m["kv_cache_dtype"] = cache_config.get("cache_dtype")
        # max_num_seqs is not among these labels in 0.32; a build that adds it is read.
        seqs = _int(cache_config.get("max_num_seqs"))
        m["concurrency_value"] = seqs
    m["concurrency_knob"] = "max_num_seqs"
    scheduler = ((server_info or {}).get("vllm_config") or {}).get("scheduler_config")
    if isinstance(scheduler, dict) and _int(scheduler.get("max_num_seqs")) is not None:
        m["concurrency_value"] = _int(scheduler["max_num_seqs"])
        m["sources"].append("/server_info")
    if m["concurrency_value"] is None:
        m["notes"].append(VLLM_MAX_NUM_SEQS_UNKNOWN)
    _vllm_checkpoint(m)
    return m


def _vllm_checkpoint(m: dict[str, Any]) -> None:
    """vLLM's API does not say the weights' dtype or quantization; when the folder it
    names (/v1/models root) is on this machine, its config.json does."""
    root = Path(str(m["model_path"] or ""))
    config = root / "config.json"
    if not m["model_path"] or not config.is_file():
        m["notes"].append("quantization: not exposed by vLLM's API, and its model folder "
                          "is not on this machine")
        return
    with contextlib.suppress(OSError, ValueError):
        cfg = json.loads(config.read_text())
        quant = (cfg.get("quantization_config") or {}).get("quant_method")
        m["quantization"] = quant or cfg.get("torch_dtype") or cfg.get("dtype")
        m["architecture"] = (cfg.get("architectures") or [None])[0]
        m["context_train"] = _int(cfg.get("max_position_embeddings"))
        m["sources"].append("model folder config.json")
        shards = sorted(root.glob("*.safetensors"))
        if shards:
            digest = hashlib.sha256()
            for shard in shards:
                digest.update(hashlib.sha256(shard.read_bytes()).digest()
                              if shard.stat().st_size < 1 << 30 else shard.name.encode())
            m["weights_digest"] = f"sha256:{digest.hexdigest()}"
        tok = root / "tokenizer_config.json"
        if tok.is_file():
            tcfg = json.loads(tok.read_text())
            m["tokenizer"] = tokenizer_name(tcfg.get("tokenizer_class") or "tokenizer.json",
                                            _int(cfg.get("vocab_size")))
            m["chat_template_sha256"] = sha256_text(tcfg.get("chat_template"))
        jinja = root / "chat_template.jinja"  # where newer transformers save it
        if m["chat_template_sha256"] is None and jinja.is_file():
            m["chat_template_sha256"] = sha256_text(jinja.read_text())
        if m["chat_template_sha256"]:
            m["chat_template_format"] = "jinja"


# -- Ollama -----------------------------------------------------------------------------
_NUM_CTX = re.compile(r"^\s*num_ctx\s+(\d+)", re.MULTILINE)
_PARAM = re.compile(r"^\s*(\w+)\s+(.+?)\s*$", re.MULTILINE)


def ollama_manifest(version: dict[str, Any] | None, tags: dict[str, Any] | None,
                    show: dict[str, Any] | None, ps: dict[str, Any] | None,
                    model: str, num_parallel: int | None = None) -> dict[str, Any]:
    """From /api/version, /api/tags (the digest), /api/show (template, parameters, GGUF
    metadata) and /api/ps. Ollama allocates num_ctx x OLLAMA_NUM_PARALLEL of KV; neither
    API says OLLAMA_NUM_PARALLEL, so it is given (`num_parallel`) or left unknown."""
    m = _empty("ollama")
    m["model"] = model
    if version and version.get("version"):
        m["runtime_version"] = str(version["version"])
        m["sources"].append("/api/version")
    names = {model, model if ":" in model else f"{model}:latest"}
    tag = next((t for t in (tags or {}).get("models") or [] if t.get("name") in names), None)
    if tag:
        m["sources"].append("/api/tags")
        m["weights_digest"] = f"sha256:{tag['digest']}" if tag.get("digest") else None
        _ollama_details(m, tag.get("details") or {})
    if show:
        m["sources"].append("/api/show")
        _ollama_details(m, show.get("details") or {})
        info = show.get("model_info") or {}
        arch = info.get("general.architecture")
        m["architecture"] = arch
        m["parameters"] = _int(info.get("general.parameter_count")) or m["parameters"]
        m["context_train"] = _int(info.get(f"{arch}.context_length")) if arch else None
        ftype = _int(info.get("general.file_type"))
        if ftype is not None and m["quantization"] in (None, "unknown"):
            m["quantization"] = GGUF_FILE_TYPES.get(ftype, f"file_type {ftype}")
        m["tokenizer"] = tokenizer_name(GGUF_TOKENIZERS.get(str(info.get(
            "tokenizer.ggml.model"))) or info.get("tokenizer.ggml.model"),
            _int(info.get(f"{arch}.vocab_size")) if arch else None)
        m["chat_template_sha256"] = sha256_text(show.get("template"))
        # Ollama keeps a Go template (converted from the GGUF's Jinja one): its hash is
        # comparable with other Ollamas' only.
        m["chat_template_format"] = "go" if m["chat_template_sha256"] else None
        params = str(show.get("parameters") or "")
        found = _NUM_CTX.search(params)
        m["context_configured"] = int(found.group(1)) if found else None
        m["sampling_defaults"] = {k: v.strip('"') for k, v in _PARAM.findall(params)
                                  if k in ("temperature", "top_p", "top_k", "min_p",
                                           "repeat_penalty", "seed", "num_predict", "stop")}
    if m["context_configured"] is None:
        m["context_configured"] = OLLAMA_DEFAULT_NUM_CTX
        m["notes"].append(f"num_ctx not set in the Modelfile: Ollama's default "
                          f"({OLLAMA_DEFAULT_NUM_CTX} in 0.5.x; newer versions choose by GPU "
                          "memory); longer prompts are truncated silently")
    # Per request, the context is num_ctx (prompts longer are cut to fit).
    m["context_effective"] = m["context_configured"]
    if ps is not None:
        m["sources"].append("/api/ps")
        loaded = next((p for p in ps.get("models") or [] if p.get("name") in names), None)
        if loaded:
            m["notes"].append(f"loaded: {loaded.get('size')} bytes, "
                              f"{loaded.get('size_vram') or 0} in GPU memory")
    m["concurrency_knob"] = "OLLAMA_NUM_PARALLEL"
    m["concurrency_value"] = num_parallel
    if num_parallel is not None and m["context_configured"]:
        m["kv_capacity_tokens"] = m["context_configured"] * num_parallel
    else:
        m["notes"].append("OLLAMA_NUM_PARALLEL: not exposed by Ollama's API (unknown); KV "
                          "capacity is num_ctx x OLLAMA_NUM_PARALLEL")
    return m


def _ollama_details(m: dict[str, Any], d: dict[str, Any]) -> None:
    m["weights_format"] = d.get("format") or m["weights_format"]
    q = d.get("quantization_level")
    if q and q != "unknown":
        m["quantization"] = q
    m["architecture"] = d.get("family") or m["architecture"]
    if d.get("parameter_size") and m["parameters"] is None:
        m["parameters"] = d["parameter_size"]


# -- llama.cpp ---------------------------------------------------------------------------
def llamacpp_manifest(props: dict[str, Any] | None, slots: list[dict[str, Any]] | None,
                      models: dict[str, Any] | None = None) -> dict[str, Any]:
    """From /props (build, model path and alias, slots, n_ctx per slot, chat template,
    sampling defaults), /slots and /v1/models (GGUF metadata: parameters, trained
    context). llama-server splits -c over its slots: each request gets n_ctx of one slot."""
    m = _empty("llamacpp")
    if props:
        m["sources"].append("/props")
        gen = props.get("default_generation_settings") or {}
        params = gen.get("params") or {}
        m["runtime_version"] = props.get("build_info")
        m["model"] = props.get("model_alias") or props.get("model_path")
        m["model_path"] = props.get("model_path")
        path = str(props.get("model_path") or "")
        m["weights_format"] = "gguf" if path else None  # llama.cpp serves GGUF only
        ftype = str(props.get("model_ftype") or "")
        m["quantization"] = ftype.removeprefix("all ").removeprefix("mostly ") or None
        m["chat_template_sha256"] = sha256_text(props.get("chat_template"))
        m["chat_template_format"] = "jinja" if m["chat_template_sha256"] else None
        m["context_effective"] = _int(gen.get("n_ctx"))
        m["sampling_defaults"] = {k: params[k] for k in ("temperature", "top_k", "top_p",
                                                         "min_p", "repeat_penalty", "seed")
                                  if k in params}
        m["concurrency_value"] = _int(props.get("total_slots"))
    m["concurrency_knob"] = "--parallel (total_slots)"
    if slots:
        m["sources"].append("/slots")
        per_slot = [_int(s.get("n_ctx")) or 0 for s in slots]
        m["kv_capacity_tokens"] = sum(per_slot)
        m["concurrency_value"] = m["concurrency_value"] or len(slots)
        m["context_effective"] = m["context_effective"] or max(per_slot, default=None)
    elif m["context_effective"] and m["concurrency_value"]:
        m["kv_capacity_tokens"] = m["context_effective"] * m["concurrency_value"]
    if m["kv_capacity_tokens"]:
        m["context_configured"] = m["kv_capacity_tokens"]  # -c is the total over slots
    data = [d for d in (models or {}).get("data") or [] if isinstance(d, dict)]
    if data:
        m["sources"].append("/v1/models")
        meta = data[0].get("meta") or {}
        m["parameters"] = _int(meta.get("n_params"))
        m["context_train"] = _int(meta.get("n_ctx_train"))
        kind = list(GGUF_TOKENIZERS.values())[(_int(meta.get("vocab_type")) or 0) - 1] \
            if 1 <= (_int(meta.get("vocab_type")) or 0) <= len(GGUF_TOKENIZERS) else None
        m["tokenizer"] = tokenizer_name(kind, _int(meta.get("n_vocab")))
        m["notes"].append(f"weights file size {meta.get('size')} bytes; llama.cpp exposes "
                          "no weights digest")
    return m


# -- host --------------------------------------------------------------------------------
def host_manifest() -> dict[str, Any]:
    """This machine: CPU, cores, memory, and GPUs through NVML when there are any."""
    vm = psutil.virtual_memory()
    host: dict[str, Any] = {
        "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
        "cores_logical": psutil.cpu_count(), "cores_physical": psutil.cpu_count(False),
        "memory_bytes": vm.total, "gpus": [],
    }
    with contextlib.suppress(Exception):  # no NVML, no driver: no GPU, said as []
        import pynvml

        pynvml.nvmlInit()
        try:
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetName(h)
                host["gpus"].append({
                    "name": name.decode() if isinstance(name, bytes) else name,
                    "memory_bytes": pynvml.nvmlDeviceGetMemoryInfo(h).total,
                })
        finally:
            pynvml.nvmlShutdown()
    return host


def _owned_by_vllm(models: Any) -> bool:
    data = (models or {}).get("data") if isinstance(models, dict) else None
    return any(isinstance(d, dict) and d.get("owned_by") == "vllm" for d in data or [])


def _openai_compatible(m: dict[str, Any]) -> dict[str, Any]:
    """A server that is none of the three: only what /v1/models says is kept."""
    m.update(runtime="openai-compatible", weights_format=None, concurrency_knob=None,
             notes=["an OpenAI-compatible server of unknown runtime: only /v1/models "
                    "answered; weights, quantization and concurrency unknown"])
    return m


# -- live ---------------------------------------------------------------------------------
def _get(client: httpx.Client, url: str, **kw: Any) -> Any:
    method = "POST" if "json" in kw else "GET"
    try:
        resp = client.request(method, url, **kw)
        resp.raise_for_status()
        return resp.json()
    except (httpx.HTTPError, ValueError):
        return None


def detect_runtime(base: str, client: httpx.Client) -> str:
    """ollama (answers /api/version), llamacpp (answers /props) or vllm (anything else
    OpenAI-compatible)."""
    if _get(client, f"{base}/api/version") is not None:
        return "ollama"
    props = _get(client, f"{base}/props")
    if isinstance(props, dict) and "default_generation_settings" in props:
        return "llamacpp"
    return "vllm"


def fetch_manifest(base: str, runtime: str = "auto", model: str | None = None,
                   client: httpx.Client | None = None,
                   num_parallel: int | None = None) -> dict[str, Any]:
    """Ask the server at `base` what it serves. Never raises for a missing endpoint: the
    field stays None and the manifest's `sources` says what answered."""
    own = client is None
    client = client or httpx.Client(timeout=10.0)
    base = base.rstrip("/")
    try:
        detected = runtime == "auto"
        if detected:
            runtime = detect_runtime(base, client)
        if runtime == "ollama":
            tags = _get(client, f"{base}/api/tags")
            if model is None:
                listed = (tags or {}).get("models") or []
                model = listed[0]["name"] if listed else "unknown"
            m = ollama_manifest(_get(client, f"{base}/api/version"), tags,
                                _get(client, f"{base}/api/show", json={"model": model}),
                                _get(client, f"{base}/api/ps"), model, num_parallel)
        elif runtime == "llamacpp":
            m = llamacpp_manifest(_get(client, f"{base}/props"), _get(client, f"{base}/slots"),
                                  _get(client, f"{base}/v1/models"))
        else:
            cache = None
            with contextlib.suppress(ScrapeError):
                info = scrape(base, "vllm", client=client).info.get("cache_config") or {}
                cache = next(iter(info.values()), None)
            models = _get(client, f"{base}/v1/models")
            m = vllm_manifest(models, cache, _get(client, f"{base}/version"), model,
                              _get(client, f"{base}/server_info",
                                   params={"config_format": "json"}))
            if detected and cache is None and not _owned_by_vllm(models):
                m = _openai_compatible(m)
            elif runtime != "vllm":
                m["runtime"] = runtime
    finally:
        if own:
            client.close()
    m["url"] = base
    m["host"] = host_manifest()
    return m
