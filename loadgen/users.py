"""Locust drives the load; our own stamps go to the store.

Closed loop: `ChatUser`s, as many as the current stage asks, each sending its next request
when the previous one finished. Open loop and trace replay: one `ScheduleUser` walks the
arrival schedule and spawns a greenlet per arrival, so the request rate never depends on a
user count, and each request's intended send time is its scheduled arrival.

With distributed workers (loadgen/distributed.py) each worker process runs the same users on
its `share` of the run: every n-th user, conversation and arrival, and its part of
max_requests.

Locust's request event still fires (so its UI and CSV stats work), but with our unrounded
numbers kept out of its rounding: the store holds the raw stamps, and every metric
servescope reports is derived from those.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gevent.event import Event
from gevent.pool import Group
from locust import LoadTestShape, User, task
from locust.exception import StopUser

from servescope.core.clock import now_ns
from servescope.core.records import RequestRecord
from servescope.loadgen.arrivals import arrival_times, users_at
from servescope.loadgen.ollama_native import OllamaRequest, stream_ollama
from servescope.loadgen.openai_chat import ChatRequest, CompletionRequest, stream_chat
from servescope.loadgen.prompts import Conversation, PromptBuilder, Turn
from servescope.loadgen.scenario import Scenario
from servescope.loadgen.wire import Wire

# Open loop: a request's greenlet starts this long before its arrival, so taking its prompt
# (prepared before the run, or a later turn built locally) does not make it late.
PREPARE_LEAD_S = 0.5

Arrival = tuple[float, tuple[int, int] | None]  # (seconds from start, fixed lengths or None)


def count_record(counts: Any, rec: RequestRecord) -> None:
    """One finished request in a run's counts: a LoadContext's, or the distributed master's
    Tally (both have completed, ok, failed and output_tokens)."""
    counts.completed += 1
    if rec.ok:
        counts.ok += 1
        counts.output_tokens += rec.output_tokens or 0
    else:
        counts.failed += 1


@dataclass
class LoadContext:
    """Everything the users of one run share."""

    scenario: Scenario
    base_url: str
    model: str
    record: Callable[[RequestRecord], None]
    wire: Wire  # the timed requests
    prompts: PromptBuilder
    headers: dict[str, str] = field(default_factory=dict)
    ignore_eos: bool = True
    worker: str = "local"
    # Distributed runs: (this worker's index k, number of workers n). Worker k takes user,
    # conversation and arrival indices k, k + n, k + 2n ... and its share of max_requests, so
    # the workers together send what one process would.
    share: tuple[int, int] = (0, 1)
    events: Any = None  # the Locust Environment's events, once it exists
    issued: int = 0
    completed: int = 0
    ok: int = 0
    failed: int = 0
    dropped: int = 0
    output_tokens: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    stage_index: int = 0
    done: bool = False  # open loop: the schedule ran out and its requests finished
    walking: bool = False  # open loop: a ScheduleUser walks the schedule (one per process)
    stop: Event = field(default_factory=Event)  # set: start no new request
    requests: Group = field(default_factory=Group)  # open loop: one greenlet per arrival
    _conversations: itertools.count = field(default_factory=itertools.count)
    _users: itertools.count = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def limit(self) -> int | None:
        """This process's share of max_requests (all of it without workers)."""
        total = self.scenario.max_requests
        k, n = self.share
        return None if total is None else len(range(k, total, n))

    def mine(self, index: int) -> bool:
        """Whether arrival `index` of the run's schedule is this worker's."""
        k, n = self.share
        return index % n == k

    def take_slot(self) -> bool:
        """Claim the next request; False once max_requests (our share) were issued."""
        with self._lock:
            limit = self.limit
            if limit is not None and self.issued >= limit:
                return False
            self.issued += 1
            return True

    @property
    def slots_left(self) -> bool:
        limit = self.limit
        return limit is None or self.issued < limit

    def next_user(self) -> int:
        k, n = self.share
        return next(self._users) * n + k

    def conversation(self, index: int | None = None,
                     lengths: tuple[int, int] | None = None) -> Conversation:
        if index is None:
            k, n = self.share
            index = next(self._conversations) * n + k
        return Conversation(self.scenario, index, self.worker, lengths)

    def finished(self, rec: RequestRecord) -> None:
        with self._lock:
            count_record(self, rec)
            self.dropped += rec.error_class == "client_overload"
        self.record(rec)

    @property
    def exhausted(self) -> bool:
        limit = self.limit
        return limit is not None and self.completed >= limit

    def think_time(self) -> float:
        return self.scenario.stages[self.stage_index].think_time


def send_turn(ctx: LoadContext, conv: Conversation, turn: Turn, intended_ns: int,
              user_id: int | None = None) -> RequestRecord:
    """Stream one turn, record it, and hand the answer to its conversation."""
    answer: list[str] | None = [] if conv.multi_turn else None
    ctx.in_flight += 1
    ctx.peak_in_flight = max(ctx.peak_in_flight, ctx.in_flight)
    try:
        rec = _stream_turn(ctx, turn, intended_ns, answer)
    finally:
        ctx.in_flight -= 1
    rec.target_prompt_tokens = turn.target_prompt_tokens
    rec.prompt_length_source = turn.length_source
    rec.worker = ctx.worker
    rec.user_id = user_id
    ctx.finished(rec)
    ctx.prompts.observe(sum(len(m["content"]) for m in turn.messages), rec.prompt_tokens)
    conv.answered(turn, rec, None if answer is None else "".join(answer))
    _fire_locust_event(ctx, rec)
    return rec


def _stream_turn(ctx: LoadContext, turn: Turn, intended_ns: int,
                 answer: list[str] | None) -> RequestRecord:
    """Send `turn` the way the scenario's `api` says and time it."""
    api, timeout = ctx.scenario.api, ctx.scenario.request_timeout
    if api in ("ollama-generate", "ollama-chat"):
        endpoint = "generate" if api == "ollama-generate" else "chat"
        oreq = OllamaRequest(ctx.model, turn.messages, turn.output_tokens, api=endpoint,
                             seed=ctx.scenario.seed)
        return stream_ollama(ctx.wire, f"/api/{endpoint}", oreq, turn.request_id,
                             intended_ns, timeout, ctx.headers, answer)
    extra = {"priority": turn.priority} if turn.priority is not None else {}
    if api == "openai-completions":
        req: ChatRequest | CompletionRequest = CompletionRequest(
            ctx.model, turn.messages, turn.output_tokens, ignore_eos=ctx.ignore_eos,
            extra_body=extra)
        path = "/v1/completions"
    else:
        req = ChatRequest(ctx.model, turn.messages, turn.output_tokens,
                          ignore_eos=ctx.ignore_eos, extra_body=extra)
        path = "/v1/chat/completions"
    return stream_chat(ctx.wire, path, req, turn.request_id, intended_ns, timeout,
                       ctx.headers, answer)


def record_overload(ctx: LoadContext, turn: Turn, intended_ns: int) -> RequestRecord:
    """An arrival the client could not send because max_in_flight requests were already in
    flight: a failed request (never sent) rather than a silent wait."""
    rec = RequestRecord(
        request_id=turn.request_id, intended_ns=intended_ns, send_ns=now_ns(),
        target_prompt_tokens=turn.target_prompt_tokens,
        target_output_tokens=turn.output_tokens, worker=ctx.worker,
        prompt_length_source=turn.length_source, error_class="client_overload",
        error=f"not sent: {ctx.in_flight} requests in flight, max_in_flight "
              f"{ctx.scenario.max_in_flight}",
    )
    ctx.finished(rec)
    _fire_locust_event(ctx, rec)
    return rec


def _fire_locust_event(ctx: LoadContext, rec: RequestRecord) -> None:
    if ctx.events is not None:
        ctx.events.request.fire(
            request_type="POST",
            name="chat",
            response_time=((rec.end_ns or rec.send_ns) - rec.send_ns) / 1e6,
            response_length=rec.output_tokens or 0,
            exception=None if rec.ok else RuntimeError(rec.error_class),
            context={},
        )


def _sleep_until(t_ns: int, stop: Event) -> bool:
    """Sleep until `t_ns`; False when the run was asked to stop meanwhile."""
    delay = (t_ns - now_ns()) / 1e9
    if delay > 0:
        return not stop.wait(delay)
    return not stop.is_set()


# -- closed loop ---------------------------------------------------------------------------------
class ChatUser(User):
    """One closed-loop user: build a prompt, stream a chat completion, record it, repeat;
    with `turns`, the user keeps a conversation going until its last turn."""

    abstract = True
    ctx: LoadContext  # set on a per-run subclass

    def on_start(self) -> None:
        self.index = self.ctx.next_user()
        self.conv: Conversation | None = None

    def wait_time(self) -> float:
        return self.ctx.think_time()

    @task
    def chat(self) -> None:
        ctx = self.ctx
        if ctx.stop.is_set():  # the run is ending: no new request, whatever Locust asks
            raise StopUser()
        if self.conv is None or self.conv.done:
            self.conv = ctx.conversation()
        if not ctx.take_slot():
            raise StopUser()
        turn = self.conv.next_turn(ctx.prompts)
        # Closed loop: the request is due the moment its prompt is ready.
        send_turn(ctx, self.conv, turn, now_ns(), self.index)


class StagesShape(LoadTestShape):
    """The scenario's concurrency stages (with linear ramps), one after another; None ends
    the run."""

    ctx: LoadContext

    def tick(self) -> tuple[int, float] | None:
        if self.ctx.exhausted:
            return None
        at = users_at(self.ctx.scenario.user_stages(), self.get_run_time())
        if at is None:
            return None
        self.ctx.stage_index, users, spawn_rate = at
        return users, spawn_rate


# -- open loop and trace replay ------------------------------------------------------------------
def schedule_for(scenario: Scenario) -> Iterable[Arrival]:
    """The run's arrivals: seeded open-loop times, or the trace's scaled times with its
    lengths. Bounded by max_requests."""
    if scenario.mode == "open":
        assert scenario.arrivals is not None
        a = scenario.arrivals
        times = arrival_times(a.rate_stages(), a.process, a.cv or 1.0, scenario.seed,
                              scenario.max_requests)
        return ((t, None) for t in times)
    assert scenario.trace is not None
    return ((t, (e.prompt_tokens, e.output_tokens))
            for t, e in scenario.trace.schedule(scenario.max_requests))


def run_schedule(ctx: LoadContext, arrivals: Iterable[Arrival]) -> None:
    """Spawn one greenlet per arrival, PREPARE_LEAD_S before it is due, then wait for them.
    No new turn starts after the schedule's duration. A worker takes only its own arrivals."""
    start = now_ns() + round(PREPARE_LEAD_S * 1e9)
    end = start + round(ctx.scenario.duration_s * 1e9)
    for index, (offset, lengths) in enumerate(arrivals):
        if not ctx.mine(index):
            continue
        if not ctx.slots_left:
            break
        due = start + round(offset * 1e9)
        if not _sleep_until(due - round(PREPARE_LEAD_S * 1e9), ctx.stop):
            break
        ctx.requests.spawn(_arrival, ctx, index, due, lengths, end)
    ctx.requests.join()


def _arrival(ctx: LoadContext, index: int, due_ns: int, lengths: tuple[int, int] | None,
             end_ns: int) -> None:
    conv = ctx.conversation(index, lengths)
    think_ns = round((ctx.scenario.arrivals.think_time if ctx.scenario.arrivals else 0) * 1e9)
    intended = due_ns
    while not conv.done and ctx.take_slot():
        turn = conv.next_turn(ctx.prompts)
        if turn.turn > 0:  # a follow-up is due after the answer, think time, and its prompt
            intended = max(intended, now_ns())
        if not _sleep_until(intended, ctx.stop):
            return
        if ctx.in_flight >= ctx.scenario.max_in_flight:
            record_overload(ctx, turn, intended)
            return
        rec = send_turn(ctx, conv, turn, intended)
        intended = (rec.end_ns or now_ns()) + think_ns
        if intended > end_ns:
            return


class ScheduleUser(User):
    """Open loop: the run's only user; it walks the arrival schedule (see run_schedule)."""

    abstract = True
    ctx: LoadContext

    def wait_time(self) -> float:
        return 0.0

    @task
    def walk_schedule(self) -> None:
        if self.ctx.walking:  # a second user here (Locust rebalanced workers) would repeat it
            raise StopUser()
        self.ctx.walking = True
        try:
            run_schedule(self.ctx, schedule_for(self.ctx.scenario))
        finally:
            self.ctx.done = True
        raise StopUser()


class ScheduleShape(LoadTestShape):
    """One scheduler user until the schedule is done."""

    ctx: LoadContext

    def tick(self) -> tuple[int, float] | None:
        if self.ctx.done or self.ctx.exhausted:
            return None
        return 1, 1.0
