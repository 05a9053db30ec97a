"""Run a scenario headless with Locust, persisting every request as it completes.

Importing this module imports Locust, which monkey-patches the process for gevent; the CLI
imports it only for the `load` command.
"""

from __future__ import annotations

import contextlib
import gc
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import httpx
from locust.env import Environment
from locust.runners import STATE_STOPPED

from servescope.analysis.join import server_section
from servescope.analysis.latency import send_lag_ms, summarize
from servescope.analysis.prompt_lengths import prompt_length_summary
from servescope.analysis.slo import evaluate_slos
from servescope.core.records import RequestRecord
from servescope.core.store import Store
from servescope.loadgen.health import ClientHealth
from servescope.loadgen.prepare import prepare_prompts, prepared_line
from servescope.loadgen.prompts import PromptBuilder
from servescope.loadgen.scenario import Scenario
from servescope.loadgen.tokenizer import LocalTokenizer, TokenizerError
from servescope.loadgen.users import (
    PREPARE_LEAD_S,
    ChatUser,
    LoadContext,
    ScheduleShape,
    ScheduleUser,
    StagesShape,
)
from servescope.loadgen.wire import Wire
from servescope.loadgen.writer import RecordWriter


class LoadError(RuntimeError):
    """The run could not start (target unreachable, no model ...); one clear line."""


def discover_model(client: httpx.Client, base_url: str, headers: dict[str, str]) -> str:
    url = f"{base_url}/v1/models"
    try:
        resp = client.get(url, headers=headers, timeout=10)
        resp.raise_for_status()
        models = resp.json().get("data") or []
    except httpx.HTTPError as exc:
        raise LoadError(f"{url}: cannot list models ({type(exc).__name__}: {exc}); "
                        "is the server up? pass --model to skip this") from exc
    except ValueError as exc:
        raise LoadError(f"{url}: answered something that is not JSON") from exc
    if not models:
        raise LoadError(f"{url}: the server lists no models; pass --model")
    return str(models[0]["id"])


# What a run records about its target before the measured window: (configuration, artifact
# manifest). The application layer passes collectors.describe.describe_target; without one a
# run records only the URL.
DescribeTarget = Callable[[str, httpx.Client, str], tuple[dict[str, Any], dict[str, Any] | None]]


def describe(describe_target: DescribeTarget | None, base_url: str, client: httpx.Client,
             model: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    if describe_target is None:
        return {"url": base_url, "model": model}, None
    config, manifest = describe_target(base_url, client, model)
    return {**config, "model": model}, manifest


class StopOnInterrupt:
    """The first Ctrl-C (or SIGTERM, as `kill`, `docker stop` and CI cancellations send)
    asks the run to stop: requests in flight may finish, the summary is written. A second
    one acts as it would without this. A flag instead of an exception, so no greenlet is
    interrupted halfway through a request or a store write."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnInterrupt:
        with contextlib.suppress(ValueError):  # not the main thread: plain KeyboardInterrupt
            for sig in self.SIGNALS:
                previous = signal.getsignal(sig)
                if previous is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self._restore()

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def __exit__(self, *exc: object) -> None:
        self._restore()


class Progress:
    """One status line, refreshed in place on a terminal, every few seconds otherwise."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def show(self, line: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            print(f"\r{line:<110}", end="", file=sys.stderr, flush=True)
        elif force or now - self.last >= 5:
            print(line, file=sys.stderr, flush=True)
        self.last = now

    def done(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


def freeze_heap() -> None:
    """Everything built before a run lives for the whole run: keep it out of the garbage
    collector's full passes, which otherwise stop every stream for ~100 ms. One collection
    now, while no request is in flight."""
    gc.collect()
    gc.freeze()


def open_clients(scenario: Scenario, base_url: str, workers: int = 1
                 ) -> tuple[Wire, httpx.Client, int]:
    """This process's clients for its share of the load: (the timed requests' Wire, an httpx
    client for the control plane: model discovery, server config, and /tokenize while the
    prompts are prepared, before the run; peak concurrency). Locust spreads closed-loop
    users evenly over `workers`."""
    if scenario.mode == "closed":
        peak = -(-max(s.concurrency for s in scenario.stages) // workers)
    else:
        peak = scenario.max_in_flight
    # Before the run, /tokenize calls prepare prompts a few at a time (loadgen/prepare.py).
    limits = httpx.Limits(max_connections=peak + 8, max_keepalive_connections=64)
    client = httpx.Client(limits=limits, timeout=scenario.request_timeout)
    return Wire(base_url), client, peak


def load_context(
    scenario: Scenario,
    base_url: str,
    model: str,
    wire: Wire,
    client: httpx.Client,
    record: Callable[[RequestRecord], None],
    headers: dict[str, str],
    ignore_eos: bool = True,
    worker: str = "local",
    share: tuple[int, int] = (0, 1),
    tokenizer: LocalTokenizer | None = None,
) -> LoadContext:
    """What the users of this process share. Its prompts are built by prepare_prompts,
    before the run (with `tokenizer`, the server's is never asked)."""
    prompts = PromptBuilder(
        base_url, model, client, scenario.shared_prefix_tokens, scenario.system_prompt,
        headers, scenario.seed, tokenizer=tokenizer,
        text_prompt=scenario.api == "openai-completions",
    )
    return LoadContext(
        scenario=scenario, base_url=base_url, model=model, record=record, wire=wire,
        prompts=prompts, headers=headers, ignore_eos=ignore_eos, worker=worker, share=share,
    )


def user_class(ctx: LoadContext) -> type[ChatUser] | type[ScheduleUser]:
    """The run's Locust user class. Its name is what a master and its workers agree on."""
    base = ChatUser if ctx.scenario.mode == "closed" else ScheduleUser
    return type("ScenarioUser", (base,), {"ctx": ctx, "abstract": False})


def stop_timeout(scenario: Scenario) -> float:
    """How long requests in flight may take to finish when a stage shrinks or the run ends."""
    return min(scenario.request_timeout, 60.0)


def run_load(
    scenario: Scenario,
    base_url: str,
    store: Store,
    model: str | None = None,
    out: Path | None = None,
    headers: dict[str, str] | None = None,
    ignore_eos: bool = True,
    show_progress: bool = True,
    on_record: Callable[[RequestRecord], None] | None = None,
    tokenizer: LocalTokenizer | None = None,
    describe_target: DescribeTarget | None = None,
) -> tuple[int, dict[str, Any]]:
    """Run `scenario` against `base_url`; returns (run id, summary). Every prompt is built
    first (loadgen/prepare.py; with `tokenizer` the server's is never asked), then the run
    is created and measured. Every request is stored within 0.1 s of completing
    (loadgen/writer.py); Ctrl-C stops the run and keeps (and summarizes) everything
    measured so far."""
    base_url = base_url.rstrip("/")
    headers = dict(headers or {})
    closed = scenario.mode == "closed"
    wire, client, peak = open_clients(scenario, base_url)
    try:
        model = model or discover_model(client, base_url, headers)
        config, manifest = describe(describe_target, base_url, client, model)
    except BaseException:
        client.close()
        raise

    def record(rec: RequestRecord) -> None:
        writer.add(rec)  # the writer exists once the run does, before any request
        if on_record is not None:
            on_record(rec)

    ctx = load_context(scenario, base_url, model, wire, client, record, headers, ignore_eos,
                       tokenizer=tokenizer)
    prepared = _prepare(ctx, show_progress, client, wire)
    run_id = create_run(store, scenario, base_url, config)
    if manifest is not None:
        store.set_run_manifest(run_id, manifest)
    writer = RecordWriter(store, run_id)
    shape_base = StagesShape if closed else ScheduleShape
    shape = type("ScenarioShape", (shape_base,), {"ctx": ctx})()
    env = Environment(
        user_classes=[user_class(ctx)],
        shape_class=shape,
        stop_timeout=stop_timeout(scenario),
    )
    ctx.events = env.events
    runner = env.create_local_runner()
    health = ClientHealth()
    progress = Progress(show_progress)
    status = "finished"
    started = time.monotonic()
    hard_limit = run_time_limit(scenario)
    try:
        with StopOnInterrupt() as interrupt:
            freeze_heap()
            health.start()  # after that one collection, which stops no request
            runner.start_shape()
            while True:
                gevent.sleep(0.5)
                elapsed = time.monotonic() - started
                progress.show(progress_line(ctx, elapsed, runner.user_count))
                if interrupt.requested:
                    status = "interrupted"
                    break
                if runner.state == STATE_STOPPED or ctx.exhausted:
                    break
                if elapsed > hard_limit:
                    status = "timed_out"
                    break
            # No new requests; those in flight get up to stop_timeout to finish and be stored.
            ctx.stop.set()
            runner.quit()
    except KeyboardInterrupt:  # a second Ctrl-C: stop now
        status = "interrupted"
    finally:
        ctx.stop.set()
        with contextlib.suppress(KeyboardInterrupt):
            runner.quit()
            ctx.requests.kill(block=True, timeout=5)
        health.stop()
        progress.done()
        client.close()
        wire.close()
        writer.close()
    records = store.requests(run_id)
    summary = build_summary(run_id, scenario, config, records, status)
    summary["prompt_lengths"]["preparation"] = prepared
    summary["client"] = health.summary(
        send_lag_ms=[send_lag_ms(r) for r in records if r.ok],
        connections=wire.stats(),
        peak_concurrency=peak if closed else ctx.peak_in_flight,
    )
    finish_run(store, run_id, summary, out)
    return run_id, summary


def _prepare(ctx: LoadContext, show_progress: bool, client: httpx.Client,
             wire: Wire) -> dict[str, Any]:
    """Build every prompt before the run, with its own progress line (the clients are
    closed if that fails or is interrupted: no run exists yet)."""
    progress = Progress(show_progress)
    try:
        try:
            info = prepare_prompts(ctx, progress.show)
        except TokenizerError as exc:
            raise LoadError(str(exc)) from None
    except BaseException:
        progress.done()
        client.close()
        wire.close()
        raise
    progress.show(prepared_line(info), force=True)
    progress.done()
    return info


def create_run(store: Store, scenario: Scenario, base_url: str, config: dict[str, Any]) -> int:
    return store.create_run(
        name=f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        scenario_name=scenario.name,
        scenario=scenario.model_dump(mode="json"),
        target_url=base_url,
        target=config,
    )


def run_time_limit(scenario: Scenario) -> float:
    """A run stops after this long whatever happens (a stuck server, a lost worker)."""
    return scenario.duration_s + scenario.request_timeout + PREPARE_LEAD_S + 30


def finish_run(store: Store, run_id: int, summary: dict[str, Any], out: Path | None) -> None:
    """Join the server's account of the run window (when a collector watched the target),
    warn when the client limited the results, store the summary, write --out."""
    summary["server"] = server_section(store, run_id)  # per request, and over the window
    if summary["client"]["limited_by_client"]:
        summary["warnings"].insert(0, "the load generator limited these results: "
                                   + "; ".join(summary["client"]["reasons"]))
    store.finish_run(run_id, summary["status"], summary)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2))


def progress_line(ctx: LoadContext, elapsed: float, users: int) -> str:
    s = ctx.scenario
    limit = f" of {s.max_requests}" if s.max_requests else ""
    if s.mode == "closed":
        where = f"stage {ctx.stage_index + 1}/{len(s.stages)} users {users:3d}"
    else:
        label = "open loop" if s.mode == "open" else "trace replay"
        where = f"{label} sent {ctx.issued - ctx.dropped} dropped {ctx.dropped}"
    return (
        f"[{elapsed:6.1f}s/{s.duration_s:.0f}s] {where} | ok {ctx.ok} failed {ctx.failed}"
        f"{limit} in flight {ctx.in_flight} | out tokens {ctx.output_tokens} "
        f"({ctx.output_tokens / max(elapsed, 1e-9):.0f}/s)"
    )


def build_summary(
    run_id: int,
    scenario: Scenario,
    target: dict[str, Any],
    records: list[RequestRecord],
    status: str,
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "schema": "servescope.summary/1",
        "run_id": run_id,
        "status": status,
        "scenario": scenario.name,
        "target": target.get("url"),
        "model": target.get("model"),
    }
    summary.update(summarize(records, scenario.slos.model_dump(), scenario.warmup_requests))
    summary["prompt_lengths"] = prompt_length_summary(records)
    summary["slos"] = evaluate_slos(scenario.slos.model_dump(), summary)
    return summary
