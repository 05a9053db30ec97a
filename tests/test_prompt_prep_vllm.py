"""Against the REAL vLLM CPU server: during a run nothing but the measured requests reaches
it, counted in its own access log (uvicorn's, in the server's log file, one line per
request in the order they were answered). With the server's tokenizer every /tokenize
comes before the first chat request; with `--tokenizer` (the model's own tokenizer.json)
there is none at all, and every prompt, later turns with their real answers included, is
exactly the scenario's length as vLLM counts it (with the tokenizer as vLLM loads it:
see served_tokenizer)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from helpers import servescope
from servescope.core.store import Store

CHAT = "/v1/chat/completions"
REQUESTS = 16
SCENARIO = f"""\
name: prep-vllm
seed: 4
prompt_tokens: {{dist: uniform, min: 64, max: 160}}  # over the id, template and prefix
output_tokens: 8
shared_prefix_tokens: 16
prefix_groups: 2
turns: 2
stages: [{{concurrency: 4, duration: 300s}}]
max_requests: {REQUESTS}
request_timeout: 120s
"""
ACCESS = re.compile(r'"(GET|POST|PUT|DELETE|PATCH) (\S+) HTTP/[\d.]+"')


def run_and_read_access_log(server, tmp_path: Path, *flags: str):
    """`servescope load` against the real server; returns (records, summary, the paths of
    every request its access log shows during the command, in order)."""
    log = Path(server.log_path)
    offset = log.stat().st_size
    path, db, out = tmp_path / "s.yaml", tmp_path / "s.db", tmp_path / "summary.json"
    path.write_text(SCENARIO)
    res = servescope("load", str(path), "--target", server.url, "--out", str(out), "--quiet",
                     *flags, db=db, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    summary = json.loads(out.read_text())
    with Store(db) as store:
        records = store.requests(summary["run_id"])
    with open(log, "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    access = [m.group(2).split("?")[0] for line in lines if (m := ACCESS.search(line))]
    return records, summary, access


def served_tokenizer(server, folder: Path) -> Path:
    """The model's tokenizer as vLLM loads it, saved as a tokenizer.json with the model's
    template beside it. transformers 5 rebuilds a Qwen2 model's pipeline (its digit-by-digit
    pre-tokenizer, NFC) whatever tokenizer.json says, and the tiny model's own tokenizer.json
    was trained with GPT-2's pre-tokenizer, so it would count ids with digits differently.
    A real model's tokenizer.json already holds its pipeline; with transformers installed,
    --tokenizer loads a model folder the way the server does (loadgen/tokenizer.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    code = ("import sys; from transformers import AutoTokenizer; "
            "AutoTokenizer.from_pretrained(sys.argv[1]).backend_tokenizer.save(sys.argv[2])")
    subprocess.run([str(server.python), "-c", code, str(server.model_dir),
                    str(folder / "tokenizer.json")], check=True, timeout=300)
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(Path(server.model_dir) / name, folder / name)
    return folder


def first_turns(records):
    return [r for r in records if r.request_id.endswith("-t0")]


def test_server_tokenizer_is_asked_only_before_the_run(vllm_server, tmp_path):
    records, summary, access = run_and_read_access_log(vllm_server, tmp_path)
    assert len(records) == REQUESTS and all(r.ok for r in records)
    chats = [i for i, p in enumerate(access) if p == CHAT]
    assert len(chats) == REQUESTS, access
    during = [p for p in access[chats[0]:] if p != CHAT]
    assert during == [], f"requests other than the measured ones during the run: {during}"
    before = access[:chats[0]]
    prep = summary["prompt_lengths"]["preparation"]
    assert before.count("/tokenize") == prep["server_tokenizer_requests"] > 0
    # First turns were counted by vLLM's own tokenizer: exactly the asked length.
    first = first_turns(records)
    assert len(first) >= REQUESTS // 2
    assert all(r.prompt_length_source == "server_tokenizer" for r in first)
    assert [r.prompt_tokens for r in first] == [r.target_prompt_tokens for r in first]
    # Second turns carry the real answer, known only mid-run: sized from the calibration.
    later = [r for r in records if r not in first]
    assert all(r.prompt_length_source == "estimate" for r in later)
    lengths = summary["prompt_lengths"]
    assert lengths["by_source"]["server_tokenizer"]["exact_share"] == 1.0
    assert lengths["by_source"]["estimate"]["compared"] == len(later)


def test_a_local_tokenizer_gives_exact_lengths_with_no_tokenize_call(vllm_server, tmp_path):
    tokenizer = served_tokenizer(vllm_server, tmp_path / "tokenizer")
    records, summary, access = run_and_read_access_log(vllm_server, tmp_path, "--tokenizer",
                                                       str(tokenizer))
    assert len(records) == REQUESTS and all(r.ok for r in records)
    assert access.count(CHAT) == REQUESTS
    assert "/tokenize" not in access and "/apply-template" not in access, access
    chats = [i for i, p in enumerate(access) if p == CHAT]
    assert [p for p in access[chats[0]:] if p != CHAT] == []
    # Every prompt, the second turns with their real answers too, is exactly the
    # scenario's length as vLLM counted it.
    assert {r.prompt_length_source for r in records} == {"local_tokenizer"}
    assert [r.prompt_tokens for r in records] == [r.target_prompt_tokens for r in records]
    assert summary["prompt_lengths"]["exact_share"] == 1.0
    assert summary["prompt_lengths"]["preparation"]["server_tokenizer_requests"] == 0
