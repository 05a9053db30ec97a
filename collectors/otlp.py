"""An OTLP trace receiver: the server's own trace of every request, stored per request.

vLLM started with ``--otlp-traces-endpoint http://HOST:PORT/v1/traces`` (and
``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf``) sends one ``llm_request`` span per
finished request, with its time in queue, prefill, decode, inference, TTFT, E2E, token
counts and ``gen_ai.request.id`` (``chatcmpl-`` + the X-Request-Id the client sent).
analysis/join.py joins each stored span to the client's record of the same request.

OTLP/HTTP with the protobuf encoding only (gzip or not), decoded with the
``opentelemetry-proto`` package's ``ExportTraceServiceRequest``. OTLP/gRPC and OTLP/JSON
are answered 415 with a line that says so: vLLM's HTTP exporter is enough, and a gRPC
server would add grpcio to every install.
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
import zlib
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from servescope.core.records import ServerSpan
from servescope.core.store import Store

log = logging.getLogger("servescope.otlp")

TRACES_PATH = "/v1/traces"
PROTOBUF = "application/x-protobuf"
MAX_BODY_BYTES = 32 * 1024 * 1024  # an export batch of thousands of spans is a few MB
# Span attributes (vLLM's vllm/tracing.py SpanAttributes) -> ServerSpan fields.
SPAN_FIELDS = {
    "gen_ai.request.id": "request_id",
    "gen_ai.latency.time_in_queue": "queue_s",
    "gen_ai.latency.time_in_model_prefill": "prefill_s",
    "gen_ai.latency.time_in_model_decode": "decode_s",
    "gen_ai.latency.time_in_model_inference": "inference_s",
    "gen_ai.latency.time_to_first_token": "ttft_s",
    "gen_ai.latency.e2e": "e2e_s",
    "gen_ai.usage.prompt_tokens": "prompt_tokens",
    "gen_ai.usage.completion_tokens": "output_tokens",
}
_INT_FIELDS = {"prompt_tokens", "output_tokens"}
_FLOAT_FIELDS = {v for v in SPAN_FIELDS.values() if v.endswith("_s")}


class OTLPError(ValueError):
    """A body that is not an OTLP export request; the message says what was wrong."""


def any_value(value: AnyValue) -> Any:
    """An OTLP attribute value as plain Python (arrays and key-value lists recursively)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def attributes(kvs: Any) -> dict[str, Any]:
    """Repeated KeyValue -> dict."""
    return {kv.key: any_value(kv.value) for kv in kvs}


def decode_export(body: bytes, content_encoding: str | None = None) -> ExportTraceServiceRequest:
    """Parse one OTLP/HTTP protobuf body (gzip- or deflate-encoded, or not)."""
    encoding = (content_encoding or "identity").strip().lower()
    try:
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding not in ("identity", ""):
            raise OTLPError(f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    except (OSError, EOFError, zlib.error) as exc:
        raise OTLPError(f"body is not valid {encoding}: {exc}") from exc
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        raise OTLPError(f"body is not an ExportTraceServiceRequest: {exc}") from exc
    return request


def spans_of(request: ExportTraceServiceRequest, received_at: float | None = None,
             keep: Callable[[str, dict[str, Any]], bool] | None = None) -> list[ServerSpan]:
    """The request's spans that `keep(name, attributes)` accepts (default: those that carry a
    request id, i.e. one span per served request; vLLM's start-up spans carry none)."""
    received_at = time.time() if received_at is None else received_at
    keep = keep or (lambda name, attrs: "gen_ai.request.id" in attrs)
    out = []
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        service = resource.get("service.name")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attrs = attributes(span.attributes)
                if keep(span.name, attrs):
                    out.append(server_span(span, attrs, service, received_at))
    return out


def server_span(span: Any, attrs: dict[str, Any], service: str | None,
                received_at: float) -> ServerSpan:
    """One protobuf Span (attributes already decoded) as a ServerSpan."""
    known: dict[str, Any] = {}
    for key, field_name in SPAN_FIELDS.items():
        value = attrs.get(key)
        if value is None:
            continue
        try:
            if field_name in _INT_FIELDS:
                value = int(value)
            elif field_name in _FLOAT_FIELDS:
                value = float(value)
            else:
                value = str(value)
        except (TypeError, ValueError):
            continue  # an attribute of an unexpected type stays in `attributes` only
        known[field_name] = value
    return ServerSpan(
        trace_id=span.trace_id.hex(), span_id=span.span_id.hex(), name=span.name,
        start_ns=int(span.start_time_unix_nano), end_ns=int(span.end_time_unix_nano),
        service=service, attributes=attrs, received_at=received_at, **known,
    )


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``PORT`` (on 127.0.0.1) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--otlp {text!r}: expected HOST:PORT, e.g. 127.0.0.1:4318") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"--otlp {text!r}: port {number} is out of range")
    return host.strip("[]") or "127.0.0.1", number


class OTLPReceiver:
    """OTLP/HTTP trace receiver on host:port; stores every request span it is sent.

    `port=0` takes a free port (see `.port`). A store write that fails answers 503, so the
    exporter retries the batch; a stored span sent twice is kept once."""

    def __init__(self, store: Store, host: str = "127.0.0.1", port: int = 4318) -> None:
        self.store = store
        self.spans_stored = 0
        self.spans_ignored = 0
        self.exports = 0
        self.rejected = 0
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"receiver": self})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """What to pass to vLLM's --otlp-traces-endpoint."""
        return f"http://{self.host}:{self.port}{TRACES_PATH}"

    def start(self) -> OTLPReceiver:
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def accept(self, body: bytes, content_encoding: str | None) -> int:
        """Decode and store one export; returns the spans new to the store."""
        request = decode_export(body, content_encoding)
        spans = spans_of(request)
        total = sum(len(s.spans) for rs in request.resource_spans for s in rs.scope_spans)
        new = self.store.add_server_spans(spans)
        with self._lock:
            self.exports += 1
            self.spans_stored += new
            self.spans_ignored += total - len(spans)
        return new


class _Handler(BaseHTTPRequestHandler):
    receiver: OTLPReceiver
    protocol_version = "HTTP/1.1"  # keep-alive: the exporter reuses its connection

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != TRACES_PATH:
            self._reply(HTTPStatus.NOT_FOUND, f"only {TRACES_PATH} is served here")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
            self.close_connection = True
            return
        body = self.rfile.read(length)
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype != PROTOBUF:
            self._reply(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                        f"Content-Type {ctype or 'none'!r}: only OTLP/HTTP protobuf ({PROTOBUF})"
                        " is received; set OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf")
            return
        try:
            self.receiver.accept(body, self.headers.get("Content-Encoding"))
        except OTLPError as exc:
            with self.receiver._lock:
                self.receiver.rejected += 1
            log.warning("OTLP export from %s refused: %s", self.client_address[0], exc)
            self._reply(HTTPStatus.BAD_REQUEST, str(exc))
            return
        except Exception as exc:  # the store: let the exporter retry
            log.warning("OTLP export not stored: %s: %s", type(exc).__name__, exc)
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, "not stored; retry")
            return
        self._reply(HTTPStatus.OK, ExportTraceServiceResponse().SerializeToString(), PROTOBUF)

    def _reply(self, status: HTTPStatus, body: str | bytes,
               ctype: str = "text/plain; charset=utf-8") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("otlp %s - %s", self.address_string(), format % args)

