"""Locust drives the users; our own stamps go to the store.

Locust's request event still fires (so its UI and CSV stats work), but with our
unrounded numbers kept out of its rounding: the store holds the raw stamps, and every
metric servescope reports is derived from those.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from locust import LoadTestShape, User, task
from locust.exception import StopUser

from loadgen.clock import now_ns
from loadgen.openai_chat import ChatRequest, stream_chat
from loadgen.prompts import PromptBuilder
from loadgen.scenario import Scenario
from servescope.records import RequestRecord


@dataclass
class LoadContext:
    """Everything the users of one run share."""

    scenario: Scenario
    base_url: str
    model: str
    record: Callable[[RequestRecord], None]
    client: httpx.Client
    prompts: PromptBuilder
    headers: dict[str, str] = field(default_factory=dict)
    ignore_eos: bool = True
    worker: str = "local"
    issued: int = 0
    completed: int = 0
    ok: int = 0
    failed: int = 0
    output_tokens: int = 0
    in_flight: int = 0
    stage_index: int = 0
    _ids: itertools.count = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take_slot(self) -> int | None:
        """A sequence number for the next request, or None once max_requests is reached."""
        with self._lock:
            limit = self.scenario.max_requests
            if limit is not None and self.issued >= limit:
                return None
            self.issued += 1
            return next(self._ids)

    def finished(self, rec: RequestRecord) -> None:
        with self._lock:
            self.completed += 1
            if rec.ok:
                self.ok += 1
                self.output_tokens += rec.output_tokens or 0
            else:
                self.failed += 1
        self.record(rec)

    @property
    def exhausted(self) -> bool:
        limit = self.scenario.max_requests
        return limit is not None and self.completed >= limit

    def think_time(self) -> float:
        return self.scenario.stages[self.stage_index].think_time


class ChatUser(User):
    """One closed-loop user: build a prompt, stream a chat completion, record it, repeat."""

    abstract = True
    ctx: LoadContext  # set on a per-run subclass

    def wait_time(self) -> float:
        return self.ctx.think_time()

    @task
    def chat(self) -> None:
        ctx = self.ctx
        seq = ctx.take_slot()
        if seq is None:
            raise StopUser()
        rng = random.Random(f"{ctx.scenario.seed}:{seq}")
        prompt_tokens = ctx.scenario.prompt_tokens.sample(rng)
        output_tokens = ctx.scenario.output_tokens.sample(rng)
        request_id = f"{ctx.worker}-{seq:07d}-{rng.getrandbits(32):08x}"
        messages = ctx.prompts.build(prompt_tokens, request_id, rng)
        req = ChatRequest(ctx.model, messages, output_tokens, ignore_eos=ctx.ignore_eos)
        # Closed loop: the request is due the moment its prompt is ready.
        intended = now_ns()
        ctx.in_flight += 1
        try:
            rec = stream_chat(
                ctx.client,
                f"{ctx.base_url}/v1/chat/completions",
                req,
                request_id,
                intended,
                ctx.scenario.request_timeout,
                ctx.headers,
            )
        finally:
            ctx.in_flight -= 1
        rec.target_prompt_tokens = prompt_tokens
        rec.worker = ctx.worker
        ctx.finished(rec)
        ctx.prompts.observe(sum(len(m["content"]) for m in messages), rec.prompt_tokens)
        self.environment.events.request.fire(
            request_type="POST",
            name="chat",
            response_time=((rec.end_ns or rec.send_ns) - rec.send_ns) / 1e6,
            response_length=rec.output_tokens or 0,
            exception=None if rec.ok else RuntimeError(rec.error_class),
            context={},
        )


class StagesShape(LoadTestShape):
    """The scenario's concurrency stages, one after another; None ends the run."""

    ctx: LoadContext

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        if self.ctx.exhausted:
            return None
        for i, stage in enumerate(self.ctx.scenario.stages):
            if elapsed < stage.duration:
                self.ctx.stage_index = i
                return stage.concurrency, float(stage.concurrency)
            elapsed -= stage.duration
        return None
