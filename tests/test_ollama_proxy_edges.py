"""The Ollama proxy's HTTP edges, against a small local upstream that can do what a test
needs on cue (hold a stream open, answer 204/304, echo what it received): bodyless
answers, chunked uploads, the body limit, clients that leave, an upstream that is down,
and stopping on SIGTERM/Ctrl-C. The real Ollama is in test_ollama_proxy_live.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import h11
import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from helpers import REPO_ROOT
from servescope.collectors.ollama_proxy import OllamaProxy
from servescope.engines.process import free_port

WAIT_S = 60  # how long a condition may take to come true on a busy machine
MIB = 1024**2
FINAL = {"model": "m", "created_at": "2025-01-01T00:00:00Z", "response": "", "done": True,
         "done_reason": "stop", "total_duration": 3_000_000_000, "load_duration": 0,
         "prompt_eval_count": 5, "prompt_eval_duration": 500_000_000, "eval_count": 7,
         "eval_duration": 1_500_000_000}


class Upstream:
    """A stand-in for Ollama, served by uvicorn in a thread: it records what it received
    and holds streams until the test releases them."""

    def __init__(self) -> None:
        self.gate = threading.Event()  # a held stream goes on once this is set
        self.stream_closed = threading.Event()  # an endless stream was closed from outside
        self.echoes: list[dict] = []
        app = Starlette(routes=[
            Route("/head", self.head, methods=["GET"]),  # Starlette answers HEAD from GET
            Route("/nocontent", lambda r: Response(status_code=204)),
            Route("/notmodified", lambda r: Response(status_code=304, headers={"etag": '"1"'})),
            Route("/echo", self.echo, methods=["POST", "PUT"]),
            Route("/api/generate", self.generate, methods=["POST"]),
            Route("/v1/chat/completions", self.sse, methods=["POST"]),
            Route("/endless", self.endless),
            Route("/held", self.held),
        ])
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_config=None, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def reset(self) -> None:
        self.gate.clear()
        self.stream_closed.clear()
        self.echoes.clear()

    async def _wait_gate(self) -> None:
        deadline = time.monotonic() + WAIT_S
        while not self.gate.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def head(self, request: Request) -> Response:
        return Response(b"x" * 42, media_type="text/plain")

    async def echo(self, request: Request) -> Response:
        body = await request.body()
        seen = {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                "transfer_encoding": request.headers.get("transfer-encoding"),
                "content_length": request.headers.get("content-length")}
        self.echoes.append(seen)
        return JSONResponse(seen)

    async def generate(self, request: Request) -> Response:
        async def lines() -> Iterator[bytes]:
            yield json.dumps({"model": "m", "response": "a", "done": False}).encode() + b"\n"
            await self._wait_gate()
            yield json.dumps(FINAL).encode() + b"\n"
        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def sse(self, request: Request) -> Response:
        async def events() -> Iterator[bytes]:
            yield b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
            await self._wait_gate()
            yield b"data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")

    async def endless(self, request: Request) -> Response:
        async def lines() -> Iterator[bytes]:
            try:
                while True:
                    yield b'{"response":"a","done":false}\n'
                    await asyncio.sleep(0.02)
            finally:
                self.stream_closed.set()
        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def held(self, request: Request) -> Response:
        await self._wait_gate()
        return Response(b"late")

    def __enter__(self) -> Upstream:
        self.thread.start()
        while not self.server.started:
            assert self.thread.is_alive(), "the test upstream did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@pytest.fixture()
def make_proxy(upstream: Upstream) -> Iterator[Callable[..., OllamaProxy]]:
    started: list[OllamaProxy] = []

    def make(url: str | None = None, **kwargs) -> OllamaProxy:
        proxy = OllamaProxy(url or upstream.url, port=0, **kwargs)
        proxy.start()
        started.append(proxy)
        return proxy

    upstream.reset()
    yield make
    upstream.gate.set()
    for proxy in started:
        proxy.close()


def metrics(proxy: OllamaProxy) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{proxy.url}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"not within {WAIT_S} s: {what}"
        time.sleep(0.05)


def in_flight(proxy: OllamaProxy, endpoint: str) -> float:
    return metrics(proxy).get(("servescope_ollama_requests_in_flight",
                               (("endpoint", endpoint),)), 0.0)


def _port(proxy: OllamaProxy) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


def test_binds_loopback_by_default(make_proxy):
    proxy = make_proxy()
    assert proxy.url.startswith("http://127.0.0.1:")
    from servescope.cli import build_parser
    assert build_parser().parse_args(["proxy"]).listen.startswith("127.0.0.1:")


def test_head_204_and_304_carry_no_body_and_no_chunk_terminator(make_proxy):
    """One keep-alive connection, parsed by h11: a stray "0\\r\\n\\r\\n" after a bodyless
    answer would be read as the start of the next answer and rejected."""
    proxy = make_proxy()
    client = h11.Connection(h11.CLIENT)
    answers = []
    with socket.create_connection(("127.0.0.1", _port(proxy)), timeout=WAIT_S) as sock:
        for method, path in [("HEAD", "/head"), ("GET", "/nocontent"), ("GET", "/notmodified"),
                             ("HEAD", "/head"), ("GET", "/head")]:
            sock.sendall(client.send(h11.Request(method=method, target=path,
                                                 headers=[("host", "proxy")])))
            sock.sendall(client.send(h11.EndOfMessage()))
            status, headers, body = None, {}, b""
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(sock.recv(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    headers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            answers.append((method, path, status, headers, body))
            client.start_next_cycle()
        assert client.trailing_data == (b"", False)
    (h1, nc, nm, h2, get) = answers
    assert h1[2] == h2[2] == 200 and h1[3]["content-length"] == "42" and h1[4] == b""
    assert "transfer-encoding" not in h1[3]
    assert nc[2] == 204 and nc[4] == b"" and "transfer-encoding" not in nc[3]
    assert nm[2] == 304 and nm[4] == b"" and nm[3]["etag"] == '"1"'
    assert get[2] == 200 and get[4] == b"x" * 42
    resp = httpx.head(f"{proxy.url}/head", timeout=WAIT_S)
    assert resp.status_code == 200 and resp.content == b""
    assert resp.headers["content-length"] == "42"


def test_uploads_are_forwarded_chunked_or_sized_as_they_came(make_proxy, upstream):
    proxy = make_proxy()
    payload = os.urandom(3 * MIB + 17)
    pieces = [payload[i:i + 100_000] for i in range(0, len(payload), 100_000)]
    chunked = httpx.post(f"{proxy.url}/echo", content=iter(pieces), timeout=WAIT_S)
    assert chunked.status_code == 200, chunked.text
    got = chunked.json()
    assert got["bytes"] == len(payload)
    assert got["sha256"] == hashlib.sha256(payload).hexdigest()
    assert got["transfer_encoding"] == "chunked" and got["content_length"] is None
    sized = httpx.put(f"{proxy.url}/echo", content=payload, timeout=WAIT_S).json()
    assert sized["sha256"] == got["sha256"]
    assert sized["content_length"] == str(len(payload)) and sized["transfer_encoding"] is None


def test_an_oversized_body_gets_a_clear_413_and_never_reaches_ollama(make_proxy, upstream):
    proxy = make_proxy(max_body=1 * MIB)
    exact = httpx.post(f"{proxy.url}/echo", content=b"a" * MIB, timeout=WAIT_S)
    assert exact.status_code == 200 and exact.json()["bytes"] == MIB

    sized = httpx.post(f"{proxy.url}/echo", content=b"a" * (MIB + 1), timeout=WAIT_S)
    assert sized.status_code == 413
    assert "limit of 1048576 bytes" in sized.json()["error"]
    assert "--max-body-size" in sized.json()["error"]

    pieces = (b"b" * 65536 for _ in range(40))  # 2.5 MiB, no Content-Length
    chunked = httpx.post(f"{proxy.url}/echo", content=pieces, timeout=WAIT_S)
    assert chunked.status_code == 413
    assert "limit of 1048576 bytes" in chunked.json()["error"]

    # A client that waits for "100 Continue" is refused before it sends anything.
    with socket.create_connection(("127.0.0.1", _port(proxy)), timeout=WAIT_S) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: p\r\nContent-Length: 10485760\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(65536)
            assert data, f"connection closed after {head!r}"
            head += data
    assert head.startswith(b"HTTP/1.1 413 ")

    assert [e["bytes"] for e in upstream.echoes] == [MIB]  # only the one within the limit
    m = metrics(proxy)
    assert m[("servescope_ollama_requests_total", (("endpoint", "other"), ("status", "413")))] == 3
    eventually(lambda: in_flight(proxy, "other") == 0, "in flight back to 0")
    assert httpx.post(f"{proxy.url}/echo", content=b"ok", timeout=WAIT_S).json()["bytes"] == 2


@pytest.mark.parametrize("path, first, last", [
    ("/api/generate", b'"done": false', b'"done": true'),
    ("/v1/chat/completions", b"data: {", b"data: [DONE]"),
])
def test_streams_pass_chunk_by_chunk(make_proxy, upstream, path, first, last):
    """The upstream holds its last chunk until the client has read the first through the
    proxy: a proxy that buffered the answer would never hand the first one over."""
    proxy = make_proxy()
    with httpx.stream("POST", f"{proxy.url}{path}", json={"model": "m"},
                      timeout=WAIT_S) as resp:
        chunks = resp.iter_raw()
        got = next(chunks)
        assert first in got and last not in got
        upstream.gate.set()
        got += b"".join(chunks)
    assert last in got
    if path == "/api/generate":
        labels = (("endpoint", "/api/generate"), ("model", "m"))
        m = metrics(proxy)
        assert m[("servescope_ollama_decode_seconds_sum", labels)] == 1.5
        assert m[("servescope_ollama_queue_and_overhead_seconds_sum", labels)] == 1.0
        assert m[("servescope_ollama_generation_tokens_total", labels)] == 7


def test_a_client_leaving_mid_stream_closes_the_upstream_stream(make_proxy, upstream):
    proxy = make_proxy()
    with httpx.stream("GET", f"{proxy.url}/endless", timeout=WAIT_S) as resp:
        lines = resp.iter_lines()
        assert [next(lines) for _ in range(3)]
        assert in_flight(proxy, "other") == 1
    # Leaving the block with the body unread closes the connection.
    eventually(upstream.stream_closed.is_set, "the upstream stream closed")
    eventually(lambda: in_flight(proxy, "other") == 0, "in flight back to 0")
    m = metrics(proxy)
    assert m[("servescope_ollama_client_disconnects_total", (("endpoint", "other"),))] == 1
    assert httpx.head(f"{proxy.url}/head", timeout=WAIT_S).status_code == 200


def test_a_client_leaving_before_the_answer_starts_is_noticed(make_proxy, upstream):
    """Ollama holds a queued request's headers until a slot frees; a client that gives up
    meanwhile is let go at once, not when Ollama finally answers."""
    proxy = make_proxy()
    with socket.create_connection(("127.0.0.1", _port(proxy)), timeout=WAIT_S) as sock:
        sock.sendall(b"GET /held HTTP/1.1\r\nHost: p\r\n\r\n")
        eventually(lambda: in_flight(proxy, "other") == 1, "the request in flight")
    eventually(lambda: in_flight(proxy, "other") == 0, "in flight back to 0")
    m = metrics(proxy)
    assert m[("servescope_ollama_client_disconnects_total", (("endpoint", "other"),))] == 1
    assert not upstream.gate.is_set()


def test_upstream_down_is_a_502_naming_it(make_proxy):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proxy = make_proxy(down)
    for resp in (httpx.get(f"{proxy.url}/api/tags", timeout=WAIT_S),
                 httpx.post(f"{proxy.url}/api/generate", json={"model": "m"}, timeout=WAIT_S)):
        assert resp.status_code == 502
        assert resp.headers["content-type"] == "application/json"
        error = resp.json()["error"]
        assert down in error and "ConnectError" in error
    m = metrics(proxy)
    assert m[("servescope_ollama_requests_total",
              (("endpoint", "/api/tags"), ("status", "502")))] == 1
    assert m[("servescope_ollama_upstream_errors_total",
              (("endpoint", "/api/generate"), ("error", "ConnectError")))] == 1
    assert m[("servescope_ollama_requests_in_flight", (("endpoint", "/api/generate"),))] == 0


def test_a_busy_port_is_refused_with_its_name(tmp_path, upstream):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "servescope.cli", "proxy", "--listen",
                               f"127.0.0.1:{port}", "--upstream", upstream.url],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=WAIT_S,
                              env={**os.environ, "SERVESCOPE_DB": str(tmp_path / "s.db")})
    assert proc.returncode == 1, proc.stderr
    assert f"--listen 127.0.0.1:{port}: cannot listen" in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_stop_it_cleanly_mid_stream(tmp_path, upstream, sig):
    """`servescope proxy` with a stream in flight: the signal stops it (the stream gets
    the grace period, then is cut and its upstream closed), exit status 0, no traceback."""
    upstream.reset()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "servescope.cli", "proxy", "--listen", f"127.0.0.1:{port}",
         "--upstream", upstream.url], cwd=REPO_ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env={**os.environ, "SERVESCOPE_DB": str(tmp_path / "s.db")})
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, proc.communicate()
            try:
                return httpx.get(f"{url}/metrics", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        eventually(up, "the proxy answering")
        with httpx.stream("GET", f"{url}/endless", timeout=WAIT_S) as resp:
            lines = resp.iter_lines()
            next(lines)
            proc.send_signal(sig)
            with pytest.raises(httpx.HTTPError):  # cut when the grace period ends
                for _ in lines:
                    pass
        _, err = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    eventually(upstream.stream_closed.is_set, "the upstream stream closed")
