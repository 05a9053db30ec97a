"""The worker's side of a distributed run: Locust's worker runner, its share of the run built
from the master's setup (prompts prepared before the run), its records sent in numbered
batches and kept until acked, and the final report. The messages are in
loadgen/distributed_protocol.py."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gevent
import httpx
from gevent.event import Event
from locust import User, task
from locust.env import Environment
from locust.exception import RPCError, StopUser
from locust.rpc import Message
from locust.runners import WorkerRunner

from servescope.analysis.latency import send_lag_ms
from servescope.core.records import RequestRecord
from servescope.loadgen.distributed_protocol import (
    ACK,
    DONE,
    FINAL,
    FINAL_GRACE_S,
    FLUSH_INTERVAL_S,
    FLUSH_MAX_RECORDS,
    MASTER_LOST_S,
    PARENT_ENV,
    PREPARING,
    RECORDS,
    RESEND_AFTER_S,
    RESEND_SETUP_S,
    SETUP,
    STAGE,
    STOP,
    scenario_from_payload,
)
from servescope.loadgen.health import ClientHealth
from servescope.loadgen.prepare import prepare_prompts
from servescope.loadgen.run import LoadError, load_context, open_clients, stop_timeout, user_class
from servescope.loadgen.tokenizer import TokenizerError, load_tokenizer
from servescope.loadgen.users import LoadContext


def _unassigned_user() -> type[User]:
    """Stands in for the scenario's user class until the master's setup arrives (a worker
    turned away never runs it)."""
    def idle(user: User) -> None:
        raise StopUser()

    return type("ScenarioUser", (User,), {"abstract": False, "tasks": [task(idle)],
                                          "wait_time": lambda self: 0.0})


class Worker:
    """Locust's worker runner plus servescope's side of the protocol
    (loadgen/distributed_protocol.py)."""

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

    def flush_loop(self) -> None:
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



def deliver(worker: Worker, health: ClientHealth, ctx: LoadContext, status: str) -> None:
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

