"""The observing proxy and the collector against the REAL Ollama (session fixture,
OLLAMA_NUM_PARALLEL=1): traffic passes unchanged, and every response's own timings come
out as Prometheus metrics and in the store."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from servescope.collectors.loop import Collector, TargetSpec
from servescope.collectors.ollama_proxy import OllamaProxy
from servescope.engines.process import free_port

MODEL = "tiny"


@pytest.fixture()
def proxy(ollama_server, store):
    p = OllamaProxy(ollama_server.url, "127.0.0.1", free_port(), store=store)
    p.start()
    yield p
    p.close()


def _metrics(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def _generate(base: str, stream: bool, n: int = 24) -> httpx.Response:
    body = {"model": MODEL, "prompt": "the cache", "stream": stream,
            "options": {"num_predict": n, "seed": 1}}
    return httpx.post(f"{base}/api/generate", json=body, timeout=120)


def test_streaming_passes_through_and_timings_are_exported(proxy, ollama_server, store):
    direct = _generate(ollama_server.url, stream=False).json()
    streamed = _generate(proxy.url, stream=True)
    assert streamed.status_code == 200
    lines = [json.loads(line) for line in streamed.text.splitlines() if line.strip()]
    assert len(lines) > 2 and lines[-1]["done"] is True
    assert not any(line["done"] for line in lines[:-1])
    assert lines[-1]["eval_count"] == 24
    plain = _generate(proxy.url, stream=False).json()
    # The same envelope as talking to Ollama directly (zero-valued timings are omitted by
    # Ollama itself, so compare the fields that are always there).
    always = {"model", "created_at", "response", "done", "done_reason", "total_duration",
              "eval_count", "eval_duration"}
    assert always <= plain.keys() and always <= direct.keys()

    labels = (("endpoint", "/api/generate"), ("model", MODEL))
    m = _metrics(proxy.url)
    assert m[("servescope_ollama_generation_tokens_total", labels)] == 48
    assert m[("servescope_ollama_decode_seconds_count", labels)] == 2
    assert m[("servescope_ollama_total_seconds_sum", labels)] > 0
    assert m[("servescope_ollama_requests_total",
              (("endpoint", "/api/generate"), ("status", "200")))] == 2
    assert m[("servescope_ollama_requests_in_flight", (("endpoint", "/api/generate"),))] == 0
    target = next(t for t in store.targets() if t["runtime"] == "ollama-proxy")
    decode = store.samples(target["id"], ["ollama_request_decode_s"])
    assert len(decode) == 2 and (decode["value"] > 0).all()
    assert set(decode["labels"].map(lambda d: d["model"])) == {MODEL}


def test_a_queued_request_shows_its_wait(proxy):
    """Two at once on one slot: the proxy's queue+overhead histogram holds the wait."""
    results: list[dict] = []
    together = threading.Barrier(2)

    def send() -> None:
        together.wait()  # both leave at once, so the second one must queue
        results.append(_generate(proxy.url, stream=False, n=450).json())  # < num_ctx 512

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 2
    labels = (("endpoint", "/api/generate"), ("model", MODEL))
    m = _metrics(proxy.url)
    waited = (m[("servescope_ollama_total_seconds_sum", labels)]
              - m[("servescope_ollama_prefill_seconds_sum", labels)]
              - m[("servescope_ollama_decode_seconds_sum", labels)])
    one_decode = min(r["eval_duration"] for r in results) / 1e9
    assert waited >= 0.5 * one_decode, (waited, one_decode)


def test_errors_pass_through_unchanged(proxy):
    resp = httpx.post(f"{proxy.url}/api/generate", json={"model": "no-such-model"}, timeout=30)
    assert resp.status_code == 404
    assert "not found" in resp.json()["error"]
    m = _metrics(proxy.url)
    assert m[("servescope_ollama_requests_total",
              (("endpoint", "/api/generate"), ("status", "404")))] == 1


def test_openai_sse_and_head_pass_through(proxy, ollama_server):
    """/v1/chat/completions streams Server-Sent Events through unchanged; Ollama's HEAD
    answers come back without a body, and the connection stays usable after them."""
    body = {"model": MODEL, "stream": True, "max_tokens": 8, "seed": 1,
            "messages": [{"role": "user", "content": "the cache"}]}
    with httpx.Client(base_url=proxy.url, timeout=120) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            events = [line for line in resp.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
        assert len(chunks) > 2
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
        head = client.head("/")
        direct = httpx.head(f"{ollama_server.url}/", timeout=30)
        assert head.status_code == direct.status_code == 200
        assert head.content == b""
        assert head.headers.get("content-length") == direct.headers.get("content-length")
        assert client.get("/").text == "Ollama is running"  # same connection, still in step
    m = _metrics(proxy.url)
    assert m[("servescope_ollama_requests_total",
              (("endpoint", "/v1/chat/completions"), ("status", "200")))] == 1
    assert m[("servescope_ollama_requests_total", (("endpoint", "/"), ("status", "200")))] == 2


def test_collector_detects_ollama_and_records_load_and_unload(ollama_server, store):
    httpx.post(f"{ollama_server.url}/api/generate", json={"model": MODEL, "keep_alive": 0},
               timeout=60)
    with Collector([TargetSpec("ollama", "auto", ollama_server.url)], store, interval=0.3):
        time.sleep(1.0)
        httpx.post(f"{ollama_server.url}/api/generate", json={"model": MODEL}, timeout=60)
        time.sleep(1.0)
        httpx.post(f"{ollama_server.url}/api/generate", json={"model": MODEL, "keep_alive": 0},
                   timeout=60)
        time.sleep(1.5)
    target = store.targets()[0]
    assert target["runtime"] == "ollama"
    assert target["info"]["version"].startswith("0.5.4")
    kinds = [(e["kind"], e["message"]) for e in store.target_events(target["id"])]
    assert ("load", "tiny:latest") in kinds and ("unload", "tiny:latest") in kinds
    loaded = store.samples(target["id"], ["models_loaded"])
    assert loaded["value"].max() == 1 and loaded["value"].iloc[-1] == 0
