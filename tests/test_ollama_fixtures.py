"""Ollama collector on payloads captured from a real Ollama 0.5.4 (ipex-llm build):
per-request phases, load/unload events and the /api/ps + /api/show snapshot."""

from __future__ import annotations

import http.server
import json
import threading

import httpx
import pytest

from servescope.collectors.ollama import (
    model_events,
    parse_parameters,
    phases_from_response,
    poll_ollama,
    snapshot_from_payloads,
)
from servescope.collectors.scrape import ScrapeError

PREFIX = "ollama-0.5.4-ipexllm-"


@pytest.fixture(scope="module")
def payload(fixtures_dir):
    def load(name: str):
        return json.loads((fixtures_dir / f"{PREFIX}{name}").read_text())

    return load


def test_phases_of_a_generate_are_its_own_fields(payload):
    body = payload("generate.json")
    # total 19564478, load 2198269, prompt_eval 3000000 (42 tokens), eval 12000000 (24)
    assert (body["total_duration"], body["load_duration"]) == (19564478, 2198269)
    assert (body["prompt_eval_duration"], body["eval_duration"]) == (3000000, 12000000)

    phases = phases_from_response(body)

    assert phases == {
        "total_s": 19564478 / 1e9,
        "load_s": 2198269 / 1e9,
        "prefill_s": 3000000 / 1e9,
        "decode_s": 12000000 / 1e9,
        "queue_and_overhead_s": (19564478 - 2198269 - 3000000 - 12000000) / 1e9,
        "prompt_tokens": 42,
        "output_tokens": 24,
        "prefill_tokens_per_s": 42 / (3000000 / 1e9),
        "decode_tokens_per_s": 24 / (12000000 / 1e9),
    }
    assert phases["queue_and_overhead_s"] == pytest.approx(0.002366209, abs=1e-15)
    assert phases["decode_tokens_per_s"] == pytest.approx(2000.0)


def test_phases_from_chat_and_the_last_line_of_a_stream(payload, fixtures_dir):
    chat = phases_from_response(payload("chat.json"))
    assert chat["prompt_tokens"] == 98 and chat["output_tokens"] == 24
    assert chat["queue_and_overhead_s"] == pytest.approx(
        (39868097 - 4423748 - 6000000 - 27000000) / 1e9)

    lines = (fixtures_dir / f"{PREFIX}generate-stream.ndjson").read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["done"] is True
    streamed = phases_from_response(last)
    assert streamed["output_tokens"] == last["eval_count"]
    assert streamed["decode_s"] == last["eval_duration"] / 1e9
    # Chunks before the last carry no timings: every phase is None, nothing raises.
    assert set(phases_from_response(json.loads(lines[0])).values()) == {None}


def test_replies_without_timings_give_none(payload):
    for name in ("generate-load.json", "generate-unload.json"):  # done_reason load / unload
        assert set(phases_from_response(payload(name)).values()) == {None}


def test_metrics_left_out_of_a_final_body_count_as_zero(payload):
    """Ollama omits zero-valued metrics (Go omitempty); in 0.5.4 a sub-millisecond prefill
    or decode therefore has no *_duration field at all."""
    body = payload("generate.json")
    del body["prompt_eval_duration"], body["load_duration"]

    p = phases_from_response(body)

    assert (p["prefill_s"], p["load_s"]) == (0.0, 0.0)
    assert p["queue_and_overhead_s"] == (19564478 - 12000000) / 1e9
    assert p["prompt_tokens"] == 42 and p["prefill_tokens_per_s"] is None  # no time: no rate
    assert p["decode_tokens_per_s"] == 24 / 0.012


def test_concurrent_generates_keep_their_phases_apart(fixtures_dir):
    """Captured with OLLAMA_NUM_PARALLEL=2: both ran at once, neither waited long."""
    lines = (fixtures_dir / f"{PREFIX}generate-concurrent.ndjson").read_text().splitlines()
    for body in map(json.loads, lines):
        p = phases_from_response(body)
        assert p["load_s"] + p["prefill_s"] + p["decode_s"] <= p["total_s"]
        assert 0 <= p["queue_and_overhead_s"] < 0.01


def test_model_events_across_load_and_unload(payload):
    empty, loaded = payload("ps-empty.json"), payload("ps.json")
    after = payload("ps-after-unload.json")

    assert model_events(empty, loaded) == [("load", "tiny:latest")]
    assert model_events(loaded, payload("ps-during-generate.json")) == []
    assert model_events(loaded, after) == [("unload", "tiny:latest")]
    assert model_events(after, empty) == []
    assert model_events(None, loaded) == [("load", "tiny:latest")]


def test_model_recreated_under_the_same_name_is_unload_then_load(payload):
    loaded = payload("ps.json")
    recreated = json.loads(json.dumps(loaded))
    recreated["models"][0]["digest"] = "0" * 64
    assert model_events(loaded, recreated) == [("unload", "tiny:latest"),
                                               ("load", "tiny:latest")]


def _check_snapshot(snap) -> None:
    model = "tiny:latest"
    by_concept = {(s.concept, s.labels.get("model")): s for s in snap.samples}

    assert by_concept[("models_loaded", None)].value == 1
    assert by_concept[("models_loaded", None)].raw_name == "/api/ps:models"
    size = by_concept[("model_size_bytes", model)]
    assert (size.value, size.raw_name) == (12394752, "/api/ps:size")
    vram = by_concept[("model_vram_bytes", model)]
    assert (vram.value, vram.raw_name) == (0, "/api/ps:size_vram")
    # 0.5.4's /api/ps has no context_length: the trained one comes from /api/show.
    ctx = by_concept[("model_context_length", model)]
    assert (ctx.value, ctx.raw_name) == (2048, "/api/show:model_info.llama.context_length")

    assert snap.info["version"] == "0.5.4-ipexllm-20250407"
    assert snap.loaded == [model]
    (info,) = snap.info["models"]
    assert info["expires_at"] == "2026-11-21T22:44:05.355277344Z"
    assert info["show"]["family"] == "llama"
    assert info["show"]["parameter_size"] == "134K"
    assert info["show"]["quantization_level"] == "unknown"
    assert info["show"]["parameter_count"] == 133696
    assert info["show"]["parameters"] == {"num_ctx": 512, "stop": "<|im_end|>"}


def test_snapshot_from_captured_ps_and_show(payload):
    snap = snapshot_from_payloads(payload("version.json"), payload("ps.json"),
                                  {"tiny:latest": payload("show.json")}, source="fixture")
    _check_snapshot(snap)
    assert snap.value("model_size_bytes", "tiny:latest") == 12394752


def test_snapshot_prefers_the_runtime_context_length_of_newer_servers(payload):
    ps = payload("ps.json")
    ps["models"][0]["context_length"] = 512  # newer Ollama reports the runner's num_ctx
    snap = snapshot_from_payloads(None, ps, {"tiny:latest": payload("show.json")})
    ctx = [s for s in snap.samples if s.concept == "model_context_length"]
    assert [(s.value, s.raw_name) for s in ctx] == [(512, "/api/ps:context_length")]


def test_snapshot_with_nothing_loaded(payload):
    snap = snapshot_from_payloads(payload("version.json"), payload("ps-empty.json"), {})
    assert [(s.concept, s.value) for s in snap.samples] == [("models_loaded", 0)]
    assert snap.info["models"] == []


def test_parse_parameters_keeps_repeated_stops():
    text = 'num_ctx   512\nstop    "<|im_end|>"\nstop    "</s>"\ntemperature 0.7'
    assert parse_parameters(text) == {"num_ctx": 512, "stop": ["<|im_end|>", "</s>"],
                                      "temperature": 0.7}


class FakeOllama:
    """Serves captured /api/version, /api/ps and /api/show bodies on 127.0.0.1."""

    def __init__(self, bodies: dict[tuple[str, str], bytes]) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _reply(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                fake.requests.append((method, self.path, self.rfile.read(length)))
                body = bodies.get((method, self.path))
                self.send_response(200 if body is not None else 404)
                body = body if body is not None else b'{"error":"not found"}'
                self.send_header("content-type", "application/json; charset=utf-8")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._reply("GET")

            def do_POST(self):
                self._reply("POST")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_poll_ollama_over_http(fixtures_dir):
    def raw(name: str) -> bytes:
        return (fixtures_dir / f"{PREFIX}{name}").read_bytes()

    server = FakeOllama({
        ("GET", "/api/version"): raw("version.json"),
        ("GET", "/api/ps"): raw("ps.json"),
        ("POST", "/api/show"): raw("show.json"),
    })
    try:
        with httpx.Client() as client:
            snap = poll_ollama(server.url + "/", client)
    finally:
        server.close()

    _check_snapshot(snap)
    assert snap.source == server.url
    shows = [r for r in server.requests if r[1] == "/api/show"]
    assert [json.loads(body) for _, _, body in shows] == [{"model": "tiny:latest"}]


def test_poll_ollama_names_the_url_when_it_fails(fixtures_dir):
    server = FakeOllama({("GET", "/api/version"): b'{"version":"0.5.4"}'})  # no /api/ps
    try:
        with pytest.raises(ScrapeError, match=r"/api/ps: HTTP 404"):
            poll_ollama(server.url)
    finally:
        server.close()
