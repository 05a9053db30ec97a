"""The master's side of a distributed run: Locust's master runner, what it knows of each
worker, the scenario's shape spread over the workers, and the phases of a run (connect, set
up, drive, stop). It alone holds the store; the messages are in
loadgen/distributed_protocol.py."""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import gevent
from locust import LoadTestShape, User
from locust.env import Environment
from locust.exception import RPCError
from locust.rpc import Message
from locust.runners import STATE_MISSING, MasterRunner

from servescope.core.records import RequestRecord
from servescope.core.store import Store
from servescope.loadgen.distributed_local import worker_tail
from servescope.loadgen.distributed_protocol import (
    ACK,
    DONE,
    ERROR,
    FINAL,
    FINAL_GRACE_S,
    PREPARING,
    READY,
    RECORDS,
    RESEND_SETUP_S,
    SETUP,
    STAGE,
    STOP,
)
from servescope.loadgen.run import (
    LoadError,
    Progress,
    StopOnInterrupt,
    progress_line,
    run_time_limit,
    stop_timeout,
)
from servescope.loadgen.scenario import Scenario
from servescope.loadgen.users import (
    ChatUser,
    ScheduleShape,
    ScheduleUser,
    StagesShape,
    count_record,
)


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
            count_record(self, rec)


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
    """Locust's master runner plus servescope's side of the protocol
    (loadgen/distributed_protocol.py)."""

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
                                    f"before connecting: {worker_tail(proc)}")
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
                                    f"up: {worker_tail(proc)}")
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


def drive(master: Master, scenario: Scenario, interrupt: StopOnInterrupt,
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

