"""The capacity math on the catalog models, against numbers worked out by hand (each test
shows the arithmetic), published parameter counts, and vLLM's own accounting rules."""

from __future__ import annotations

import json
import math

import pytest

from servescope.capacity import catalog, perf
from servescope.capacity.kv import (
    kv_bytes_per_token,
    kv_heads_per_rank,
    linear_state_bytes,
    sequence_kv_bytes,
    vllm_layout,
)
from servescope.capacity.model import FULL, LINEAR, MLA, SLIDING, ConfigError, from_hf_config
from servescope.capacity.plan import PlanError, PlanInput, Workload, plan, setup
from servescope.capacity.vllm_budget import GIB, scheduler_defaults
from servescope.cli import main

BF16 = 2


def spec(name: str):
    return catalog.model(name).spec


# -- KV bytes per token ----------------------------------------------------------------------
def test_llama_3_1_8b_full_attention():
    # 32 layers x 2 (K and V) x 8 KV heads x 128 head_dim x 2 bytes
    assert kv_bytes_per_token(spec("llama-3.1-8b"), BF16) == 32 * 2 * 8 * 128 * 2 == 131072
    assert kv_bytes_per_token(spec("llama-3.1-8b"), 1) == 65536  # fp8 KV halves it


def test_deepseek_v3_mla_caches_one_latent():
    # 61 layers x (kv_lora_rank 512 + qk_rope_head_dim 64) x 2 bytes, no separate V
    m = spec("deepseek-v3")
    assert set(m.layer_kinds) == {MLA}
    assert kv_bytes_per_token(m, BF16) == 61 * (512 + 64) * 2 == 70272
    # not what 2 x heads x head_dim would give (128 heads x 192): 70x less
    assert 61 * 2 * 128 * 192 * 2 / 70272 > 40


def test_qwen3_head_dim_is_not_hidden_over_heads():
    # Qwen3-4B: hidden 2560 / 32 heads = 80, but head_dim is 128
    m = spec("qwen3-4b")
    assert m.hidden_size // m.num_heads == 80 and m.head_dim == 128
    assert kv_bytes_per_token(m, BF16) == 36 * 2 * 8 * 128 * 2 == 147456
    # Qwen3-0.6B: 1024 / 16 = 64, head_dim 128
    assert kv_bytes_per_token(spec("qwen3-0.6b"), BF16) == 28 * 2 * 8 * 128 * 2 == 114688


def test_sliding_window_layers_stop_at_the_window():
    # Gemma 3 27B: every 6th of 62 layers is global (10), the other 52 keep 1024 tokens
    m = spec("gemma-3-27b")
    assert m.count(FULL) == 10 and m.count(SLIDING) == 52 and m.sliding_window == 1024
    per_layer = 2 * 16 * 128 * 2  # 16 KV heads of 128
    assert kv_bytes_per_token(m, BF16) == 62 * per_layer
    assert kv_bytes_per_token(m, BF16, context=4096) == 10 * per_layer
    # a 32k-token sequence: global layers hold all of it, windowed ones 1024 tokens
    assert sequence_kv_bytes(m, 32768, BF16) == 10 * per_layer * 32768 + 52 * per_layer * 1024


def test_gpt_oss_alternates_window_and_full():
    m = spec("gpt-oss-120b")
    assert m.layer_kinds[:4] == (SLIDING, FULL, SLIDING, FULL) and m.sliding_window == 128
    per_layer = 2 * 8 * 64 * 2
    assert sequence_kv_bytes(m, 10000, BF16) == 18 * per_layer * 10000 + 18 * per_layer * 128


def test_mistral_7b_v0_1_windows_every_layer():
    # a bare sliding_window without layer_types: vLLM windows every layer
    m = spec("mistral-7b")
    assert set(m.layer_kinds) == {SLIDING} and m.sliding_window == 4096


def test_qwen3_next_linear_layers_hold_a_fixed_state():
    m = spec("qwen3-next-80b-a3b")
    assert m.count(LINEAR) == 36 and m.count(FULL) == 12
    # full layers: 12 x 2 x 2 KV heads x 256 x 2 bytes per token
    assert kv_bytes_per_token(m, BF16) == 12 * 2 * 2 * 256 * 2 == 24576
    # per linear layer: conv (2 x 16 x 128 + 32 x 128) x (4 - 1) x 2 bytes
    #                   + recurrent 32 value heads x 128 x 128 x 2 bytes
    state = (2 * 16 * 128 + 32 * 128) * 3 * 2 + 32 * 128 * 128 * 2
    assert linear_state_bytes(m, BF16, BF16) == state == 1_097_728
    # the same state whatever the length
    assert sequence_kv_bytes(m, 10, BF16, state) - 10 * 24576 \
        == sequence_kv_bytes(m, 100000, BF16, state) - 100000 * 24576 == 36 * state


def test_tensor_parallel_splits_kv_heads_and_replicates_below_one_per_rank():
    m = spec("llama-3.1-70b")  # 8 KV heads
    one_rank = 80 * 2 * 8 * 128 * 2
    assert kv_heads_per_rank(m, 8) == 1
    assert kv_bytes_per_token(m, BF16, tp=8) == one_rank  # split, nothing duplicated
    assert kv_heads_per_rank(m, 16) == 1  # 8 heads on 16 ranks: each keeps one
    assert kv_bytes_per_token(m, BF16, tp=16) == 2 * one_rank


# -- weights ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(catalog.models()))
def test_parameter_counts_match_the_published_ones(name):
    entry = catalog.models()[name]
    p = spec(name).params
    total = p.total + entry.get("vision_parameters", 0)
    active = p.active + entry.get("vision_parameters", 0)
    if entry.get("parameters_active_without_embedding"):
        active -= p.embedding
    assert total == pytest.approx(entry["parameters_total"], rel=0.02)
    assert active == pytest.approx(entry["parameters_active"], rel=0.02)


def test_exact_counts_where_the_checkpoint_says():
    # safetensors totals: Llama 3.1 8B, Mistral 7B; Qwen3-Coder-Next's published split
    assert spec("llama-3.1-8b").params.total == 8_030_261_248
    assert spec("mistral-7b").params.total == 7_241_732_096
    nxt = spec("qwen3-next-80b-a3b").params
    assert (nxt.total, nxt.active) == (79_674_391_296, 3_874_929_408)
    assert spec("gpt-oss-120b").params.total == 116_829_156_672


def test_moe_weights_count_every_expert():
    m = spec("qwen3-30b-a3b")
    fmt = catalog.weight_format("bf16")
    assert perf.weights_bytes(m, fmt) == m.params.total * 2
    assert m.params.total > 9 * m.params.active  # 30.5B stored, 3.35B used per token


def test_mxfp4_applies_to_the_experts_only():
    m = spec("gpt-oss-120b")
    # experts: 36 layers x 128 x (3 x 2880 x 2880 matrices + 2 x 2880 + 2880 biases)
    experts = 36 * 128 * (3 * 2880 * 2880 + 2 * 2880 + 2880)
    assert m.params.experts == experts == 114_701_598_720
    rest = m.params.total - experts
    expected = math.ceil(experts * 4.25 / 8 + rest * 2)
    assert perf.weights_bytes(m, catalog.weight_format("mxfp4")) == expected
    assert expected / 1e9 == pytest.approx(65.19, abs=0.01)  # the ~65 GB checkpoint


def test_awq_keeps_embeddings_and_head_in_bf16():
    m = spec("llama-3.1-8b")
    p = m.params
    awq = perf.weights_bytes(m, catalog.weight_format("awq"))
    assert awq == math.ceil(p.linear * 4.15625 / 8 + (p.total - p.linear) * 2)
    gguf = perf.weights_bytes(m, catalog.weight_format("q4_k_m"))
    assert gguf == math.ceil(p.total * 4.8944 / 8)  # llama.cpp's 4.58 GiB file
    assert gguf / GIB == pytest.approx(4.58, abs=0.01)


# -- vLLM's blocks ---------------------------------------------------------------------------
def test_cpu_capacity_of_the_tiny_qwen2_as_logged_here():
    # servescope's tiny Qwen2 (4 layers, 2 KV heads of 64, float32) with
    # VLLM_CPU_KVCACHE_SPACE=1 logged "CPU KV cache size: 262,144 tokens, Maximum
    # concurrency for 2,048 tokens per request: 128.00x" on this machine:
    # block of 128 tokens = 4 layers x 128 x 2 x 2 x 64 x 4 bytes = 524,288 bytes;
    # 1 GiB / 524,288 = 2048 blocks; 2048 tokens = 16 blocks; 2048 / 16 x 2048 tokens.
    cfg = {"model_type": "qwen2", "num_hidden_layers": 4, "hidden_size": 256,
           "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 512,
           "vocab_size": 1024, "tie_word_embeddings": True, "max_position_embeddings": 2048}
    info = catalog.ModelInfo(spec=from_hf_config(cfg, "tiny-qwen2"), source="test")
    s = setup(PlanInput(model=info, hardware=catalog.hardware("cpu-server"), dtype="float32",
                        max_model_len=2048, max_num_seqs=8, kv_cache_space_gib=1), 1)
    assert (s.layout.block_size, s.layout.bytes_per_block) == (128, 524288)
    assert (s.cap.num_blocks, s.cap.tokens) == (2048, 262144)
    assert f"{s.cap.max_concurrency:.2f}" == "128.00"


def test_capacity_tokens_use_vllms_float_arithmetic():
    # max_model_len 2000 needs 16 blocks of 128; 2048 blocks: 128.0 x 2000
    m = from_hf_config({"model_type": "qwen2", "num_hidden_layers": 4, "hidden_size": 256,
                        "num_attention_heads": 4, "num_key_value_heads": 2,
                        "vocab_size": 1024, "max_position_embeddings": 4096})
    info = catalog.ModelInfo(spec=m, source="test")
    s = setup(PlanInput(model=info, hardware=catalog.hardware("cpu-server"), dtype="float32",
                        max_model_len=2000, max_num_seqs=8, kv_cache_space_gib=1), 1)
    assert s.cap.tokens == int(2048 / 16 * 2000) == 256000


def test_sliding_window_request_needs_window_plus_in_flight_blocks():
    # Mistral 7B v0.1 on a GPU (block 16): one request needs the window (4096 - 1) plus the
    # tokens in flight (2 steps x 8192 batched tokens), capped at max_model_len, + 1 block
    s = setup(PlanInput(model=catalog.model("mistral-7b"), hardware=catalog.hardware("h100"),
                        max_model_len=32768), 1)
    assert s.max_num_batched_tokens == 8192
    assert s.cap.blocks_per_request == math.ceil(min(4095 + 2 * 8192, 32768) / 16) + 1 == 1281
    # a full-attention model of the same shape would need 32768 / 16 = 2048
    assert s.cap.max_concurrency > 1.5 * s.cap.num_blocks / 2048


def test_hybrid_groups_follow_vllm():
    # Gemma 3 27B: 52 windowed + 10 global layers -> groups of 10: the 52 split into 6
    # groups (layers[i::6]: 9, 9, 9, 9, 8, 8), the 10 global ones one group; a block is
    # the largest group's pages: 10 layers x 16 tokens x 2 x 16 heads x 128 x 2 bytes
    layout = vllm_layout(spec("gemma-3-27b"), BF16, 16)
    sizes = sorted((g.kind, g.layers) for g in layout.groups)
    assert sizes == [("full", 10)] + [("sliding", n) for n in (8, 8, 9, 9, 9, 9)]
    assert layout.bytes_per_block == 10 * 16 * 2 * 16 * 128 * 2
    # gpt-oss: 18 + 18 layers -> one group of each
    layout = vllm_layout(spec("gpt-oss-120b"), BF16, 16)
    assert sorted((g.kind, g.layers) for g in layout.groups) == [("full", 18), ("sliding", 18)]


def test_linear_attention_raises_the_block_size_to_hold_a_state():
    # Qwen3-Next, bf16, block 16: a full-attention page is 16 x 2 x 2 x 256 x 2 = 32 KiB, a
    # linear layer's state 1,097,728 bytes: the block grows to 16 x ceil(1097728 / 32768)
    layout = vllm_layout(spec("qwen3-next-80b-a3b"), BF16, 16, conv_bytes=2, ssm_bytes=2)
    assert layout.block_size == 16 * math.ceil(1_097_728 / (16 * 2048)) == 544
    assert {g.page_bytes for g in layout.groups} == {544 * 2048}
    assert sorted((g.kind, g.layers) for g in layout.groups) == \
        [("full", 12), ("linear", 12), ("linear", 12), ("linear", 12)]
    # with prefix caching (vLLM's default) a request keeps 2 states per linear group: at
    # max_model_len 32768, 32768 / 544 = 61 blocks of the full group + 3 x 2
    assert layout.blocks_per_request(32768, 8192) == math.ceil(32768 / 544) + 3 * 2
    no_cache = vllm_layout(spec("qwen3-next-80b-a3b"), BF16, 16, prefix_caching=False)
    assert no_cache.blocks_per_request(32768, 8192) == math.ceil(32768 / 544) + 3


def test_scheduler_defaults_follow_vllm():
    def defaults(name: str, max_model_len: int = 32768) -> tuple[int, int]:
        hw = catalog.hardware(name)
        d = scheduler_defaults(hw.memory_bytes, hw.arch, hw.key, 1, max_model_len)
        return d.max_num_seqs, d.max_num_batched_tokens

    assert defaults("h100-80gb") == (1024, 8192)
    assert defaults("a100-80gb") == (256, 2048)  # A100s keep the small defaults
    assert defaults("b200") == (1024, 16384)
    assert defaults("l4") == (256, 2048)
    assert defaults("cpu-server", 2000) == (128, 2048)
    assert defaults("cpu-server", 10) == (128, 1280)  # capped at max_num_seqs x max_model_len


# -- bounds ----------------------------------------------------------------------------------
def test_decode_bound_reads_the_weights_once_per_step():
    m, hw = spec("llama-3.1-8b"), catalog.hardware("h100")
    # one stream, empty context: every weight but the input embedding (a gather) in bf16
    d = perf.decode_bound(m, catalog.weight_format("bf16"), hw, 1, 1, 0, BF16)
    read = (8_030_261_248 - 128256 * 4096) * 2
    assert d.weight_bytes_read == read and d.kv_bytes_read == 0
    assert d.seconds_per_step == pytest.approx(read / 3.35e12)  # 4.48 ms
    # 64 streams of 4096 tokens add 64 x 4096 x 131072 bytes of KV
    d64 = perf.decode_bound(m, catalog.weight_format("bf16"), hw, 1, 64, 4096, BF16)
    assert d64.kv_bytes_read == 64 * 4096 * 131072


def test_moe_decode_reads_only_the_experts_the_batch_touches():
    m, hw, fmt = spec("qwen3-30b-a3b"), catalog.hardware("h100"), catalog.weight_format("bf16")
    one = perf.decode_bound(m, fmt, hw, 1, 1, 0, BF16).weight_bytes_read
    big = perf.decode_bound(m, fmt, hw, 1, 4096, 0, BF16).weight_bytes_read
    assert one < 0.2 * perf.weights_bytes(m, fmt)
    assert big == pytest.approx(perf.weights_bytes(m, fmt) - 151936 * 2048 * 2, rel=1e-3)
    assert perf.experts_touched(m, 1) == pytest.approx(8)


def test_prefill_bound_is_two_flops_per_parameter_plus_attention():
    m, hw = spec("llama-3.1-8b"), catalog.hardware("h100")
    b = perf.prefill_bound(m, catalog.weight_format("bf16"), hw, 1, 1000)
    linear_flops = 2 * (8_030_261_248 - 128256 * 4096) * 1000
    attention = 32 * 2 * 32 * (2 * 128) * (1000 * 1001 / 2)
    assert b.flops == pytest.approx(linear_flops + attention)
    assert b.seconds == pytest.approx(b.flops / 989.4e12)
    fp8 = perf.prefill_bound(m, catalog.weight_format("fp8"), hw, 1, 1000)
    assert fp8.tflops == 1978.9


# -- the plan --------------------------------------------------------------------------------
def test_plan_json_has_the_promised_fields():
    r = plan(PlanInput(model=catalog.model("llama-3.1-8b"), hardware=catalog.hardware("h100"),
                       max_model_len=32768, workload=Workload.fixed(1000, 300), concurrency=64))
    for key in ("weights_bytes", "kv_bytes_per_token", "kv_capacity_tokens",
                "max_concurrent_sequences", "recommended_max_num_seqs",
                "recommended_max_num_batched_tokens", "gpus_needed", "decode", "prefill",
                "assumptions"):
        assert key in r
    assert r["weights_bytes"] == 8_030_261_248 * 2
    assert r["kv_bytes_per_token"] == 131072
    # the KV pool holds requests of 1300 tokens = 82 blocks of 16 each
    assert r["max_concurrent_sequences"] == (r["num_blocks"] - 1) // 82
    assert r["kv_capacity_tokens"] == int(r["num_blocks"] / 2048 * 32768)
    # as many sequences as fit at the workload's length, under vLLM's default cap of 1024
    assert r["gpus_needed"] == 1
    assert r["recommended_max_num_seqs"] == min(r["max_concurrent_sequences"], 1024)
    assert r["vllm_log_line"].startswith("GPU KV cache size: ")
    json.dumps(r)


def test_workload_lengths_not_max_model_len_set_the_concurrency():
    base = dict(model=catalog.model("qwen3-8b"), hardware=catalog.hardware("l40s"),
                max_model_len=32768)
    short = plan(PlanInput(**base, workload=Workload.fixed(500, 200)))
    long_ = plan(PlanInput(**base))
    assert short["max_concurrent_sequences"] > 30 * long_["max_concurrent_sequences"]
    assert long_["max_concurrent_sequences"] == int(long_["vllm_max_concurrency"]) or \
        long_["max_concurrent_sequences"] == int(long_["vllm_max_concurrency"]) - 1


def test_workload_from_samples_takes_the_nearest_rank_p95():
    w = Workload.from_samples([(i, 10) for i in range(1, 101)], "test")
    assert (w.prompt_p95, w.total_p95, w.prompt_mean) == (95, 105, 50.5)


def test_a_model_too_big_says_what_is_missing_and_what_fits():
    inp = PlanInput(model=catalog.model("llama-3.1-70b"), hardware=catalog.hardware("h100"),
                    max_model_len=8192)
    with pytest.raises(PlanError) as err:
        plan(inp)
    text = str(err.value)
    assert "needs 131.4 GiB of weights" in text and "missing" in text
    # fp8 weights (67.7 GiB with bf16 embeddings and head) leave 1.5 GiB of KV: too little
    # for one 8192-token request (2.5 GiB), so the next format is suggested
    assert "--gpus 2 (tensor parallel 2)" in text and "--quantization awq on 1 GPU" in text
    assert err.value.flag == "--model"


def test_a_too_long_context_names_max_model_len():
    inp = PlanInput(model=catalog.model("llama-3.1-8b"), hardware=catalog.hardware("l4"),
                    max_model_len=131072)
    with pytest.raises(PlanError) as err:
        plan(inp)
    assert err.value.flag == "--max-model-len" and "--max-model-len " in str(err.value)


def test_more_gpus_for_more_traffic():
    inp = PlanInput(model=catalog.model("llama-3.1-70b"), hardware=catalog.hardware("h100"),
                    gpus=4, max_model_len=8192, workload=Workload.fixed(2000, 500),
                    concurrency=2000)
    r = plan(inp)
    # per tensor-parallel size: replicas of min(sequences its KV holds, 1024) for 2000
    options = {}
    for t in (2, 4, 8, 16):
        per = min(setup(inp, t).sequences_fitting(2500), 1024)
        options[t] = t * math.ceil(2000 / per)
    assert not setup(inp, 1).fits  # 131 GiB of weights on one GPU
    assert r["gpus_needed"] == min(options.values())
    assert r["sizing"]["tensor_parallel"] == min(options, key=lambda t: (options[t], t))
    assert r["max_concurrent_sequences"] < 2000 <= r["gpus_needed"] // \
        r["sizing"]["tensor_parallel"] * r["sizing"]["sequences_per_replica"]


def test_bad_config_names_the_field():
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        from_hf_config({"hidden_size": 8})
    with pytest.raises(ConfigError, match="layer_types"):
        from_hf_config({"num_hidden_layers": 2, "hidden_size": 8, "num_attention_heads": 2,
                        "vocab_size": 10, "layer_types": ["full_attention"]})


# -- the command -----------------------------------------------------------------------------
def test_cli_plan_json(capsys):
    assert main(["plan", "--model", "qwen3-32b", "--gpu", "h100-80gb", "--max-model-len",
                 "16384", "--scenario", "chat", "--rate", "5", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["kv_bytes_per_token"] == 64 * 2 * 8 * 128 * 2
    assert r["workload"]["source"].startswith("scenario chat")
    assert r["needed_concurrency"] >= 1


def test_cli_plan_text_and_a_config_path(tmp_path, capsys):
    cfg = dict(catalog.models()["qwen3-4b"]["config"])
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert main(["plan", "--model", str(tmp_path), "--gpu", "rtx-4090", "--max-model-len",
                 "8192", "--prompt-tokens", "800", "--output-tokens", "200"]) == 0
    out = capsys.readouterr().out
    assert "KV per token        147,456 B" in out and "vLLM will log" in out


@pytest.mark.parametrize("argv, wanted", [
    (["--model", "llama-3.1-8c", "--gpu", "h100"], "--model llama-3.1-8c: unknown model"),
    (["--model", "llama-3.1-8b", "--gpu", "h100-90gb"], "closest: h100-80gb"),
    (["--model", "llama-3.1-8b", "--gpu", "h100", "--quantization", "q4km"], "q4km"),
    (["--model", "llama-3.1-405b", "--gpu", "l4", "--max-model-len", "4096"], "missing"),
    (["--model", "llama-3.1-8b", "--gpu", "h100", "--tp", "3"], "--tp 3"),
    (["--model", "llama-3.1-8b", "--gpu", "h100", "--prompt-tokens", "5"], "--output-tokens"),
])
def test_cli_plan_bad_input_exits_2_naming_the_value(argv, wanted, capsys):
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err
    assert wanted in err and err.startswith("servescope plan: error:")


# -- catalogs --------------------------------------------------------------------------------
def test_every_catalog_value_names_its_source():
    for name, entry in catalog.models().items():
        assert entry["source"].startswith("https://huggingface.co/"), name
        assert entry["verified"] and entry["parameters_source"], name
        from_hf_config(entry["config"], name)  # parses
    for name, entry in catalog.hardware_table().items():
        assert name == name.lower() and " " not in name and "_" not in name, name
        assert entry["source"] and entry["bandwidth_gbs"] > 0 and entry["bf16_tflops"] > 0
    formats = catalog.quantization_table()
    for name, entry in {**formats["weights"], **formats["kv_cache"]}.items():
        assert entry["source"], name


def test_hardware_names_and_aliases():
    assert catalog.hardware("h100-80gb").key == catalog.hardware("H100").key == "h100-sxm"
    # where a vLLM log shows CUDA's total for the card, that figure
    assert catalog.hardware("h100-80gb").memory_bytes == int(79.22 * 2**30)
    # elsewhere nvidia-smi's total less the estimated driver reserve (1%, at least 0.5 GiB)
    a100 = 81920 * 2**20
    assert catalog.hardware("a100-80gb").memory_bytes == a100 - a100 // 100
    l4 = 23034 * 2**20
    assert catalog.hardware("l4").memory_bytes == l4 - 2**29
    assert catalog.hardware("cpu-server").memory_bytes == 512 * 10**9
    with pytest.raises(catalog.UnknownName, match="closest: rtx-4090"):
        catalog.hardware("rtx4090")


def test_a_conversation_resends_its_history():
    from servescope.capacity.workload import scenario_workload
    from servescope.loadgen.scenario import Scenario

    scenario = Scenario.model_validate({
        "name": "three-turns", "prompt_tokens": 100, "output_tokens": 20, "turns": 3,
        "stages": [{"concurrency": 1, "duration": "1s"}]})
    w = scenario_workload(scenario, samples=3000)
    # turns see 100, 100 + 120 = 220 and 100 + 240 = 340 prompt tokens
    assert w.prompt_mean == pytest.approx((100 + 220 + 340) / 3)
    assert (w.prompt_p95, w.total_p95, w.output_p95) == (340, 360, 20)


def test_release_accounting_rules():
    """Which vLLM release sizes the KV cache how (capacity/vllm_budget.accounting)."""
    from servescope.capacity.vllm_budget import accounting, parse_version

    assert parse_version("0.6.4.post1") == (0, 6, 4)
    assert parse_version("v0.11.2") == (0, 11, 2)
    old, early_v1, now = accounting("0.6.4"), accounting("0.8.5"), accounting()
    assert (old.engine, old.cuda_graphs_in_budget, old.tokens_from_blocks) == ("v0", False, True)
    assert (early_v1.engine, early_v1.cuda_graphs_in_budget) == ("v1", False)
    assert accounting("0.9.2", engine="v0").engine == "v0"
    assert now.cuda_graphs_in_budget and not now.tokens_from_blocks
    assert old.sampler_bytes_per_logit > now.sampler_bytes_per_logit
    with pytest.raises(ValueError, match="not of the form"):
        parse_version("latest")


def test_rope_table_and_mxfp4_padding_count_in_the_loaded_weights():
    """vLLM's "Model loading took" includes the rotary table; MXFP4 experts are padded."""
    info = catalog.model("llama-3.1-8b")
    s = setup(PlanInput(model=info, hardware=catalog.hardware("h100")), 1)
    assert s.budget["weights"] - s.weights == 131072 * 128 * 2  # cos_sin_cache, bf16
    oss = catalog.model("gpt-oss-20b")
    hopper = setup(PlanInput(model=oss, hardware=catalog.hardware("h100")), 1)
    assert hopper.budget["weights"] > hopper.weights + 0.5 * GIB  # 2880 -> 3072 x 2944
