"""An OpenAI-compatible streaming chat server that sends its events at known times.

It runs as its own process (``python testsupport/streaming_server.py``), so the client under
test never shares a GIL or an event loop with it. HTTP/1.1 is written by hand on asyncio
(keep-alive, chunked responses, TCP_NODELAY), and every event's send time is recorded:
``time.time_ns()`` just after the socket write, per ``x-request-id``.

On Linux over plain TCP both ends of the truth come from the kernel (``SO_TIMESTAMPING``,
software stamps; the wall clock, like ``time.time_ns()``): a request's ``recv_ns`` is when
its first bytes arrived, and an event's ``sent_ns`` is when the kernel handed its last byte
to the (loopback) device. So neither moves when this server's own process is slow: not when
its loop reads a request late, not when it is preempted between a write and its stamp, not
when the kernel defers a transmit. ``parsed_ns`` is when the server had read and parsed the
request, which is what its event schedule counts from. Over TLS (or where the kernel gives
no stamp) the stamps are taken in user space: receive at the parse, each event just after
its write; ``--no-tx-stamps`` does the latter for events on plain TCP too (for benchmarks:
transmit stamps about double this server's cost per event).

Per chat request, after a first-token delay D0 the server sends its optional lead events
(``role``: a role-only chunk; ``empty``: vLLM's role announcement, the role with an empty
``content``, as in the captured vLLM stream; neither is a token), then N content chunks
(N = ``max_tokens``), one per gap G, then a usage-only chunk (choices [] and
``completion_tokens`` N) one gap later, then ``data: [DONE]``. Event j of the stream is due
at receive + D0 + j x G. With D0 = G = 0 every event yields to the loop once, so many
streams interleave the way an engine's decode steps do.

Routes: POST /v1/chat/completions, GET /v1/models, GET /health, GET /schedule (every request's
``recv_ns`` and per-event ``sent_ns``; ``?compact=1`` gives only receive, first content
and last event), POST /schedule/reset. Anything else is a 404, so /tokenize and /metrics
are absent as on a bare OpenAI-compatible server.

Every request is logged in arrival order, whatever its path (404s included): GET /access
gives ``{"requests": [[seq, method, path, recv_ns], ...]}``, POST /access/reset clears it,
so a test can count what reached the server, and when. ``--tokenize`` adds a vLLM-style
POST /tokenize (``messages`` or ``prompt`` -> ``count``) with a fake tokenizer: a word is a
token and each chat message costs 4 more (its template); the usage's prompt_tokens then
counts the same way (else it is the prompt's characters / 4).
Per-request overrides: headers ``x-first-token-ms``, ``x-gap-ms``, ``x-lead`` (e.g.
``role,empty``).

Reasoning (``--reasoning R``, or per request ``x-reasoning: R``): the first R of the N tokens
are reasoning events (kind ``reasoning`` in the schedule), each a chunk whose delta carries
only the field named by ``--reasoning-field`` / ``x-reasoning-field`` (default
``reasoning``, as vLLM 0.32; e.g. ``reasoning_content``); the other N - R are content as
usual, and usage still counts N. ``--reasoning-details`` / ``x-reasoning-details: 1`` adds
``completion_tokens_details.reasoning_tokens`` (R) to the usage, as OpenAI's API does.

Faults, per request (header ``x-fault``): ``status:N`` answers HTTP N with a JSON error;
``drop:K`` closes the connection after K content events; ``close-delimited`` streams three
tokens with no length or chunking, the body ending at the connection's close;
``malformed:K`` makes event K's data not JSON; ``stall`` sends the headers and then
nothing; ``eof`` closes the connection without answering; ``garbage`` answers bytes that
are not HTTP; ``close-after`` streams the answer normally (keep-alive) and then closes the
connection, as a server whose keep-alive timeout expired. ``--fault-cycle`` gives chat
requests faults in turn, for clients that send no x-fault header (e.g.
``status:503,,drop:2,,,``: the first of every six answers 503, the third drops after two
tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

MODEL = "stream-test"
LEADS = ("role", "empty")

# Linux: the socket option and the control message carrying its stamps; the flags ask for
# software stamps on receive and on transmit, each transmit stamp keyed by the byte offset
# of the last byte of its send, with no copy of the data.
SO_TIMESTAMPING = 37
RX_STAMPS = (1 << 3) | (1 << 4)
TX_STAMPS = (1 << 1) | (1 << 7) | (1 << 11)
IP_RECVERR = 11
_STAMPS = struct.Struct("@qq")  # the first of scm_timestamping's three timespecs (software)
_EXTENDED_ERR = struct.Struct("@IBBBBII")  # sock_extended_err: ..., ee_info, ee_data (key)
_ANC_SIZE = 512
KERNEL_STAMPS = sys.platform == "linux"


@dataclass
class Timing:
    first_token_ms: float = 50.0
    gap_ms: float = 20.0
    lead: tuple[str, ...] = ()
    default_tokens: int = 16
    fault_cycle: tuple[str, ...] = ()
    tx_stamps: bool = True
    reasoning: int = 0
    reasoning_field: str = "reasoning"
    reasoning_details: bool = False
    tokenize: bool = False


def word_tokens(body: dict[str, Any]) -> int:
    """``--tokenize``'s tokenizer: a word is a token, each chat message 4 more."""
    if isinstance(body.get("messages"), list):
        return sum(len(str(m.get("content") or "").split()) + 4 for m in body["messages"])
    return len(str(body.get("prompt") or "").split())


def _frame(data: bytes) -> bytes:
    """One HTTP/1.1 chunk holding one SSE event."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(obj: dict[str, Any]) -> bytes:
    return _frame(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")


def _chunk(rid: str, delta: dict[str, str], finish: str | None = None) -> bytes:
    return _event({
        "id": f"chatcmpl-{rid}", "object": "chat.completion.chunk", "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })


def _reasoning_events(rid: str, headers: dict[str, str], timing: Timing, count: int, n: int,
                      usage: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The first `count` of `n` tokens as reasoning chunks (see the module doc); the usage
    gets the split when asked for."""
    name = headers.get("x-reasoning-field") or timing.reasoning_field
    if headers.get("x-reasoning-details", "1" if timing.reasoning_details else "") == "1":
        usage["completion_tokens_details"] = {"reasoning_tokens": count}
    chunk = _chunk(rid, {name: "think"})
    events = [("reasoning", chunk)] * (count - 1)
    last = _chunk(rid, {name: "think"}, "length") if count == n else chunk
    return [*events, ("reasoning", last)]


def parse_lead(text: str) -> tuple[str, ...]:
    """``"role,empty"`` -> ("role", "empty"); refuses unknown kinds."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    for kind in kinds:
        if kind not in LEADS:
            raise ValueError(f"unknown lead event {kind!r} (use {', '.join(LEADS)})")
    return kinds


def _stamp(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING:
            sec, nsec = _STAMPS.unpack_from(payload)
            if sec or nsec:
                return sec * 1_000_000_000 + nsec
    return None


class StampedConnection:
    """A plain-TCP connection with the kernel's receive and transmit stamps. It offers the
    few stream calls the handler uses, as both its reader (``readuntil``, ``readexactly``)
    and its writer (``write``, ``drain``, ``close``, ``transport.abort`` /
    ``transport.is_closing``); ``written`` counts the bytes given to ``write``, and
    ``sent_at`` turns byte offsets into transmit stamps."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 tx_stamps: bool = True) -> None:
        self.loop, self.sock = loop, sock
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING,
                        RX_STAMPS | (TX_STAMPS if tx_stamps else 0))
        self.tx_stamps = tx_stamps
        self.transport = self
        self.written = 0
        self._sent: dict[int, int] = {}  # last byte offset of a send -> its transmit stamp
        self._in = bytearray()
        self._in_stamp = 0  # arrival of the oldest unread byte
        self.arrival_ns = 0  # arrival of the request whose head was read last
        self._out = bytearray()
        self._closing = False

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None

    async def _ready(self, add: Any, remove: Any) -> None:
        fd = self.sock.fileno()
        ready = self.loop.create_future()
        add(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            remove(fd)
        # transmit stamps waiting in the error queue make the socket ready (EPOLLERR) until
        # they are taken
        self._take_sent()

    def _take_sent(self) -> None:
        while not self._closing:
            try:
                _, ancillary, _, _ = self.sock.recvmsg(0, _ANC_SIZE, socket.MSG_ERRQUEUE)
            except OSError:  # BlockingIOError: none left
                return
            key = next((_EXTENDED_ERR.unpack_from(payload)[-1] for level, kind, payload
                        in ancillary if level == socket.IPPROTO_IP and kind == IP_RECVERR),
                       None)
            stamp = _stamp(ancillary)
            if key is not None and stamp is not None:
                self._sent[key] = stamp

    async def sent_at(self, offsets: list[int], wait_s: float = 0.2) -> list[int | None]:
        """The transmit stamp of the send holding each byte offset (a send is stamped at its
        last byte); None where none came within ``wait_s``. Stamps up to the last offset's
        are then dropped: a connection's later answers lie past it."""
        deadline = self.loop.time() + wait_s
        while True:
            self._take_sent()
            keys = sorted(self._sent)
            found = [bisect.bisect_left(keys, offset) for offset in offsets]
            out = [self._sent[keys[at]] if at < len(keys) else None for at in found]
            if None not in out or self._closing or self.loop.time() > deadline:
                break
            await asyncio.sleep(0.001)
        for key in keys[:max(found, default=-1) + 1]:
            del self._sent[key]
        return out

    async def _fill(self) -> None:
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(1 << 16, _ANC_SIZE)
                break
            except BlockingIOError:
                await self._ready(self.loop.add_reader, self.loop.remove_reader)
        if not data:
            raise asyncio.IncompleteReadError(bytes(self._in), None)
        now = time.time_ns()
        stamp = min(_stamp(ancillary) or now, now)
        if not self._in:
            self._in_stamp = stamp
        self._in += data

    async def readuntil(self, separator: bytes) -> bytes:
        while (at := self._in.find(separator)) < 0:
            await self._fill()
        self.arrival_ns = self._in_stamp
        head = bytes(self._in[:at + len(separator)])
        del self._in[:at + len(separator)]
        return head

    async def readexactly(self, n: int) -> bytes:
        while len(self._in) < n:
            await self._fill()
        data = bytes(self._in[:n])
        del self._in[:n]
        return data

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        self.written += len(data)
        sent = 0
        if not self._out:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                pass
            except OSError:
                self.abort()
                return
        self._out += data[sent:]

    async def drain(self) -> None:
        while self._out:
            if self._closing:
                raise ConnectionResetError("connection closed")
            await self._ready(self.loop.add_writer, self.loop.remove_writer)
            try:
                del self._out[:self.sock.send(self._out)]
            except BlockingIOError:
                pass
            except OSError as exc:
                self.abort()
                raise ConnectionResetError(str(exc)) from exc

    def is_closing(self) -> bool:
        return self._closing

    def abort(self) -> None:
        self._closing = True
        self._out.clear()
        self.sock.close()

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self.sock.close()


class StreamServer:
    """The asyncio side: one task per connection, one stream at a time per connection."""

    def __init__(self, timing: Timing) -> None:
        self.timing = timing
        self.schedules: dict[str, dict[str, Any]] = {}
        self._anon = itertools.count()
        self._chats = itertools.count()
        self.access: list[list[Any]] = []  # [seq, method, path, recv_ns], in arrival order

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                size = int(headers.get("content-length") or 0)
                body = await reader.readexactly(size) if size else b""
                parsed_ns = time.time_ns()
                recv_ns = getattr(reader, "arrival_ns", 0) or parsed_ns
                path, _, query = target.partition("?")
                self.access.append([len(self.access), method, path, recv_ns])
                if method == "POST" and path == "/v1/chat/completions" \
                        and self.timing.fault_cycle and "x-fault" not in headers:
                    cycle = self.timing.fault_cycle
                    headers["x-fault"] = cycle[next(self._chats) % len(cycle)]
                fault = headers.get("x-fault", "")
                if fault == "eof":
                    return
                if fault == "garbage":
                    writer.write(b"this is not HTTP\r\n\r\n")
                    await writer.drain()
                    return
                if fault == "close-delimited":  # HTTP/1.0 style: the body ends at the close
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                                 b"connection: close\r\n\r\n")
                    for j in range(3):
                        writer.write(b"data: " + json.dumps(
                            {"choices": [{"index": 0, "delta": {"content": f"t{j}"}}]}).encode()
                            + b"\n\n")
                        await writer.drain()
                        await asyncio.sleep(0.002)
                    writer.write(b'data: {"choices":[],"usage":{"prompt_tokens":2,'
                                 b'"completion_tokens":3}}\n\ndata: [DONE]\n\n')
                    await writer.drain()
                    return
                if fault.startswith("status:"):
                    status = int(fault.removeprefix("status:"))
                    self.reply(writer, status, {"error": {"message": f"injected {status}"}})
                elif method == "POST" and path == "/v1/chat/completions":
                    await self.stream(writer, headers, body, recv_ns, parsed_ns)
                    if fault == "close-after" or writer.transport.is_closing():
                        await writer.drain()
                        return
                elif method == "GET" and path == "/v1/models":
                    self.reply(writer, 200, {"object": "list", "data": [
                        {"id": MODEL, "object": "model", "max_model_len": 4096}]})
                elif method == "GET" and path == "/access":
                    self.reply(writer, 200, {"requests": self.access})
                elif method == "POST" and path == "/access/reset":
                    self.access = []
                    self.reply(writer, 200, {"ok": True})
                elif method == "POST" and path == "/tokenize" and self.timing.tokenize:
                    try:
                        count = word_tokens(json.loads(body))
                    except (ValueError, AttributeError) as exc:
                        self.reply(writer, 400, {"error": {"message": f"bad request: {exc}"}})
                    else:
                        self.reply(writer, 200, {"count": count, "max_model_len": 4096})
                elif method == "GET" and path == "/health":
                    self.reply(writer, 200, {})
                elif method == "GET" and path == "/schedule":
                    self.reply(writer, 200, self.compact() if "compact=1" in query
                               else self.schedules)
                elif method == "POST" and path == "/schedule/reset":
                    self.schedules.clear()
                    self.reply(writer, 200, {"ok": True})
                else:
                    self.reply(writer, 404, {"error": {"message": f"no route {path}"}})
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    @staticmethod
    def reply(writer: asyncio.StreamWriter, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
                  503: "Service Unavailable"}.get(status, "Error")
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n".encode() + body
        )

    def compact(self) -> dict[str, list[int | None]]:
        """Per request: receive, first content event, last event (all epoch ns)."""
        out: dict[str, list[int | None]] = {}
        for rid, s in self.schedules.items():
            first = next((t for k, t in zip(s["kinds"], s["sent_ns"], strict=False)
                          if k == "content"), None)
            out[rid] = [s["recv_ns"], first, s["sent_ns"][-1] if s["sent_ns"] else None]
        return out

    async def stream(self, writer: asyncio.StreamWriter, headers: dict[str, str], body: bytes,
                     recv_ns: int, parsed_ns: int) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            req = json.loads(body)
            n = int(req.get("max_tokens") or req.get("max_completion_tokens")
                     or self.timing.default_tokens)
            d0 = float(headers.get("x-first-token-ms", self.timing.first_token_ms)) / 1e3
            gap = float(headers.get("x-gap-ms", self.timing.gap_ms)) / 1e3
            lead = parse_lead(headers["x-lead"]) if "x-lead" in headers else self.timing.lead
            reasoning = min(n, int(headers.get("x-reasoning", self.timing.reasoning)))
        except (ValueError, TypeError, AttributeError) as exc:
            self.reply(writer, 400, {"error": {"message": f"bad request: {exc}"}})
            return
        rid = headers.get("x-request-id") or f"anon-{next(self._anon)}"
        prompt_chars = sum(len(str(m.get("content") or "")) for m in req.get("messages") or [])
        prompt = word_tokens(req) if self.timing.tokenize else max(1, prompt_chars // 4)
        usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
        content = _chunk(rid, {"content": "tok"})
        events: list[tuple[str, bytes]] = [
            (k, _chunk(rid, {"role": "assistant"} if k == "role"
                        else {"role": "assistant", "content": ""}))
            for k in lead
        ]
        if reasoning:
            events += _reasoning_events(rid, headers, self.timing, reasoning, n, usage)
        if reasoning < n:
            events += [("content", content)] * (n - reasoning - 1)
            events.append(("content", _chunk(rid, {"content": "tok"}, "length")))
        events.append(("usage", _event({"id": f"chatcmpl-{rid}", "object":
                                        "chat.completion.chunk", "model": MODEL,
                                        "choices": [], "usage": usage})))
        events.append(("done", _frame(b"data: [DONE]\n\n") + b"0\r\n\r\n"))
        fault = headers.get("x-fault", "")
        if fault.startswith("malformed:"):
            k = int(fault.removeprefix("malformed:"))
            events[k] = ("content", _frame(b"data: {not json\n\n"))
        drop_after = int(fault.removeprefix("drop:")) if fault.startswith("drop:") else None
        kinds = [k for k, _ in events]
        sent: list[int] = []
        ends: list[int] = []  # the offset of each event's last byte on the connection
        self.schedules[rid] = {"recv_ns": recv_ns, "parsed_ns": parsed_ns, "kinds": kinds,
                               "sent_ns": sent, "n": n, "first_token_ms": d0 * 1e3,
                               "gap_ms": gap * 1e3, "stamps": "user"}
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
        transport = writer.transport
        if fault == "stall":
            await writer.drain()
            await asyncio.sleep(3600)
        for j, (kind, data) in enumerate(events):
            if drop_after is not None and kinds[:j].count("content") >= drop_after:
                await writer.drain()
                transport.abort()
                return
            slot = j if kind != "done" else j - 1  # [DONE] goes right after the usage chunk
            delay = start + d0 + slot * gap - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif kind != "done":
                await asyncio.sleep(0)  # zero delay: let the other streams have a turn
            if transport.is_closing():
                return
            writer.write(data)
            sent.append(time.time_ns())
            ends.append(getattr(writer, "written", 0) - 1)
            await writer.drain()
        if isinstance(writer, StampedConnection) and writer.tx_stamps:
            stamps = await writer.sent_at(ends)
            if None not in stamps:
                sent[:] = stamps
                self.schedules[rid]["stamps"] = "kernel"


TLS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tls")


async def serve(port: int, timing: Timing, tls: bool = False) -> None:
    app = StreamServer(timing)
    context = None
    if tls:  # the test certificate in tests/tls/ (127.0.0.1, localhost)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(os.path.join(TLS_DIR, "cert.pem"),
                                os.path.join(TLS_DIR, "key.pem"))
    if context is not None or not KERNEL_STAMPS:
        server = await asyncio.start_server(app.handle, "127.0.0.1", port, backlog=4096,
                                            limit=1 << 20, ssl=context)
        print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()
        return
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", port), backlog=4096)
    listener.setblocking(False)
    print(f"listening {listener.getsockname()[1]}", flush=True)
    tasks: set[asyncio.Task[None]] = set()
    while True:
        conn, _ = await loop.sock_accept(listener)
        while True:  # every connection already waiting, as asyncio's own server does
            stamped = StampedConnection(loop, conn, timing.tx_stamps)
            task = loop.create_task(app.handle(stamped, stamped))  # type: ignore[arg-type]
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                break


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    p.add_argument("--first-token-ms", type=float, default=50.0)
    p.add_argument("--gap-ms", type=float, default=20.0)
    p.add_argument("--lead", default="", help="events before the first token: role,empty")
    p.add_argument("--cpu", type=int, help="pin the server to this CPU")
    p.add_argument("--tls", action="store_true", help="HTTPS with tests/tls/cert.pem")
    p.add_argument("--no-tx-stamps", action="store_true",
                   help="events stamped after their write returns, not by the kernel's "
                   "transmit stamp (which about doubles this server's cost per event)")
    p.add_argument("--fault-cycle", default="", help="faults for chat requests in turn, "
                   "comma-separated (empty: none), e.g. status:503,,drop:2")
    p.add_argument("--reasoning", type=int, default=0,
                   help="the first R tokens of each answer are reasoning events")
    p.add_argument("--reasoning-field", default="reasoning",
                   help="their delta field: reasoning (vLLM 0.32) or reasoning_content")
    p.add_argument("--reasoning-details", action="store_true",
                   help="usage carries completion_tokens_details.reasoning_tokens")
    p.add_argument("--tokenize", action="store_true",
                   help="serve /tokenize (a word is a token, 4 more per chat message)")
    p.add_argument("--exit-with-stdin", action="store_true",
                   help="exit when stdin closes (the parent that started it has gone)")
    a = p.parse_args(argv)
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    if a.exit_with_stdin:
        threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    timing = Timing(a.first_token_ms, a.gap_ms, parse_lead(a.lead),
                    fault_cycle=tuple(a.fault_cycle.split(",")) if a.fault_cycle else (),
                    tx_stamps=not a.no_tx_stamps, reasoning=a.reasoning,
                    reasoning_field=a.reasoning_field, reasoning_details=a.reasoning_details,
                    tokenize=a.tokenize)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(a.port, timing, a.tls))


class StreamingServer:
    """The server in a child process, for tests and benchmarks: ``url``, ``schedule()``."""

    def __init__(self, first_token_ms: float = 50.0, gap_ms: float = 20.0,
                 lead: tuple[str, ...] = (), cpu: int | None = None,
                 tls: bool = False, fault_cycle: tuple[str, ...] = (),
                 tx_stamps: bool = True, reasoning: int = 0,
                 reasoning_field: str = "reasoning", reasoning_details: bool = False,
                 tokenize: bool = False) -> None:
        cmd = [sys.executable, os.path.abspath(__file__), "--first-token-ms",
               str(first_token_ms), "--gap-ms", str(gap_ms), "--lead", ",".join(lead)]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        if tls:
            cmd.append("--tls")
        if fault_cycle:
            cmd += ["--fault-cycle", ",".join(fault_cycle)]
        if not tx_stamps:
            cmd.append("--no-tx-stamps")
        if reasoning:
            cmd += ["--reasoning", str(reasoning), "--reasoning-field", reasoning_field]
            cmd += ["--reasoning-details"] if reasoning_details else []
        if tokenize:
            cmd.append("--tokenize")
        # stdin stays open while we live: the server exits when it closes, even if this
        # process dies without close().
        self.proc = subprocess.Popen([*cmd, "--exit-with-stdin"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("listening "):
            self.proc.kill()
            raise RuntimeError(f"streaming server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def _call(self, method: str, path: str) -> Any:
        req = urllib.request.Request(self.url + path, method=method,
                                     data=b"" if method == "POST" else None)
        context = (ssl.create_default_context(cafile=os.path.join(TLS_DIR, "cert.pem"))
                   if self.url.startswith("https") else None)
        with urllib.request.urlopen(req, timeout=60, context=context) as resp:
            return json.loads(resp.read())

    def schedule(self) -> dict[str, dict[str, Any]]:
        """request id -> {recv_ns, parsed_ns, kinds, sent_ns, n, first_token_ms, gap_ms,
        stamps ("kernel" where the kernel stamped its arrival and every event, else
        "user")}."""
        return self._call("GET", "/schedule")

    def compact_schedule(self) -> dict[str, list[int | None]]:
        """request id -> [recv_ns, first content sent_ns, last event sent_ns]."""
        return self._call("GET", "/schedule?compact=1")

    def reset(self) -> None:
        self._call("POST", "/schedule/reset")

    def access(self) -> list[tuple[int, str, str, int]]:
        """Every request that reached the server, in arrival order: (seq, method, path,
        recv_ns), this call excluded."""
        got = self._call("GET", "/access")["requests"]
        return [(seq, method, path, recv) for seq, method, path, recv in got[:-1]]

    def reset_access(self) -> None:
        self._call("POST", "/access/reset")

    def cpu_seconds(self) -> float:
        """CPU time the server process has used (user + system)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> StreamingServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    main()
