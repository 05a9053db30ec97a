"""Reasoning models: TTFT counts the first generated token of any kind (reasoning included, as
`vllm bench serve` does), TTFO the first answer token, ITL every gap between generated events
and TPOT the same count; reasoning and answer tokens are counted apart.

Checked against testsupport/streaming_server.py, which sends reasoning chunks and then content
in the field a test names and records (from its kernel's stamps) when each event left, and
on Ollama's NDJSON with a `thinking` field, in the shape of the captured streams.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from helpers import servescope
from servescope.analysis.latency import (
    e2e_ms,
    itl_ms,
    reasoning_lines,
    summarize,
    tpot_ms,
    ttfo_ms,
    ttft_ms,
)
from servescope.core.clock import now_ns
from servescope.core.records import RequestRecord
from servescope.core.store import Store
from servescope.loadgen.ollama_native import OllamaRequest, stream_ollama
from servescope.loadgen.openai_chat import ChatRequest, stream_chat
from servescope.loadgen.sse import parse_openai_chunk
from servescope.loadgen.wire import Wire
from testsupport.streaming_server import StreamingServer

TOKENS, REASONING = 8, 3
FIRST_MS, GAP_MS = 30.0, 20.0
MS = 1e6
# Client against server, per stamp: well under 1 ms here (tests/test_accuracy.py); the bounds
# are half a gap, so a token counted on the wrong side (a whole gap off) still fails.
HALF_GAP = GAP_MS / 2


@pytest.fixture(scope="module")
def server():
    with StreamingServer(first_token_ms=FIRST_MS, gap_ms=GAP_MS) as srv:
        yield srv


def chat(server: StreamingServer, rid: str, headers: dict[str, str]) -> RequestRecord:
    wire = Wire(server.url)
    try:
        req = ChatRequest("stream-test", [{"role": "user", "content": "think"}], TOKENS)
        return stream_chat(wire, "/v1/chat/completions", req, rid, now_ns(), 30.0, headers)
    finally:
        wire.close()


def truth(sched: dict) -> dict[str, float | list[float] | None]:
    """The metrics from the server's own send stamps (ms from the request's arrival)."""
    recv = sched["recv_ns"]
    tokens = [(k, t) for k, t in zip(sched["kinds"], sched["sent_ns"], strict=True)
              if k in ("reasoning", "content")]
    first = (tokens[0][1] - recv) / MS
    answer = next(((t - recv) / MS for k, t in tokens if k == "content"), None)
    e2e = (sched["sent_ns"][-1] - recv) / MS
    return {"ttft": first, "ttfo": answer, "e2e": e2e,
            "itl": [(b - a) / MS for (_, a), (_, b) in itertools.pairwise(tokens)],
            "tpot": (e2e - first) / (len(tokens) - 1)}


# -- the chunk parser ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["reasoning", "reasoning_content"])
def test_each_reasoning_field_is_read(name):
    info = parse_openai_chunk(json.dumps({"choices": [{"delta": {name: "hmm"}}]}))
    assert info.reasoning == "hmm" and info.content == ""


def test_a_server_filling_both_names_is_read_once():
    # vLLM, while renaming reasoning_content to reasoning, sent the same text in both
    info = parse_openai_chunk('{"choices":[{"delta":{"reasoning":"a","reasoning_content":"a"}}]}')
    assert info.reasoning == "a"
    assert parse_openai_chunk('{"choices":[{"delta":{"reasoning":{"x":1}}}]}').reasoning == ""


# -- against the streaming server, each field name -----------------------------------------
@pytest.mark.parametrize("details", [False, True], ids=["no-split", "usage-split"])
@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_reasoning_then_answer_timed_against_the_server(server, field, details):
    rid = f"think-{field}-{details}"
    rec = chat(server, rid, {"x-reasoning": str(REASONING), "x-reasoning-field": field,
                             "x-reasoning-details": "1" if details else "0"})
    assert rec.ok, (rec.error_class, rec.error)
    sched = server.schedule()[rid]
    assert sched["kinds"][:TOKENS] == ["reasoning"] * REASONING + ["content"] * (
        TOKENS - REASONING)
    assert len(rec.reasoning_event_offsets_ns) == REASONING
    assert len(rec.event_offsets_ns) == TOKENS - REASONING
    assert rec.output_tokens == TOKENS and rec.token_count_source == "usage"
    want = truth(sched)
    report = f"client ttft {ttft_ms(rec)} ttfo {ttfo_ms(rec)} itl {itl_ms(rec)}; truth {want}"

    # TTFT: the first reasoning token; TTFO: the first answer token, REASONING gaps later
    assert abs(ttft_ms(rec) - want["ttft"]) < HALF_GAP, report
    assert abs(ttfo_ms(rec) - want["ttfo"]) < HALF_GAP, report
    assert abs(ttfo_ms(rec) - ttft_ms(rec) - REASONING * GAP_MS) < HALF_GAP, report
    # ITL: every gap between generated events, reasoning and answer alike, matched one to one
    assert len(itl_ms(rec)) == TOKENS - 1, report
    assert all(abs(c - s) < HALF_GAP for c, s in zip(itl_ms(rec), want["itl"], strict=True))
    # TPOT: (E2E - TTFT) / (all output tokens - 1); started from the first answer token it
    # would be REASONING x GAP / (TOKENS - 1) (8.6 ms) lower
    assert abs(e2e_ms(rec) - want["e2e"]) < HALF_GAP, report
    assert tpot_ms(rec) == pytest.approx((e2e_ms(rec) - ttft_ms(rec)) / (TOKENS - 1))
    assert abs(tpot_ms(rec) - want["tpot"]) < REASONING * GAP_MS / (TOKENS - 1) / 2, report

    s = summarize([rec])
    assert s["reasoning_tokens_total"] == REASONING
    assert s["answer_tokens_total"] == TOKENS - REASONING
    assert s["reasoning_token_sources"] == (["usage"] if details else ["events"])
    assert s["requests_with_reasoning"] == 1
    assert s["ttfo_ms"]["p50"] == pytest.approx(ttfo_ms(rec))
    assert s["itl_ms"]["count"] == TOKENS - 1
    assert rec.reasoning_tokens == (REASONING if details else None)


def test_reasoning_to_the_token_limit_has_no_first_answer(server):
    rec = chat(server, "think-only", {"x-reasoning": str(TOKENS)})
    assert rec.ok, (rec.error_class, rec.error)
    assert len(rec.reasoning_event_offsets_ns) == TOKENS and rec.event_offsets_ns == []
    assert abs(ttft_ms(rec) - truth(server.schedule()["think-only"])["ttft"]) < HALF_GAP
    assert ttfo_ms(rec) is None and len(itl_ms(rec)) == TOKENS - 1
    s = summarize([rec])
    assert s["ttfo_ms"]["count"] == 0 and s["ttft_ms"]["count"] == 1
    assert s["reasoning_tokens_total"] == TOKENS and s["answer_tokens_total"] == 0
    assert "TTFO (first answer token) none: no answer came" in reasoning_lines(s)[0]


def test_without_reasoning_ttfo_is_ttft_and_nothing_is_split(server):
    rec = chat(server, "plain", {})
    assert rec.ok and rec.reasoning_event_offsets_ns == []
    assert ttfo_ms(rec) == ttft_ms(rec)
    s = summarize([rec])
    assert s["reasoning_tokens_total"] == 0 and s["answer_tokens_total"] == TOKENS
    assert s["reasoning_token_sources"] == [] and reasoning_lines(s) == []


def test_a_load_run_reports_reasoning_through_the_cli(tmp_path: Path):
    scenario = tmp_path / "think.yaml"
    scenario.write_text(f"name: think\nseed: 1\nprompt_tokens: 16\noutput_tokens: {TOKENS}\n"
                        "stages:\n  - {concurrency: 2, duration: 60s}\nmax_requests: 6\n"
                        "request_timeout: 30s\n")
    db, out = tmp_path / "s.db", tmp_path / "summary.json"
    with StreamingServer(FIRST_MS, GAP_MS, reasoning=REASONING,
                         reasoning_field="reasoning_content") as srv:
        res = servescope("load", str(scenario), "--target", srv.url, "--out", str(out),
                         db=db, timeout=120)
        schedule = srv.schedule()
    assert res.returncode == 0, res.stdout + res.stderr
    s = json.loads(out.read_text())
    assert s["requests_ok"] == 6
    assert s["reasoning_tokens_total"] == 6 * REASONING
    assert s["answer_tokens_total"] == 6 * (TOKENS - REASONING)
    assert s["reasoning_token_sources"] == ["events"]
    assert s["itl_ms"]["count"] == 6 * (TOKENS - 1)
    assert s["ttfo_ms"]["p50"] - s["ttft_ms"]["p50"] == pytest.approx(REASONING * GAP_MS,
                                                                      abs=HALF_GAP)
    assert "reasoning: 18 reasoning and 30 answer tokens, 6 requests reasoned" in res.stdout
    with Store(db) as store:  # the stored stamps give the same numbers again
        records = store.requests(s["run_id"])
    for rec in records:
        want = truth(schedule[rec.request_id])
        assert abs(ttft_ms(rec) - want["ttft"]) < HALF_GAP
        assert abs(ttfo_ms(rec) - want["ttfo"]) < HALF_GAP


# -- Ollama's native API: `thinking` -------------------------------------------------------
# Ollama 0.5.4 (the captured server) has no thinking. Upstream Ollama added it in v0.9.0
# (commit 5f57b0e, "add thinking support to the api and cli"): api/types.go's
# GenerateResponse.Thinking (`json:"thinking,omitempty"`) and Message.Thinking for /api/chat,
# sent with the request's `"think": true`; the final line's eval_count counts every token.
class ReplayWire:
    """Plays NDJSON lines to the stream parser, one read per line, at known offsets."""

    def __init__(self, lines: list[str], offsets_ms: list[float]) -> None:
        self.lines, self.offsets_ms = lines, offsets_ms

    def post(self, path, body, headers, timeout, rec, on_chunk) -> bool:
        rec.send_ns = 1_000_000_000_000
        rec.headers_ns, rec.status_code = rec.send_ns + int(2 * MS), 200
        for line, at in zip(self.lines, self.offsets_ms, strict=True):
            on_chunk(line.encode() + b"\n", rec.send_ns + int(at * MS))
        rec.end_ns = rec.send_ns + int(self.offsets_ms[-1] * MS)
        return True


def thinking_stream(fixture: Path, api: str, thinking: int) -> list[str]:
    """The captured stream with its first `thinking` text lines turned into thinking."""
    objs = [json.loads(line) for line in fixture.read_text().splitlines() if line.strip()]
    for obj in objs[:thinking]:
        holder = obj["message"] if api == "chat" else obj
        text_key = "content" if api == "chat" else "response"
        holder["thinking"], holder[text_key] = holder[text_key] or "…", ""
    return [json.dumps(obj) for obj in objs]


@pytest.mark.parametrize("api", ["generate", "chat"])
def test_ollama_thinking_is_reasoning(fixtures_dir, api):
    lines = thinking_stream(fixtures_dir / f"ollama-0.5.4-ipexllm-{api}-stream.ndjson", api, 4)
    text_lines = len(lines) - 1
    offsets = [10.0 + 3.0 * j for j in range(text_lines)] + [10.0 + 3.0 * text_lines]
    req = OllamaRequest("tiny", [{"role": "user", "content": "hi"}], 24, api=api)
    rec = stream_ollama(ReplayWire(lines, offsets), f"/api/{api}", req, "o1", 0, 30.0)
    assert rec.ok, (rec.error_class, rec.error)
    assert len(rec.reasoning_event_offsets_ns) == 4
    assert len(rec.event_offsets_ns) == text_lines - 4
    eval_count = json.loads(lines[-1])["eval_count"]
    assert rec.output_tokens == eval_count and rec.token_count_source == "usage"
    assert ttft_ms(rec) == pytest.approx(10.0)  # the first thinking line
    assert ttfo_ms(rec) == pytest.approx(10.0 + 3.0 * 4)  # the first answer line
    assert itl_ms(rec) == pytest.approx([3.0] * (text_lines - 1))
    assert tpot_ms(rec) == pytest.approx((offsets[-1] - 10.0) / (eval_count - 1))
    s = summarize([rec])
    # Ollama gives no split: the thinking lines are counted, the rest of eval_count is answer
    assert s["reasoning_tokens_total"] == 4 and s["reasoning_token_sources"] == ["events"]
    assert s["answer_tokens_total"] == eval_count - 4


def test_ollama_stream_cut_before_its_final_line_counts_thinking_too(fixtures_dir):
    lines = thinking_stream(fixtures_dir / "ollama-0.5.4-ipexllm-generate-stream.ndjson",
                            "generate", 2)[:-1]
    req = OllamaRequest("tiny", [{"role": "user", "content": "hi"}], 24)
    rec = stream_ollama(ReplayWire(lines, [5.0 + j for j in range(len(lines))]),
                        "/api/generate", req, "o2", 0, 30.0)
    assert rec.error_class == "dropped"
    assert rec.token_count_source == "events" and rec.output_tokens == len(lines)


def test_run_page_lists_ttfo_only_for_reasoning_runs():
    from servescope.dashboard.run import latency_table

    plain = {"ttft_ms": {"p50": 90.0}, "ttfo_ms": {"p50": 90.0}, "requests_with_reasoning": 0}
    assert "TTFO (first answer token)" not in set(latency_table(plain)["metric"])
    thinking = {**plain, "ttfo_ms": {"p50": 150.0}, "requests_with_reasoning": 3}
    table = latency_table(thinking)
    assert table.loc[table["metric"] == "TTFO (first answer token)", "p50 (ms)"].item() == 150
