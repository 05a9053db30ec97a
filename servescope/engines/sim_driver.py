"""The simulated server's engine side: the simulator (capacity/simulator.py) built for a
model on a GPU as vLLM would size it, stepped in real time by one asyncio task, handing each
request's tokens to its stream as the simulated steps end.

Time: the simulator's clock is the event loop's, in seconds since the server started. Each
step starts where the previous one ended (or, after idling, when work arrived) and the task
sleeps until that step's end before delivering its tokens, so the server-side histograms
hold the simulator's timeline and a client sees it within the loop's jitter. When this
machine cannot keep up (many streams on few cores), the timeline is moved to now and the
lag counted (`lag_s`), so the numbers stay what a client saw.

Tokens are counted with one documented rule, the same for /tokenize and for usage: about 4
characters per token (ceil(chars / 4)); a chat prompt adds 4 tokens per message for its
role markers and 3 for the generation prompt, a completions prompt 1 (BOS). The simulated
model writes 4-character words, so an answer counts back to the tokens it was made of.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from servescope.capacity import catalog
from servescope.capacity.setup import PlanInput, Setup
from servescope.capacity.sim_calibrate import Calibration
from servescope.capacity.sim_profile import Profile
from servescope.capacity.sim_setup import sim_setup
from servescope.capacity.simulator import Engine, SchedulerConfig, SimRequest, StepModel
from servescope.engines.sim_metrics import CacheConfig, RequestTimes, SimMetrics

log = logging.getLogger("servescope.sim")

CHARS_PER_TOKEN = 4
MESSAGE_TOKENS = 4  # role markers around each chat message
GENERATION_PROMPT_TOKENS = 3  # "<|assistant|>\n" after the last one
BOS_TOKENS = 1
DEFAULT_OUTPUT_TOKENS = 256  # when a request sets no max_tokens
# Steps starting this far behind real time move the timeline to now (see the docstring).
LAG_TOLERANCE_S = 0.05
WORDS = (" the", " and", " for", " you", " can", " not", " all", " but", " one", " new",
         " out", " now", " see", " way", " may", " use", " day", " get", " how", " our")


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def chat_tokens(messages: Sequence[dict[str, Any]], generation_prompt: bool = True) -> int:
    """A chat prompt's tokens by this server's rule (see the module docstring)."""
    n = sum(text_tokens(_content(m)) + MESSAGE_TOKENS for m in messages)
    return n + (GENERATION_PROMPT_TOKENS if generation_prompt else 0)


def _content(message: dict[str, Any]) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def prompt_tokens(prompt: str | list[int]) -> int:
    if isinstance(prompt, list):  # token ids
        return len(prompt)
    return text_tokens(prompt) + BOS_TOKENS


def prefix_of(messages: Sequence[dict[str, Any]]) -> tuple[str | None, int]:
    """The part of a chat prompt a prefix cache could hold from an earlier request: every
    message before the last (a system prompt, a conversation so far)."""
    if len(messages) < 2:
        return None, 0
    head = list(messages[:-1])
    key = hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode()).hexdigest()
    return key[:32], chat_tokens(head, generation_prompt=False)


def token_index(request_index: int, i: int) -> int:
    """Which of WORDS is token i of request `request_index`."""
    return (request_index * 7 + i * 3) % len(WORDS)


def token_text(request_index: int, i: int) -> str:
    return WORDS[token_index(request_index, i)]


# -- the backend: what is simulated -----------------------------------------------------------
@dataclass(frozen=True)
class SimSpec:
    """What the command line asks for."""

    model: str
    gpu: str
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    tp: int = 1
    profile: Path | None = None
    seed: int = 0


@dataclass
class Backend:
    """The simulator configured as vLLM would configure itself for the spec."""

    spec: SimSpec
    served_name: str
    model_key: str
    hardware_key: str
    setup: Setup
    scheduler: SchedulerConfig
    step_model: StepModel
    step_model_name: str  # "physics" or "calibrated: FILE"
    ttft_overhead_s: float = 0.0  # a calibration's way in and out of the server

    @property
    def max_model_len(self) -> int:
        return self.setup.max_model_len

    def cache_config(self) -> CacheConfig:
        return CacheConfig(block_size=self.scheduler.block_size,
                           num_gpu_blocks=self.scheduler.kv_blocks,
                           gpu_memory_utilization=self.spec.gpu_memory_utilization,
                           enable_prefix_caching=self.scheduler.prefix_caching,
                           max_num_seqs=self.scheduler.max_num_seqs,
                           max_num_batched_tokens=self.scheduler.max_num_batched_tokens)

    def engine(self) -> Engine:
        return Engine(self.scheduler, self.step_model, seed=self.spec.seed)


class SimConfigError(ValueError):
    """A model, GPU, profile or setting the simulator cannot serve; str() says which."""


def build_backend(spec: SimSpec) -> Backend:
    """Resolve the model and GPU in the catalogs, size the KV cache and the scheduler as
    vLLM would (capacity/sim_setup.py), and pick the step model: the profile's, else physics."""
    try:
        info = catalog.model(spec.model)
        hw = catalog.hardware(spec.gpu)
    except (catalog.UnknownName, ValueError) as exc:
        raise SimConfigError(str(exc)) from None
    inp = PlanInput(model=info, hardware=hw, tp=spec.tp, max_model_len=spec.max_model_len,
                    gpu_memory_utilization=spec.gpu_memory_utilization,
                    max_num_seqs=spec.max_num_seqs,
                    max_num_batched_tokens=spec.max_num_batched_tokens)
    try:
        sim = sim_setup(inp, spec.tp)
    except ValueError as exc:
        raise SimConfigError(
            f"--model {spec.model} on --gpu {spec.gpu}: {exc}; vLLM would not start. Try a "
            "larger GPU, --tp, --max-model-len, or `servescope plan` for what fits") from None
    step_model: StepModel = sim.physics
    name, overhead = "physics", 0.0
    if spec.profile is not None:
        calibration = load_profile(spec.profile)
        step_model = RooflineFloor(calibration.step, replace(
            sim.physics, bw_efficiency=1.0, flops_efficiency=1.0, overhead_s=0.0))
        overhead = calibration.ttft_overhead_s
        name = f"calibrated: {spec.profile}"
    served = f"{spec.model} (simulated on {spec.gpu})"
    return Backend(spec, served, spec.model, hw.key, sim.setup, sim.config, step_model, name,
                   overhead)


class RooflineFloor:
    """A calibrated step model that never beats the stated GPU's roofline (every weight
    read at full bandwidth, every FLOP at peak): a profile measured elsewhere may be faster
    than this hardware can be, the simulated server never is."""

    def __init__(self, inner: Any, roofline: StepModel) -> None:
        self.inner, self.roofline = inner, roofline

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int,
                     pairs: int = 0) -> float:
        return max(self.inner.step_seconds(prefill_tokens, decode_seqs, kv_tokens, pairs),
                   self.roofline.step_seconds(prefill_tokens, decode_seqs, kv_tokens, pairs))

    def sample_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int,
                       rng: random.Random, pairs: int = 0) -> float:
        sample = getattr(self.inner, "sample_seconds", None)
        drawn = (sample(prefill_tokens, decode_seqs, kv_tokens, rng, pairs)
                 if sample is not None
                 else self.inner.step_seconds(prefill_tokens, decode_seqs, kv_tokens, pairs))
        return max(drawn, self.roofline.step_seconds(prefill_tokens, decode_seqs, kv_tokens,
                                                     pairs))


def load_profile(path: Path) -> Calibration:
    """The calibration in a profile `servescope calibrate` saved (sim_profile.Profile); a
    bare sim_calibrate.Calibration object is read too. The profile's scheduler is the
    measured server's: the simulated one keeps --model/--gpu's and its flags."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SimConfigError(f"--profile {path}: cannot read it ({exc})") from None
    if not isinstance(data, dict):
        raise SimConfigError(f"--profile {path}: not a JSON object")
    try:
        if "schema" in data:
            return Profile.from_dict(data, f"--profile {path}").calibration
        return Calibration.from_dict(data.get("calibration", data))
    except (ValueError, TypeError, AttributeError) as exc:
        raise SimConfigError(f"--profile {path}: {exc}") from None


# -- the driver: real time --------------------------------------------------------------------
@dataclass
class Stream:
    """One request inside the server: its tokens arrive on `queue` as their indices, then
    None at the end."""

    id: str
    index: int
    prompt_tokens: int
    max_tokens: int
    times: RequestTimes
    queue: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue)
    emitted: int = 0
    finish_reason: str | None = None
    gone: bool = False  # the client left; its tokens are dropped


class Driver:
    """Owns the engine; `run()` is the one task that steps it."""

    def __init__(self, backend: Backend, metrics: SimMetrics) -> None:
        self.backend, self.metrics = backend, metrics
        self.engine = backend.engine()
        self.streams: dict[str, Stream] = {}
        self._count = 0
        self._wake = asyncio.Event()
        self._t0: float | None = None
        self._end = 0.0  # when the last step ended (simulator seconds)
        self._woken_at = 0.0
        self.lag_s = 0.0  # timeline moved forward because this machine fell behind
        self.steps = 0

    def now(self) -> float:
        loop = asyncio.get_running_loop()
        if self._t0 is None:
            self._t0 = loop.time()
        return loop.time() - self._t0

    def submit(self, prompt_tokens: int, max_tokens: int, prefix_key: str | None = None,
               prefix_tokens: int = 0, finish_reason: str = "length") -> Stream:
        """Queue a request now; its tokens come on the returned stream."""
        self._count += 1
        rid = str(self._count)
        arrival = self.now()
        if not self.engine.idle():
            # Past the last step's end, the next step has not been issued yet: on the
            # simulator's timeline this request came before it started.
            arrival = min(arrival, self._end)
        stream = Stream(rid, self._count, prompt_tokens, max_tokens,
                        RequestTimes(arrival, None, prompt_tokens=prompt_tokens,
                                     max_tokens=max_tokens, finish_reason=finish_reason))
        self.engine.add(SimRequest(rid, arrival, prompt_tokens, max_tokens, prefix_key,
                                   min(prefix_tokens, prompt_tokens - 1)))
        self.streams[rid] = stream
        if not self._wake.is_set():  # an idle engine starts when the request came, not
            self._woken_at = arrival  # when this loop got round to it
            self._wake.set()
        return stream

    def abandon(self, stream: Stream) -> None:
        """The client left: stop the request where the engine can, else drop its tokens."""
        if stream.id not in self.streams:
            return
        stream.gone = True
        if self.engine.abort(stream.id):
            self._close(stream, "abort")
            # the gauges now, not at the next step: an engine left idle takes none
            self.metrics.step(self.engine.running, self.engine.waiting, self.engine.kv_usage,
                              0, 0, 0)

    def stop_all(self) -> None:
        """End every open request now (the server is stopping)."""
        for stream in list(self.streams.values()):
            stream.gone = True
            self._close(stream, "abort")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.now()
        assert self._t0 is not None
        while True:
            now = self.now()
            start = self._end
            if now - start >= LAG_TOLERANCE_S:  # this machine fell behind the timeline
                self.lag_s += now - start
                start = now
            try:
                result = self.engine.step(start)
            except Exception as exc:  # the simulator's limit (or a bug): never hang requests
                log.error("simulator: %s: %s; failing %d requests", type(exc).__name__, exc,
                          len(self.streams))
                for stream in list(self.streams.values()):
                    self._close(stream, "error")
                self.engine = self.backend.engine()
                continue
            if result is None:
                self._wake.clear()
                await self._wake.wait()
                self._end = self._woken_at
                continue
            self.steps += 1
            self._end = result.end_s
            delay = self._t0 + result.end_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._deliver(result)

    def _deliver(self, r: Any) -> None:
        end = r.end_s
        for rid in r.prefill:
            s = self.streams.get(rid)
            if s is not None and s.times.scheduled is None:
                s.times.scheduled = r.start_s
        for rid in r.preempted:
            if (s := self.streams.get(rid)) is not None:
                s.times.preemptions += 1
        first_tokens = 0
        for rid in r.tokens:
            s = self.streams.get(rid)
            if s is None:
                continue
            times = s.times.token_times
            if times:
                self.metrics.token_gap(end - times[-1])
            else:
                self.metrics.first_token(s.times.arrival, end)
                first_tokens += s.prompt_tokens
            times.append(end)
            if not s.gone:
                s.queue.put_nowait(s.emitted)
            s.emitted += 1
        for rid in r.finished:
            if (s := self.streams.get(rid)) is not None:
                self._close(s, "abort" if s.gone else s.times.finish_reason)
        for done in self.engine.pop_done():  # the rest of the account is the driver's own
            self.metrics.prefix_lookup(done.prompt_tokens, done.cached_tokens)
        # the engine's state now: a request aborted or added while this step ran counts
        eng = self.engine
        self.metrics.step(eng.running, eng.waiting, eng.kv_usage, first_tokens,
                          len(r.tokens), len(r.preempted))

    def _close(self, s: Stream, reason: str) -> None:
        s.finish_reason = s.times.finish_reason = reason
        self.streams.pop(s.id, None)
        self.metrics.finished(s.times)
        s.queue.put_nowait(None)
