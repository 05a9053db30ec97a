"""`servescope plan --simulate` and `servescope tune --simulate-first`: the simulator
searches max_num_seqs x max_num_batched_tokens (capacity/sim_search.py) for the best
goodput under the SLOs, on the planned setup (physics, said to be uncalibrated) or a
calibration profile (`--profile FILE` from `servescope calibrate`)."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from servescope.core.errors import EXIT_BAD_INPUT, CliError


def add_plan_sim_arguments(pl: argparse.ArgumentParser) -> None:
    """The plan parser's --simulate flags."""
    pl.add_argument("--simulate", action="store_true",
                    help="also search max_num_seqs x max_num_batched_tokens on the simulator "
                    "for the best goodput under --slo (needs --concurrency or --rate)")
    pl.add_argument("--profile", type=Path, help="with --simulate: a calibration profile "
                    "(`servescope calibrate`) instead of the uncalibrated physics")
    pl.add_argument("--sim-seqs", type=_ints, help="with --simulate: max_num_seqs values "
                    "(default 8,16,32,64,128,256)")
    pl.add_argument("--sim-batched-tokens", type=_ints, help="with --simulate: "
                    "max_num_batched_tokens values (default 2048,8192,16384)")


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, "
                                         "e.g. 16,64,256") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers")
    return values


def load_profile(path: Path | None) -> Any:
    if path is None:
        return None
    from servescope.capacity.sim_profile import Profile

    try:
        return Profile.from_dict(json.loads(path.read_text()), str(path))
    except (OSError, json.JSONDecodeError, ValueError, TypeError) as exc:
        raise CliError(f"--profile {path}: {exc}", EXIT_BAD_INPUT) from None


def _fixed_workload(prompt: int, output: int, concurrency: int | None, rate: float | None,
                    window_s: float) -> Any:
    """Fixed lengths: closed loop with `concurrency` users, or Poisson arrivals at `rate`."""
    from servescope.capacity.sim_profile import Workload
    from servescope.capacity.simulator import SimRequest

    if rate:
        rng, t, reqs = random.Random(0), 0.0, []
        while t <= window_s:
            t += rng.expovariate(rate)
            reqs.append(SimRequest(f"r{len(reqs)}", t, prompt, output))
        return Workload(reqs, duration_s=window_s)
    reqs = [SimRequest(f"r{i}", 0.0, prompt, output) for i in range(200)]
    return Workload(reqs, closed_loop_users=concurrency, duration_s=window_s)


def plan_workload(args: argparse.Namespace, window_s: float) -> tuple[Any, dict, str]:
    """(workload, the scenario's SLOs, what it is) from --scenario or fixed lengths."""
    if args.scenario:
        from servescope.capacity.sim_profile import Workload
        from servescope.commands.simulate_requests import scenario_workload
        from servescope.loadgen.scenario import ScenarioError, load_scenario, scenario_path

        try:
            sc = load_scenario(scenario_path(args.scenario)).with_overrides(
                args.concurrency, None, None, rate=args.rate)
        except ScenarioError as exc:
            raise CliError(f"--scenario {args.scenario}: {exc}", EXIT_BAD_INPUT) from None
        w = scenario_workload(sc)
        return (Workload(w.requests, w.closed_loop_users, w.duration_s, w.think_s,
                         w.warmup_requests, {}, w.max_requests),
                {k: v for k, v in sc.slos.model_dump().items() if v}, w.describe)
    if args.prompt_tokens is None:
        raise CliError("--simulate: give --scenario, or --prompt-tokens and --output-tokens",
                       EXIT_BAD_INPUT)
    if not (args.concurrency or args.rate):
        raise CliError("--simulate: give --concurrency N or --rate R (the load to simulate)",
                       EXIT_BAD_INPUT)
    what = (f"{args.prompt_tokens}+{args.output_tokens} tokens, "
            + (f"Poisson {args.rate:g}/s" if args.rate else f"{args.concurrency} users"))
    return (_fixed_workload(args.prompt_tokens, args.output_tokens, args.concurrency,
                            args.rate, window_s), {}, what)


def simulate_plan(args: argparse.Namespace, inp: Any, slos: dict, result: dict) -> str:
    """Run the search on the planned setup, put it in `result["simulated_search"]` and
    return its table (printed after the plan; nothing of the plan is replaced)."""
    from servescope.capacity.sim_search import DEFAULT_SEQS, DEFAULT_TOKENS, Window, search
    from servescope.capacity.sim_setup import sim_setup

    window = Window()
    work, scenario_slos, what = plan_workload(args, window.seconds)
    profile = load_profile(args.profile)
    try:
        ss = sim_setup(inp)
        base = profile.config(kv_blocks=ss.config.kv_blocks) if profile else ss
        found = search(base, work, slos or scenario_slos, args.sim_seqs or DEFAULT_SEQS,
                       args.sim_batched_tokens or DEFAULT_TOKENS, profile=profile,
                       window=window, replicas=5 if profile else 0)
    except ValueError as exc:
        raise CliError(f"--simulate: {exc}", EXIT_BAD_INPUT) from None
    found["load"] = what
    found["label"] = "calibrated" if profile else "simulated, uncalibrated"
    result["simulated_search"] = found
    from servescope.capacity.sim_search import format_search

    return "\n".join([f"\n{what}", *format_search(found)])


def tune_predictions(args: argparse.Namespace, scenario: Any, values: list[int],
                     tokens: list[int] | None = None) -> dict[Any, float]:
    """Predicted best goodput (req/s, over the sweep's concurrency levels) per max_num_seqs
    value, for `tune --simulate-first`: --profile, else --sim-model/--sim-gpu physics.
    Without `tokens` max_num_batched_tokens stays the server's and the keys are values;
    with them, every (max_num_seqs, max_num_batched_tokens) pair is a key."""
    from servescope.capacity.sim_profile import Workload
    from servescope.capacity.sim_search import Window, search
    from servescope.commands.simulate_requests import scenario_workload

    profile = load_profile(args.profile)
    if profile is not None:
        base: Any = profile.config()
    elif args.sim_model and args.sim_gpu:
        from servescope.capacity import catalog
        from servescope.capacity.model import ConfigError
        from servescope.capacity.setup import PlanInput
        from servescope.capacity.sim_setup import sim_setup

        try:
            inp = PlanInput(model=catalog.model(args.sim_model),
                            hardware=catalog.hardware(args.sim_gpu))
            base = sim_setup(inp)
        except (catalog.UnknownName, ConfigError, ValueError) as exc:
            raise CliError(f"--sim-model/--sim-gpu: {exc}", EXIT_BAD_INPUT) from None
    else:
        raise CliError("--simulate-first: give --profile FILE (from `servescope calibrate` "
                       "on this server) or --sim-model and --sim-gpu (physics)",
                       EXIT_BAD_INPUT)
    cfg = base if profile is not None else base.config
    slos = {k: v for k, v in scenario.slos.model_dump().items() if v}
    window = Window(min(args.duration, 120.0), args.requests or 2000)
    best: dict[Any, float] = {}
    for level in args.concurrency:
        w = scenario_workload(scenario.with_overrides(level, args.duration, args.requests))
        work = Workload(w.requests, w.closed_loop_users, w.duration_s, w.think_s,
                        w.warmup_requests, slos, w.max_requests)
        try:
            found = search(base, work, slos, values, tokens or [cfg.max_num_batched_tokens],
                           profile=profile, window=window)
        except ValueError as exc:
            raise CliError(f"--simulate-first: {exc}", EXIT_BAD_INPUT) from None
        for r in found["candidates"]:
            v = (r["max_num_seqs"], r["max_num_batched_tokens"]) if tokens \
                else r["max_num_seqs"]
            best[v] = max(best.get(v, 0.0), r["goodput_per_s"])
    return best
