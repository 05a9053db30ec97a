"""`servescope plan --model URL` against the REAL servers (tests/conftest.py's fixtures): the
model is read from each running server, and the KV capacity the server reports is shown
beside the planned one. On the vLLM CPU server, planned with the settings it reports
(max_model_len, block size, its 1 GiB KV space), the two must be equal."""

from __future__ import annotations

import json

import httpx

from helpers import servescope
from servescope.collectors.model_info import fetch_answers
from servescope.collectors.scrape import scrape


def _plan(*args: str) -> dict:
    res = servescope("plan", *args, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)


def test_vllm_plan_from_the_server_matches_the_kv_it_reports(vllm_server):
    labels = next(iter(scrape(vllm_server.url, "vllm").info["cache_config"].values()))
    reported = int(labels["num_gpu_blocks"]) * int(labels["block_size"])
    answers = fetch_answers(vllm_server.url)
    assert answers.runtime == "vllm" and answers.config_source.endswith("config.json")
    # the server runs the checkpoint in float32 (--dtype, which vLLM's API does not report:
    # read back from its KV memory and blocks)
    result = _plan("--model", vllm_server.url, "--gpu", "cpu-server")
    server = result["server"]
    assert server["runtime"] == "vllm" and server["served_model"] == "tiny-qwen2"
    assert server["kv_capacity_tokens"] == reported
    assert server["settings_used"]["kv_cache_space_gib"] == 1
    assert server["settings_used"]["dtype"] == "float32" == result["dtype"]
    assert server["settings_used"]["max_model_len"] == 2048 == result["max_model_len"]
    assert result["kv_capacity_tokens"] == reported
    assert server["planned_minus_reported_tokens"] == 0
    assert result["kv_bytes_per_token"] == server["kv_bytes_per_token_reported"]
    # the readable form says both
    res = servescope("plan", "--model", vllm_server.url, "--gpu", "cpu-server")
    assert res.returncode == 0, res.stderr
    assert f"reports KV      {reported:,} tokens" in res.stdout
    assert "(matches the server)" in res.stdout
    # --simulate searches the batching knobs on the model the server serves
    sim = _plan("--model", vllm_server.url, "--gpu", "cpu-server", "--prompt-tokens", "100",
                "--output-tokens", "50", "--concurrency", "4", "--simulate", "--sim-seqs",
                "1,4", "--sim-batched-tokens", "2048")["simulated_search"]
    assert [c["max_num_seqs"] for c in sim["candidates"]] == [4, 1]
    assert sim["label"] == "simulated, uncalibrated"


def test_ollama_plan_reads_the_gguf_architecture_from_api_show(ollama_server):
    result = _plan("--model", ollama_server.url, "--gpu", "cpu-server", "--num-parallel", "1",
                   "--kv-cache-space", "1")
    server = result["server"]
    assert server["runtime"] == "ollama"
    with httpx.Client(timeout=10) as client:
        show = client.post(f"{ollama_server.url}/api/show",
                           json={"model": server["served_model"]}).json()
    info = show["model_info"]
    arch = info["general.architecture"]
    assert result["model"]["layers"] == info[f"{arch}.block_count"]
    assert server["context_per_sequence"] == 512  # the Modelfile's num_ctx
    assert server["kv_capacity_tokens"] == 512 * 1  # num_ctx x OLLAMA_NUM_PARALLEL
    assert result["max_model_len"] == 512


def test_ollama_without_num_parallel_still_plans_and_says_the_kv_is_unknown(ollama_server):
    result = _plan("--model", ollama_server.url, "--gpu", "cpu-server", "--kv-cache-space", "1")
    assert result["server"]["kv_capacity_tokens"] is None
    assert "--num-parallel" in result["server"]["kv_how"]


def test_llamacpp_plan_reads_the_local_gguf(llamacpp_server):
    result = _plan("--model", llamacpp_server.url, "--gpu", "cpu-server",
                   "--kv-cache-space", "1")
    server = result["server"]
    with httpx.Client(timeout=10) as client:
        meta = client.get(f"{llamacpp_server.url}/v1/models").json()["data"][0]["meta"]
    assert server["runtime"] == "llamacpp"
    assert server["kv_capacity_tokens"] == 1024  # -c 1024 over 2 slots
    assert server["sequences"] == 2 and server["context_per_sequence"] == 512
    assert result["model"]["parameters_total"] == meta["n_params"]
    assert result["max_model_len"] == 512


def test_a_url_that_answers_nothing_is_a_clear_error():
    res = servescope("plan", "--model", "http://127.0.0.1:9", "--gpu", "cpu-server")
    assert res.returncode == 2
    assert "http://127.0.0.1:9" in res.stderr and "Traceback" not in res.stderr
