"""Distributed runs through Locust's own master and workers.

The master (`servescope load ... --workers N`, or `--master` for workers on other machines)
runs the scenario's shape: Locust spreads the users over the workers. Everything servescope
adds travels as Locust custom messages:

    master -> worker  setup    resolved scenario (and the files it names), model, target,
                               the worker's index k of n; resent until the worker answers
    worker -> master  preparing  progress of its prompts, built before the run (keeps the
                                 master waiting for it while it prepares)
    worker -> master  ready | error
    worker -> master  records  a numbered batch of request records plus the worker's
                               counters, every FLUSH_INTERVAL_S; kept until acked, resent
                               after RESEND_AFTER_S
    master -> worker  ack      the batch is in the store (add_requests ignores re-delivery)
    master -> worker  stage    the closed-loop stage changed (its think time applies)
    master -> worker  stop     the run is over: finish requests in flight, flush, report
    worker -> master  final    the client health summary and the number of records sent
    master -> worker  done     the worker may exit (or: it was turned away, with a reason)

The master alone holds the store and creates the run; a worker needs only the master's
address and the target. The scenario comes from the master, so every worker sends the same
workload: worker k takes users, conversations and arrivals k, k + n, ... and its share of
max_requests (loadgen/users.py `share`). Its request ids start with ``w<k>-``. The end of the
run is this protocol, not Locust's stop message: a Locust worker handling "stop" sleeps
through stop_timeout and could not answer acks meanwhile.

Clocks: each record's stamps come from its worker's clock. Across machines, keep clocks in
sync (NTP); run-wide rates use the first send and the last end over all workers.
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gevent
import httpx
from gevent.event import Event
from locust import LoadTestShape, User, task
from locust.env import Environment
from locust.exception import RPCError, StopUser
from locust.rpc import Message
from locust.runners import STATE_MISSING, MasterRunner, WorkerRunner
from servescope.analysis.latency import send_lag_ms
from servescope.loadgen import health as client_health
from servescope.loadgen.health import ClientHealth
from servescope.loadgen.prepare import prepare_prompts
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
    load_context,
    open_clients,
    progress_line,
    run_time_limit,
    stop_timeout,
    user_class,
)
from servescope.loadgen.scenario import Scenario
from servescope.loadgen.tokenizer import TokenizerError, load_tokenizer
from servescope.loadgen.users import ChatUser, LoadContext, ScheduleShape, ScheduleUser, StagesShape

from servescope.core.records import RequestRecord
from servescope.core.store import Store

SETUP, READY, ERROR = "servescope_setup", "servescope_ready", "servescope_error"
PREPARING = "servescope_preparing"
RECORDS, ACK, STAGE = "servescope_records", "servescope_ack", "servescope_stage"
STOP, FINAL, DONE = "servescope_stop", "servescope_final", "servescope_done"

DEFAULT_MASTER_PORT = 5557
FLUSH_INTERVAL_S = 0.5
FLUSH_MAX_RECORDS = 200
RESEND_AFTER_S = 5.0
RESEND_SETUP_S = 2.0
MASTER_LOST_S = 20.0  # no heartbeat from the master this long: it is gone
FINAL_GRACE_S = 30.0  # beyond stop_timeout, for the workers' last batches and reports
PARENT_ENV = "SERVESCOPE_MASTER_PID"  # set for the workers a local master starts
# A worker's API key comes from its own environment; it must not follow whatever target a
# master names (anyone who can reach the master port could collect it).
WORKER_KEY_NEEDS_TARGET = ("this worker holds an API key, which it sends only to a target "
                           "named on its own command line: add --target URL (the server as "
                           "this machine reaches it)")


# -- the scenario on the wire ----------------------------------------------------------------
def _file_fields(obj: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in a dumped scenario that names a file (traces, length tables)."""
    if isinstance(obj, dict):
        if isinstance(obj.get("file"), str):
            yield obj
        for value in obj.values():
            yield from _file_fields(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _file_fields(value)


def scenario_payload(scenario: Scenario) -> dict[str, Any]:
    """The resolved scenario (overrides applied) plus the text of every file it names, so a
    worker on another machine needs no copy of them."""
    data = scenario.model_dump(mode="json")
    files = {h["file"]: Path(h["file"]).read_text(encoding="utf-8") for h in _file_fields(data)}
    return {"scenario": data, "files": files}


def scenario_from_payload(payload: dict[str, Any], folder: Path) -> Scenario:
    """The master's scenario, its files written under `folder`."""
    data = copy.deepcopy(payload["scenario"])
    local: dict[str, str] = {}
    for i, (path, text) in enumerate(sorted(payload["files"].items())):
        dest = folder / f"{i}-{Path(path).name}"
        dest.write_text(text, encoding="utf-8")
        local[path] = str(dest)
    for holder in _file_fields(data):
        holder["file"] = local[holder["file"]]
    return Scenario.model_validate(data)


# -- master ----------------------------------------------------------------------------------
@dataclass
class WorkerState:
    """What the master knows of one worker."""

    client_id: str
    name: str
    index: int
    proc: subprocess.Popen | None = None
    ready: dict[str, Any] | None = None
    error: str | None = None
    counters: dict[str, Any] = field(default_factory=dict)
    batches: set[int] = field(default_factory=set)
    last_seq: int = 0
    final: dict[str, Any] | None = None
    preparing: tuple[float, str] | None = None  # (when, its progress line) while it prepares


@dataclass
class Tally:
    """The master's stand-in for a LoadContext: what the shapes and the progress line read,
    counted from the records the workers delivered and the counters they report."""

    scenario: Scenario
    workers: dict[str, WorkerState] = field(default_factory=dict)
    stage_index: int = 0
    completed: int = 0
    ok: int = 0
    failed: int = 0
    output_tokens: int = 0

    def _sum(self, key: str) -> int:
        return sum(int(w.counters.get(key, 0)) for w in self.workers.values())

    @property
    def issued(self) -> int:
        return self._sum("issued")

    @property
    def in_flight(self) -> int:
        return self._sum("in_flight")

    @property
    def dropped(self) -> int:
        return self._sum("dropped")

    @property
    def done(self) -> bool:
        return bool(self.workers) and all(w.counters.get("done") for w in self.workers.values())

    @property
    def exhausted(self) -> bool:
        limit = self.scenario.max_requests
        return limit is not None and self.completed >= limit

    def count(self, records: list[RequestRecord]) -> None:
        for rec in records:
            self.completed += 1
            if rec.ok:
                self.ok += 1
                self.output_tokens += rec.output_tokens or 0
            else:
                self.failed += 1


class SplitScheduleShape(ScheduleShape):
    """Open loop on a master: one schedule user per worker until every worker walked its
    part of the schedule."""

    users: int = 1

    def tick(self) -> tuple[int, float] | None:
        if self.ctx.done or self.ctx.exhausted:
            return None
        return self.users, float(self.users)


class HoldingShape(LoadTestShape):
    """The scenario's shape, holding its last user count once it ends (`ended`): the master
    then runs servescope's stop protocol instead of Locust's stop message."""

    def __init__(self, inner: LoadTestShape) -> None:
        super().__init__()
        self.inner = inner
        self.ended = False
        self.last: tuple[int, float] = (0, 1.0)

    def reset_time(self) -> None:
        super().reset_time()
        self.inner.reset_time()

    def tick(self) -> tuple[int, float]:
        if not self.ended:
            current = self.inner.tick()
            if current is None:
                self.ended = True
            else:
                self.last = (int(current[0]), float(current[1]))
        return self.last


def _master_user(scenario: Scenario) -> type[User]:
    """The user class as the master knows it: only its name and kind; workers run it."""
    base = ChatUser if scenario.mode == "closed" else ScheduleUser
    return type("ScenarioUser", (base,), {"abstract": False})


class Master:
    """Locust's master runner plus servescope's side of the protocol (see the module doc)."""

    def __init__(self, scenario: Scenario, store: Store, bind_host: str, port: int) -> None:
        self.scenario, self.store = scenario, store
        self.tally = Tally(scenario)
        self.workers = self.tally.workers  # by Locust client id
        self.turned_away: set[str] = set()
        self.run_id: int | None = None
        self.procs: dict[int, subprocess.Popen] = {}  # local workers by pid
        if scenario.mode == "closed":
            inner: LoadTestShape = type("ScenarioShape", (StagesShape,), {"ctx": self.tally})()
        else:
            inner = type("ScenarioShape", (SplitScheduleShape,), {"ctx": self.tally})()
        self.shape = HoldingShape(inner)
        self.env = Environment(user_classes=[_master_user(scenario)], shape_class=self.shape,
                               stop_timeout=stop_timeout(scenario))
        try:
            self.runner: MasterRunner = self.env.create_master_runner(bind_host, port)
        except (SystemExit, RPCError) as exc:  # Locust exits when the port is taken
            raise LoadError(f"cannot listen for workers on {bind_host}:{port} "
                            f"({exc if isinstance(exc, RPCError) else 'address in use'}); "
                            "pick another --master-port") from None
        self.port: int = self.runner.server.port
        for kind, handler in ((READY, self._on_ready), (ERROR, self._on_error),
                              (PREPARING, self._on_preparing),
                              (RECORDS, self._on_records), (FINAL, self._on_final)):
            self.runner.register_message(kind, handler)
        self.env.events.worker_connect.add_listener(self._on_connect)

    # message handlers: they run in Locust's listener greenlet, one message at a time
    def _worker(self, msg: Message) -> WorkerState | None:
        return self.workers.get(msg.node_id)

    def _on_connect(self, client_id: str, **_: Any) -> None:
        if self.workers and client_id not in self.workers:
            self.turned_away.add(client_id)
            self._send(DONE, {"reason": "the run had already started without this worker"},
                       client_id)

    def _on_ready(self, environment: Environment, msg: Message, **_: Any) -> None:
        if (w := self._worker(msg)) is not None:
            w.ready = msg.data
            w.proc = self.procs.get(msg.data.get("pid"))  # a local worker: its process

    def _on_preparing(self, environment: Environment, msg: Message, **_: Any) -> None:
        if (w := self._worker(msg)) is not None:
            w.preparing = (time.monotonic(), str(msg.data.get("line", "")))

    def _on_error(self, environment: Environment, msg: Message, **_: Any) -> None:
        if (w := self._worker(msg)) is not None:
            w.error = msg.data["message"]

    def _on_records(self, environment: Environment, msg: Message, **_: Any) -> None:
        w, data = self._worker(msg), msg.data
        if w is None:
            return
        seq = data["seq"]
        if seq > w.last_seq:  # a re-sent batch carries older counters
            w.last_seq, w.counters = seq, data["counters"]
        if seq not in w.batches:
            records = [RequestRecord(**r) for r in data["records"]]
            if records:
                if self.run_id is None:  # cannot happen: workers start after the run exists
                    return
                self.store.add_requests(self.run_id, records)
            w.batches.add(seq)
            self.tally.count(records)
        self._send(ACK, {"seq": seq}, msg.node_id)

    def _on_final(self, environment: Environment, msg: Message, **_: Any) -> None:
        if (w := self._worker(msg)) is not None:
            w.final = msg.data
            w.counters = msg.data.get("counters", w.counters)
            self._send(DONE, None, msg.node_id)

    def _send(self, kind: str, data: Any, client_id: str) -> None:
        with contextlib.suppress(RPCError):
            self.runner.send_message(kind, data, client_id=client_id)

    def broadcast(self, kind: str, data: Any = None) -> None:
        for cid in self.workers:
            self._send(kind, data, cid)

    def lost(self, w: WorkerState) -> bool:
        """A worker that quit, crashed or stopped answering heartbeats before its final."""
        if w.final is not None:
            return False
        if w.proc is not None and w.proc.poll() is not None:
            return True
        node = self.runner.clients.get(w.client_id)
        return node is None or node.state == STATE_MISSING

    # -- phases ------------------------------------------------------------------------------
    def wait_for_workers(self, expect: int, timeout: float, interrupt: StopOnInterrupt,
                         where: str) -> list[str]:
        """Client ids of the connected workers, once `expect` are there."""
        deadline = time.monotonic() + timeout
        while True:
            connected = [c.id for c in self.runner.clients.ready]
            if len(connected) >= expect:
                return sorted(connected, key=self.runner.get_worker_index)
            for i, proc in enumerate(self.procs.values()):
                if proc.poll() is not None:
                    raise LoadError(f"local worker {i} exited (status {proc.returncode}) "
                                    f"before connecting: {_tail(proc)}")
            if interrupt.requested:
                raise KeyboardInterrupt
            if time.monotonic() > deadline:
                raise LoadError(f"{len(connected)} of {expect} workers connected to the master "
                                f"at {where} within {timeout:g}s; start them with `servescope "
                                f"load --worker --master-host HOST --master-port {self.port}`")
            gevent.sleep(0.1)

    def set_up(self, client_ids: list[str], setup: dict[str, Any], timeout: float,
               interrupt: StopOnInterrupt, progress: Progress | None = None) -> None:
        """Send each worker the run (resent until it answers); wait until all are ready. A
        worker preparing its prompts is waited for as long as it reports progress."""
        n = len(client_ids)
        if isinstance(self.shape.inner, SplitScheduleShape):
            self.shape.inner.users = n
        for k, cid in enumerate(client_ids):
            self.workers[cid] = WorkerState(cid, f"w{k}", k)
        deadline = time.monotonic() + timeout
        last_sent = 0.0
        while True:
            waiting = [w for w in self.workers.values() if w.ready is None]
            if not waiting:
                return
            for w in self.workers.values():
                if w.error is not None:
                    raise LoadError(f"worker {w.name} could not start: {w.error}")
                if self.lost(w):
                    raise LoadError(f"worker {w.name} went away while setting up")
            for proc in self.procs.values():
                if proc.poll() is not None:
                    raise LoadError(f"a worker exited (status {proc.returncode}) while setting "
                                    f"up: {_tail(proc)}")
            if interrupt.requested:
                raise KeyboardInterrupt
            reports = [w.preparing for w in waiting if w.preparing is not None]
            if progress is not None and reports:
                progress.show(" | ".join(f"{w.name}: {w.preparing[1]}" for w in waiting
                                         if w.preparing is not None))
            if time.monotonic() > max([deadline] + [at + timeout for at, _ in reports]):
                raise LoadError(f"workers {', '.join(w.name for w in waiting)} were not ready "
                                f"within {timeout:g}s")
            if time.monotonic() - last_sent >= RESEND_SETUP_S:
                for w in waiting:
                    self._send(SETUP, {**setup, "index": w.index, "count": n}, w.client_id)
                last_sent = time.monotonic()
            gevent.sleep(0.1)

    def turn_away_latecomers(self) -> None:
        """Workers that connected while the others were set up get no part in this run: ask
        them to leave, and wait (briefly) until Locust let them go, so no users go to them."""
        extra = [c.id for c in self.runner.clients.all if c.id not in self.workers]
        for cid in extra:
            self._on_connect(cid)
        deadline = time.monotonic() + 5
        while any(cid in self.runner.clients for cid in extra) and time.monotonic() < deadline:
            gevent.sleep(0.1)

    def close(self) -> None:
        """Tell every worker it may go, then stop Locust's master."""
        for cid in [*self.workers, *self.turned_away]:
            self._send(DONE, None, cid)
        with contextlib.suppress(Exception):
            self.runner.quit()
        with contextlib.suppress(Exception):
            self.runner.server.close(linger=1000)


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
                procs = _start_local_workers(workers, master.port, api_key_env, Path(logs.name),
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
            status = _drive(master, scenario, interrupt, progress)
    except KeyboardInterrupt:  # a second Ctrl-C: stop now, keep what arrived
        if master.run_id is None:
            raise
        status = "interrupted"
    finally:
        progress.done()
        master.close()
        _stop_local_workers(procs)
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


def _drive(master: Master, scenario: Scenario, interrupt: StopOnInterrupt,
           progress: Progress) -> str:
    """Run the shape until it ends, then stop the workers and collect their last records."""
    runner, tally = master.runner, master.tally
    status = "finished"
    started = time.monotonic()
    hard_limit = run_time_limit(scenario)
    stage_sent = 0
    runner.start_shape()
    while True:
        gevent.sleep(0.5)
        elapsed = time.monotonic() - started
        if tally.stage_index != stage_sent:
            stage_sent = tally.stage_index
            master.broadcast(STAGE, {"index": stage_sent})
        progress.show(progress_line(tally, elapsed, runner.user_count))
        if interrupt.requested:
            status = "interrupted"
            break
        if all(master.lost(w) for w in master.workers.values()):
            status = "failed"
            break
        if master.shape.ended or tally.exhausted or all(
                w.final is not None or w.counters.get("done") or master.lost(w)
                for w in master.workers.values()):  # e.g. a worker stopped by its own Ctrl-C
            break
        if elapsed > hard_limit:
            status = "timed_out"
            break
    # Our stop, not Locust's: no more (re)dispatching, then each worker finishes its requests
    # in flight, delivers its last batches and reports.
    runner.stop(send_stop_to_client=False)
    master.broadcast(STOP)
    deadline = time.monotonic() + stop_timeout(scenario) + FINAL_GRACE_S
    while time.monotonic() < deadline:
        waiting = [w for w in master.workers.values() if w.final is None and not master.lost(w)]
        if not waiting:
            break
        progress.show(f"stopping: waiting for {', '.join(w.name for w in waiting)} | ok "
                      f"{tally.ok} failed {tally.failed} in flight {tally.in_flight}")
        gevent.sleep(0.2)
    return status


def _start_local_workers(n: int, port: int, api_key_env: str | None,
                         log_dir: Path, target: str) -> list[subprocess.Popen]:
    """`servescope load --worker` processes on this machine, each in its own session (a
    Ctrl-C in the terminal reaches the master, which stops them in order). They get the
    target on their command line, as a worker holding an API key requires."""
    cmd = [sys.executable, "-m", "servescope.cli", "load", "--worker", "--master-host",
           "127.0.0.1", "--master-port", str(port), "--quiet", "--target", target]
    if api_key_env:
        cmd += ["--api-key-env", api_key_env]
    env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})
    procs = []
    for i in range(n):
        with open(log_dir / f"worker-{i}.log", "wb") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env,
                                          start_new_session=True))
        procs[-1].log_path = log_dir / f"worker-{i}.log"  # type: ignore[attr-defined]
    return procs


def _stop_local_workers(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    deadline = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.1, deadline - time.monotonic()))
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(proc: subprocess.Popen | None) -> str:
    """The last line a local worker wrote (its error)."""
    path = getattr(proc, "log_path", None)
    with contextlib.suppress(OSError):
        if path is not None:
            lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln]
            if lines:
                return lines[-1]
    return "(no output)"


# -- client health over workers --------------------------------------------------------------
def _badness(h: dict[str, Any]) -> tuple[bool, int, float]:
    """Order workers by how much they limited their results: flagged first, then by how far
    past its threshold the worst of their measures is."""
    def ratio(value: float | None, limit: float) -> float:
        return (value or 0.0) / limit

    worst = max(
        ratio(h["loop_lag_ms"]["p99"], client_health.MAX_LOOP_LAG_P99_MS),
        ratio(h["send_lag_ms"]["p99"], client_health.MAX_SEND_LAG_P99_MS),
        ratio(h["cpu_percent"].get("p90"), 100 * client_health.MAX_CPU_SHARE),
    )
    return h["limited_by_client"], len(h["reasons"]), worst


def combine_health(finals: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """The summary's "client" for a distributed run: the worst worker's measures at the top
    level (so checks written for one process still hold), every worker's reasons, and one
    entry per worker under "workers"."""
    entries = {name: {**f["health"], "host": f.get("host"), "requests": f.get("records")}
               for name, f in finals.items() if f is not None}
    if entries:
        worst = max(entries, key=lambda name: _badness(entries[name]))
        top = {k: v for k, v in entries[worst].items() if k not in ("host", "requests")}
    else:
        worst = None
        top = ClientHealth().summary(send_lag_ms=[], connections={}, peak_concurrency=0)
    top["limited_by_client"] = any(e["limited_by_client"] for e in entries.values())
    top["reasons"] = [f"worker {name}: {r}" for name, e in entries.items() for r in e["reasons"]]
    top["worst_worker"] = worst
    top["workers"] = entries
    top["workers_lost"] = [name for name, f in finals.items() if f is None]
    return top


# -- worker ----------------------------------------------------------------------------------
def _unassigned_user() -> type[User]:
    """Stands in for the scenario's user class until the master's setup arrives (a worker
    turned away never runs it)."""
    def idle(user: User) -> None:
        raise StopUser()

    return type("ScenarioUser", (User,), {"abstract": False, "tasks": [task(idle)],
                                          "wait_time": lambda self: 0.0})


class Worker:
    """Locust's worker runner plus servescope's side of the protocol (see the module doc)."""

    def __init__(self, master_host: str, master_port: int, connect_timeout: float) -> None:
        self.env = Environment(user_classes=[_unassigned_user()])
        self.where = f"{master_host}:{master_port}"
        try:
            with gevent.Timeout(connect_timeout):
                self.runner: WorkerRunner = self.env.create_worker_runner(master_host,
                                                                          master_port)
        except (gevent.Timeout, ConnectionError):
            raise LoadError(f"no master answered at {self.where} within {connect_timeout:g}s "
                            "(is `servescope load --master` running there, on that port, and "
                            "reachable from here?)") from None
        self.setup: dict[str, Any] | None = None
        self.got_setup, self.stop_requested, self.done = Event(), Event(), Event()
        self.done_reason: str | None = None
        self.ctx: LoadContext | None = None
        self.outbox: list[dict[str, Any]] = []
        self.unacked: dict[int, tuple[float, dict[str, Any]]] = {}
        self.seq = 0
        self.sent = 0
        self.lags: list[float] = []
        self.prepared: dict[str, Any] | None = None
        self._prepare_sent = 0.0
        for kind, handler in ((SETUP, self._on_setup), (ACK, self._on_ack),
                              (STAGE, self._on_stage), (STOP, self._on_stop),
                              (DONE, self._on_done)):
            self.runner.register_message(kind, handler)
        self.env.events.test_stop.add_listener(lambda **_: self.stop_requested.set())

    def _on_setup(self, environment: Environment, msg: Message, **_: Any) -> None:
        if self.setup is None:
            self.setup = msg.data
            self.got_setup.set()

    def _on_ack(self, environment: Environment, msg: Message, **_: Any) -> None:
        self.unacked.pop(msg.data["seq"], None)

    def _on_stage(self, environment: Environment, msg: Message, **_: Any) -> None:
        if self.ctx is not None:
            self.ctx.stage_index = int(msg.data["index"])

    def _on_stop(self, environment: Environment, msg: Message, **_: Any) -> None:
        self.stop_requested.set()

    def _on_done(self, environment: Environment, msg: Message, **_: Any) -> None:
        self.done_reason = (msg.data or {}).get("reason")
        self.done.set()
        self.stop_requested.set()

    def master_lost(self) -> str | None:
        parent = os.environ.get(PARENT_ENV)
        if parent and os.getppid() != int(parent):
            return "the master process exited"
        last = self.runner.last_heartbeat_timestamp
        if last is not None and time.time() - last > MASTER_LOST_S:
            return f"no heartbeat from the master at {self.where} for {MASTER_LOST_S:g}s"
        return None

    def send(self, kind: str, data: Any) -> bool:
        try:
            self.runner.send_message(kind, data)
            return True
        except RPCError:
            return False

    # -- records -----------------------------------------------------------------------------
    def record(self, rec: RequestRecord) -> None:
        self.outbox.append(asdict(rec))
        self.sent += 1
        if rec.ok:
            self.lags.append(send_lag_ms(rec))
        if len(self.outbox) >= FLUSH_MAX_RECORDS:
            self.flush()

    def counters(self) -> dict[str, Any]:
        ctx = self.ctx
        if ctx is None:
            return {}
        return {"issued": ctx.issued, "in_flight": ctx.in_flight, "dropped": ctx.dropped,
                "completed": ctx.completed, "done": ctx.done or ctx.exhausted}

    def flush(self) -> None:
        """Send what completed since the last batch (and our counters); keep it until acked."""
        batch, self.outbox = self.outbox, []
        self.seq += 1
        data = {"seq": self.seq, "records": batch, "counters": self.counters()}
        self.unacked[self.seq] = (time.monotonic(), data)
        self.send(RECORDS, data)
        now = time.monotonic()
        for seq, (at, old) in list(self.unacked.items()):
            if now - at > RESEND_AFTER_S:
                self.unacked[seq] = (now, old)
                self.send(RECORDS, old)

    def _preparing(self, line: str, force: bool) -> None:
        """The preparation's progress, to the master (which waits while it moves)."""
        now = time.monotonic()
        if force or now - self._prepare_sent >= 1.0:
            self._prepare_sent = now
            self.send(PREPARING, {"line": line})

    def _flush_loop(self) -> None:
        while True:
            gevent.sleep(FLUSH_INTERVAL_S)
            self.flush()

    # -- the run -----------------------------------------------------------------------------
    def start(self, target: str | None, headers: dict[str, str], folder: Path,
              tokenizer: str | None = None) -> None:
        """Build this worker's share of the run from the master's setup, its prompts
        included (with its own `tokenizer`, else the master's, else the server's)."""
        setup = self.setup
        assert setup is not None
        k, n = int(setup["index"]), int(setup["count"])
        scenario = scenario_from_payload(setup, folder)
        if scenario.mode != "closed":  # the cap on requests in flight is shared out too
            scenario = scenario.model_copy(
                update={"max_in_flight": -(-scenario.max_in_flight // n)})
        base_url = (target or setup["target"]).rstrip("/")
        wire, client, self.peak = open_clients(scenario, base_url, n)
        self.client, self.wire = client, wire
        try:
            try:  # the target answers from here (whatever it answers)
                client.get(f"{base_url}/v1/models", headers=headers, timeout=10)
            except httpx.TransportError as exc:
                raise LoadError(f"cannot reach the target {base_url} from this worker "
                                f"({type(exc).__name__}: {exc}); pass --target as this "
                                "machine reaches it") from None
            spec = tokenizer or setup.get("tokenizer")
            try:
                tok = load_tokenizer(spec) if spec else None
                ctx = load_context(scenario, base_url, setup["model"], wire, client,
                                   self.record, headers, setup["ignore_eos"], worker=f"w{k}",
                                   share=(k, n), tokenizer=tok)
                self.prepared = prepare_prompts(ctx, self._preparing)
            except TokenizerError as exc:
                raise LoadError(str(exc)) from None
        except BaseException:
            client.close()
            wire.close()
            raise
        ctx.events = self.env.events
        self.env.stop_timeout = stop_timeout(scenario)
        self.env.user_classes[:] = [user_class(ctx)]
        self.ctx = ctx


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
            flusher = gevent.spawn(worker._flush_loop)
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
            _deliver(worker, health, ctx, status)
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


def _deliver(worker: Worker, health: ClientHealth, ctx: LoadContext, status: str) -> None:
    """The last batch, every batch not yet acked, then the final report, until the master
    says done (bounded: a master that went away is not waited for)."""
    worker.flush()
    deadline = time.monotonic() + FINAL_GRACE_S / 2
    while (worker.unacked and not worker.done.is_set() and time.monotonic() < deadline
           and not worker.master_lost()):
        gevent.sleep(0.1)
        if any(time.monotonic() - at > RESEND_AFTER_S for at, _ in worker.unacked.values()):
            worker.flush()
    final = {
        "worker": ctx.worker, "host": socket.gethostname(), "records": worker.sent,
        "unacked": len(worker.unacked), "status": status, "counters": worker.counters(),
        "health": health.summary(
            send_lag_ms=worker.lags, connections=worker.wire.stats(),
            peak_concurrency=worker.peak if ctx.scenario.mode == "closed"
            else ctx.peak_in_flight),
    }
    deadline = time.monotonic() + FINAL_GRACE_S / 2
    while not worker.done.is_set() and time.monotonic() < deadline \
            and not worker.master_lost():
        worker.send(FINAL, final)
        worker.done.wait(RESEND_SETUP_S)

