"""HTTP/1.1 for the timed requests: one keep-alive connection per request in flight, each
read stamped the moment it returns.

Why not httpx on this path: under gevent, httpcore's pool polls every idle connection on
each checkout and return, and each poll yields to the hub, so the cost per request grows
with the concurrency (at 256 streams the load generator spent most of its core there; see
bench/loadgen.py). Here a request pops an idle connection from a list (or opens one) and
pushes it back when its answer was read to the end: O(1), no cap, no pool wait. HTTP is
parsed by llhttp through geventhttpclient's parser (Locust's own HTTP dependency); this
module writes the request line and headers and stamps every read.

Arrival stamps come from the kernel where it can give them (Linux, plain TCP): with
SO_TIMESTAMPNS every read carries the time its last packet arrived, so a read that waited
while the one core ran 255 other streams' work is still stamped when its bytes came in, not
when this greenlet got the CPU back (at 256 streams in lockstep that wait reached 7 ms at
p99; bench/loadgen.py). Elsewhere (TLS, other systems, a read the kernel left unstamped)
the stamp is taken when the read returns. The send stamp is taken just before the write.

The control plane (model discovery, /tokenize, server config) stays on httpx.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import gevent
from gevent import socket as gsocket
from gevent import ssl as gssl
from geventhttpclient.response import HTTPParseError, HTTPResponse

from servescope.core.clock import from_wall_ns, now_ns
from servescope.core.records import RequestRecord

READ_SIZE = 1 << 16
# Linux's SO_TIMESTAMPNS (asm-generic value, as on x86-64 and arm64; the socket module does
# not name it): a read's ancillary data holds a timespec of the arrival of its last packet.
SO_TIMESTAMPNS = 35
KERNEL_STAMPS = (sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64")
                 and os.environ.get("SERVESCOPE_KERNEL_STAMPS", "1") != "0")
_TIMESPEC = struct.Struct("@qq")
_ANC_SIZE = socket.CMSG_SPACE(_TIMESPEC.size) if KERNEL_STAMPS else 0
ERROR_BODY_LIMIT = 64 << 10  # bytes of an error answer kept for its message


class HeaderError(ValueError):
    """A header name or value that would break the request (a CR or LF in it)."""


class _ConnectFailed(Exception):
    """Opening a connection failed (its cause says why)."""


class _Answer(HTTPResponse):
    """llhttp's callbacks: body pieces are gathered per read, so one read is one chunk."""

    def __init__(self) -> None:
        super().__init__("POST")
        self.pieces: list[bytes] = []

    def _on_body(self, buf: bytes | bytearray) -> None:
        self.pieces.append(bytes(buf))

    def take(self) -> bytes:
        data = b"".join(self.pieces)
        self.pieces.clear()
        return data


@dataclass
class Wire:
    """Timed POSTs to one origin (`base_url`, any path prefix included).

    `connect_ms` keeps how long each new connection took to open: the closest thing this
    client has to a pool wait, and part of a request's send lag."""

    base_url: str
    connect_timeout: float = 10.0
    opened: int = 0
    kernel_stamped: int = 0  # reads stamped by the kernel ...
    user_stamped: int = 0  # ... and when they returned
    in_use: int = 0
    peak_in_use: int = 0
    connect_ms: list[float] = field(default_factory=list)
    _idle: list[socket.socket] = field(default_factory=list)

    def __post_init__(self) -> None:
        url = urlsplit(self.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"target URL {self.base_url!r}: expected http(s)://host[:port]")
        self.tls = url.scheme == "https"
        self.host = url.hostname
        self.port = url.port or (443 if self.tls else 80)
        default_port = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.prefix = url.path.rstrip("/")
        self._tls_context = gssl.create_default_context() if self.tls else None
        self.kernel_stamps = KERNEL_STAMPS and not self.tls
        self._keeper: socket.socket | None = None
        if self.kernel_stamps:
            # Linux switches receive stamping on system-wide a moment after the first socket
            # asks for it (deferred), and off after the last one closes: packets in between
            # go unstamped. A socket holding the option from now on (before model
            # discovery) keeps it on for the whole run.
            try:
                self._keeper = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._keeper.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            except OSError:
                self.kernel_stamps = False

    def stats(self) -> dict[str, float | int | None]:
        """For the client-health summary."""
        ms = sorted(self.connect_ms)
        return {"opened": self.opened, "peak_in_use": self.peak_in_use,
                "connect_ms_p99": ms[min(len(ms) - 1, int(0.99 * len(ms)))] if ms else None,
                "reads_kernel_stamped": self.kernel_stamped,
                "reads_user_stamped": self.user_stamped}

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
        if self._keeper is not None:
            self._keeper.close()
            self._keeper = None

    def post(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
        rec: RequestRecord,
        on_chunk: Callable[[bytes, int], None],
    ) -> bool:
        """POST `body` to `path` and stream the answer: send, headers and end are stamped on
        `rec`, and each read's body bytes go to `on_chunk` with their arrival stamp. The
        whole request (connect to last byte) must finish within `timeout` seconds. An HTTP
        error status or a transport failure becomes the record's error class, never an
        exception. Returns True when the answer was read to its end."""
        head = self._head(path, len(body), headers)
        self.in_use += 1
        self.peak_in_use = max(self.peak_in_use, self.in_use)
        sock: socket.socket | None = None
        deadline = gevent.Timeout(timeout)
        deadline.start()
        try:
            sock, reused = self._checkout(rec)
            answer = self._exchange(sock, head + body, rec, on_chunk)
            if answer is None and reused:
                # An idle keep-alive connection the server had closed: nothing was read, so
                # nothing was processed. Once more, on a fresh connection.
                sock.close()
                sock = None  # (not closed twice if the new connect fails)
                sock = self._connect(rec)
                answer = self._exchange(sock, head + body, rec, on_chunk)
            if answer is None:
                raise ConnectionResetError("connection closed before any answer")
            if answer.should_keep_alive() and not answer.parser_failed():
                self._idle.append(sock)
                sock = None
            return rec.status_code is not None and rec.status_code < 400
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise
            rec.error_class = "timeout"
            rec.error = f"no complete answer within {timeout:g}s"
        except _ConnectFailed as exc:
            rec.error_class = "connect"
            rec.error = f"cannot connect to {self.host}:{self.port}: {exc.__cause__}"[:300]
        except HTTPParseError as exc:
            rec.error_class = "malformed_http"
            rec.error = f"invalid HTTP answer: {exc}"[:300]
        except OSError as exc:
            rec.error_class = "dropped"
            rec.error = f"connection dropped mid-stream: {exc!r}"[:300]
        finally:
            deadline.close()
            self.in_use -= 1
            if sock is not None:
                sock.close()
        rec.end_ns = now_ns()
        return False

    def _head(self, path: str, length: int, headers: dict[str, str]) -> bytes:
        lines = [f"POST {self.prefix}{path} HTTP/1.1", f"Host: {self.host_header}",
                 f"Content-Length: {length}"]
        for name, value in headers.items():
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name or ":" in name:
                raise HeaderError(f"header {name!r}: a CR, LF (or a ':' in its name) would "
                                  "break the request")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _checkout(self, rec: RequestRecord) -> tuple[socket.socket, bool]:
        if self._idle:
            return self._idle.pop(), True
        return self._connect(rec), False

    def _connect(self, rec: RequestRecord) -> socket.socket:
        t0 = now_ns()
        try:
            sock = gsocket.create_connection((self.host, self.port),
                                             timeout=self.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.kernel_stamps:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                except OSError:
                    self.kernel_stamps = False
            if self._tls_context is not None:
                sock = self._tls_context.wrap_socket(sock, server_hostname=self.host)
        except OSError as exc:
            raise _ConnectFailed() from exc
        sock.settimeout(None)  # the request's own deadline bounds every read
        took = now_ns() - t0
        self.opened += 1
        self.connect_ms.append(took / 1e6)
        rec.connect_ns = (rec.connect_ns or 0) + took
        return sock

    def _read(self, sock: socket.socket) -> tuple[bytes, int]:
        """One read and the arrival of its bytes (see the module doc)."""
        if self.kernel_stamps:
            data, ancillary, _, _ = sock.recvmsg(READ_SIZE, _ANC_SIZE)
        else:
            data, ancillary = sock.recv(READ_SIZE), []
        now = now_ns()
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = _TIMESPEC.unpack_from(payload)
                # The kernel's clock is the wall clock; ours is the perf counter anchored to
                # it (loadgen/clock.py).
                arrived = from_wall_ns(sec * 1_000_000_000 + nsec, now)
                self.kernel_stamped += 1
                return data, min(arrived, now)
        if data:  # an end of stream carries no stamp and needs none
            self.user_stamped += 1
        return data, now

    def _exchange(self, sock: socket.socket, request: bytes, rec: RequestRecord,
                  on_chunk: Callable[[bytes, int], None]) -> _Answer | None:
        """Send and read one answer to its end; None when the connection closed before
        any byte of it came back."""
        answer = _Answer()
        rec.send_ns = now_ns()
        sock.sendall(request)
        error_body = b""
        last = rec.send_ns
        while True:
            data, arrived = self._read(sock)
            # Never before the previous read: a read the kernel left unstamped is stamped
            # when it returned, which can be later than the next read's kernel stamp.
            arrived = last = max(arrived, last)
            if not data:
                if rec.headers_ns is None:
                    if not answer.message_begun:
                        return None
                    raise ConnectionResetError("connection closed inside the headers")
                with contextlib.suppress(HTTPParseError):
                    answer.feed(b"")  # an answer delimited by the close ends here
                if not answer.message_complete:
                    raise ConnectionResetError("connection closed before the answer's end")
            else:
                answer.feed(data)
            if rec.headers_ns is None and answer.headers_complete:
                rec.headers_ns = arrived
                rec.status_code = answer.status_code
            chunk = answer.take()
            if rec.status_code is not None and rec.status_code >= 400:
                if len(error_body) < ERROR_BODY_LIMIT:
                    error_body += chunk
            elif chunk:
                on_chunk(chunk, arrived)
            if answer.message_complete:
                rec.end_ns = arrived  # the arrival of the last bytes
                break
        if rec.status_code is not None and rec.status_code >= 400:
            text = error_body[:300].decode("utf-8", "replace").strip()
            rec.error_class, rec.error = f"http_{rec.status_code}", \
                f"HTTP {rec.status_code}: {text}"
        return answer
