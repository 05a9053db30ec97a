"""Physics checks: the bandwidth decode achieved, against the hardware's peak, with figures
worked out by hand from the catalog's Llama 3.1 8B (8,030,261,248 parameters, of which
128,256 x 4,096 = 525,336,576 are the input embedding, which decode gathers a row of and
does not read; 32 layers x 8 KV heads x 128 dims x K and V x 2 bytes = 131,072 bytes of
KV per token in bf16)."""

from __future__ import annotations

import pytest

from servescope.capacity import catalog
from servescope.capacity.physics import (
    BEATS_BOUND,
    cpu_hardware,
    decode_check,
    hardware_for_gpu_name,
    summary_check,
)

WEIGHTS = 2 * (8_030_261_248 - 525_336_576)  # 15,009,849,344 bytes read per step
KV_PER_TOKEN = 131_072


@pytest.fixture(scope="module")
def llama():
    return catalog.model("llama-3.1-8b")


def test_half_the_bound_is_half_the_bandwidth(llama):
    h100 = catalog.hardware("h100-sxm")  # 3,350 GB/s
    r = decode_check(llama, h100, time_per_token_ms=9.0, batch=1, context=1000)
    total = WEIGHTS + 1000 * KV_PER_TOKEN  # 15,140,921,344 bytes
    assert r["weight_bytes_per_step"] == WEIGHTS
    assert r["kv_bytes_per_step"] == 1000 * KV_PER_TOKEN
    assert r["bytes_per_step"] == total
    assert r["bound_ms"] == pytest.approx(total / 3350e9 * 1e3)  # 4.5197 ms
    assert r["achieved_gbs"] == pytest.approx(total / 9e-3 / 1e9)  # 1,682.3 GB/s
    assert r["utilization"] == pytest.approx(total / 9e-3 / 3350e9)  # 50.2%
    assert not r["beats_bound"]
    assert "50% of h100-sxm's 3,350 GB/s" in r["line"]


def test_a_batch_reads_the_weights_once_and_every_sequences_kv(llama):
    r = decode_check(llama, catalog.hardware("h100-sxm"), 10.0, batch=8, context=2000)
    assert r["bytes_per_step"] == WEIGHTS + 8 * 2000 * KV_PER_TOKEN


def test_faster_than_the_bound_is_flagged(llama):
    r = decode_check(llama, catalog.hardware("l4"), 20.0, batch=1, context=100)  # 300 GB/s
    # 15.02 GB at 300 GB/s cannot take less than 50 ms
    assert r["bound_ms"] == pytest.approx((WEIGHTS + 100 * KV_PER_TOKEN) / 300e9 * 1e3)
    assert r["beats_bound"] and r["utilization"] > 2.5
    assert BEATS_BOUND in r["line"]
    assert "prefix caching, speculative decoding, or a measurement error" in BEATS_BOUND


def test_tensor_parallel_adds_the_bandwidths(llama):
    one = decode_check(llama, catalog.hardware("a100-80gb"), 10.0, 1, 1000)
    two = decode_check(llama, catalog.hardware("a100-80gb"), 10.0, 1, 1000, tp=2)
    assert two["peak_gbs"] == 2 * 2039
    assert two["utilization"] == pytest.approx(one["utilization"] / 2)


def test_cpu_bandwidth_is_the_users(llama):
    cpu = cpu_hardware(50)
    assert cpu.bandwidth_gbs == 50 and cpu.key == "cpu"
    r = decode_check(llama, cpu, 400.0, 1, 1000)
    assert r["utilization"] == pytest.approx((WEIGHTS + 1000 * KV_PER_TOKEN) / 0.4 / 50e9)
    with pytest.raises(ValueError, match="--bandwidth-gbs"):
        cpu_hardware(0)


def test_nvml_names_map_to_the_catalog():
    assert hardware_for_gpu_name("NVIDIA H100 80GB HBM3") == "h100-sxm"
    assert hardware_for_gpu_name("NVIDIA H100 PCIe") == "h100-pcie"
    assert hardware_for_gpu_name("NVIDIA A100-SXM4-80GB") == "a100-80gb"
    assert hardware_for_gpu_name("NVIDIA A100-PCIE-40GB") == "a100-40gb"
    assert hardware_for_gpu_name("NVIDIA L4") == "l4"
    assert hardware_for_gpu_name("NVIDIA L40S") == "l40s"
    assert hardware_for_gpu_name("NVIDIA H200") == "h200"
    assert hardware_for_gpu_name("NVIDIA GeForce RTX 4090") == "rtx-4090"
    assert hardware_for_gpu_name("Tesla T4") is None
    for name in ("h100-sxm", "h100-pcie", "a100-80gb", "l4", "h200", "rtx-4090"):
        catalog.hardware(name)  # every mapped name is in the catalog


def test_a_run_summary_gives_token_time_batch_and_context(llama):
    summary = {"requests_ok": 10, "prompt_tokens_total": 9000, "output_tokens_total": 2000,
               "tpot_ms": {"p50": 9.0}, "itl_ms": {"p50": 8.0},
               "server": {"running_max": 4}}
    r = summary_check(summary, llama, catalog.hardware("h100-sxm"))
    # context: 900 prompt + 200 / 2 output = 1,000 tokens; batch 4 from the server
    assert r["batch"] == 4 and r["context"] == 1000 and r["time_per_token_ms"] == 9.0
    assert r["bytes_per_step"] == WEIGHTS + 4 * 1000 * KV_PER_TOKEN
    assert summary_check({"requests_ok": 0}, llama, catalog.hardware("l4")) is None


def test_the_run_page_check_reads_the_served_folder_and_nvmls_gpu(tmp_path):
    import json

    from servescope.dashboard.run_checks import physics_check

    (tmp_path / "config.json").write_text(
        json.dumps(catalog.models()["llama-3.1-8b"]["config"]))
    summary = {"requests_ok": 10, "prompt_tokens_total": 9000, "output_tokens_total": 2000,
               "tpot_ms": {"p50": 9.0}, "server": {"running_max": 2}}
    check = physics_check(summary, {"model_path": str(tmp_path)}, ["NVIDIA H100 80GB HBM3"])
    assert check["hardware"] == "h100-sxm" and check["batch"] == 2
    assert check["context"] == 1000 and not check["beats_bound"]
    # a CPU needs its bandwidth; without it (or the model) there is nothing to say
    assert physics_check(summary, {"model_path": str(tmp_path)}, []) is None
    assert physics_check(summary, {"model_path": str(tmp_path)}, [], 20.0)["hardware"] == "cpu"
    assert physics_check(summary, None, ["NVIDIA L4"]) is None
