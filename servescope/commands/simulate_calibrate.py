"""`servescope calibrate`: a short closed-loop sweep against a real server, then the
simulator's step time fitted to it and saved as a profile (capacity/sim_profile.py).

Locust monkey-patches the process on import, so loadgen.run comes first."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import httpx

from servescope.core.errors import EXIT_BAD_INPUT, CliError


def measured_run(store: Any, run_id: int) -> tuple[list[Any], dict[str, Any]]:
    """A stored run's observed requests (with the server's queue and prefill where a span
    joined) and its summary."""
    from servescope.analysis.join import joined_phases, run_records, wait_for_spans
    from servescope.capacity.sim_calibrate import observed_requests

    run = store.run(run_id)
    records = run_records(store, run)
    wait_for_spans(store, records, since=(run.get("started_at") or 0) - 1)
    phases = {p.request_id: p.server for p in joined_phases(store, records)}
    return observed_requests(records, phases), run.get("summary") or {}


def architecture_pair_tokens(architecture: str) -> tuple[float, str]:
    """A prefill attention pair's cost in prompt tokens (steptime.pair_tokens) for the
    model `architecture` names (as the planner's --model resolves it), and its source."""
    from servescope.capacity.catalog import model as resolve_model
    from servescope.capacity.steptime import pair_tokens

    try:
        info = resolve_model(architecture)
    except ValueError as exc:  # UnknownName and ConfigError
        raise CliError(f"--architecture: {exc}", EXIT_BAD_INPUT) from None
    return pair_tokens(info.spec), info.source


def pair_tokens_for(target: str, model: str | None) -> tuple[float, str]:
    """The same for the model the vLLM server at `target` serves, from the config.json of
    the folder its /v1/models names; (0, why) where that is not readable here: the pairs
    are then left out."""
    from servescope.capacity.model import ConfigError, from_hf_config
    from servescope.capacity.steptime import pair_tokens
    from servescope.collectors.model_info import ModelInfoError, fetch_answers

    try:
        answers = fetch_answers(target, "vllm", model)
    except (ModelInfoError, httpx.HTTPError) as exc:
        return 0.0, f"the server's model was not readable ({exc})"
    if answers.config is None:
        return 0.0, ("vLLM's /v1/models names no folder readable here; give "
                     "--architecture")
    try:
        spec = from_hf_config(answers.config, name=answers.model or "model")
    except ConfigError as exc:
        return 0.0, f"{answers.config_source}: {exc}"
    return pair_tokens(spec), str(answers.config_source)


def build_profile(levels: list[int], runs: list[list[Any]], summaries: list[dict[str, Any]],
                  scheduler: dict[str, Any], source: dict[str, Any],
                  scenario: Any, pair_tokens: float = 0.0) -> dict[str, Any]:
    """Fit, refit on resampled steps, and replay each calibration run in the simulator to
    measure its own error (which the intervals then carry). `levels`: each run's
    concurrency, in the order run (a level may come twice: run_order). `pair_tokens`: see
    pair_tokens_for."""
    from servescope.capacity.sim_calibrate import bootstrap, calibrate
    from servescope.capacity.sim_profile import (
        Profile,
        Workload,
        extrapolation_error_from,
        model_error_from,
        rel_errors,
        run_summary,
    )
    from servescope.capacity.simulator import SimRequest

    cal = calibrate(runs, pair_tokens=pair_tokens)
    profile = Profile(cal, scheduler, bootstrap(runs, pair_tokens=pair_tokens), {}, source)
    config = profile.config()
    # Each run is replayed at its own speed (its mean step against the line): what a replay
    # then misses is the model's, while the machine's swings from run to run reach the
    # intervals once, as run_sd (the replicas' speed draws), not again as model error.
    checks, works = [], []
    for level, obs, measured, speed in zip(levels, runs, summaries, cal.run_speeds,
                                           strict=True):
        reqs = [SimRequest(f"m{i}", 0.0, o.prompt_tokens, o.output_tokens)
                for i, o in enumerate(sorted(obs, key=lambda o: o.send_s))]
        span = max(o.end_s for o in obs) - min(o.send_s for o in obs)
        work = Workload(reqs, level, span, 0.0, 0, scenario.slos.model_dump())
        works.append(work)
        predicted = run_summary(work, config, cal.step.scaled(speed), 0, cal.ttft_overhead_s,
                                cal.tail_s)
        checks.append({"concurrency": level, "errors": rel_errors(predicted, measured)})
    profile.checks = checks
    profile.model_error = model_error_from(checks)
    top = max(levels)
    below = [lv for lv in levels if lv < top]
    if len(set(below)) >= 2:
        # how wrong a prediction past the calibrated levels is: fit without the highest
        # level, predict its runs, and carry that error (their mean) per doubling into
        # farther predictions
        lower = calibrate([r for lv, r in zip(levels, runs, strict=True) if lv < top],
                          pair_tokens=pair_tokens)
        # at the lower fit's own speed, not the top runs' own: those would take up the
        # very difference between levels this measures
        errors: dict[str, list[float]] = {}
        for lv, work, measured in zip(levels, works, summaries, strict=True):
            if lv != top:
                continue
            predicted = run_summary(work, config, lower.step, 0, lower.ttft_overhead_s,
                                    lower.tail_s)
            for k, v in rel_errors(predicted, measured).items():
                if v is not None:
                    errors.setdefault(k, []).append(v)
        profile.extrapolation_error = extrapolation_error_from(
            {k: sum(v) / len(v) for k, v in errors.items()}, math.log2(top / max(below)))
    return profile.to_dict()


def _server_scheduler(target: str, args: argparse.Namespace) -> dict[str, Any]:
    """The KV blocks and block size from vLLM's cache_config_info; the rest from flags."""
    from servescope.collectors.scrape import ScrapeError, scrape

    sched: dict[str, Any] = {"policy": "vllm", "max_num_seqs": args.max_num_seqs,
                             "max_num_batched_tokens": args.max_num_batched_tokens}
    try:
        info = scrape(target, "vllm").info.get("cache_config") or {}
        cache = next(iter(info.values()), {}) or {}
        if cache.get("num_gpu_blocks"):
            sched["kv_blocks"] = max(1, int(cache["num_gpu_blocks"]) - 1)
        if cache.get("block_size"):
            sched["block_size"] = int(cache["block_size"])
        if cache.get("enable_prefix_caching") is not None:
            sched["prefix_caching"] = str(cache["enable_prefix_caching"]).lower() == "true"
    except (ScrapeError, ValueError, TypeError):
        pass
    return sched


def cmd_calibrate(args: argparse.Namespace) -> int:
    from servescope.loadgen.run import LoadError, run_load  # noqa: I001 - Locust first
    from servescope.loadgen.scenario import ScenarioError, load_scenario, scenario_path
    from servescope.collectors.describe import describe_target
    from servescope.capacity.sim_calibrate import run_order
    from servescope.commands.common import _auth_headers, _store

    try:
        levels = [int(v) for v in str(args.concurrency).split(",") if v.strip()]
    except ValueError:
        raise CliError(f"--concurrency {args.concurrency}: give levels like 1,2,4",
                       EXIT_BAD_INPUT) from None
    if not levels or min(levels) < 1:
        raise CliError("--concurrency: levels must be 1 or more", EXIT_BAD_INPUT)
    try:
        base = load_scenario(scenario_path(args.scenario))
    except ScenarioError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    if args.warmup < 0:
        raise CliError(f"--warmup {args.warmup:g}: must be 0 or more seconds", EXIT_BAD_INPUT)
    # a bad --architecture fails now, not after the runs
    arch = architecture_pair_tokens(args.architecture) if args.architecture else None
    store = _store(args)
    headers = _auth_headers(args.api_key_env)
    receiver = None
    if args.otlp_port is not None:
        from servescope.collectors.otlp import OTLPReceiver

        receiver = OTLPReceiver(store, "127.0.0.1", args.otlp_port).start()
    runs, summaries, run_ids = [], [], []
    model = args.model

    def load(level: int, duration: float) -> tuple[int, dict[str, Any]]:
        nonlocal model
        scenario = base.with_overrides(concurrency=level, duration=duration,
                                       requests=-(-args.requests // 2) if args.requests
                                       else None)
        run_id, summary = run_load(scenario, args.target, store, model=model, headers=headers,
                                   show_progress=not args.quiet,
                                   describe_target=describe_target)
        model = model or summary.get("model")
        return run_id, summary

    order = run_order(levels)
    try:
        if args.warmup:
            print(f"calibrate: warm-up at concurrency {max(levels)}, {args.warmup:g}s (not "
                  "fitted)", file=sys.stderr)
            load(max(levels), args.warmup)
        for i, level in enumerate(order):
            print(f"calibrate: run {i + 1}/{len(order)}, concurrency {level}, "
                  f"{args.duration / 2:g}s", file=sys.stderr)
            run_id, summary = load(level, args.duration / 2)
            obs, _ = measured_run(store, run_id)
            if not obs:
                raise CliError(f"calibrate: the run at concurrency {level} finished no request")
            runs.append(obs)
            summaries.append(summary)
            run_ids.append(run_id)
    except (LoadError, ScenarioError) as exc:
        raise CliError(str(exc)) from None
    finally:
        if receiver is not None:
            receiver.stop()
    run = store.run(run_ids[-1])
    source = {"target": args.target, "model": model, "scenario": base.name,
              "levels": levels, "order": order, "runs": run_ids, "created": time.time(),
              "manifest": json.loads(run["manifest"]) if run.get("manifest") else None,
              "server": run.get("target")}
    pairs, pairs_from = arch or pair_tokens_for(args.target, model)
    source["pair_tokens_from"] = pairs_from
    try:
        profile = build_profile(order, runs, summaries, _server_scheduler(args.target, args),
                                source, base, pairs)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    args.out.write_text(json.dumps(profile, indent=2))
    c = profile["calibration"]
    sm = c["step_model"]
    print(f"step = {sm['a_s'] * 1e3:.3f} ms + {sm['prefill_s_per_token'] * 1e6:.2f} us x prefill "
          f"tokens + {sm['decode_s_per_seq'] * 1e6:.1f} us x decodes + "
          f"{sm['kv_s_per_token'] * 1e9:.2f} ns x KV tokens; TTFT overhead "
          f"{c['ttft_overhead_s'] * 1e3:.1f} ms; {c['rows']} steps, {c['spans_used']} spans")
    if pairs:
        print(f"  prefill attention: a (query, key) pair costs {pairs:.3g} prompt tokens "
              f"(architecture from {pairs_from})")
    else:
        print(f"  prefill attention left out: {pairs_from}; long prompts will be predicted "
              "too fast")
    from servescope.capacity.sim_calibrate import Calibration, speeds_line, warnings_for

    cal = Calibration.from_dict(c)
    if line := speeds_line(cal, order):
        print(f"  {line}")
    if c.get("context_range"):
        lo, hi = c["context_range"]
        print(f"  contexts seen: {lo:.0f}-{hi:.0f} KV tokens per decoding sequence (p10-p90); "
              "predictions far outside extrapolate the KV cost")
    for w in warnings_for(cal):
        print(f"  warning: {w}")
    for chk in profile["checks"]:
        errs = ", ".join(f"{k} {v:+.0%}" for k, v in chk["errors"].items() if v is not None)
        print(f"  replay of concurrency {chk['concurrency']} at its own speed: {errs}")
    ext = profile.get("extrapolation_error") or {}
    if ext:
        shown = ", ".join(f"{k} {ext[k]:.0%}" for k in ("output_tokens_per_s", "itl_ms.p50",
                                                         "e2e_ms.p50", "ttft_ms.p90") if k in ext)
        print(f"  extrapolation (fitted without concurrency {max(levels)}, predicting it), "
              f"error per doubling of the users: {shown}; predictions past {max(levels)} users "
              "carry it in their intervals")
    print(f"profile written to {args.out}")
    return 0
