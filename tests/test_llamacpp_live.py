"""Against a REAL llama.cpp server (session fixture: llama-server b11434 on the CPU, the
tiny GGUF, 2 slots of 512 tokens): the collector reads its /metrics, /slots and /props,
and a load run through `servescope load` is counted the same by client and server, with
prompts of exactly the asked length."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx

from helpers import servescope
from servescope.collectors.llamacpp import props_info
from servescope.collectors.scrape import ScrapeError, scrape
from servescope.core.store import Store

# Long enough that the watcher sees the run (the tiny model decodes thousands of tokens/s),
# within a slot's 512 tokens of context (96 + 384).
OUTPUT_TOKENS = 384
REQUESTS = 16
USERS = 4  # on 2 slots: two requests wait at a time

SCENARIO = f"""\
name: llamacpp-live
seed: 5
prompt_tokens: 96  # the id, template and filler: the tiny vocabulary is ~1 char a token
output_tokens: {OUTPUT_TOKENS}
stages:
  - {{concurrency: {USERS}, duration: 5m}}
max_requests: {REQUESTS}
request_timeout: 120s
"""


def test_the_collector_reads_the_real_server_idle(llamacpp_server):
    snap = scrape(llamacpp_server.url, "auto")
    assert snap.runtime == "llamacpp"
    data = snap.to_json()
    assert data["running"] == 0 and data["waiting"] == 0
    # /slots: 2 slots x 512 tokens, none in use
    assert data["kv_capacity_tokens"] == 1024 and data["kv_free_tokens"] == 1024
    assert data["kv_usage"] == 0


def test_a_load_run_is_counted_the_same_by_client_and_server(llamacpp_server, tmp_path: Path):
    url = llamacpp_server.url
    before = scrape(url, "llamacpp").to_json()
    seen: list[dict] = []
    missed: list[str] = []
    stop = threading.Event()

    def watch() -> None:  # the collector's view while the run goes on
        while not stop.is_set():
            # llama.cpp answers /metrics from its task loop, so on a busy 2-core host a
            # scrape can take seconds; a late one is a gap in the view, as it is for the
            # collector, not the end of the watch (CI once lost the watcher to a 5 s timeout)
            try:
                seen.append(scrape(url, "llamacpp", timeout=30).to_json())
            except ScrapeError as exc:
                missed.append(str(exc))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    scenario = tmp_path / "llamacpp.yaml"
    scenario.write_text(SCENARIO)
    out, db = tmp_path / "summary.json", tmp_path / "llamacpp.db"
    watcher.start()
    try:
        res = servescope("load", str(scenario), "--target", url, "--out", str(out), "--quiet",
                         db=db, timeout=600)
    finally:
        stop.set()
        watcher.join(10)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads(out.read_text())
    assert summary["requests_ok"] == REQUESTS and summary["requests_failed"] == 0
    with Store(db) as store:
        records = store.requests(summary["run_id"])
    assert len(records) == REQUESTS
    for r in records:
        # ignore_eos: exactly the tokens asked for, as the server's usage counted them
        assert r.output_tokens == OUTPUT_TOKENS and r.token_count_source == "usage", r
        # prompts sized through /apply-template + /tokenize: exactly the target length
        assert r.prompt_tokens == r.target_prompt_tokens, r
        assert 0 < len(r.event_offsets_ns) <= OUTPUT_TOKENS
        assert r.send_ns < r.first_token_ns <= r.last_token_ns <= r.end_ns
    after = scrape(url, "llamacpp").to_json()
    # The server counted the same generated tokens the client's usage reported.
    generated = after["generation_tokens_total"] - before["generation_tokens_total"]
    assert generated == sum(r.output_tokens for r in records)
    # 4 users on 2 slots: the collector saw requests waiting, never more than 2 running,
    # and KV in use while they ran.
    during = [s for s in seen if s["ts"] > before["ts"]]
    assert during, f"the watcher took no snapshot; missed: {missed}"
    assert max(s["running"] or 0 for s in seen) <= 2
    assert max(s["waiting"] or 0 for s in seen) > 0, (seen[-3:], missed)
    assert max(s["kv_usage"] or 0 for s in seen) > 0


def test_props_give_the_serving_configuration(llamacpp_server):
    props = httpx.get(f"{llamacpp_server.url}/props", timeout=10).json()
    info = props_info(props)
    assert info["total_slots"] == 2 and info["n_ctx"] == 512  # -c 1024 over 2 slots
    assert info["model"] == "tiny"
