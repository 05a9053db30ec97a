"""Hardware sizing with cost: GPUs of each kind for the traffic under the SLOs, cost per
hour and per million output tokens, the cheapest first; one GPU keeps the plan's output."""

from __future__ import annotations

import json

import pytest

from servescope.capacity import catalog, perf
from servescope.capacity.plan import PlanInput, Workload, sizing
from servescope.capacity.plan_cost import compare
from servescope.cli import main


def _inp(**kw) -> PlanInput:
    base = {"model": catalog.model("llama-3.1-8b"), "hardware": catalog.hardware("h100-sxm"),
            "workload": Workload.fixed(1000, 200)}
    return PlanInput(**(base | kw))


def test_cost_per_hour_and_per_million_output_tokens():
    gpus = [catalog.hardware(n) for n in ("l4", "a100-80gb", "h100-80gb")]
    rows = compare(_inp(rate=20.0), gpus, {"h100-sxm": 2.49, "a100-80gb": 1.6, "l4": 0.8},
                   {"ttft_ms": {"p95": 2000.0}, "itl_ms": {"p95": 50.0}})
    by = {r["gpu"]: r for r in rows}
    h100 = by["h100-sxm"]
    # 20 requests/s x 200 output tokens = 4,000 tokens/s = 14.4 M tokens per hour
    assert h100["output_tokens_per_s"] == pytest.approx(4000)
    assert h100["cost_per_hour"] == pytest.approx(2.49 * h100["gpus_needed"])
    assert h100["cost_per_million_output_tokens"] == pytest.approx(
        h100["cost_per_hour"] / 14.4)
    for r in rows:
        assert r["cost_per_hour"] == pytest.approx(r["price_per_gpu_hour"] * r["gpus_needed"])
    costs = [r["cost_per_hour"] for r in rows]
    assert costs == sorted(costs)  # cheapest first


def test_rows_without_a_price_follow_the_priced_ones():
    gpus = [catalog.hardware(n) for n in ("l4", "h100-sxm")]
    rows = compare(_inp(concurrency=16), gpus, {"l4": 0.8})
    assert [r["gpu"] for r in rows] == ["l4", "h100-sxm"]
    assert rows[1]["cost_per_hour"] is None and rows[1]["gpus_needed"] >= 1


def test_the_itl_slo_caps_the_batch_at_the_decode_bound():
    inp = _inp(concurrency=512)
    plain = sizing(inp)
    capped = sizing(inp, {"itl_ms": {"p95": 6.0}})
    s = perf.decode_bound  # the bound: weights once plus every sequence's KV per step
    spec, hw = inp.model.spec, inp.hardware
    fmt = catalog.weight_format("bf16")

    tp = capped["tensor_parallel"]

    def step_ms(batch: int) -> float:  # context: 1,000 prompt + 200 / 2 output tokens
        return s(spec, fmt, hw, tp, batch, 1100, 2, 0, 2).seconds_per_step * 1e3

    n = capped["sequences_per_replica"]
    assert step_ms(n) <= 6.0 < step_ms(n + 1)  # the largest batch within 6 ms
    assert n < plain["sequences_per_replica"]
    assert capped["replicas"] == -(-512 // n) and "caps the batch" in capped["slo_cap"]
    assert capped["gpus_needed"] == tp * capped["replicas"]


def test_an_slo_below_the_physical_bound_cannot_be_served():
    # 15 GB of weights at 300 GB/s: one L4 takes 50 ms a step, 16 of them (tensor parallel
    # tops out at 16) 3.1 ms: an ITL of 1 ms is out of reach
    out = sizing(_inp(hardware=catalog.hardware("l4"), concurrency=4), {"itl_ms": {"p95": 1.0}})
    assert out["gpus_needed"] is None and "ITL SLO 1 ms" in out["slo_cap"]
    ttft = sizing(_inp(concurrency=4), {"ttft_ms": {"p95": 0.001}})
    assert ttft["gpus_needed"] is None and "prefill bound" in ttft["slo_cap"]


def test_cli_several_gpus_print_a_table_one_gpu_the_plan(capsys):
    args = ["plan", "--model", "llama-3.1-8b", "--prompt-tokens", "1000", "--output-tokens",
            "200", "--rate", "20", "--slo", "itl_p95=50ms"]
    assert main([*args, "--gpu", "l4,h100-80gb", "--price", "h100-80gb=2.49",
                 "--price", "l4=0.8"]) == 0
    out = capsys.readouterr().out
    assert "$/M out tok" in out and "itl p95 <= 50 ms" in out
    table = [line.split()[0] for line in out.splitlines()[3:5]]
    assert table == ["h100-sxm", "l4"]  # cheapest per hour first
    assert main([*args, "--gpu", "h100-80gb"]) == 0
    out = capsys.readouterr().out
    assert "vLLM will log" in out and "$/M out tok" not in out
    assert main([*args, "--gpu", "h100-80gb", "--price", "h100-80gb=2.49", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cost"]["cost_per_hour"] == pytest.approx(2.49 * data["gpus_needed"])
    assert data["slos"] == {"itl_ms": {"p95": 50.0}}
    assert main([*args, "--gpu", "l4,h100-80gb", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["comparison"]
    assert {r["gpu"] for r in rows} == {"l4", "h100-sxm"}


@pytest.mark.parametrize("extra, message", [
    (["--gpu", "h100-80gb", "--price", "h100-80gb=cheap"], "expected GPU=USD"),
    (["--gpu", "h100-80gb", "--price", "l4=0.8"], "l4 is not among --gpu"),
    (["--gpu", "h100-80gb,b300"], "--gpu b300: unknown GPU"),
    (["--gpu", "h100-80gb", "--slo", "e2e_p95=1s"], "expected METRIC_STAT=TIME"),
    (["--gpu", "h100-80gb", "--slo", "ttft_p95=soon"], "--slo ttft_p95=soon"),
])
def test_cli_bad_cost_input_is_refused(capsys, extra, message):
    assert main(["plan", "--model", "llama-3.1-8b", *extra]) == 2
    assert message in capsys.readouterr().err
