"""The planner against real vLLM GPU start-up logs (tests/fixtures/vllm_gpu_startup_logs.yaml).

Each record is a published log with the flags it ran with. The planner is run with those
flags and the release's accounting (PlanInput.vllm_version / vllm_engine), and every figure
the log shows is compared: the weights each GPU loads, CUDA's total, the KV memory, blocks,
tokens and concurrency vLLM reports, and whether it started at all. Goal (issue 10): within
3% of every one. The KV checks fail either way past 3%, so the planner never promises more
than 3% more KV cache than vLLM had (the dangerous direction: a plan that does not fit).

A figure that cannot be matched honestly carries `expected_failure: {field: reason}` in
the table and runs as a strict xfail: reported with its reason, and noticed if it starts
passing. `test_table_report` prints the whole table (pytest -s).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from servescope.capacity import catalog
from servescope.capacity.plan import PlanInput, plan, setup

GIB = 2**30
TOLERANCE = 0.03
TABLE = Path(__file__).parent / "fixtures" / "vllm_gpu_startup_logs.yaml"
RECORDS: list[dict[str, Any]] = yaml.safe_load(TABLE.read_text("utf-8"))["records"]
# a GPU the record does not name: only GPU-independent figures are compared
ANY_GPU = "h100-sxm"
GPU_FREE = {"weights_gib", "kv_tokens_from_logged_kv"}
FLAGS = {"max_model_len", "gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens",
         "quantization", "kv_cache_dtype", "dtype", "enforce_eager"}


def plan_input(rec: dict[str, Any]) -> PlanInput:
    """The PlanInput `servescope plan` would build for the record's command line."""
    flags = rec.get("flags") or {}
    unknown = set(flags) - FLAGS
    assert not unknown, f"{rec['id']}: flags {unknown} are not planner inputs"
    tp = rec.get("tp") or 1
    return PlanInput(model=catalog.model(rec["model"]),
                     hardware=catalog.hardware(rec.get("gpu") or ANY_GPU), gpus=tp, tp=tp,
                     vllm_version=str(rec["vllm_version"]), vllm_engine=rec.get("engine"),
                     **flags)


def predictions(rec: dict[str, Any]) -> dict[str, float]:
    """The planner's figure for every field a log may show."""
    inp = plan_input(rec)
    s = setup(inp, inp.tp or 1)
    budget = s.budget
    out: dict[str, float] = {
        "weights_gib": budget["weights"] / GIB,
        "total_gpu_memory_gib": inp.hardware.memory_bytes / GIB,
        "peak_torch_gib": (budget["weights"] + budget.get("activation_peak", 0)) / GIB,
        "activation_gib": budget.get("activation_peak", 0) / GIB,
        "non_torch_gib": budget.get("non_torch", 0) / GIB,
        "kv_cache_gib": budget["kv"] / GIB,
        "num_blocks": s.cap.num_blocks,
        "kv_tokens": s.cap.tokens,
        "max_concurrency": s.cap.max_concurrency,
        "fits": s.fits,
    }
    logged = rec["logged"]
    if "kv_cache_gib" in logged:
        # tokens from the KV memory vLLM logged, through this planner's layout: checks the
        # bytes per token, the block size and the reported-size formula alone
        blocks = int(logged["kv_cache_gib"] * GIB) // s.layout.bytes_per_block
        cap = type(s.cap)(blocks, s.cap.bytes_per_block, s.cap.blocks_per_request,
                          s.cap.max_model_len, s.cap.block_size, s.cap.tokens_from_blocks)
        if "kv_tokens" in logged:
            out["kv_tokens_from_logged_kv"] = cap.tokens
        elif "num_blocks" in logged:
            out["kv_tokens_from_logged_kv"] = blocks
    if s.fits and rec.get("gpu"):
        # the command's own JSON says the same
        result = plan(inp)
        assert result["kv_capacity_tokens"] == s.cap.tokens
        assert result["num_blocks"] == s.cap.num_blocks
        assert result["weights_bytes_per_gpu"] == budget["weights"]
    return out


def logged_value(rec: dict[str, Any], field: str) -> Any:
    logged = rec["logged"]
    if field == "kv_tokens_from_logged_kv":
        return logged["kv_tokens"] if "kv_tokens" in logged else logged["num_blocks"]
    return logged[field]


# figures a log shows that size the KV cache; activation and non-torch memory are the
# planner's estimates of what vLLM measures, reported in the table but judged through
# the KV figures they feed
CHECKED = ("weights_gib", "total_gpu_memory_gib", "peak_torch_gib", "kv_cache_gib",
           "num_blocks", "kv_tokens", "max_concurrency", "fits", "kv_tokens_from_logged_kv")


def cases() -> list[Any]:
    out = []
    for rec in RECORDS:
        fields = [f for f in CHECKED if f in rec["logged"]]
        if "kv_cache_gib" in rec["logged"] and ({"kv_tokens", "num_blocks"}
                                                & set(rec["logged"])):
            fields.append("kv_tokens_from_logged_kv")
        if not rec.get("gpu"):
            fields = [f for f in fields if f in GPU_FREE]
        for field in fields:
            reason = (rec.get("expected_failure") or {}).get(field)
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            out.append(pytest.param(rec, field, marks=marks, id=f"{rec['id']}-{field}"))
    return out


def relative_error(predicted: float, logged: float) -> float:
    return (predicted - logged) / logged


@pytest.mark.parametrize(("rec", "field"), cases())
def test_planner_matches_the_logged_figure(rec: dict[str, Any], field: str) -> None:
    predicted = predictions(rec)[field]
    logged = logged_value(rec, field)
    if field == "fits":
        assert predicted == logged, f"{rec['id']}: vLLM {'started' if logged else 'refused'}"
        return
    # the logged figure is rounded: to 0.01 GiB, or to 0.01x; allow that much more
    rounding = 0.005 / logged if isinstance(logged, float) and logged < 100 else 0.0
    err = relative_error(predicted, logged)
    if field == "total_gpu_memory_gib":
        # the planner may know less memory than CUDA reports, never more
        assert -TOLERANCE <= err <= rounding, f"{rec['id']}: {predicted:.3f} vs {logged}"
        return
    assert abs(err) <= TOLERANCE + rounding, (
        f"{rec['id']} {field}: planner {predicted:,.4g} vs vLLM's {logged:,} "
        f"({err:+.1%}; {'MORE' if err > 0 else 'less'} than vLLM)")


def test_table_covers_models_gpus_and_releases() -> None:
    assert len(RECORDS) >= 10
    assert len({r["model"] for r in RECORDS}) >= 6
    assert len({r["gpu"] for r in RECORDS if r.get("gpu")}) >= 5
    assert {r["engine"] for r in RECORDS} == {"v0", "v1"}
    for rec in RECORDS:
        assert rec["source"].startswith("https://"), rec["id"]
        assert rec["log"].strip(), rec["id"]
        for field in rec.get("expected_failure") or {}:
            assert field in rec["logged"] or field == "kv_tokens_from_logged_kv", (
                f"{rec['id']}: expected_failure names {field}, which the log does not show")


def test_v0_leaves_cuda_graphs_out_and_reports_whole_blocks() -> None:
    """The release rules themselves: V0 0.6.4 on the 3090 record sizes the profiling step at
    max_model_len (no chunked prefill under 32K), subtracts no CUDA graphs, and reports N x 16
    tokens; the current release subtracts graphs and keeps a null block."""
    rec = RECORDS[0]
    s = setup(plan_input(rec), 1)
    assert s.max_num_batched_tokens == 20000 and s.max_num_seqs == 256
    assert s.budget["cuda_graphs"] == 0
    assert s.cap.tokens == s.cap.num_blocks * 16
    now = setup(PlanInput(model=catalog.model(rec["model"]),
                          hardware=catalog.hardware(rec["gpu"]), max_model_len=20000), 1)
    assert now.budget["cuda_graphs"] > 0 and now.acct.engine == "v1"
    long_ = setup(PlanInput(model=catalog.model(rec["model"]),
                            hardware=catalog.hardware(rec["gpu"]), max_model_len=35000,
                            vllm_version="0.6.4"), 1)
    assert long_.max_num_batched_tokens == 512  # chunked prefill above 32K, 0.6.4's 512


def test_plan_command_sizes_for_the_release_given(capsys: pytest.CaptureFixture[str]) -> None:
    """`servescope plan --vllm-version 0.6.4` gives the 3090 record's blocks (the log said
    1952) and V0's log line; without the flag it sizes for the current release."""
    from servescope.cli import main

    rec = RECORDS[0]
    args = ["plan", "--model", rec["model"], "--gpu", rec["gpu"], "--max-model-len", "20000",
            "--json"]
    assert main([*args, "--vllm-version", str(rec["vllm_version"])]) == 0
    old = json.loads(capsys.readouterr().out)
    assert abs(old["num_blocks"] / rec["logged"]["num_blocks"] - 1) <= TOLERANCE
    assert old["vllm_log_line"].startswith(f"# GPU blocks: {old['num_blocks']},")
    assert "0.6.4 V0" in old["vllm_accounting"]
    assert main(args) == 0
    now = json.loads(capsys.readouterr().out)
    assert now["kv_budget"]["cuda_graphs"] > 0 and now["num_blocks"] != old["num_blocks"]
    assert now["vllm_log_line"].startswith("GPU KV cache size:")
    assert main([*args, "--vllm-version", "latest"]) == 2
    assert "--vllm-version" in capsys.readouterr().err


def test_table_report(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints every record's figures next to the planner's (pytest -s to see it)."""
    lines = [f"{'record':44} {'field':26} {'vLLM':>12} {'planner':>12} {'error':>8}"]
    within = total = 0
    for rec in RECORDS:
        pred = predictions(rec)
        fields = [f for f in (*CHECKED, "activation_gib", "non_torch_gib")
                  if f in rec["logged"] or (f == "kv_tokens_from_logged_kv" and f in pred)]
        if not rec.get("gpu"):
            fields = [f for f in fields if f in GPU_FREE]
        for field in fields:
            logged, p = logged_value(rec, field), pred[field]
            if field == "fits":
                err_s = "ok" if p == logged else "WRONG"
            else:
                err = relative_error(p, logged)
                err_s = f"{err:+.1%}"
                if field in CHECKED:
                    total += 1
                    within += abs(err) <= TOLERANCE + (0.005 / logged if logged < 100 else 0)
            mark = " (expected failure)" if field in (rec.get("expected_failure") or {}) else ""
            lines.append(f"{rec['id'][:44]:44} {field:26} {logged!s:>12} "
                         f"{p if isinstance(p, bool) else round(p, 3)!s:>12} {err_s:>8}{mark}")
    lines.append(f"{within} of {total} numeric figures within {TOLERANCE:.0%}")
    print("\n".join(lines))
    assert total and math.isfinite(within)
