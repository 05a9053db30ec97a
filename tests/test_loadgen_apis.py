"""The scenario's `api`: OpenAI completions and Ollama's native /api/generate and /api/chat,
run through `servescope load` against the REAL Ollama (session fixture, CPU, model
"tiny", OLLAMA_NUM_PARALLEL=1), plus the NDJSON line parser on a captured stream."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from helpers import servescope
from servescope.core.records import RequestRecord
from servescope.core.store import Store
from servescope.loadgen.ollama_native import NDJSONParser, OllamaRequest, parse_ollama_line
from servescope.loadgen.openai_chat import CompletionRequest

MODEL = "tiny"
OUTPUT_TOKENS = 16
REQUESTS = 4

SCENARIO = """\
name: api-{api}
api: {api}
seed: 3
prompt_tokens: 24
output_tokens: {out}
stages:
  - concurrency: 2
    duration: 5m
request_timeout: 120s
"""


def run_api(url: str, tmp_path: Path, api: str) -> tuple[list[RequestRecord], dict]:
    path, db, out = tmp_path / f"{api}.yaml", tmp_path / f"{api}.db", tmp_path / f"{api}.json"
    path.write_text(SCENARIO.format(api=api, out=OUTPUT_TOKENS))
    res = servescope("load", str(path), "--target", url, "--db", str(db), "--out", str(out),
                     "--quiet", "--model", MODEL, "--requests", str(REQUESTS), timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads(out.read_text())
    with Store(db) as store:
        records = store.requests(summary["run_id"])
    return records, summary


def assert_timed(records: list[RequestRecord]) -> None:
    assert len(records) == REQUESTS
    for r in records:
        assert r.ok, (r.error_class, r.error)
        assert r.output_tokens == OUTPUT_TOKENS, r
        assert r.token_count_source == "usage"
        assert r.prompt_tokens and r.prompt_tokens > 0
        assert r.first_token_ns is not None and r.first_token_ns - r.send_ns > 0  # TTFT > 0
        assert r.end_ns is not None and r.end_ns >= r.last_token_ns >= r.first_token_ns
        assert r.event_offsets_ns and r.event_offsets_ns == sorted(r.event_offsets_ns)


@pytest.mark.parametrize("api", ["ollama-generate", "ollama-chat"])
def test_ollama_native_api_records_client_and_server_timings(ollama_server, tmp_path, api):
    records, summary = run_api(ollama_server.url, tmp_path, api)
    assert summary["requests_ok"] == REQUESTS and summary["requests_failed"] == 0
    assert_timed(records)
    for r in records:
        t = r.server_timings
        assert t is not None, r
        assert t["decode_s"] > 0
        assert t["output_tokens"] == OUTPUT_TOKENS
        assert t["prompt_tokens"] == r.prompt_tokens
        # The client's clock spans the server's: send before the server starts, end after.
        e2e_s = (r.end_ns - r.send_ns) / 1e9
        assert e2e_s >= t["total_s"], (e2e_s, t)


def test_openai_completions_api(ollama_server, tmp_path):
    records, summary = run_api(ollama_server.url, tmp_path, "openai-completions")
    assert summary["requests_ok"] == REQUESTS
    assert_timed(records)
    assert all(r.server_timings is None for r in records)


def test_ollama_http_error_becomes_an_error_class(ollama_server):
    from servescope.core.clock import now_ns
    from servescope.loadgen.ollama_native import stream_ollama
    from servescope.loadgen.wire import Wire

    req = OllamaRequest("no-such-model", [{"role": "user", "content": "hi"}], 4)
    wire = Wire(ollama_server.url)
    rec = stream_ollama(wire, "/api/generate", req, "r1", now_ns(), 30)
    wire.close()
    assert rec.error_class == "http_404" and "not found" in rec.error
    assert rec.status_code == 404 and rec.server_timings is None


# -- without a server ----------------------------------------------------------------------
def test_ndjson_parser_at_random_chunk_boundaries(fixtures_dir):
    raw = (fixtures_dir / "ollama-0.5.4-ipexllm-generate-stream.ndjson").read_bytes()
    expected = [line for line in raw.decode().splitlines() if line.strip()]
    rng = random.Random(7)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(raw)), rng.randint(1, 40)))
        chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        parser, lines = NDJSONParser(), []
        for i, chunk in enumerate(chunks):
            got = parser.feed(chunk, i)
            # Each line is stamped with the chunk that completed it.
            for line in got:
                assert line.arrived_ns == i
            lines += got
        lines += parser.close(len(chunks))
        assert [line.data for line in lines] == expected
        # A line is complete only in the chunk holding its newline.
        done_at = []
        for i, chunk in enumerate(chunks):
            done_at += [i] * chunk.count(b"\n")
        assert [line.arrived_ns for line in lines] == done_at[: len(lines)]
    infos = [parse_ollama_line(line) for line in expected]
    content = [i for i in infos if i.content]
    assert infos[-1].done and not any(i.done for i in infos[:-1])
    assert len(content) == len(infos) - 1  # the final line carries no text
    assert infos[-1].body["eval_count"] == 24


def test_ndjson_parser_keeps_a_truncated_line_pending():
    parser = NDJSONParser()
    assert [line.data for line in parser.feed(b'{"a":1}\n{"b"', 5)] == ['{"a":1}']
    assert parser.pending == b'{"b"'
    assert [(line.data, line.arrived_ns) for line in parser.close(9)] == [('{"b"', 9)]


def test_chat_line_content_and_error_line(fixtures_dir):
    raw = (fixtures_dir / "ollama-0.5.4-ipexllm-chat-stream.ndjson").read_text()
    infos = [parse_ollama_line(line) for line in raw.splitlines() if line.strip()]
    assert infos[0].content and infos[-1].done and not infos[-1].content
    err = parse_ollama_line('{"error":"model \'x\' not found"}')
    assert err.error == "model 'x' not found" and not err.done


def test_request_bodies():
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    gen = OllamaRequest(MODEL, messages, 16, api="generate", seed=3).body()
    assert gen == {"model": MODEL, "stream": True, "prompt": "be brief\nhi",
                   "options": {"num_predict": 16, "seed": 3}}
    chat = OllamaRequest(MODEL, messages, 16, api="chat", seed=3).body()
    assert chat["messages"] == messages and "prompt" not in chat
    comp = CompletionRequest(MODEL, messages, 16).body()
    assert comp["prompt"] == "be brief\nhi" and comp["stream"] is True
    assert comp["stream_options"] == {"include_usage": True} and comp["ignore_eos"] is True
    assert "messages" not in comp


def test_server_timings_round_trip_through_the_store(store):
    run = store.create_run("r", "s", {}, "http://x", {})
    timings = {"total_s": 0.03, "decode_s": 0.02, "prompt_tokens": 42, "output_tokens": 24}
    recs = [RequestRecord("a", 1, 2, server_timings=timings), RequestRecord("b", 1, 3)]
    assert store.add_requests(run, recs) == 2
    by_id = {r.request_id: r for r in store.requests(run)}
    assert by_id["a"].server_timings == timings and by_id["b"].server_timings is None
