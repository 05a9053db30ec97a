"""The Ollama proxy's ASGI application (Starlette, served by uvicorn; httpx's async
transport upstream): `GET /metrics` is the proxy's own, every other request goes to Ollama
unchanged and its answer comes back chunk by chunk as it arrives.

The request body streams upstream too, counted against a limit; an oversized one gets a
413. A client that goes away mid-answer cancels the exchange, which closes the upstream
stream (Ollama then stops generating). What HTTP/1.1 framing needs (chunking, no body after
HEAD, 204 or 304) is uvicorn's job, not this module's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from servescope.collectors.ollama_proxy_metrics import (
    OBSERVED_PATHS,
    FinalObject,
    ProxyMetrics,
    endpoint_label,
    model_of,
)

log = logging.getLogger("servescope.proxy")

MIB = 1024**2
DEFAULT_MAX_BODY = 16 * MIB
# An answer (413, 502) given while the client is still sending is only read by a client
# whose body the server took in: closing with unread data makes the kernel send a reset,
# which discards the answer. So up to this much more is read and dropped first.
DRAIN_LIMIT = 64 * MIB
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
                        "expect"})

# (endpoint, final object, its phases) -> None; runs in a worker thread (it may block).
Recorder = Callable[[str, dict[str, Any], dict[str, Any]], None]


class BodyTooLarge(Exception):
    """The request body passed the proxy's limit."""


class ClientGone(Exception):
    """The client disconnected while sending its request."""


class Upload:
    """The request body as uvicorn hands it over, counted against the limit; the observed
    endpoints' (small JSON) bodies are kept to label the answer with their model."""

    def __init__(self, receive: Receive, limit: int, has_body: bool, keep: bool) -> None:
        self.receive, self.limit, self.keep = receive, limit, keep
        self.seen = 0
        self.kept: list[bytes] = []
        self.done = not has_body
        self.finished = anyio.Event()  # set once the whole body is in: receive() is free
        if self.done:
            self.finished.set()

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        while not self.done:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            body = message.get("body", b"")
            self.seen += len(body)
            if self.seen > self.limit:
                raise BodyTooLarge
            self.done = not message.get("more_body", False)
            if self.keep:
                self.kept.append(body)
            if self.done:
                self.finished.set()
            if body:
                yield body

    async def drain(self) -> bool:
        """Reads and drops the rest of the body, up to DRAIN_LIMIT; True when all is in."""
        while not self.done and self.seen <= self.limit + DRAIN_LIMIT:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                return False
            self.seen += len(message.get("body", b""))
            self.done = not message.get("more_body", False)
        return self.done


def _connection_named(raw: list[tuple[bytes, bytes]]) -> set[str]:
    return {token.strip().lower() for key, value in raw if key.lower() == b"connection"
            for token in value.decode("latin-1").split(",")}


def request_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The client's headers minus hop-by-hop ones and the framing httpx sets itself."""
    drop = HOP_BY_HOP | {"host", "content-length"} | _connection_named(raw)
    return [(k, v) for k, v in raw if k.decode("latin-1").lower() not in drop]


def response_headers(raw: list[tuple[bytes, bytes]], status: int) -> list[tuple[bytes, bytes]]:
    """Ollama's headers minus hop-by-hop ones; Content-Length stays (uvicorn frames by it,
    and a HEAD answer carries the GET's), except where HTTP forbids it (1xx, 204)."""
    drop = HOP_BY_HOP | _connection_named(raw)
    if status < 200 or status == 204:
        drop = drop | {"content-length"}
    return [(k, v) for k, v in raw if k.decode("latin-1").lower() not in drop]


@dataclass
class Call:
    """One request's exchange: what the client sent, where its answer goes, and how far
    that answer got (the disconnect watcher reads `complete`)."""

    scope: Scope
    send: Send
    endpoint: str
    upload: Upload
    complete: bool = False
    gone: bool = False

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def chunk(self, body: bytes) -> None:
        await self.send({"type": "http.response.body", "body": body, "more_body": True})

    async def finish(self, body: bytes = b"") -> None:
        self.complete = True
        await self.send({"type": "http.response.body", "body": body, "more_body": False})


class Forwarder:
    """The ASGI app behind every path but /metrics: one exchange with Ollama per request."""

    def __init__(self, upstream: str, metrics: ProxyMetrics, max_body: int, timeout: float,
                 record: Recorder | None) -> None:
        self.upstream, self.metrics, self.max_body, self.record = (upstream, metrics,
                                                                    max_body, record)
        self.timeout = httpx.Timeout(timeout, connect=5.0).as_dict()
        self.transport: httpx.AsyncHTTPTransport | None = None  # made by the app's lifespan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        endpoint = endpoint_label(scope["path"])
        declared = headers.get("content-length")
        has_body = (declared is not None and declared != "0") or "transfer-encoding" in headers
        upload = Upload(receive, self.max_body, has_body, keep=endpoint in OBSERVED_PATHS)
        call = Call(scope, send, endpoint, upload)
        gauge = self.metrics.in_flight.labels(endpoint)
        gauge.inc()
        try:
            if declared is not None and int(declared) > self.max_body:
                # A client waiting for "100 Continue" has sent nothing: answer at once.
                waiting = headers.get("expect", "").lower() == "100-continue"
                await self._refuse(call, 413, self._limit_message(), drain=not waiting)
                return
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_client, call, receive, tg.cancel_scope)
                await self._exchange(call, headers)
                tg.cancel_scope.cancel()
            if call.gone:
                self.metrics.client_disconnects.labels(endpoint).inc()
                log.info("client left %s %s before its answer ended; upstream stream closed",
                         scope["method"], scope["path"])
        except asyncio.CancelledError:
            # Only uvicorn's shutdown cancels a request's task (a client leaving cancels
            # the scope above): the answer is cut, its upstream stream already closed.
            log.warning("proxy stopping: cut %s %s, still answering after the grace period",
                        scope["method"], scope["path"])
        finally:
            gauge.dec()

    @staticmethod
    async def _watch_client(call: Call, receive: Receive, scope: anyio.CancelScope) -> None:
        """Once the body is in, waits for the client to disconnect and cancels the exchange
        (uvicorn drops what is sent to a gone client, so nothing else would notice)."""
        await call.upload.finished.wait()
        while (await receive())["type"] != "http.disconnect":
            pass
        if not call.complete:  # after the last byte, "disconnect" only means "done"
            call.gone = True
            scope.cancel()

    def _limit_message(self) -> str:
        return (f"request body over the proxy's limit of {self.max_body} bytes "
                "(servescope proxy --max-body-size)")

    async def _refuse(self, call: Call, status: int, message: str, drain: bool = True) -> None:
        """Answers an error of the proxy's own, after taking in what the client still sends
        (see DRAIN_LIMIT); closes the connection when that was not all."""
        whole = await call.upload.drain() if drain else call.upload.done
        self.metrics.requests.labels(call.endpoint, str(status)).inc()
        body = json.dumps({"error": message}).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]
        if not whole:
            headers.append((b"connection", b"close"))
        await call.start(status, headers)
        await call.finish(body)

    async def _exchange(self, call: Call, headers: Headers) -> None:
        received = time.perf_counter()
        assert self.transport is not None, "the proxy app's lifespan has not started"
        scope, upload = call.scope, call.upload
        fwd = request_headers(headers.raw)
        content: bytes | AsyncIterator[bytes] = b""
        if not upload.done:
            content = upload.chunks()
            if "content-length" in headers:  # else httpx sends it chunked, as it came
                fwd.append((b"content-length", headers["content-length"].encode()))
        target = scope["raw_path"].decode("latin-1") or scope["path"]
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        request = httpx.Request(scope["method"], self.upstream + target, headers=fwd,
                                content=content, extensions={"timeout": self.timeout})
        try:
            upstream = await self.transport.handle_async_request(request)
        except BodyTooLarge:
            await self._refuse(call, 413, self._limit_message())
            return
        except ClientGone:
            call.gone = True
            return
        except httpx.HTTPError as exc:
            self.metrics.upstream_errors.labels(call.endpoint, type(exc).__name__).inc()
            log.warning("upstream %s: %s: %s", self.upstream, type(exc).__name__, exc)
            detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
            await self._refuse(call, 502, f"upstream {self.upstream} unreachable: {detail}")
            return
        try:
            await self._relay(call, upstream, model_of(b"".join(upload.kept)), received)
        finally:
            with anyio.CancelScope(shield=True):  # closed even when the client left
                await upstream.aclose()

    async def _relay(self, call: Call, upstream: httpx.Response, model: str,
                     received: float) -> None:
        status, endpoint = upstream.status_code, call.endpoint
        self.metrics.requests.labels(endpoint, str(status)).inc()
        await call.start(status, response_headers(upstream.headers.raw, status))
        if call.scope["method"] == "HEAD" or status < 200 or status in (204, 304):
            await call.finish()  # no body, and uvicorn writes no chunk terminator
            return
        watcher = FinalObject() if endpoint in OBSERVED_PATHS else None
        length = upstream.headers.get("content-length")
        remaining = int(length) if length and length.isdigit() else None
        first = True
        try:
            async for chunk in upstream.aiter_raw():
                if first and watcher is not None:
                    self.metrics.ttfb.labels(model, endpoint).observe(
                        time.perf_counter() - received)
                first = False
                if remaining is not None:
                    remaining -= len(chunk)
                if watcher is not None:
                    # Recorded before the last bytes go out: a client holding its whole
                    # answer finds it in /metrics.
                    watcher.feed(chunk)
                    if remaining == 0:
                        watcher.close()
                    if watcher.final is not None:
                        await self._observe(endpoint, watcher.final)
                        watcher = None
                await call.chunk(chunk)
        except httpx.HTTPError as exc:
            # Headers are out; only an unfinished answer tells the client. uvicorn closes
            # the connection when this app returns without the final message.
            self.metrics.upstream_errors.labels(endpoint, type(exc).__name__).inc()
            log.warning("upstream %s broke off an answer: %s: %s", self.upstream,
                        type(exc).__name__, exc)
            return
        if watcher is not None:
            watcher.close()
            if watcher.final is not None:
                await self._observe(endpoint, watcher.final)
        await call.finish()

    async def _observe(self, endpoint: str, final: dict[str, Any]) -> None:
        phases = self.metrics.observe(endpoint, final)
        if self.record is None:
            return
        try:
            await anyio.to_thread.run_sync(self.record, endpoint, final, phases)
        except Exception as exc:  # a store problem never fails a proxied answer
            self.metrics.store_errors.inc()
            log.warning("proxy: could not store timings: %s: %s", type(exc).__name__, exc)


def build_app(upstream: str, metrics: ProxyMetrics, *, max_body: int = DEFAULT_MAX_BODY,
              timeout: float = 600.0, record: Recorder | None = None) -> Starlette:
    """The proxy's app; its lifespan opens (and at shutdown closes) the upstream pool."""
    forwarder = Forwarder(upstream.rstrip("/"), metrics, max_body, timeout, record)

    async def serve_metrics(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with httpx.AsyncHTTPTransport(limits=limits) as transport:
            forwarder.transport = transport
            yield
            forwarder.transport = None

    return Starlette(routes=[Route("/metrics", serve_metrics, methods=["GET"]),
                             Route("/{path:path}", forwarder)], lifespan=lifespan)
