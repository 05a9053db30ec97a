"""The calibrated simulator against the real vLLM CPU server (issue 11's validation).

One vLLM CPU server (servescope.engines.vllm_cpu: the tiny model, max_num_seqs 8,
max_num_batched_tokens 2048, OTLP spans to a receiver here) is warmed up (10 s at
concurrency 4, not fitted) and measured briefly with the chat scenario at concurrency 1, 2
and 4 (`servescope calibrate`'s path: fit, bootstrap, replay). Then, for each validation
load, the simulator PREDICTS first (profile only, with 90 % intervals) and the server is
measured after: chat at concurrency 8, 16 and 32 (past max_num_seqs: queueing), a
scenario with other lengths (longer prompts and answers), and chat open loop at a Poisson
rate (the rate 2 users drew: about two thirds of capacity).
Printed: predicted against measured for throughput, TTFT, ITL and E2E (p50, p90, p99), the
error of each, whether the interval held the measurement, and the issue's goals. Every
run gets its own seed, so vLLM's prefix cache never serves a prompt from an earlier run.
Then the first case is measured again: the difference between the two runs is the
server's own repeatability on this machine, the floor under any prediction's error. Last,
preemption: the server is restarted with a KV cache of 24 blocks of 128 tokens (about half
of what the longer scenario's eight sequences want; --small-kv-blocks) and the longer
scenario predicted (the same calibration, that server's blocks) and measured on it, vLLM's
preemption counter beside the simulator's.

Speed (no engine): 1,000 configurations (max_num_seqs x max_num_batched_tokens x users,
seeded) of a 10-minute closed-loop chat workload on Llama 3.1 8B / H100 from physics,
CPU seconds of this process; the baseline, measured in the same run, is the first 10 of
them stepped one step at a time (Engine.fast_paths off: the same results, the plain path).

    flock /tmp/servescope-engine.lock python -m bench simulator [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from servescope.loadgen.run import run_load  # Locust first: it monkey-patches the process

# isort: split
from servescope.collectors.describe import describe_target
from servescope.loadgen.scenario import load_scenario

FIGS = ("output_tokens_per_s", "ttft_ms.p50", "ttft_ms.p90", "ttft_ms.p99", "itl_ms.p50",
        "itl_ms.p90", "itl_ms.p99", "e2e_ms.p50", "e2e_ms.p90", "e2e_ms.p99")
GOALS = {"output_tokens_per_s": 0.08, "e2e_ms.p50": 0.08, "e2e_ms.p90": 0.08,
         "itl_ms.p50": 0.07, "ttft_ms.p90": 0.15, "ttft_ms.p99": 0.20}
OTHER_LENGTHS = """\
name: longer
description: longer prompts and answers than chat, no shared prefix (bench simulator)
seed: 7
prompt_tokens: {dist: lognormal, median: 400, sigma: 0.4, min: 200, max: 1200}
output_tokens: {dist: uniform, min: 100, max: 200}
stages:
  - {concurrency: 8, duration: 30s}
"""


def _log(msg: str) -> None:
    print(f"[bench simulator] {msg}", file=sys.stderr, flush=True)


def speed(n_configs: int, seed: int = 0, baseline_configs: int = 10) -> dict[str, Any]:
    """CPU seconds for n_configs simulated 10-minute closed-loop chat workloads, and the
    baseline measured in the same run: the first `baseline_configs` of them stepped one
    step at a time (Engine.fast_paths off: the same results, the plain path)."""
    from servescope.capacity import catalog
    from servescope.capacity.setup import PlanInput
    from servescope.capacity.sim_engine import Engine
    from servescope.capacity.sim_run import simulate_run
    from servescope.capacity.sim_setup import sim_setup
    from servescope.capacity.simulator import SchedulerConfig
    from servescope.commands.simulate_requests import scenario_workload
    from servescope.loadgen.scenario import scenario_path

    ss = sim_setup(PlanInput(model=catalog.model("llama-3.1-8b"),
                             hardware=catalog.hardware("h100")))
    chat = load_scenario(scenario_path("chat"))
    rng = random.Random(seed)
    pool = scenario_workload(chat.with_overrides(concurrency=1, duration=600,
                                                 requests=200_000)).requests
    configs = []
    for _ in range(n_configs):
        cfg = SchedulerConfig(max_num_seqs=rng.choice([16, 32, 64, 128, 256, 512]),
                              max_num_batched_tokens=rng.choice([512, 1024, 2048, 4096, 8192]),
                              kv_blocks=ss.config.kv_blocks, block_size=ss.config.block_size)
        configs.append((cfg, rng.choice([1, 4, 16, 32, 64, 128, 256])))

    def run_all(chosen: list) -> tuple[float, int, int]:
        t0, requests, steps = time.process_time(), 0, 0
        for cfg, users in chosen:
            run = simulate_run(pool, cfg, ss.physics, closed_loop_users=users,
                               duration_s=600.0)
            requests += len(run.requests)
            steps += run.steps
        return time.process_time() - t0, requests, steps

    cpu, requests, steps = run_all(configs)
    first = configs[:baseline_configs]
    fast_first = run_all(first)[0]
    Engine.fast_paths = False
    try:
        plain_first = run_all(first)[0]
    finally:
        Engine.fast_paths = True
    return {"configs": n_configs, "cpu_s": cpu, "requests": requests, "steps": steps,
            "goal_cpu_s": 300.0 * n_configs / 1000, "baseline_configs": len(first),
            "baseline_plain_cpu_s": plain_first, "baseline_fast_cpu_s": fast_first,
            "speedup_vs_plain": plain_first / fast_first if fast_first else None}


def _measure(scenario: Any, url: str, store: Any) -> tuple[int, dict[str, Any]]:
    return run_load(scenario, url, store, show_progress=False, describe_target=describe_target)


def validate(args: argparse.Namespace) -> dict[str, Any]:
    from servescope.capacity.sim_calibrate import run_order, run_speed
    from servescope.capacity.sim_profile import Profile, predict, rel_errors
    from servescope.collectors.otlp import OTLPReceiver
    from servescope.commands.simulate_calibrate import (
        _server_scheduler,
        build_profile,
        measured_run,
        pair_tokens_for,
    )
    from servescope.commands.simulate_requests import replica_maker
    from servescope.core.store import Store
    from servescope.engines.vllm_cpu import VLLMServer, ensure_env, ensure_model
    from servescope.loadgen.scenario import scenario_path

    tmp = Path(tempfile.mkdtemp(prefix="bench-sim-"))
    store = Store(args.keep_store or tmp / "bench.db")
    receiver = OTLPReceiver(store, "127.0.0.1", 0).start()
    python = ensure_env(_log)
    server = VLLMServer(model_dir=ensure_model(python, _log), python=python, max_num_seqs=8,
                        otlp_traces_endpoint=receiver.endpoint,
                        extra_args=["--max-num-batched-tokens", "2048"])
    t_start = time.monotonic()
    all_cpus = set(os.sched_getaffinity(0))

    def start(srv: Any) -> None:
        """Start a server (made while this process could run on every CPU: VLLMServer
        splits the CPUs it sees), then keep this process (the load generator) off the CPUs
        it took."""
        srv.start_and_wait(_log)
        rest = all_cpus - set(srv.cpus or ())
        if srv.cpus and rest:
            os.sched_setaffinity(0, rest)

    start(server)
    seed = [1000]

    def fresh(sc: Any, **kw: Any) -> Any:
        seed[0] += 1
        return sc.with_overrides(seed=seed[0], **kw)

    out: dict[str, Any] = {"server": {"max_num_seqs": 8, "max_num_batched_tokens": 2048}}
    try:
        chat = load_scenario(scenario_path("chat"))
        levels, runs, summaries = [1, 2, 4], [], []
        # as `servescope calibrate` does: a fresh server's first seconds run slower
        if args.warmup:
            _log(f"warm-up: chat at concurrency {levels[-1]}, {args.warmup:g}s (not fitted)")
            _measure(fresh(chat, concurrency=levels[-1], duration=args.warmup), server.url,
                     store)
        order = run_order(levels)  # as `servescope calibrate`: mirrored, half each
        for c in order:
            _log(f"calibrate: chat at concurrency {c}, {args.calib_duration / 2:g}s")
            run_id, summary = _measure(fresh(chat, concurrency=c,
                                             duration=args.calib_duration / 2),
                                       server.url, store)
            runs.append(measured_run(store, run_id)[0])
            summaries.append(summary)
        ns = argparse.Namespace(max_num_seqs=8, max_num_batched_tokens=2048)
        pairs, pairs_from = pair_tokens_for(server.url, None)
        _log(f"prefill pair = {pairs:.3g} prompt tokens ({pairs_from})")
        profile = Profile.from_dict(build_profile(
            order, runs, summaries, _server_scheduler(server.url, ns),
            {"target": server.url, "model": "tiny-qwen2", "levels": levels, "order": order,
             "pair_tokens_from": pairs_from}, chat, pairs))
        out["profile"] = profile.to_dict()
        config = profile.config()
        # the open loop at the rate 2 users drew: about two thirds of the server's capacity.
        # Near the knee a few percent of speed moves the queue's tail by tens of percent in
        # any model (and in the server from one run to the next)
        at2 = [sm["requests_per_s"] for lv, sm in zip(order, summaries, strict=True) if lv == 2]
        rate = round(sum(at2) / len(at2), 2)
        longer_path = tmp / "longer.yaml"
        longer_path.write_text(OTHER_LENGTHS)
        longer = load_scenario(longer_path)
        cases = [(f"chat c={c}", chat, {"concurrency": c, "duration": args.duration})
                 for c in (8, 16, 32)]
        cases += [("longer c=8", longer, {"concurrency": 8, "duration": args.duration}),
                  (f"chat rate={rate:g}/s", chat, {"rate": rate, "duration": args.duration})]
        results, first_measured = [], None
        for name, base, kw in cases:
            sc = fresh(base, **kw)
            make = replica_maker(sc)
            predicted = predict(make, config, profile, replicas=args.replicas)
            _log(f"measure: {name}, {args.duration:g}s")
            run_id, measured = _measure(sc, server.url, store)
            first_measured = first_measured or measured
            results.append({"case": name, "predicted": _flat(predicted), "measured":
                            _flat(measured), "interval90": predicted["interval90"],
                            "errors": rel_errors(predicted, measured, FIGS),
                            **at_own_speed(profile, config, make(0), store, run_id,
                                           measured)})
        out["cases"] = results
        # The server against itself: the first case measured again (a fresh seed, as every
        # run), how far apart two runs of one load are here: the floor under any error
        name, base, kw = cases[0]
        _log(f"repeat: {name}, {args.duration:g}s")
        again_id, again = _measure(fresh(base, **kw), server.url, store)
        out["repeat"] = {"case": name, "first": _flat(first_measured), "again": _flat(again),
                         "differences": rel_errors(again, first_measured, FIGS),
                         "speeds": [results[0].get("own_speed"), run_speed(
                             measured_run(store, again_id)[0], profile.calibration.step)]}
        # Preemption: the same server restarted with a KV cache for about half of the longer
        # scenario's eight sequences (vLLM's --num-gpu-blocks-override), predicted from the
        # same calibration with that server's blocks
        if args.small_kv_blocks:
            server.stop()
            os.sched_setaffinity(0, all_cpus)  # the new server splits every CPU again
            server = VLLMServer(
                model_dir=server.model_dir, python=python, max_num_seqs=8,
                otlp_traces_endpoint=receiver.endpoint,
                extra_args=["--max-num-batched-tokens", "2048", "--num-gpu-blocks-override",
                            str(args.small_kv_blocks)])
            start(server)
            name = f"longer c=8, KV {args.small_kv_blocks} blocks"
            _log(f"warm-up: {name}, {args.warmup / 2:g}s (not compared)")
            _measure(fresh(longer, concurrency=8, duration=args.warmup / 2), server.url, store)
            small = _server_scheduler(server.url, ns)
            config = profile.config(kv_blocks=small.get("kv_blocks"),
                                    block_size=small.get("block_size"))
            sc = fresh(longer, concurrency=8, duration=args.duration)
            make_small = replica_maker(sc)
            predicted = predict(make_small, config, profile, replicas=args.replicas)
            before = {c: _counter(server.url, c) for c in RESUME_COUNTERS}
            _log(f"measure: {name}, {args.duration:g}s")
            run_id, measured = _measure(sc, server.url, store)
            results.append({"case": name, "predicted": _flat(predicted),
                            "measured": _flat(measured),
                            "interval90": predicted["interval90"],
                            "errors": rel_errors(predicted, measured, FIGS),
                            "preemptions": {"predicted": predicted.get("preemptions"),
                                            **{f"measured_{c}": _counter(server.url, c)
                                               - before[c] for c in RESUME_COUNTERS}},
                            **at_own_speed(profile, config, make_small(0), store, run_id,
                                           measured)})
    finally:
        server.stop()
        receiver.stop()
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    out["engine_wall_s"] = time.monotonic() - t_start
    return out


# vLLM's counters read around the preemption case: its preemptions, and the prefix cache's
# hit tokens, which there are a resumed request's blocks found again (the longer scenario
# shares no prefix); the simulator recomputes a resumed request in full
RESUME_COUNTERS = ("preemptions_total", "prefix_cache_hits_total")


def _counter(url: str, concept: str) -> float:
    """One of vLLM's counters now, by servescope's concept name."""
    from servescope.collectors.scrape import scrape

    return sum(x.value for x in scrape(url, "vllm").samples if x.concept == concept)


def at_own_speed(profile: Any, config: Any, work: Any, store: Any, run_id: int,
                 measured: dict[str, Any]) -> dict[str, Any]:
    """The prediction again, after the run, at the speed the server ran it (its decode
    steps against the calibrated line: sim_calibrate.run_speed): what the model misses
    once the machine's speed during the run is known. A diagnostic that splits each error
    into the machine's part and the model's, not a prediction (it reads the run)."""
    from servescope.capacity.sim_calibrate import run_speed
    from servescope.capacity.sim_profile import rel_errors, run_summary
    from servescope.commands.simulate_calibrate import measured_run

    cal = profile.calibration
    speed = run_speed(measured_run(store, run_id)[0], cal.step)
    if speed is None:
        return {"own_speed": None}
    again = run_summary(work, config, cal.step.scaled(speed), 0, cal.ttft_overhead_s,
                        cal.tail_s)
    return {"own_speed": speed, "own_speed_errors": rel_errors(again, measured, FIGS)}


def _flat(summary: dict[str, Any]) -> dict[str, Any]:
    from servescope.capacity.sim_summary import figures

    return {k: v for k, v in figures(summary).items() if k in FIGS}


def report(out: dict[str, Any]) -> list[str]:
    lines = []
    if "profile" in out:
        c = out["profile"]["calibration"]
        sm = c["step_model"]
        lines.append(f"calibrated step = {sm['a_s'] * 1e3:.3f} ms + "
                     f"{sm['prefill_s_per_token'] * 1e6:.2f} us/prefill token + "
                     f"{sm['decode_s_per_seq'] * 1e6:.1f} us/decode + "
                     f"{sm['kv_s_per_token'] * 1e9:.2f} ns/KV token; TTFT overhead "
                     f"{c['ttft_overhead_s'] * 1e3:.1f} ms ({c['rows']} steps, "
                     f"{c['spans_used']} spans)")
        if sm.get("pair_tokens"):
            lines.append(f"  prefill pair = {sm['pair_tokens']:.3g} prompt tokens, "
                         f"{sm['pair_tokens'] * sm['prefill_s_per_token'] * 1e9:.0f} ns "
                         "(from the architecture)")
        from servescope.capacity.sim_calibrate import Calibration, speeds_line, warnings_for

        cal = Calibration.from_dict(c)
        if line := speeds_line(cal, out["profile"]["source"].get("order") or []):
            lines.append(f"  {line}")
        lines += [f"  warning: {w}" for w in warnings_for(cal)]
        ext = out["profile"].get("extrapolation_error") or {}
        if ext:
            lines.append("extrapolation error per doubling of the users (fitted at 1-2, "
                         "predicting 4): " + ", ".join(f"{k} {v:.1%}" for k, v in ext.items()
                                                       if k in FIGS))
    inside = total = 0
    worst: dict[str, float] = {}
    worst_own: dict[str, float] = {}
    for case in out.get("cases", []):
        lines.append(f"-- {case['case']}")
        lines.append(f"{'figure':<22}{'predicted':>11}{'90% interval':>22}{'measured':>11}"
                     f"{'error':>8}{'in':>4}")
        for k in FIGS:
            p, m = case["predicted"].get(k), case["measured"].get(k)
            iv = case["interval90"].get(k)
            e = case["errors"].get(k)
            held = iv is not None and m is not None and iv[0] <= m <= iv[1]
            if iv is not None and m is not None:
                inside += held
                total += 1
            if e is not None:
                worst[k] = max(worst.get(k, 0.0), abs(e))
            ivs = f"[{iv[0]:.1f}, {iv[1]:.1f}]" if iv else "-"
            lines.append(f"{k:<22}{_n(p):>11}{ivs:>22}{_n(m):>11}"
                         f"{'-' if e is None else f'{e:+.1%}':>8}{'y' if held else 'n':>4}")
        if case.get("preemptions"):
            pre = case["preemptions"]
            lines.append(f"  preemptions: predicted {pre['predicted']}, measured "
                         f"{pre['measured_preemptions_total']:g}; vLLM's prefix-cache hits "
                         f"{pre['measured_prefix_cache_hits_total']:g} tokens (the simulator "
                         "recomputes a resumed request in full: 0 is what it assumes)")
        if case.get("own_speed_errors"):
            errs = case["own_speed_errors"]
            lines.append(f"  after the run, at the speed it ran ({case['own_speed']:.2f}x the "
                         "calibration's): " + ", ".join(
                             f"{k} {errs[k]:+.1%}" for k in GOALS if errs.get(k) is not None))
            for k, e in errs.items():
                if e is not None:
                    worst_own[k] = max(worst_own.get(k, 0.0), abs(e))
    if total:
        lines.append(f"interval coverage: {inside}/{total} = {inside / total:.0%} (goal >= 90%)")
    for k, goal in GOALS.items():
        if k in worst:
            lines.append(f"goal {k} within {goal:.0%}: worst {worst[k]:.1%} "
                         f"{'met' if worst[k] <= goal else 'MISSED'}"
                         + (f"; at each run's own speed {worst_own[k]:.1%}" if k in worst_own
                            else ""))
    speeds = [c["own_speed"] for c in out.get("cases", []) if c.get("own_speed")]
    if speeds:
        lines.append(f"the server's speed in the cases: {min(speeds):.2f}-{max(speeds):.2f}x "
                     "the calibration's (the machine's part of the errors; the 'own speed' "
                     "figures are the model's part, read after each run, not predictions)")
    if "repeat" in out:
        r = out["repeat"]
        diffs = {k: v for k, v in r["differences"].items() if v is not None}
        lines.append(f"repeatability: {r['case']} measured again, the second run against the "
                     "first: " + ", ".join(f"{k} {v:+.1%}" for k, v in diffs.items()))
        if None not in (sp := r.get("speeds") or [None]):
            lines.append(f"  the server's speed in the two runs: {sp[0]:.2f}x, then {sp[1]:.2f}x "
                         "the calibration's")
        over = [k for k, goal in GOALS.items() if abs(diffs.get(k, 0.0)) > goal]
        if over:
            lines.append("  the server's own run-to-run difference exceeds the goal for "
                         + ", ".join(over))
    if "speed" in out:
        s = out["speed"]
        lines.append(f"speed: {s['configs']} configurations of a 10-minute workload in "
                     f"{s['cpu_s']:.1f} CPU s ({s['requests']:,} requests, {s['steps']:,} steps;"
                     f" goal {s['goal_cpu_s']:.0f} s) "
                     f"{'met' if s['cpu_s'] <= s['goal_cpu_s'] else 'MISSED'}")
        if s.get("speedup_vs_plain"):
            lines.append(f"  baseline in this run: the first {s['baseline_configs']} stepped one "
                         f"step at a time took {s['baseline_plain_cpu_s']:.1f} CPU s, the fast "
                         f"paths {s['baseline_fast_cpu_s']:.1f}: {s['speedup_vs_plain']:.2f}x")
    if "engine_wall_s" in out:
        lines.append(f"engine wall time {out['engine_wall_s']:.0f} s")
    return lines


def _n(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench simulator", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib-duration", type=float, default=20.0,
                    help="seconds per calibration level (two runs of half, mirrored order)")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=10.0,
                    help="seconds of load before calibrating, not fitted")
    ap.add_argument("--keep-store", type=Path,
                    help="keep the measured runs in this SQLite store (default: deleted)")
    ap.add_argument("--replicas", type=int, default=20)
    ap.add_argument("--small-kv-blocks", type=int, default=24,
                    help="the preemption case: vLLM restarted with this many KV blocks of 128 "
                    "tokens (--num-gpu-blocks-override; 0: skip the case)")
    ap.add_argument("--configs", type=int, default=1000, help="speed check size (0: skip)")
    ap.add_argument("--no-engine", action="store_true", help="the speed check only")
    ap.add_argument("--out", type=Path, help="write the figures as JSON")
    args = ap.parse_args(argv)
    out: dict[str, Any] = {}
    if not args.no_engine:
        out.update(validate(args))
    if args.configs:
        _log(f"speed: {args.configs} configurations")
        out["speed"] = speed(args.configs)
    print("\n".join(report(out)))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))
