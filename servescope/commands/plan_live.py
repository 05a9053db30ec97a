"""`servescope plan --model URL`: plan for the model a running server serves, with the
server's own settings (max_model_len, block size, KV dtype, KV memory) unless given, and
the KV capacity the server REPORTS beside the planned one."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from servescope.core.errors import EXIT_BAD_INPUT, CliError

PARSER_GPU_MEMORY_UTILIZATION = 0.9  # the plan parser's default: "not given"


def is_server_url(model: str) -> bool:
    return model.startswith(("http://", "https://"))


def live_model(url: str, runtime: str = "auto", model: str | None = None,
               num_parallel: int | None = None) -> Any:
    """The server's LiveModel (capacity/live_model.py); a CliError naming the URL when it
    does not answer."""
    from servescope.capacity import catalog, live_model
    from servescope.capacity.model import ConfigError
    from servescope.collectors.model_info import ModelInfoError, fetch_answers

    try:
        a = fetch_answers(url, runtime, model)
    except ModelInfoError as exc:
        raise CliError(f"--model: {exc}", EXIT_BAD_INPUT) from None
    if a.runtime == "ollama":
        return live_model.from_ollama(a.show or {}, a.model or "model", num_parallel)
    if a.runtime == "llamacpp":
        return live_model.from_llamacpp(a.props or {}, a.models, a.gguf_meta, a.tensor_names)
    info = None
    if a.config is None:  # not a local folder: a catalog name or a Hugging Face cache id?
        entry = next((d for d in (a.models or {}).get("data") or []
                      if d.get("id") == a.model), {})
        for name in dict.fromkeys([str(entry.get("root") or ""), str(a.model or "")]):
            try:
                info = catalog.model(name) if name else None
            except (catalog.UnknownName, ConfigError):
                continue
            if info is not None:
                break
    live = live_model.from_vllm(a.models, a.cache_config, a.config, a.config_source,
                                a.model, info)
    if a.engines > 1:
        notes = (*live.notes, f"{a.engines} engines report a cache config; engine 0's is shown")
        live = dataclasses.replace(live, notes=notes)
    return live


def _server_settings(args: argparse.Namespace, live: Any, is_cpu: bool) -> dict[str, Any]:
    """PlanInput fields from the server where the command line gave none."""
    s = live.settings
    out: dict[str, Any] = {}
    if args.max_model_len is None and "max_model_len" in s:
        out["max_model_len"] = s["max_model_len"]
    if args.kv_cache_dtype == "auto" and "kv_cache_dtype" in s:
        out["kv_cache_dtype"] = s["kv_cache_dtype"]
    if args.gpu_memory_utilization == PARSER_GPU_MEMORY_UTILIZATION \
            and "gpu_memory_utilization" in s and not is_cpu:
        out["gpu_memory_utilization"] = s["gpu_memory_utilization"]
    # the server's block size is its device's default unless it was given: carried over to
    # a CPU plan (the same defaults) or when the server's command line set it
    if args.block_size is None and "block_size" in s and (is_cpu or s.get("block_size_given")):
        out["block_size"] = s["block_size"]
    if args.dtype == "auto" and "dtype" in s:
        out["dtype"] = s["dtype"]
    if args.quantization is None and "quantization" in s:
        out["quantization"] = s["quantization"]
    if is_cpu and args.kv_cache_space is None and "kv_cache_space_gib" in s:
        out["kv_cache_space_gib"] = s["kv_cache_space_gib"]
    return out


def server_comparison(result: dict[str, Any], live: Any) -> dict[str, Any]:
    """The plan's KV next to what the server reports."""
    reported, planned = live.kv.tokens, result.get("kv_capacity_tokens")
    out = live.as_dict()
    out["planned_kv_capacity_tokens"] = planned
    out["kv_bytes_per_token_reported"] = live.kv.bytes_per_token
    out["planned_minus_reported_tokens"] = (planned - reported) if reported and planned \
        is not None else None
    if live.runtime != "vllm":
        out["notes"].append(f"the plan is vLLM's accounting on {result['hardware']['name']}; "
                            f"{live.runtime} sizes its own KV cache as reported")
    return out


def format_server(s: dict[str, Any]) -> str:
    reported = s["kv_capacity_tokens"]
    planned = s["planned_kv_capacity_tokens"]
    lines = ["", f"server ({s['runtime']}, serving {s['served_model']}):",
             f"  reports KV      {'unknown' if reported is None else f'{reported:,} tokens'}"
             f" ({s['kv_how']})"]
    if s["kv_bytes_per_token_reported"]:
        lines[-1] += f", {s['kv_bytes_per_token_reported']:,.0f} B per token"
    diff = s["planned_minus_reported_tokens"]
    match = "" if diff is None else (" (matches the server)" if diff == 0 else
                                     f" ({diff:+,} tokens, {diff / reported:+.1%} vs the server)")
    lines.append(f"  planned KV      {planned:,} tokens{match}")
    if s.get("settings_used"):
        used = ", ".join(f"{k} {v}" for k, v in s["settings_used"].items())
        lines.append(f"  planned with    {used} (the server's)")
    lines += [f"  - {n}" for n in s["notes"]]
    return "\n".join(lines)


def cmd_plan_server(args: argparse.Namespace) -> int:
    """`plan` with a server URL as --model."""
    from servescope.capacity import catalog
    from servescope.capacity.plan import PlanError, PlanInput, plan
    from servescope.capacity.report import format_plan
    from servescope.commands import plan as plan_cmd

    live = live_model(args.model, getattr(args, "runtime", None) or "auto",
                      getattr(args, "served_model", None), getattr(args, "num_parallel", None))
    if live.info is None:
        raise CliError(f"--model {args.model}: {live.missing}. The server reports a KV cache "
                       f"of {live.kv.tokens or 'unknown'} tokens ({live.kv.how}); give the "
                       "model's config.json or catalog name as --model to plan it",
                       EXIT_BAD_INPUT)
    if "," in args.gpu:
        raise CliError(f"--gpu {args.gpu}: with --model URL give one GPU (the comparison of "
                       "several takes a catalog model or a config.json)", EXIT_BAD_INPUT)
    try:
        hw = catalog.hardware(args.gpu)
    except catalog.UnknownName as exc:
        raise CliError(f"--gpu {args.gpu}: {exc}", EXIT_BAD_INPUT) from None
    # --slo and --price as the catalog path reads them (commands/plan.py)
    slos = plan_cmd._slos(args.slo) if getattr(args, "slo", None) else {}
    prices = plan_cmd._prices(args.price, [hw]) if getattr(args, "price", None) else {}
    plan_cmd.check_numbers(args)
    used = _server_settings(args, live, hw.is_cpu)
    fields: dict[str, Any] = dict(
        model=live.info, hardware=hw, gpus=args.gpus, tp=args.tp,
        quantization=args.quantization, kv_cache_dtype=args.kv_cache_dtype, dtype=args.dtype,
        max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
        workload=plan_cmd._plan_workload(args), rate=args.rate, concurrency=args.concurrency,
        block_size=args.block_size, enforce_eager=args.enforce_eager,
        kv_cache_space_gib=args.kv_cache_space, vllm_version=args.vllm_version,
        vllm_engine=args.vllm_engine)
    fields.update(used)
    inp = PlanInput(**fields)
    try:
        result = plan(inp, slos or None)
    except PlanError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    if prices:
        result["cost"] = plan_cmd._cost(result["sizing"], prices[hw.key])
    if used:
        result["assumptions"].append("read from the server (not given on the command line): "
                                     + ", ".join(f"{k} {v}" for k, v in used.items()))
    server = server_comparison(result, live)
    server["settings_used"] = used
    result["server"] = server
    # --simulate: the search on the model the server serves (commands/plan_sim.py)
    sim_text = plan_cmd._simulate(args, inp, slos, result) if getattr(
        args, "simulate", False) else ""
    print(json.dumps(result, indent=2) if args.json
          else format_plan(result) + "\n" + format_server(server) + sim_text)
    if prices and not args.json:
        c = result["cost"]
        per_m = c["cost_per_million_output_tokens"]
        print(f"\ncost: ${c['cost_per_hour'] or 0:,.2f} per hour, "
              f"{'-' if per_m is None else f'${per_m:,.3f}'} per million output tokens")
    return 0
