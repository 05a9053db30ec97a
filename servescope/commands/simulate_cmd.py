"""`servescope simulate`: a scenario on a simulated server, summarized like a load run and
marked simulated, with 90 % prediction intervals. Calibrated with `--profile` (from
`servescope calibrate`), else from physics (the catalog's model and GPU), said plainly."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from servescope.core.errors import EXIT_BAD_INPUT, CliError


def add_simulate_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("simulate", help="predict a scenario's latency and throughput on a "
                       "simulated vLLM (calibrated with --profile, or from physics)")
    s.add_argument("scenario", help="scenario name or YAML file")
    s.add_argument("--model", help="catalog model (for physics and the KV capacity)")
    s.add_argument("--gpu", help="catalog GPU (for physics and the KV capacity)")
    s.add_argument("--profile", type=Path, help="calibration profile from `servescope calibrate`")
    s.add_argument("--max-num-seqs", type=int)
    s.add_argument("--max-num-batched-tokens", type=int)
    s.add_argument("--kv-blocks", type=int, help="KV blocks (default: the planner's, or the "
                   "profile's server)")
    s.add_argument("--block-size", type=int)
    s.add_argument("--tp", type=int)
    s.add_argument("--max-model-len", type=int, help="vLLM's --max-model-len (default: the "
                   "model's context)")
    s.add_argument("--policy", choices=("vllm", "slots"), help="slots: Ollama / llama.cpp")
    s.add_argument("--slots", type=int, help="parallel slots (with --policy slots)")
    s.add_argument("--no-prefix-caching", action="store_true")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--concurrency", type=int, help="closed loop: this many users")
    g.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second")
    s.add_argument("--duration", type=float, help="seconds of load (default: the scenario's)")
    s.add_argument("--requests", type=int, help="at most this many requests")
    s.add_argument("--replicas", type=int, default=20, help="replicas for the intervals")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=cmd_simulate)
    c = sub.add_parser("calibrate", help="measure a server briefly and fit the simulator's "
                       "step time to it (a profile for `simulate --profile`)")
    c.add_argument("--target", required=True, help="server base URL")
    c.add_argument("--scenario", default="chat", help="scenario to measure with (default chat)")
    c.add_argument("--concurrency", default="1,2,4",
                   help="comma-separated closed-loop levels (default 1,2,4)")
    c.add_argument("--duration", type=float, default=20.0, help="seconds per level")
    c.add_argument("--requests", type=int, help="at most this many requests per level")
    c.add_argument("--warmup", type=float, default=10.0,
                   help="seconds of load at the highest level first, measured but not fitted "
                   "(a fresh server's first seconds run slower; default 10, 0: none)")
    c.add_argument("--model", help="served model name (default: the server's first)")
    c.add_argument("--architecture", metavar="MODEL",
                   help="the served model's architecture, for attention's cost in prefill: a "
                   "config.json, a model folder, a catalog name or a Hugging Face id in the "
                   "local cache (default: the config.json of the folder vLLM's /v1/models "
                   "names, where it is readable here)")
    c.add_argument("--max-num-seqs", type=int, help="the server's --max-num-seqs (vLLM does "
                   "not report it)")
    c.add_argument("--max-num-batched-tokens", type=int,
                   help="the server's --max-num-batched-tokens")
    c.add_argument("--otlp-port", type=int, help="receive the server's OTLP spans on this "
                   "port during the sweep (its --otlp-traces-endpoint)")
    c.add_argument("--out", type=Path, required=True, help="profile JSON to write")
    c.add_argument("--api-key-env", help="environment variable holding the API key")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=_cmd_calibrate)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from servescope.commands.simulate_calibrate import cmd_calibrate  # Locust first inside

    return cmd_calibrate(args)


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise CliError(f"--{name.replace('_', '-')} {v}: must be positive", EXIT_BAD_INPUT)


def _config_and_step(args: argparse.Namespace) -> tuple[Any, Any, Any, list[str]]:
    """(scheduler config, step model, profile, notes) from --profile or --model/--gpu."""
    from servescope.capacity.sim_profile import Profile
    from servescope.capacity.simulator import SchedulerConfig

    knobs = {"max_num_seqs": args.max_num_seqs, "max_num_batched_tokens":
             args.max_num_batched_tokens, "kv_blocks": args.kv_blocks,
             "block_size": args.block_size, "policy": args.policy, "slots": args.slots}
    if args.no_prefix_caching:
        knobs["prefix_caching"] = False
    if args.profile is not None:
        try:
            profile = Profile.from_dict(json.loads(args.profile.read_text()), str(args.profile))
            config = profile.config(**knobs)
        except (OSError, json.JSONDecodeError, ValueError, TypeError) as exc:
            raise CliError(f"--profile {args.profile}: {exc}", EXIT_BAD_INPUT) from None
        src = profile.source
        return config, profile.calibration.step, profile, [
            f"calibrated on {src.get('target', '?')} ({src.get('model', '?')}) at concurrency "
            f"{src.get('levels', '?')}"]
    if not (args.model and args.gpu):
        raise CliError("give --model and --gpu (physics), or --profile FILE (calibrated)",
                       EXIT_BAD_INPUT)
    from servescope.capacity import catalog
    from servescope.capacity.model import ConfigError
    from servescope.capacity.setup import PlanInput
    from servescope.capacity.sim_setup import sim_setup

    try:
        info = catalog.model(args.model)
    except (catalog.UnknownName, ConfigError) as exc:
        raise CliError(f"--model {args.model}: {exc}", EXIT_BAD_INPUT) from None
    try:
        hw = catalog.hardware(args.gpu)
    except catalog.UnknownName as exc:
        raise CliError(f"--gpu {args.gpu}: {exc}", EXIT_BAD_INPUT) from None
    inp = PlanInput(model=info, hardware=hw, tp=args.tp, max_num_seqs=args.max_num_seqs,
                    max_num_batched_tokens=args.max_num_batched_tokens,
                    block_size=args.block_size, max_model_len=args.max_model_len)
    try:
        ss = sim_setup(inp, args.tp)
    except ValueError as exc:
        raise CliError(f"--model {args.model} --gpu {args.gpu}: {exc} (a smaller "
                       "--max-model-len, or --tp)", EXIT_BAD_INPUT) from None
    base = ss.config
    merged = {**{k: getattr(base, k) for k in SchedulerConfig.__annotations__},
              **{k: v for k, v in knobs.items() if v is not None}}
    return SchedulerConfig(**merged), ss.physics, None, [ss.describe(), *ss.physics.assumptions()]


def cmd_simulate(args: argparse.Namespace) -> int:
    from servescope.capacity.sim_profile import predict
    from servescope.commands.simulate_requests import replica_maker, scenario_workload
    from servescope.loadgen.scenario import ScenarioError, load_scenario, scenario_path

    _positive(args, "max_num_seqs", "max_num_batched_tokens", "kv_blocks", "block_size",
              "slots", "concurrency", "rate", "duration", "requests", "tp", "max_model_len")
    if args.replicas < 0:
        raise CliError("--replicas must be 0 or more", EXIT_BAD_INPUT)
    try:
        scenario = load_scenario(scenario_path(args.scenario))
        scenario = scenario.with_overrides(args.concurrency, args.duration, args.requests,
                                           rate=args.rate)
    except ScenarioError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    try:
        config, step, profile, notes = _config_and_step(args)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    make = replica_maker(scenario)
    first = scenario_workload(scenario)
    shape = first.describe
    cal_range = profile.calibration.context_range if profile else None
    if cal_range and first.requests:
        ctx = sum(r.prompt_tokens + r.output_tokens / 2 for r in first.requests) / len(
            first.requests)
        if not cal_range[0] * 0.8 <= ctx <= cal_range[1] * 1.25:
            notes.append(f"warning: this workload's mean context ({ctx:.0f} tokens) is outside "
                         f"the calibration's ({cal_range[0]:.0f}-{cal_range[1]:.0f}): the cost "
                         "of longer or shorter contexts is extrapolated; calibrate with a "
                         "scenario of these lengths for a measured answer")
    try:
        summary = predict(make, config, profile, None if profile else step, args.replicas)
    except RuntimeError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    summary.update(schema="servescope.summary/1", status="simulated", scenario=scenario.name,
                   model=args.model or (profile.source.get("model") if profile else None),
                   gpu=args.gpu, load=shape, notes=notes,
                   scheduler={k: getattr(config, k) for k in
                              ("policy", "max_num_seqs", "max_num_batched_tokens",
                               "kv_blocks", "block_size", "slots", "prefix_caching")})
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print("\n".join(format_simulated(summary)))
    return 0


def format_simulated(s: dict[str, Any]) -> list[str]:
    """The summary as the load command prints it, each figure with its 90 % interval."""
    iv = s.get("interval90") or {}

    def fig(key: str, v: float | None) -> str:
        if v is None:
            return "-"
        lo_hi = iv.get(key)
        return f"{v:.1f} [{lo_hi[0]:.1f}-{lo_hi[1]:.1f}]" if lo_hi else f"{v:.1f}"

    lines = [f"SIMULATED, {s.get('step_model')}: {s['scenario']}, {s.get('load')}",
             *[f"  {n}" for n in s.get("notes", [])],
             f"{'metric':<10}{'p50':>24}{'p90':>24}{'p99':>24}"]
    for m in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
        d = s[m]
        lines.append(f"{m:<10}" + "".join(f"{fig(f'{m}.{p}', d.get(p)):>24}"
                                          for p in ("p50", "p90", "p99")))
    lines.append(f"output tokens/s {fig('output_tokens_per_s', s['output_tokens_per_s'])}, "
                 f"requests/s {fig('requests_per_s', s['requests_per_s'])}, "
                 f"{s['requests_ok']} requests, {s['preemptions']} preemptions")
    gp = s["goodput"]
    if gp.get("attainment"):
        lines.append(f"goodput {fig('goodput.requests_per_s', gp['requests_per_s'])} req/s "
                     f"({gp['ratio']:.0%} of requests met every SLO)")
    calibrated = str(s.get("step_model")).startswith("calibrated")
    lines.append(f"intervals: 90 % over {s.get('interval_replicas', 0)} replicas"
                 + (", widened by the calibration's own error" if calibrated
                    else "; physics is uncalibrated: no error bound"))
    if s.get("interval_note"):
        lines.append(f"  {s['interval_note']}")
    return lines
