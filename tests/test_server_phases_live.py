"""Server phases per request from the REAL llama.cpp (its `timings` in the last event of
each stream) and the REAL Ollama (its native durations), joined to the client's records in
the run summary, request by request."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import servescope
from servescope.analysis.join import joined_phases
from servescope.analysis.phases import LLAMACPP_TIMINGS, OLLAMA_NATIVE
from servescope.core.records import RequestRecord
from servescope.core.store import Store

REQUESTS = 6
OUTPUT_TOKENS = 16
SCENARIO = """\
name: phases-{api}
api: {api}
seed: 5
prompt_tokens: 24
output_tokens: {out}
stages: [{{concurrency: 2, duration: 5m}}]
request_timeout: 120s
"""


def _run(url: str, tmp_path: Path, api: str) -> tuple[Store, list[RequestRecord], dict]:
    path, db, out = tmp_path / f"{api}.yaml", tmp_path / f"{api}.db", tmp_path / f"{api}.json"
    path.write_text(SCENARIO.format(api=api, out=OUTPUT_TOKENS))
    res = servescope("load", str(path), "--target", url, "--db", str(db), "--out", str(out),
                     "--model", "tiny", "--requests", str(REQUESTS), timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads(out.read_text())
    assert "server per request" in res.stdout
    store = Store(db)
    return store, store.requests(summary["run_id"]), summary


def test_llamacpp_timings_join_each_request(llamacpp_server, tmp_path):
    store, records, summary = _run(llamacpp_server.url, tmp_path, "openai-chat")
    with store:
        rows = joined_phases(store, records)
    assert len(records) == REQUESTS and all(r.ok for r in records)
    for r in records:  # the last event of each stream carried the server's timings
        assert r.server_timings["predicted_n"] == r.output_tokens == OUTPUT_TOKENS
    assert len(rows) == REQUESTS
    for row in rows:
        s = row.server
        assert s.source == LLAMACPP_TIMINGS
        assert s.prefill_ms > 0 and s.decode_ms > 0
        # What the server computed lies inside what the client waited for.
        assert s.prefill_ms + s.decode_ms <= row.client_e2e_ms, row
    per = summary["server"]["per_request"]
    assert per["sources"] == {LLAMACPP_TIMINGS: REQUESTS} and per["joined"] == REQUESTS
    assert per["decode_ms"]["count"] == REQUESTS and per["queue_ms"]["count"] == 0


def test_ollama_durations_join_each_request(ollama_server, tmp_path):
    store, records, summary = _run(ollama_server.url, tmp_path, "ollama-chat")
    with store:
        rows = joined_phases(store, records)
    assert len(rows) == REQUESTS
    for row in rows:
        assert row.server.source == OLLAMA_NATIVE
        assert row.e2e_remainder_ms >= 0, row  # the client's clock spans the server's
        assert row.server.queue_ms is not None
    per = summary["server"]["per_request"]
    assert per["sources"] == {OLLAMA_NATIVE: REQUESTS} and per["joined"] == REQUESTS
    # One request at a time (OLLAMA_NUM_PARALLEL=1) for two users: one waits, which shows
    # as queue and overhead or as the scheduler's load time (collectors/ollama.py).
    assert any(r.server.e2e_ms > r.server.prefill_ms + r.server.decode_ms for r in rows)
