"""Distributed runs through Locust's own master and workers: the two entry points.

The master (`servescope load ... --workers N`, or `--master` for workers on other machines)
runs the scenario's shape: Locust spreads the users over the workers. Everything servescope
adds travels as Locust custom messages (loadgen/distributed_protocol.py, with the scenario
payload); the master's side is loadgen/distributed_master.py, the worker's
loadgen/distributed_worker.py, worker processes on this machine loadgen/distributed_local.py
and the combined client health loadgen/distributed_health.py. This module runs a whole run
on either side, so the CLI imports only it.

The master alone holds the store and creates the run; a worker needs only the master's
address and the target. The scenario comes from the master, so every worker sends the same
workload: worker k takes users, conversations and arrivals k, k + n, ... and its share of
max_requests (loadgen/users.py `share`). Its request ids start with ``w<k>-``.

Clocks: each record's stamps come from its worker's clock. Across machines, keep clocks in
sync (NTP); run-wide rates use the first send and the last end over all workers.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import gevent
import httpx

from servescope.core.store import Store
from servescope.loadgen.distributed_health import combine_health
from servescope.loadgen.distributed_local import start_local_workers, stop_local_workers
from servescope.loadgen.distributed_master import Master, drive
from servescope.loadgen.distributed_protocol import (
    DEFAULT_MASTER_PORT,
    ERROR,
    READY,
    WORKER_KEY_NEEDS_TARGET,
    scenario_payload,
)
from servescope.loadgen.distributed_worker import Worker, deliver
from servescope.loadgen.health import ClientHealth
from servescope.loadgen.run import (
    DescribeTarget,
    LoadError,
    Progress,
    StopOnInterrupt,
    build_summary,
    create_run,
    describe,
    discover_model,
    finish_run,
    freeze_heap,
    progress_line,
)
from servescope.loadgen.scenario import Scenario

__all__ = ["DEFAULT_MASTER_PORT", "WORKER_KEY_NEEDS_TARGET", "run_master", "run_worker"]


def run_master(
    scenario: Scenario,
    base_url: str,
    store: Store,
    *,
    workers: int = 0,
    expect_workers: int = 1,
    bind_host: str = "127.0.0.1",
    port: int | None = None,
    model: str | None = None,
    out: Path | None = None,
    headers: dict[str, str] | None = None,
    api_key_env: str | None = None,
    ignore_eos: bool = True,
    show_progress: bool = True,
    connect_timeout: float = 60.0,
    tokenizer: str | None = None,
    describe_target: DescribeTarget | None = None,
) -> tuple[int, dict[str, Any]]:
    """Run `scenario` with Locust workers; returns (run id, summary) like run_load.
    `tokenizer` (a path or Hugging Face id) goes to the workers, which prepare their prompts
    with it unless they were given their own.

    `workers` > 0: start that many worker processes on this machine (the master listens on
    127.0.0.1, on a free port unless `port` is given). Otherwise wait for `expect_workers`
    started elsewhere with `servescope load --worker`, listening on `bind_host`:`port`."""
    base_url = base_url.rstrip("/")
    headers = dict(headers or {})
    local = workers > 0
    expect = workers if local else expect_workers
    with httpx.Client(timeout=10) as probe:
        model = model or discover_model(probe, base_url, headers)
        config, manifest = describe(describe_target, base_url, probe, model)
    master = Master(scenario, store, "127.0.0.1" if local else bind_host,
                    (port or 0) if local else (port or DEFAULT_MASTER_PORT))
    where = f"{'127.0.0.1' if local else bind_host}:{master.port}"
    progress = Progress(show_progress)
    logs = tempfile.TemporaryDirectory(prefix="servescope-workers-")
    procs: list[subprocess.Popen] = []
    status = "finished"
    try:
        with StopOnInterrupt() as interrupt:
            if local:
                procs = start_local_workers(workers, master.port, api_key_env, Path(logs.name),
                                            base_url)
                master.procs = {p.pid: p for p in procs}
            else:
                progress.show(f"master listening on {where}; waiting for {expect} worker(s)",
                              force=True)
            ids = master.wait_for_workers(expect, connect_timeout, interrupt, where)
            setup = {**scenario_payload(scenario), "model": model, "target": base_url,
                     "ignore_eos": ignore_eos, "tokenizer": tokenizer}
            master.set_up(ids, setup, connect_timeout, interrupt, progress)
            master.turn_away_latecomers()
            master.run_id = create_run(store, scenario, base_url, config)
            if manifest is not None:
                store.set_run_manifest(master.run_id, manifest)
            status = drive(master, scenario, interrupt, progress)
    except KeyboardInterrupt:  # a second Ctrl-C: stop now, keep what arrived
        if master.run_id is None:
            raise
        status = "interrupted"
    finally:
        progress.done()
        master.close()
        stop_local_workers(procs)
        logs.cleanup()
    run_id = master.run_id
    assert run_id is not None  # every way out before the run exists raises
    records = store.requests(run_id)
    summary = build_summary(run_id, scenario, config, records, status)
    summary["prompt_lengths"]["preparation"] = {
        w.name: (w.ready or {}).get("prepared") for w in master.workers.values()}
    summary["client"] = combine_health(
        {w.name: w.final for w in sorted(master.workers.values(), key=lambda w: w.index)})
    for name in summary["client"]["workers_lost"]:
        summary["warnings"].append(f"worker {name} sent no final report: the requests it had "
                                   "not yet delivered are missing and its health is unknown")
    finish_run(store, run_id, summary, out)
    return run_id, summary



def run_worker(
    master_host: str,
    master_port: int = DEFAULT_MASTER_PORT,
    *,
    target: str | None = None,
    headers: dict[str, str] | None = None,
    connect_timeout: float = 60.0,
    show_progress: bool = True,
    tokenizer: str | None = None,
) -> dict[str, Any]:
    """Serve one run for the master at `master_host`:`master_port`; returns what this worker
    did ({"worker", "requests", "status"}). Raises LoadError when there is no master, the
    setup fails or the master turned this worker away."""
    if headers and not target:
        raise LoadError(WORKER_KEY_NEEDS_TARGET)
    worker = Worker(master_host, master_port, connect_timeout)
    progress = Progress(show_progress)
    health = ClientHealth()
    status = "finished"
    flusher = None
    with StopOnInterrupt() as interrupt, tempfile.TemporaryDirectory() as folder:
        try:
            while not worker.got_setup.wait(0.2):
                if worker.done.is_set():
                    raise LoadError(f"the master at {worker.where} turned this worker away: "
                                    f"{worker.done_reason or 'the run is over'}")
                if interrupt.requested:
                    raise KeyboardInterrupt
                if lost := worker.master_lost():
                    raise LoadError(lost)
            try:
                worker.start(target, dict(headers or {}), Path(folder), tokenizer)
            except Exception as exc:  # the master shows this, naming the worker
                message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, LoadError) \
                    else str(exc)
                worker.send(ERROR, {"message": f"{socket.gethostname()}: {message}"})
                raise LoadError(message) from None
            ctx = worker.ctx
            assert ctx is not None
            worker.send(READY, {"worker": ctx.worker, "host": socket.gethostname(),
                                "pid": os.getpid(), "prepared": worker.prepared})
            freeze_heap()
            health.start()
            flusher = gevent.spawn(worker.flush_loop)
            started = time.monotonic()
            while not worker.stop_requested.wait(0.5):
                progress.show(f"[{ctx.worker}] " + progress_line(
                    ctx, time.monotonic() - started, worker.runner.user_count))
                if interrupt.requested:
                    status = "interrupted"
                    break
                if lost := worker.master_lost():
                    status = f"lost the master: {lost}"
                    break
            # No new requests; those in flight get up to stop_timeout to finish.
            ctx.stop.set()
            worker.runner.stop()
            ctx.requests.kill(block=True, timeout=5)
            flusher.kill()
            health.stop()
            deliver(worker, health, ctx, status)
        except KeyboardInterrupt:  # a second Ctrl-C (or the first, before the run started)
            if worker.ctx is None:
                raise
            status = "interrupted"
        finally:
            if flusher is not None:
                flusher.kill()
            health.stop()
            progress.done()
            if worker.ctx is not None:
                worker.ctx.stop.set()
                worker.client.close()
                worker.wire.close()
            with contextlib.suppress(Exception):
                worker.env.events.quitting.fire(environment=worker.env, reverse=True)
            with contextlib.suppress(Exception):
                worker.runner.quit()
    name = worker.ctx.worker if worker.ctx is not None else "worker"
    return {"worker": name, "requests": worker.sent, "unacked": len(worker.unacked),
            "status": status}

