"""`servescope sim-server`: an OpenAI-compatible server whose answers come from the simulator
(capacity/simulator.py) stepped in real time (sim_driver.py), with vLLM's /metrics names
(sim_metrics.py), so the collector, the load generator, the dashboard and the advisor run
with no engine installed, on any model and GPU in the catalogs.

It says it is simulated everywhere a client looks: the served model is "M (simulated on G)",
every answer carries `X-Servescope-Simulated: true`, /metrics has `servescope_simulated 1`
and /v1/models marks the model `"simulated": true`.

Served: /v1/models, /v1/chat/completions and /v1/completions (streamed or not; usage in a
last chunk with stream_options.include_usage, as vLLM sends it), /tokenize (vLLM's form,
counted by the driver's rule), /health, /version and /metrics. A simulated model has no EOS
of its own: it writes max_tokens (or max_completion_tokens) tokens, finish_reason "length",
`ignore_eos` or not; without either it writes DEFAULT_OUTPUT_TOKENS and says "stop".
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import uvicorn
from prometheus_client import Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servescope import __version__
from servescope.core.net import listen
from servescope.engines.process import LocalServer
from servescope.engines.sim_driver import (
    DEFAULT_OUTPUT_TOKENS,
    WORDS,
    Backend,
    Driver,
    SimSpec,
    Stream,
    chat_tokens,
    prefix_of,
    prompt_tokens,
    token_index,
    token_text,
)
from servescope.engines.sim_metrics import SimMetrics

log = logging.getLogger("servescope.sim")
SIMULATED_HEADER = (b"x-servescope-simulated", b"true")
WORD_JSON = [json.dumps(w).encode() for w in WORDS]


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param


def _error(exc: BadRequest) -> JSONResponse:
    kind = {400: "BadRequestError", 404: "NotFoundError"}.get(exc.status, "InternalServerError")
    return JSONResponse({"error": {"message": str(exc), "type": kind, "param": exc.param,
                                   "code": exc.status}}, status_code=exc.status)


class SimulatedHeader:
    """Adds `X-Servescope-Simulated: true` to every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def mark(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  SIMULATED_HEADER]}
            await send(message)

        try:
            await self.app(scope, receive, mark)
        except asyncio.CancelledError:
            # Only uvicorn's shutdown cancels a request's task (a client leaving ends its
            # stream inside the response): the answer is cut after the grace period.
            log.info("sim-server stopping: cut %s %s", scope["method"], scope["path"])


class SimApp:
    """The routes, around one Driver (made by the app's lifespan, on its event loop)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.metrics = SimMetrics(backend.served_name, backend.cache_config(),
                                  model=backend.model_key, gpu=backend.hardware_key,
                                  step_model=backend.step_model_name.split(":")[0])
        self.lag = Gauge("servescope_sim_lag_seconds", "Seconds the simulated timeline was "
                         "moved forward because this machine could not keep up with it.",
                         registry=self.metrics.registry)
        self.lag.set_function(lambda: self.driver.lag_s if self.driver else 0.0)
        self.driver: Driver | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.created = int(time.time())

    def stop_streams(self) -> None:
        """The server is stopping: end every open answer now, cleanly (an error event and
        [DONE]), instead of cutting it when the grace period ends. Any thread."""
        if self.loop is not None and self.driver is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.driver.stop_all)

    def names(self) -> set[str]:
        return {self.backend.served_name, self.backend.spec.model}

    # -- plain answers ---------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": f"servescope-sim {__version__}", "simulated": True})

    async def models(self, request: Request) -> Response:
        b = self.backend
        return JSONResponse({"object": "list", "data": [{
            "id": b.served_name, "object": "model", "created": self.created,
            "owned_by": "servescope-sim", "root": b.spec.model, "parent": None,
            "max_model_len": b.max_model_len, "simulated": True, "gpu": b.hardware_key,
            "step_model": b.step_model_name, "permission": []}]})

    async def server_info(self, request: Request) -> Response:
        """vLLM's development endpoint (VLLM_SERVER_DEV_MODE=1), in the part the artifact
        manifest reads: the scheduler's limits."""
        sch = self.backend.scheduler
        return JSONResponse({"vllm_config": {"scheduler_config": {
            "max_num_seqs": sch.max_num_seqs,
            "max_num_batched_tokens": sch.max_num_batched_tokens},
            "model_config": {"max_model_len": self.backend.max_model_len}},
            "simulated": True})

    async def serve_metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def tokenize(self, request: Request) -> Response:
        try:
            body = await _json(request)
            if "messages" in body:
                n = chat_tokens(_messages(body),
                                bool(body.get("add_generation_prompt", True)))
            else:
                n = prompt_tokens(_prompt(body))
        except BadRequest as exc:
            return _error(exc)
        return JSONResponse({"count": n, "max_model_len": self.backend.max_model_len,
                             "tokens": list(range(n)), "token_strs": None})

    # -- generation ------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def _generate(self, request: Request, chat: bool) -> Response:
        try:
            body = await _json(request)
            self._check_model(body)
            if chat:
                messages = _messages(body)
                n_prompt = chat_tokens(messages)
                key, n_prefix = prefix_of(messages)
            else:
                n_prompt, key, n_prefix = prompt_tokens(_prompt(body)), None, 0
            max_tokens, reason = self._max_tokens(body, n_prompt)
            if body.get("n") not in (None, 1):
                raise BadRequest("the simulated server answers n=1 only", param="n")
        except BadRequest as exc:
            return _error(exc)
        assert self.driver is not None, "the sim server's lifespan has not started"
        if self.backend.ttft_overhead_s > 0:  # calibrated: the way into the server
            await asyncio.sleep(self.backend.ttft_overhead_s)
        stream = self.driver.submit(n_prompt, max_tokens, key, n_prefix, reason)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:16]
        head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": self.backend.served_name}
        if body.get("stream"):
            options = body.get("stream_options")
            usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return StreamingResponse(self._events(stream, head, chat, usage),
                                     media_type="text/event-stream")
        return await self._whole(stream, head, chat)

    def _check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model is not None and model not in self.names():
            raise BadRequest(f"The model `{model}` does not exist.", 404, "model")

    def _max_tokens(self, body: dict[str, Any], n_prompt: int) -> tuple[int, str]:
        limit = self.backend.max_model_len
        value = body.get("max_completion_tokens", body.get("max_tokens"))
        if n_prompt >= limit:
            raise BadRequest(f"This model's maximum context length is {limit} tokens. "
                             f"However, your request has {n_prompt} input tokens.")
        if value is None:
            return min(DEFAULT_OUTPUT_TOKENS, limit - n_prompt), "stop"
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequest(f"max_tokens must be an integer of at least 1, got {value!r}",
                             param="max_tokens")
        if n_prompt + value > limit:
            raise BadRequest(f"This model's maximum context length is {limit} tokens. However, "
                             f"you requested {n_prompt + value} tokens ({n_prompt} in the "
                             f"messages, {value} in the completion). Please reduce the length "
                             "of the messages or completion.", param="max_tokens")
        return value, "length"

    def _usage(self, stream: Stream) -> dict[str, int]:
        return {"prompt_tokens": stream.prompt_tokens,
                "total_tokens": stream.prompt_tokens + stream.emitted,
                "completion_tokens": stream.emitted}

    async def _events(self, stream: Stream, head: dict[str, Any], chat: bool,
                      usage: bool) -> AsyncIterator[bytes]:
        """The SSE answer, as vLLM shapes it: (chat) a role chunk, one chunk per token (the
        last with its finish_reason), then usage when asked and [DONE]."""
        sent = 0
        # A token's event is this, the word's JSON, then `after`.
        field = '"delta":{"content":' if chat else '"text":'
        before = (b"data: " + json.dumps(head, separators=(",", ":")).encode()[:-1]
                  + b',"choices":[{"index":0,' + field.encode())
        after = (b"}" if chat else b"") + b',"logprobs":null,"finish_reason":null}]}\n\n'
        try:
            if chat:
                yield _sse({**head, "choices": [{"index": 0, "delta": {
                    "role": "assistant", "content": ""}, "logprobs": None,
                    "finish_reason": None}]})
            ended = False
            while not ended:
                batch = [await stream.queue.get()]
                while not stream.queue.empty():
                    batch.append(stream.queue.get_nowait())
                out = []
                for i in batch:
                    if i is None:
                        ended = True
                        break
                    sent += 1
                    if sent < stream.max_tokens:  # the common case, without json.dumps
                        out.append(before + WORD_JSON[token_index(stream.index, i)] + after)
                        continue
                    text = token_text(stream.index, i)
                    piece = {"delta": {"content": text}} if chat else {"text": text}
                    out.append(_sse({**head, "choices": [{
                        "index": 0, **piece, "logprobs": None,
                        "finish_reason": stream.times.finish_reason}]}))
                if out:
                    yield b"".join(out)
            if sent < stream.max_tokens:
                yield _sse({"error": {"message": _cut_reason(stream),
                                      "type": "InternalServerError", "code": 500}})
            if usage:
                yield _sse({**head, "choices": [], "usage": self._usage(stream)})
            yield b"data: [DONE]\n\n"
        finally:
            if stream.finish_reason is None and self.driver is not None:
                self.driver.abandon(stream)

    async def _whole(self, stream: Stream, head: dict[str, Any], chat: bool) -> Response:
        parts = []
        try:
            while (i := await stream.queue.get()) is not None:
                parts.append(token_text(stream.index, i))
        finally:
            if stream.finish_reason is None and self.driver is not None:
                self.driver.abandon(stream)
        if len(parts) < stream.max_tokens:
            return _error(BadRequest(_cut_reason(stream), 500))
        text = "".join(parts)
        choice: dict[str, Any] = {"index": 0, "logprobs": None,
                                  "finish_reason": stream.finish_reason, "stop_reason": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
        else:
            choice["text"] = text
        obj = "chat.completion" if chat else "text_completion"
        return JSONResponse({**head, "object": obj, "choices": [choice],
                             "usage": self._usage(stream)})

    # -- the app -----------------------------------------------------------------------------
    def build(self) -> ASGIApp:
        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            self.loop = asyncio.get_running_loop()
            self.driver = Driver(self.backend, self.metrics)
            task = asyncio.create_task(self.driver.run(), name="sim-engine")
            try:
                yield
            finally:
                task.cancel()

        routes = [Route("/health", self.health, methods=["GET"]),
                  Route("/version", self.version, methods=["GET"]),
                  Route("/metrics", self.serve_metrics, methods=["GET"]),
                  Route("/server_info", self.server_info, methods=["GET"]),
                  Route("/v1/models", self.models, methods=["GET"]),
                  Route("/tokenize", self.tokenize, methods=["POST"]),
                  Route("/v1/chat/completions", self.chat, methods=["POST"]),
                  Route("/v1/completions", self.completions, methods=["POST"])]
        return SimulatedHeader(Starlette(routes=routes, lifespan=lifespan))


def _cut_reason(stream: Stream) -> str:
    if stream.finish_reason == "abort":
        return "the simulated server is stopping: this answer was cut"
    return "the simulator failed this request (see the sim-server's log)"


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise BadRequest(f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body is not a JSON object")
    return body


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or \
            not all(isinstance(m, dict) for m in messages):
        raise BadRequest("`messages` must be a non-empty list of objects", param="messages")
    return messages


def _prompt(body: dict[str, Any]) -> str | list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return prompt
    raise BadRequest("`prompt` must be one non-empty string or a list of token ids "
                     "(the simulated server answers one prompt per request)", param="prompt")


# -- serving ----------------------------------------------------------------------------------
class _Uvicorn(uvicorn.Server):
    """uvicorn, ending the open streams as soon as it is told to stop."""

    def __init__(self, config: uvicorn.Config, app: SimApp) -> None:
        super().__init__(config)
        self.sim_app = app

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.sim_app.stop_streams()
        super().handle_exit(sig, frame)


class SimServer:
    """The server: `serve_forever()` in the foreground (Ctrl-C and SIGTERM stop it; streams
    still open get `grace_s`) or `start()` in a thread (tests)."""

    def __init__(self, backend: Backend, host: str = "127.0.0.1", port: int = 8000,
                 grace_s: float = 2.0) -> None:
        self.app = SimApp(backend)
        self.grace_s = grace_s
        self._sock = listen(host, port)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}"
        config = uvicorn.Config(self.app.build(), lifespan="on", log_config=None,
                                log_level="warning", access_log=False,
                                timeout_graceful_shutdown=grace_s)  # type: ignore[arg-type]
        self.server = _Uvicorn(config, self.app)
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        self.server.run(sockets=[self._sock])

    def start(self) -> SimServer:
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name="sim-server", daemon=True)
        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"sim server {self.url}: stopped while starting")
            time.sleep(0.01)
        return self

    def close(self) -> None:
        self.app.stop_streams()
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(self.grace_s + 30)
        self._sock.close()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class SimLocalServer(LocalServer):
    """`servescope sim-server` in its own process (the demo's instant engine): a core of its
    own keeps its timeline real."""

    name: ClassVar[str] = "simulated server"
    log_prefix: ClassVar[str] = "sim-server"
    health_path: ClassVar[str] = "/health"
    ready_timeout_s: ClassVar[float] = 60.0
    ready_poll_s: ClassVar[float] = 0.1

    def __init__(self, spec: SimSpec, **kw: Any) -> None:
        super().__init__(**kw)
        self.spec = spec

    def launch(self) -> tuple[list[str], dict[str, str] | None]:
        s = self.spec
        cmd = [sys.executable, "-m", "servescope.cli", "sim-server", "--model", s.model,
               "--gpu", s.gpu, "--host", self.host, "--port", str(self.port),
               "--seed", str(s.seed)]
        for flag, value in (("--max-num-seqs", s.max_num_seqs),
                            ("--max-num-batched-tokens", s.max_num_batched_tokens),
                            ("--max-model-len", s.max_model_len), ("--profile", s.profile)):
            if value is not None:
                cmd += [flag, str(value)]
        return cmd, None
