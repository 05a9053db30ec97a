"""`servescope compare`: the same scenario (or sweep of levels) against each target in turn,
under matched request settings (one Scenario object: temperature, max tokens, stop,
streaming, ignore_eos are the same for every target), with the collector watching the
target being measured, and each target's artifact manifest stored with each of its runs.

Targets run one after another, never together, so no target's load slows another's (they
may share this machine). The load runner (loadgen/run.py) and the sweep reading
(analysis/sweep.py) are reused as they are; analysis/compare.py reads the result.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from servescope.analysis.compare import comparison, token_stats
from servescope.analysis.host_use import HOST_TARGET, combine, run_host_use
from servescope.analysis.sweep import analyze
from servescope.collectors.describe import describe_target
from servescope.collectors.loop import Collector, TargetSpec
from servescope.collectors.manifest import fetch_manifest
from servescope.core.store import Store
from servescope.loadgen.run import LoadError, run_load
from servescope.loadgen.scenario import Scenario
from servescope.loadgen.tokenizer import LocalTokenizer

SCHEMA = "servescope.compare/1"
COLLECT_INTERVAL_S = 1.0


class CompareError(ValueError):
    """Bad compare input (fewer than two targets, duplicate names, a --model for no target)."""


@dataclass
class CompareSettings:
    kind: str  # "concurrency" or "rate"
    levels: list[float]
    duration: float
    requests: int | None = None
    models: dict[str, str] = field(default_factory=dict)  # target name -> model
    headers: dict[str, str] = field(default_factory=dict)
    tokenizer: LocalTokenizer | None = None
    show_progress: bool = True
    num_parallel: dict[str, int] = field(default_factory=dict)  # Ollama: what the user knows


def parse_targets(texts: list[str]) -> list[TargetSpec]:
    """Two or more NAME=RUNTIME:URL targets with unique names (collectors/loop.py parses
    each; credentials move to basic auth there)."""
    specs = [TargetSpec.parse(t) for t in texts]
    if len(specs) < 2:
        raise CompareError(f"compare needs two or more --target, got {len(specs)}")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise CompareError(f"--target names must be unique, got {names}")
    return specs


def parse_models(texts: list[str], specs: list[TargetSpec]) -> dict[str, str]:
    """`--model NAME=MODEL` for one target, or `--model MODEL` for all of them."""
    names = {s.name for s in specs}
    models: dict[str, str] = {}
    for text in texts:
        name, sep, model = text.partition("=")
        if sep and name in names:
            models[name] = model
        elif sep:
            raise CompareError(f"--model {text!r}: no target named {name!r} "
                               f"(targets: {', '.join(sorted(names))})")
        else:
            models.update({n: text for n in names if n not in models})
    return models


def scenario_at(base: Scenario, settings: CompareSettings, level: float) -> Scenario:
    if settings.kind == "concurrency":
        return base.with_overrides(concurrency=int(level), duration=settings.duration,
                                   requests=settings.requests)
    return base.with_overrides(None, settings.duration, settings.requests, rate=f"{level:g}/s")


def target_manifest(spec: TargetSpec, settings: CompareSettings) -> dict[str, Any]:
    with httpx.Client(timeout=10.0, auth=spec.auth) as client:
        return fetch_manifest(spec.url, spec.runtime, settings.models.get(spec.name), client,
                              settings.num_parallel.get(spec.name))


def run_target(base: Scenario, spec: TargetSpec, settings: CompareSettings, store: Store,
               say: Callable[[str], None]) -> dict[str, Any]:
    """Every level against one target, its collector on; returns its part of compare.json."""
    manifest = target_manifest(spec, settings)
    if manifest["runtime"] and spec.runtime == "auto":
        spec = TargetSpec(spec.name, manifest["runtime"], spec.url, spec.auth)
    model = settings.models.get(spec.name) or manifest.get("model")
    sweep_id = store.create_sweep(f"{base.name}-compare-{spec.name}", base.name, spec.url,
                                  settings.kind, settings.levels)
    levels: list[float] = []
    summaries: list[dict[str, Any]] = []
    runs: list[int] = []
    rows: list[dict[str, Any]] = []
    status = "finished"
    collector = Collector([spec], store, interval=COLLECT_INTERVAL_S, host=True)
    collector.start()
    try:
        for level in settings.levels:
            say(f"-- {spec.name} ({manifest['runtime']}): {settings.kind} {level:g}")
            run_id, summary = run_load(scenario_at(base, settings, level), spec.url, store,
                                       model=model, headers=settings.headers,
                                       show_progress=settings.show_progress,
                                       tokenizer=settings.tokenizer,
                                       describe_target=describe_target)
            store.set_run_manifest(run_id, manifest)
            store.add_run_to_sweep(run_id, sweep_id)
            levels.append(level)
            summaries.append(summary)
            runs.append(run_id)
            rows.extend(_token_row(r) for r in store.requests(run_id) if r.ok)
            if summary["status"] != "finished":
                status = summary["status"]
                break
        if runs:
            wait_for_host_scrape(store, runs[-1])
    finally:
        collector.stop()
        sweep = analyze(levels, summaries)
        store.finish_sweep(sweep_id, status, sweep)
    # After the collector stopped: every host sample of every level's window is stored.
    host_use = [run_host_use(store, run_id, COLLECT_INTERVAL_S) for run_id in runs]
    return {
        "name": spec.name, "runtime": manifest["runtime"], "url": spec.url, "model": model,
        "manifest": manifest, "sweep_id": sweep_id, "run_ids": runs, "status": status,
        "curve": sweep["curve"], "saturation_level": sweep["saturation_level"],
        "max_level_meeting_slos": sweep["max_level_meeting_slos"],
        "summaries": [_level_summary(level, s) | {"host_use": use}
                      for level, s, use in zip(levels, summaries, host_use, strict=True)],
        "tokens": token_stats(rows),
        "host_use": combine([u for u in host_use if u]) if any(host_use) else None,
    }


def wait_for_host_scrape(store: Store, run_id: int, timeout: float = 5 * COLLECT_INTERVAL_S
                         ) -> None:
    """Before the collector stops: wait (bounded) for the host's first scrape after the
    last run's load, whose CPU reading covers its last interval."""
    host = next((t for t in store.targets() if t["name"] == HOST_TARGET), None)
    _, last_ns = store.request_bounds(run_id)
    if host is None or last_ns is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not store.samples(host["id"], ["cpu_utilization_ratio"], since=last_ns / 1e9).empty:
            return
        time.sleep(0.2)


def failed_target(spec: TargetSpec, error: str) -> dict[str, Any]:
    """A target that could not be measured keeps its place (and its error) in the report."""
    return {"name": spec.name, "runtime": spec.runtime, "url": spec.url, "model": None,
            "manifest": {"runtime": spec.runtime, "url": spec.url}, "sweep_id": None,
            "run_ids": [], "status": "failed", "error": error, "curve": [],
            "saturation_level": None, "max_level_meeting_slos": None, "summaries": [],
            "tokens": token_stats([]), "host_use": None}


def _token_row(r: Any) -> dict[str, Any]:
    return {"prompt_tokens": r.prompt_tokens, "target_prompt_tokens": r.target_prompt_tokens,
            "output_tokens": r.output_tokens, "target_output_tokens": r.target_output_tokens,
            "token_count_source": r.token_count_source}


def _level_summary(level: float, s: dict[str, Any]) -> dict[str, Any]:
    """What the report needs of one level's run summary (the full one stays in the store)."""
    server = s.get("server") or {}
    keep = ("run_id", "status", "requests_ok", "requests_failed", "output_tokens_per_s",
            "requests_per_s", "goodput", "ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "slos",
            "warnings")
    out = {"level": level, **{k: s.get(k) for k in keep}}
    out["client_limited"] = bool((s.get("client") or {}).get("limited_by_client"))
    out["server_split"] = server.get("per_request")
    out["server_window"] = {k: v for k, v in server.items() if k != "per_request"} or None
    return out


def run_compare(base: Scenario, specs: list[TargetSpec], settings: CompareSettings,
                store: Store, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the comparison; returns compare.json's content, also when a target could not be
    measured (its error is kept, the others still run) or Ctrl-C stopped it (what was
    measured is kept, no further target runs)."""
    say = say or (lambda line: print(line, file=sys.stderr))
    if len(specs) < 2:
        raise CompareError(f"compare needs two or more targets, got {len(specs)}")
    targets: list[dict[str, Any]] = []
    for spec in specs:
        try:
            targets.append(run_target(base, spec, settings, store, say))
        except LoadError as exc:  # this target could not be measured: say so, go on
            say(f"-- {spec.name}: not measured: {exc}")
            targets.append(failed_target(spec, str(exc)))
        if targets[-1]["status"] == "interrupted":  # Ctrl-C: keep what was measured, stop
            break
    measured = [t for t in targets if not t.get("error")]
    manifests = {t["name"]: t["manifest"] for t in measured}
    curves = {t["name"]: t["curve"] for t in measured}
    stats = {t["name"]: t["tokens"] for t in measured}
    return {
        "schema": SCHEMA, "scenario": base.name, "kind": settings.kind,
        "levels": settings.levels, "duration_s": settings.duration,
        "requests_per_level": settings.requests,
        "request_settings": request_settings(base),
        "targets": targets,
        **comparison(manifests, curves, stats, settings.kind),
    }


def request_settings(s: Scenario) -> dict[str, Any]:
    """The settings every target got alike: one scenario, one request builder
    (loadgen/openai_chat.py: streamed, usage asked for, max_tokens = the intended output
    length, ignore_eos, no sampling overrides, so each server's defaults apply: see the
    manifests' sampling_defaults)."""
    dumped = s.model_dump(mode="json")
    keys = ("api", "seed", "prompt_tokens", "output_tokens", "shared_prefix_tokens", "slos")
    out = {k: dumped[k] for k in keys if k in dumped}
    out.update({"stream": True, "include_usage": True, "ignore_eos": True,
                "max_tokens": "the intended output length of each request"})
    return out
