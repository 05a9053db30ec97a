"""`servescope plan`: capacity planning from the catalogs (servescope.capacity)."""

from __future__ import annotations

import argparse
import json

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


def cmd_plan(args: argparse.Namespace) -> int:
    from servescope.capacity import catalog
    from servescope.capacity.model import ConfigError
    from servescope.capacity.plan import PlanError, PlanInput, plan
    from servescope.capacity.report import format_plan

    try:
        info = catalog.model(args.model)
    except (catalog.UnknownName, ConfigError) as exc:
        raise CliError(f"--model {args.model}: {exc}", EXIT_BAD_INPUT) from None
    try:
        hw = catalog.hardware(args.gpu)
    except catalog.UnknownName as exc:
        raise CliError(f"--gpu {args.gpu}: {exc}", EXIT_BAD_INPUT) from None
    for flag, value in (("--gpus", args.gpus), ("--tp", args.tp),
                        ("--max-model-len", args.max_model_len),
                        ("--concurrency", args.concurrency),
                        ("--kv-cache-space", args.kv_cache_space)):
        if value is not None and value < 1:
            raise CliError(f"{flag} {value}: must be at least 1", EXIT_BAD_INPUT)
    if args.rate is not None and args.rate <= 0:
        raise CliError(f"--rate {args.rate}: must be positive", EXIT_BAD_INPUT)
    inp = PlanInput(model=info, hardware=hw, gpus=args.gpus, tp=args.tp,
                    quantization=args.quantization, kv_cache_dtype=args.kv_cache_dtype,
                    dtype=args.dtype, max_model_len=args.max_model_len,
                    gpu_memory_utilization=args.gpu_memory_utilization,
                    workload=_plan_workload(args), rate=args.rate, concurrency=args.concurrency,
                    block_size=args.block_size, enforce_eager=args.enforce_eager,
                    kv_cache_space_gib=args.kv_cache_space)
    try:
        result = plan(inp)
    except PlanError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    print(json.dumps(result, indent=2) if args.json else format_plan(result))
    return 0
