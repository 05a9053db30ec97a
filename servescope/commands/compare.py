"""`servescope compare`: one scenario against several runtimes (servescope/compare.py)."""

from __future__ import annotations

import argparse
import sys

from servescope.commands.common import _auth_headers, _store, _tokenizer
from servescope.core.errors import EXIT_BAD_INPUT, CliError


def cmd_compare(args: argparse.Namespace) -> int:
    from servescope.loadgen.run import LoadError  # noqa: I001 - Locust first (module docstring)
    from servescope.compare import CompareError, CompareSettings, parse_models, parse_targets
    from servescope.compare import run_compare
    from servescope.compare_report import write_report
    from servescope.loadgen.scenario import ScenarioError, load_scenario, scenario_path

    try:
        specs = parse_targets(args.target)
        models = parse_models(args.model, specs)
        base = load_scenario(scenario_path(args.scenario))
    except (ValueError, ScenarioError) as exc:  # CompareError is a ValueError
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    parallel: dict[str, int] = {}
    for text in args.num_parallel:
        name, _, value = text.partition("=")
        if name not in {s.name for s in specs} or not value.isdigit():
            raise CliError(f"--num-parallel {text!r}: expected TARGET=N for one of the "
                           "targets", EXIT_BAD_INPUT)
        parallel[name] = int(value)
    settings = CompareSettings(
        kind="concurrency" if args.concurrency else "rate",
        levels=args.concurrency or args.rates, duration=args.duration,
        requests=args.requests, models=models, headers=_auth_headers(args.api_key_env),
        tokenizer=_tokenizer(args.tokenizer), show_progress=not args.quiet,
        num_parallel=parallel)
    store = _store(args)
    print(f"compare {base.name} at {settings.kind} {settings.levels} against "
          f"{', '.join(s.name for s in specs)}, one after another", file=sys.stderr)
    try:
        result = run_compare(base, specs, settings, store)
    except (LoadError, CompareError, ScenarioError) as exc:
        raise CliError(str(exc)) from None
    for w in result["warnings"]:
        print(f"warning: {w['message']}", file=sys.stderr)
    for case, v in result["verdicts"].items():
        print(f"{case:>12}: {v['text']}")
    for name, sc in result["scaling"].items():
        print(f"{name:>12}: {sc['text']}")
    from servescope.analysis.host_use import host_line
    for t in result["targets"]:
        if not t.get("error"):
            print(f"{t['name']:>12}: {host_line(t.get('host_use'))}")
    if args.out:
        for path in write_report(result, args.out):
            print(f"wrote {path}", file=sys.stderr)
    return 0 if all(t["status"] in ("finished", "interrupted") for t in result["targets"]) else 1
