"""Run a scenario headless with Locust, persisting every request as it completes.

Importing this module imports Locust, which monkey-patches the process for gevent; the CLI
imports it only for the `load` command.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import httpx
from locust.env import Environment
from locust.runners import STATE_STOPPED

from capacity.latency import summarize
from capacity.slo import evaluate_slos
from collectors.scrape import ScrapeError, scrape, server_info
from loadgen.prompts import PromptBuilder
from loadgen.scenario import Scenario
from loadgen.users import ChatUser, LoadContext, StagesShape
from servescope.records import RequestRecord
from servescope.store import Store


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


def target_config(base_url: str, client: httpx.Client) -> dict[str, Any]:
    """What the server tells about its configuration, stored with the run."""
    config: dict[str, Any] = {"url": base_url}
    config.update(server_info(base_url, "vllm", client))
    with contextlib.suppress(ScrapeError):  # not a vLLM, or no /metrics: fine
        config.update(scrape(base_url, "vllm", client=client).info)
    return config


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
) -> tuple[int, dict[str, Any]]:
    """Run `scenario` against `base_url`; returns (run id, summary). Ctrl-C stops the run
    and keeps (and summarizes) everything measured so far."""
    base_url = base_url.rstrip("/")
    headers = dict(headers or {})
    max_users = max(s.concurrency for s in scenario.stages)
    limits = httpx.Limits(max_connections=max_users + 8, max_keepalive_connections=max_users + 8)
    client = httpx.Client(limits=limits, timeout=scenario.request_timeout)
    model = model or discover_model(client, base_url, headers)
    config = target_config(base_url, client)
    config["model"] = model
    run_id = store.create_run(
        name=f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        scenario_name=scenario.name,
        scenario=scenario.model_dump(mode="json"),
        target_url=base_url,
        target=config,
    )

    def record(rec: RequestRecord) -> None:
        store.add_requests(run_id, [rec])
        if on_record is not None:
            on_record(rec)

    prompts = PromptBuilder(
        base_url, model, client, scenario.shared_prefix_tokens, scenario.system_prompt,
        headers, scenario.seed,
    )
    prompts.system_message()  # the shared prefix, built once before any user starts
    ctx = LoadContext(
        scenario=scenario, base_url=base_url, model=model, record=record, client=client,
        prompts=prompts, headers=headers, ignore_eos=ignore_eos,
    )
    user_cls = type("ScenarioChatUser", (ChatUser,), {"ctx": ctx, "abstract": False})
    shape = type("ScenarioShape", (StagesShape,), {"ctx": ctx})()
    env = Environment(
        user_classes=[user_cls],
        shape_class=shape,
        # Let in-flight requests finish when a stage shrinks or the run ends.
        stop_timeout=min(scenario.request_timeout, 60.0),
    )
    runner = env.create_local_runner()
    progress = Progress(show_progress)
    status = "finished"
    started = time.monotonic()
    hard_limit = scenario.duration_s + scenario.request_timeout + 30
    limit_note = f" of {scenario.max_requests}" if scenario.max_requests else ""
    try:
        runner.start_shape()
        while True:
            gevent.sleep(0.5)
            elapsed = time.monotonic() - started
            progress.show(
                f"[{elapsed:6.1f}s/{scenario.duration_s:.0f}s] stage "
                f"{ctx.stage_index + 1}/{len(scenario.stages)} users {runner.user_count:3d} | "
                f"ok {ctx.ok} failed {ctx.failed}{limit_note} in flight {ctx.in_flight} | "
                f"out tokens {ctx.output_tokens} ({ctx.output_tokens / max(elapsed, 1e-9):.0f}/s)"
            )
            if runner.state == STATE_STOPPED or ctx.exhausted:
                break
            if elapsed > hard_limit:
                status = "timed_out"
                break
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        runner.quit()
        progress.done()
        client.close()
    records = store.requests(run_id)
    summary = build_summary(run_id, scenario, config, records, status)
    store.finish_run(run_id, status, summary)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2))
    return run_id, summary


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
    summary.update(summarize(records))
    summary["slos"] = evaluate_slos(scenario.slos.model_dump(), summary)
    return summary
