"""`servescope load` and `sweep`: load runs, their printed summary and the sweep's curve.

Locust is imported first inside each command: it monkey-patches the process for gevent
before anything else touches sockets or ssl."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from servescope.commands.common import _auth_headers, _store, _tokenizer
from servescope.core.errors import EXIT_BAD_INPUT, CliError
from servescope.core.urls import redact_credentials


def cmd_load(args: argparse.Namespace) -> int:
    # Locust first: it monkey-patches sockets and ssl for gevent.
    from servescope.loadgen.distributed import (
        DEFAULT_MASTER_PORT,
        WORKER_KEY_NEEDS_TARGET,
        run_master,
        run_worker,
    )
    from servescope.loadgen.run import LoadError, run_load
    from servescope.loadgen.scenario import ScenarioError, load_scenario, scenario_path

    # isort: split
    from servescope.collectors.describe import describe_target  # httpx and ssl after Locust

    def flag(dest: str) -> str:
        return "--" + dest.replace("_", "-")

    def refuse(message: str) -> CliError:
        return CliError(message, EXIT_BAD_INPUT)

    if args.worker:
        # One run for a master, then exit. The scenario, model and load shape come from the
        # master; the API key from this machine's environment (it never travels).
        master_only = ("model", "concurrency", "duration", "rate", "arrival_process", "cv",
                       "max_in_flight", "time_scale", "seed", "requests", "out",
                       "no_ignore_eos", "workers", "master", "master_bind_host",
                       "expect_workers")
        given = [flag(d) for d in master_only if getattr(args, d) not in (None, False)]
        if given:
            raise refuse(f"{', '.join(given)}: set on the master; a --worker takes the "
                         "scenario, model and load shape from it")
        headers = _auth_headers(args.api_key_env)
        if headers and args.target is None:  # the key never follows a target from the master
            raise refuse(f"{args.api_key_env or 'SERVESCOPE_API_KEY'} is set: "
                         f"{WORKER_KEY_NEEDS_TARGET}")
        host, port = args.master_host or "127.0.0.1", args.master_port or DEFAULT_MASTER_PORT
        if args.scenario is not None:
            print(f"worker: {args.scenario} is not read here: the scenario comes from the "
                  "master", file=sys.stderr)
        try:
            result = run_worker(host, port, target=args.target, headers=headers,
                                connect_timeout=args.connect_timeout,
                                show_progress=not args.quiet, tokenizer=args.tokenizer)
        except LoadError as exc:
            raise CliError(str(exc)) from None
        unconfirmed = f", {result['unacked']} not confirmed" if result["unacked"] else ""
        print(f"worker {result['worker']}: {result['requests']} requests sent to the master at "
              f"{host}:{port} ({result['status']}{unconfirmed})")
        return 0 if result["status"] in ("finished", "interrupted") and not unconfirmed else 1

    if args.scenario is None:
        raise refuse("a SCENARIO is required (only a --worker takes it from its master)")
    if args.target is None:
        raise refuse("--target URL is required")
    if args.workers is not None and args.master:
        raise refuse("--workers N starts workers on this machine, --master waits for workers "
                     "started elsewhere: choose one")
    if args.workers is not None and args.workers < 1:
        raise refuse(f"--workers must be at least 1, got {args.workers}")
    if args.master_host is not None:
        raise refuse("--master-host is for a --worker")
    for dest in ("master_bind_host", "expect_workers"):
        if getattr(args, dest) is not None and not args.master:
            raise refuse(f"{flag(dest)} applies with --master")
    if args.master_port is not None and not (args.master or args.workers):
        raise refuse("--master-port applies with --master, --workers or --worker")
    if args.master_port is not None and not 0 <= args.master_port <= 65535:
        raise refuse(f"--master-port {args.master_port}: not a port number")
    expect = 1 if args.expect_workers is None else args.expect_workers
    if expect < 1:
        raise refuse(f"--expect-workers must be at least 1, got {expect}")
    bind_host = args.master_bind_host or "127.0.0.1"
    try:
        scenario = load_scenario(scenario_path(args.scenario))
        scenario = scenario.with_overrides(
            args.concurrency, args.duration, args.requests, rate=args.rate,
            process=args.arrival_process, cv=args.cv, max_in_flight=args.max_in_flight,
            time_scale=args.time_scale, seed=args.seed,
        )
    except ScenarioError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    # Loaded here to refuse a bad one before anything starts; a --master's remote workers
    # load it on their own machines.
    tokenizer = None if args.master else _tokenizer(args.tokenizer)
    store = _store(args)
    headers = _auth_headers(args.api_key_env)
    how = ""
    if args.workers:
        how = f" with {args.workers} local worker(s)"
    elif args.master:
        port = args.master_port or DEFAULT_MASTER_PORT
        how = f" as master on {bind_host}:{port}, expecting {expect} worker(s)"
        if bind_host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: Locust workers connect without authentication: anyone who can "
                  f"reach {bind_host}:{port} can join this run", file=sys.stderr)
    shown = redact_credentials(args.target)
    print(f"run {scenario.name} against {shown}{how}: {scenario.describe()}; "
          f"store {store.path}", file=sys.stderr)
    try:
        if args.workers or args.master:
            run_id, summary = run_master(
                scenario, args.target, store, workers=args.workers or 0, expect_workers=expect,
                bind_host=bind_host, port=args.master_port, model=args.model, out=args.out,
                headers=headers, api_key_env=args.api_key_env,
                ignore_eos=not args.no_ignore_eos, show_progress=not args.quiet,
                connect_timeout=args.connect_timeout, tokenizer=args.tokenizer,
                describe_target=describe_target,
            )
        else:
            run_id, summary = run_load(
                scenario, args.target, store, model=args.model, out=args.out, headers=headers,
                ignore_eos=not args.no_ignore_eos, show_progress=not args.quiet,
                tokenizer=tokenizer, describe_target=describe_target,
            )
    except LoadError as exc:
        raise CliError(str(exc)) from None
    _print_summary(run_id, summary, args.out)
    return 0 if summary["status"] in ("finished", "interrupted") else 1


def _print_summary(run_id: int, s: dict, out: Path | None) -> None:
    from servescope.analysis.join import server_lines

    def fmt(v):
        return "-" if v is None else f"{v:.1f}"

    print(f"run {run_id} {s['status']}: {s['requests_ok']} ok, {s['requests_failed']} failed, "
          f"{fmt(s['output_tokens_per_s'])} output tok/s, {fmt(s['requests_per_s'])} req/s")
    print(f"{'metric':24}{'p50':>10}{'p90':>10}{'p95':>10}{'p99':>10}{'mean':>10}")
    for m in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "e2e_from_intended_ms"):
        d = s[m]
        print(f"{m:24}" + "".join(f"{fmt(d[k]):>10}" for k in ("p50", "p90", "p95", "p99",
                                                                 "mean")))
    from servescope.analysis.latency import reasoning_lines

    for line in reasoning_lines(s):  # reasoning models: the split and the first answer token
        print(line)
    for slo in s.get("slos", []):
        verdict = {True: "met", False: "MISSED", None: "unmeasured"}[slo["met"]]
        print(f"SLO {slo['metric']} {slo['stat']} <= {slo['target_ms']:g} ms: {verdict} "
              f"({fmt(slo['observed_ms'])})")
    if s["errors_by_class"]:
        print(f"errors: {s['errors_by_class']}")
    g = s.get("goodput") or {}
    if g.get("ratio") is not None and s.get("slos"):
        print(f"goodput: {g['requests']} requests met every SLO ({100 * g['ratio']:.0f}%), "
              f"{fmt(g['requests_per_s'])} req/s")
    for line in server_lines(s.get("server")):  # per request, and over the run's window
        print(line)
    from servescope.analysis.prompt_lengths import prompt_length_line

    if line := prompt_length_line(s.get("prompt_lengths")):  # how each length was obtained
        print(line)
    for warning in s.get("warnings", []):
        print(f"warning: {warning}")
    if out:
        print(f"summary written to {out}")


def cmd_sweep(args: argparse.Namespace) -> int:
    from servescope.loadgen.run import LoadError, run_load  # noqa: I001 - Locust first (module docstring)
    from servescope.loadgen.scenario import ScenarioError, load_scenario, scenario_path
    from servescope.analysis.sweep import analyze
    from servescope.collectors.describe import describe_target

    try:
        base = load_scenario(scenario_path(args.scenario))
    except ScenarioError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    tokenizer = _tokenizer(args.tokenizer)
    store = _store(args)
    headers = _auth_headers(args.api_key_env)
    kind = "concurrency" if args.concurrency else "rate"
    levels = args.concurrency or args.rates
    sweep_id = store.create_sweep(f"{base.name}-sweep", base.name, args.target, kind, levels)
    print(f"sweep {sweep_id}: {base.name} at {kind} {levels}, {args.duration:g}s each, "
          f"against {redact_credentials(args.target)}", file=sys.stderr)
    done_levels: list[float] = []
    summaries: list[dict] = []
    status = "finished"
    for level in levels:
        try:
            if kind == "concurrency":
                scenario = base.with_overrides(concurrency=level, duration=args.duration,
                                               requests=args.requests)
            else:
                scenario = base.with_overrides(None, args.duration, args.requests,
                                               rate=f"{level:g}/s")
        except ScenarioError as exc:
            store.finish_sweep(sweep_id, "failed", analyze(done_levels, summaries))
            raise CliError(str(exc), EXIT_BAD_INPUT) from None
        print(f"-- {kind} {level:g}", file=sys.stderr)
        try:
            run_id, summary = run_load(scenario, args.target, store, model=args.model,
                                       headers=headers, show_progress=not args.quiet,
                                       tokenizer=tokenizer, describe_target=describe_target)
        except LoadError as exc:
            store.finish_sweep(sweep_id, "failed", analyze(done_levels, summaries))
            raise CliError(str(exc)) from None
        store.add_run_to_sweep(run_id, sweep_id)
        done_levels.append(level)
        summaries.append(summary)
        if summary["status"] != "finished":
            status = summary["status"]
            break
    result = analyze(done_levels, summaries)
    store.finish_sweep(sweep_id, status, result)
    print(f"{kind + (' (req/s)' if kind == 'rate' else ''):>14}{'out tok/s':>11}{'req/s':>8}"
          f"{'TTFT p95':>10}{'E2E p95':>10}{'SLOs':>6}{'client':>9}")
    for row in result["curve"]:
        verdict = {True: "met", False: "MISS", None: "-"}[row["slos_met"]]
        client = {True: "LIMITED", False: "ok", None: "-"}[row.get("client_limited")]
        print(f"{row['level']:>14g}{_f(row['output_tokens_per_s']):>11}"
              f"{_f(row['requests_per_s']):>8}{_f(row['ttft_p95_ms']):>10}"
              f"{_f(row['e2e_p95_ms']):>10}{verdict:>6}{client:>9}")
    print(f"saturation at {kind} {result['saturation_level'] or '(not reached)'}; "
          f"highest level meeting the SLOs: {result['max_level_meeting_slos'] or 'none'}")
    if result["client_limited_levels"]:
        shown = ", ".join(f"{v:g}" for v in result["client_limited_levels"])
        print(f"warning: the load generator limited {kind} {shown} (see each run's client "
              "health): their throughput is not the server's, and no saturation is read "
              "from them. Run the load generator on cores the server does not use "
              "(taskset) or on another machine, and sweep again.")
    if args.out:
        args.out.write_text(json.dumps({"sweep_id": sweep_id, "status": status, **result},
                                       indent=2))
    return 0 if status in ("finished", "interrupted") else 1


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"
