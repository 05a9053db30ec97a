"""`servescope plan`: capacity planning from the catalogs (servescope.capacity)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

from servescope.core.errors import EXIT_BAD_INPUT, CliError


def _plan_workload(args: argparse.Namespace):
    """The request lengths to size for: a scenario's, or --prompt-tokens/--output-tokens."""
    from servescope.capacity.plan import Workload

    if args.scenario:
        from servescope.capacity.workload import scenario_workload
        from servescope.loadgen.scenario import ScenarioError, load_scenario, scenario_path

        try:
            scenario = load_scenario(scenario_path(args.scenario))
        except ScenarioError as exc:
            raise CliError(f"--scenario {args.scenario}: {exc}", EXIT_BAD_INPUT) from None
        if scenario.mode == "trace":
            raise CliError(f"--scenario {args.scenario} replays a trace; give its lengths "
                           "with --prompt-tokens and --output-tokens", EXIT_BAD_INPUT)
        return scenario_workload(scenario)
    if (args.prompt_tokens is None) != (args.output_tokens is None):
        raise CliError("give both --prompt-tokens and --output-tokens", EXIT_BAD_INPUT)
    if args.prompt_tokens is None:
        return None
    for flag, value in (("--prompt-tokens", args.prompt_tokens),
                        ("--output-tokens", args.output_tokens)):
        if value < 1:
            raise CliError(f"{flag} {value}: must be a positive token count", EXIT_BAD_INPUT)
    return Workload.fixed(args.prompt_tokens, args.output_tokens)


def check_numbers(args: argparse.Namespace) -> None:
    """Counts and sizes must be at least 1, a rate positive: refused naming the flag."""
    for flag, value in (("--gpus", args.gpus), ("--tp", args.tp),
                        ("--max-model-len", args.max_model_len),
                        ("--concurrency", args.concurrency),
                        ("--kv-cache-space", args.kv_cache_space)):
        if value is not None and value < 1:
            raise CliError(f"{flag} {value}: must be at least 1", EXIT_BAD_INPUT)
    if args.rate is not None and args.rate <= 0:
        raise CliError(f"--rate {args.rate}: must be positive", EXIT_BAD_INPUT)
    version = getattr(args, "vllm_version", None)
    if version is not None:
        from servescope.capacity.vllm_budget import parse_version

        try:
            parse_version(version)
        except ValueError as exc:
            raise CliError(f"--vllm-version: {exc}", EXIT_BAD_INPUT) from None


def cmd_plan(args: argparse.Namespace) -> int:
    if args.model.startswith(("http://", "https://")):  # a running server (plan_live.py)
        from servescope.commands.plan_live import cmd_plan_server

        return cmd_plan_server(args)
    from servescope.capacity import catalog
    from servescope.capacity.model import ConfigError
    from servescope.capacity.plan import PlanError, PlanInput, plan
    from servescope.capacity.report import format_plan

    try:
        info = catalog.model(args.model)
    except (catalog.UnknownName, ConfigError) as exc:
        raise CliError(f"--model {args.model}: {exc}", EXIT_BAD_INPUT) from None
    hws = _hardware_list(args.gpu)
    hw = hws[0]
    prices = _prices(args.price, hws)
    slos = _slos(args.slo)
    check_numbers(args)
    inp = PlanInput(model=info, hardware=hw, gpus=args.gpus, tp=args.tp,
                    quantization=args.quantization, kv_cache_dtype=args.kv_cache_dtype,
                    dtype=args.dtype, max_model_len=args.max_model_len,
                    gpu_memory_utilization=args.gpu_memory_utilization,
                    workload=_plan_workload(args), rate=args.rate, concurrency=args.concurrency,
                    block_size=args.block_size, enforce_eager=args.enforce_eager,
                    kv_cache_space_gib=args.kv_cache_space,
                    vllm_version=args.vllm_version, vllm_engine=args.vllm_engine)
    if len(hws) > 1:
        return _print_comparison(args, inp, hws, prices, slos)
    try:
        result = plan(inp, slos or None)
    except PlanError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    if prices:
        result["cost"] = _cost(result["sizing"], prices[hw.key])
    sim_text = _simulate(args, inp, slos, result) if getattr(args, "simulate", False) else ""
    print(json.dumps(result, indent=2) if args.json else format_plan(result))
    if prices and not args.json:
        c = result["cost"]
        per_m = "-" if c["cost_per_million_output_tokens"] is None else \
            f"${c['cost_per_million_output_tokens']:,.3f}"
        print(f"cost: ${c['cost_per_hour']:,.2f} per hour ({result['gpus_needed']} x "
              f"${prices[hw.key]:g}), {per_m} per million output tokens")
    if sim_text and not args.json:
        print(sim_text)
    return 0


def _simulate(args: argparse.Namespace, inp, slos: dict, result: dict) -> str:
    """--simulate (commands/plan_sim.py): the simulator's ranked batching knobs."""
    from servescope.commands.plan_sim import simulate_plan

    return simulate_plan(args, inp, slos, result)


def _simulate_each(args: argparse.Namespace, inp, hws: list, rows: list[dict],
                   slos: dict) -> list[str]:
    """--simulate with several --gpu kinds: the search on one replica of each row's sizing
    (its tensor parallel), carrying its share of the traffic, in the table's order."""
    texts = []
    for row in rows:
        hw = next(h for h in hws if h.key == row["gpu"])
        if not row["gpus_needed"]:
            texts.append(f"\n-- {hw.key}: not simulated ({row.get('slo_cap') or 'no fit'})")
            continue
        share = argparse.Namespace(**vars(args))
        replicas = row["replicas"] or 1
        if args.concurrency:
            share.concurrency = max(1, math.ceil(args.concurrency / replicas))
        if args.rate:
            share.rate = args.rate / replicas
        tp = row["tensor_parallel"]
        one = dataclasses.replace(inp, hardware=hw, gpus=tp, tp=tp)
        text = _simulate(share, one, slos, row)
        texts.append(f"\n-- {hw.key}: one replica of {replicas} (tp {tp}), its share of "
                     f"the traffic{text}")
    return texts


# -- several GPUs, prices, SLOs -----------------------------------------------------------
def _hardware_list(text: str) -> list:
    """--gpu l4,a100-80gb,h100-80gb: each a catalog name (the first is the plan's)."""
    from servescope.capacity import catalog

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise CliError(f"--gpu {text!r}: give a hardware name, e.g. h100-80gb", EXIT_BAD_INPUT)
    out = []
    for name in names:
        try:
            hw = catalog.hardware(name)
        except catalog.UnknownName as exc:
            raise CliError(f"--gpu {name}: {exc}", EXIT_BAD_INPUT) from None
        if hw.key not in {h.key for h in out}:
            out.append(hw)
    return out


def _prices(items: list[str], hws: list) -> dict[str, float]:
    """--price GPU=USD (per GPU-hour), keyed by the catalog name; a GPU not in --gpu is a
    mistake worth saying."""
    from servescope.capacity import catalog

    prices: dict[str, float] = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            usd = float(value)
            key = catalog.hardware(name.strip()).key
        except ValueError:
            raise CliError(f"--price {item}: expected GPU=USD per GPU-hour, e.g. "
                           "h100-80gb=2.49", EXIT_BAD_INPUT) from None
        except catalog.UnknownName as exc:
            raise CliError(f"--price {item}: {exc}", EXIT_BAD_INPUT) from None
        if usd <= 0:
            raise CliError(f"--price {item}: must be positive", EXIT_BAD_INPUT)
        if key not in {h.key for h in hws}:
            raise CliError(f"--price {item}: {key} is not among --gpu "
                           f"({', '.join(h.key for h in hws)})", EXIT_BAD_INPUT)
        prices[key] = usd
    return prices


SLO_METRICS = ("ttft", "itl", "tpot")


def _slos(items: list[str]) -> dict[str, dict[str, float]]:
    """--slo ttft_p95=2000ms -> {"ttft_ms": {"p95": 2000.0}} (a scenario's SLO shape)."""
    from servescope.core.durations import parse_duration

    out: dict[str, dict[str, float]] = {}
    for item in items:
        key, _, value = item.partition("=")
        metric, _, stat = key.strip().lower().partition("_")
        if metric not in SLO_METRICS or stat not in {"p50", "p90", "p95", "p99", "mean"}:
            raise CliError(f"--slo {item}: expected METRIC_STAT=TIME with METRIC one of "
                           f"{', '.join(SLO_METRICS)} and STAT p50/p90/p95/p99/mean, e.g. "
                           "ttft_p95=2000ms", EXIT_BAD_INPUT)
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise CliError(f"--slo {item}: {exc}", EXIT_BAD_INPUT) from None
        if seconds <= 0:
            raise CliError(f"--slo {item}: must be positive", EXIT_BAD_INPUT)
        out.setdefault(f"{metric}_ms", {})[stat] = seconds * 1000
    return out


def _cost(size: dict, price: float) -> dict:
    n, tokens = size.get("gpus_needed"), size.get("output_tokens_per_s")
    per_hour = price * n if n else None
    per_m = per_hour / (tokens * 3600 / 1e6) if per_hour is not None and tokens else None
    return {"price_per_gpu_hour": price, "cost_per_hour": per_hour,
            "cost_per_million_output_tokens": per_m}


def _print_comparison(args: argparse.Namespace, inp, hws: list, prices: dict[str, float],
                      slos: dict[str, dict[str, float]]) -> int:
    from servescope.capacity.plan import PlanError
    from servescope.capacity.plan_cost import compare, format_comparison

    try:
        rows = compare(inp, hws, prices, slos or None)
    except PlanError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    traffic = (f"{inp.rate:g} requests/s" if inp.rate else
               f"{inp.concurrency} concurrent requests" if inp.concurrency else
               "one replica (no --rate or --concurrency)")
    work = inp.workload.source if inp.workload else "max_model_len requests"
    slo_text = ", ".join(f"{m.removesuffix('_ms')} {st} <= {v:g} ms"
                         for m, d in slos.items() for st, v in d.items()) or "no SLOs"
    what = f"{inp.model.spec.name} for {traffic}, {work}; {slo_text}"
    sim_texts = []
    if getattr(args, "simulate", False):
        sim_texts = _simulate_each(args, inp, hws, rows, slos)
    if args.json:
        print(json.dumps({"model": inp.model.spec.name, "rate": inp.rate,
                          "concurrency": inp.concurrency, "workload": work, "slos": slos,
                          "comparison": rows}, indent=2))
    else:
        print("\n".join([format_comparison(rows, what), *sim_texts]))
    return 0
