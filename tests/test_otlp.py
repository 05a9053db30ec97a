"""The OTLP trace receiver: export requests built with opentelemetry-proto, as vLLM's
exporter sends them, over real HTTP on loopback."""

from __future__ import annotations

import gzip
import socket
import subprocess
import sys
import time

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from helpers import REPO_ROOT
from servescope.collectors.otlp import OTLPReceiver, parse_listen
from servescope.core.store import Store

PROTOBUF = {"Content-Type": "application/x-protobuf"}
T0 = 1_800_000_000_000_000_000  # ns


def _value(v) -> AnyValue:
    if isinstance(v, str):
        return AnyValue(string_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    return AnyValue(double_value=v)


def _span(n: int, name: str = "llm_request", **attrs) -> Span:
    return Span(
        trace_id=n.to_bytes(16, "big"), span_id=n.to_bytes(8, "big"), name=name,
        kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=T0 + n * 10**9,
        end_time_unix_nano=T0 + n * 10**9 + 750_000_000,
        attributes=[KeyValue(key=k, value=_value(v)) for k, v in attrs.items()],
    )


def vllm_span(n: int) -> Span:
    """A span as vLLM 0.32 builds it (vllm/v1/engine/output_processor.py do_tracing)."""
    return _span(n, **{
        "gen_ai.latency.time_to_first_token": 0.125,
        "gen_ai.latency.e2e": 0.75,
        "gen_ai.latency.time_in_queue": 0.05,
        "gen_ai.usage.prompt_tokens": 96,
        "gen_ai.usage.completion_tokens": 64,
        "gen_ai.latency.time_in_model_prefill": 0.07,
        "gen_ai.latency.time_in_model_decode": 0.6,
        "gen_ai.latency.time_in_model_inference": 0.67,
        "gen_ai.request.id": f"chatcmpl-local-{n:07d}",
        "gen_ai.request.max_tokens": 64,
    })


def export(*spans: Span, service: str = "vllm") -> bytes:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=_value(service)))
    rs.scope_spans.add().spans.extend(spans)
    return req.SerializeToString()


@pytest.fixture()
def receiver(store):
    with OTLPReceiver(store, "127.0.0.1", 0) as r:
        yield r


def test_a_vllm_span_is_stored_with_its_phases(receiver, store):
    start_up = _span(99, name="model_load")  # vLLM's start-up spans carry no request id
    resp = httpx.post(receiver.endpoint, content=export(vllm_span(1), start_up), headers=PROTOBUF)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/x-protobuf"
    ExportTraceServiceResponse().ParseFromString(resp.content)  # a valid OTLP answer
    (span,) = store.server_spans(["chatcmpl-local-0000001"])
    assert span.name == "llm_request" and span.service == "vllm"
    assert (span.queue_s, span.prefill_s, span.decode_s) == (0.05, 0.07, 0.6)
    assert (span.ttft_s, span.e2e_s, span.inference_s) == (0.125, 0.75, 0.67)
    assert (span.prompt_tokens, span.output_tokens) == (96, 64)
    assert span.start_ns == T0 + 10**9 and span.end_ns == span.start_ns + 750_000_000
    assert span.trace_id == (1).to_bytes(16, "big").hex()
    assert span.attributes["gen_ai.request.max_tokens"] == 64  # every attribute kept raw
    assert receiver.spans_stored == 1 and receiver.spans_ignored == 1


def test_gzip_bodies_and_retried_exports(receiver, store):
    body = gzip.compress(export(vllm_span(1), vllm_span(2)))
    for _ in range(2):  # an exporter retrying a batch it thinks was lost
        resp = httpx.post(receiver.endpoint, content=body,
                          headers={**PROTOBUF, "Content-Encoding": "gzip"})
        assert resp.status_code == 200
    assert len(store.server_spans(["chatcmpl-local-0000001", "chatcmpl-local-0000002"])) == 2
    assert receiver.spans_stored == 2 and receiver.exports == 2


def test_what_is_not_an_otlp_protobuf_export_is_refused_with_a_reason(receiver, store):
    bad = httpx.post(receiver.endpoint, content=b"\xff\xff not protobuf", headers=PROTOBUF)
    assert bad.status_code == 400 and "ExportTraceServiceRequest" in bad.text
    as_json = httpx.post(receiver.endpoint, json={"resourceSpans": []})
    assert as_json.status_code == 415 and "http/protobuf" in as_json.text
    wrong = httpx.post(receiver.endpoint.replace("/v1/traces", "/v1/metrics"),
                       content=export(vllm_span(1)), headers=PROTOBUF)
    assert wrong.status_code == 404
    assert store.count_server_spans() == 0


def test_listen_addresses():
    assert parse_listen("127.0.0.1:4318") == ("127.0.0.1", 4318)
    assert parse_listen("4318") == ("127.0.0.1", 4318)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen("127.0.0.1:http")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_collect_otlp_cli_stores_what_it_receives(tmp_path):
    db, port = tmp_path / "s.db", _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "servescope.cli", "--db", str(db), "collect", "--otlp",
         f"127.0.0.1:{port}", "--no-host", "--metrics-port", "0", "--duration", "8s"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1/traces"
    deadline = time.monotonic() + 30
    while True:
        try:
            resp = httpx.post(url, content=export(vllm_span(7)), headers=PROTOBUF)
            break
        except httpx.ConnectError:
            assert time.monotonic() < deadline, "collect --otlp never listened"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
    assert resp.status_code == 200
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "1 request spans stored" in err and url in err
    with Store(db) as store:
        assert [s.request_id for s in store.server_spans(["chatcmpl-local-0000007"])] == [
            "chatcmpl-local-0000007"]
