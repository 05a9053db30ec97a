"""Prompts are built before the measured window, and nothing but the measured requests reaches
the server during it: closed loop, open loop, multi-turn and trace replay, each run through
`servescope load` against the streaming test server, whose access log (every request, in
arrival order, with its kernel receive stamp) is checked after the run. Also the local
tokenizer (`--tokenizer`): loading from a file, a folder and the Hugging Face cache, and
exact prompt lengths planned with it."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

from helpers import REPO_ROOT, servescope
from servescope.core.store import Store
from servescope.loadgen.prompts import Conversation, PromptBuilder
from servescope.loadgen.scenario import Scenario
from servescope.loadgen.tokenizer import LocalTokenizer, TokenizerError, load_tokenizer
from testsupport.streaming_server import StreamingServer

CHAT = "/v1/chat/completions"
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# -- a real byte-level BPE tokenizer, trained here in a second ----------------------------
def write_tokenizer(folder: Path, template_in: str = "config") -> Path:
    """A small byte-level BPE (as the tiny Qwen2 the vLLM tests serve) with a ChatML
    template in tokenizer_config.json ("config") or chat_template.jinja ("jinja")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(errors="ignore") for p in sorted(stdlib.glob("*.py"))[:20]]
    tok.train_from_iterator(texts, trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None}
    if template_in == "config":
        config["chat_template"] = CHATML
    else:
        (folder / "chat_template.jinja").write_text(CHATML)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return write_tokenizer(tmp_path_factory.mktemp("tok") / "tiny")


def test_a_local_tokenizer_counts_the_chat_template_from_a_file_or_a_folder(tokenizer_dir,
                                                                            tmp_path):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    messages = [{"role": "system", "content": "the contract"},
                {"role": "user", "content": "[w0-0000001-deadbeef] token cache"}]
    rendered = ("<|im_start|>system\nthe contract<|im_end|>\n<|im_start|>user\n"
                "[w0-0000001-deadbeef] token cache<|im_end|>\n<|im_start|>assistant\n")
    expected = len(raw.encode(rendered, add_special_tokens=False).ids)
    for spec in (tokenizer_dir, tokenizer_dir / "tokenizer.json"):
        tok = load_tokenizer(str(spec))
        assert tok.render(messages) == rendered
        assert tok.count(messages) == expected
    # the template may be a file of its own (as transformers 5 saves it)
    jinja = write_tokenizer(tmp_path / "jinja", template_in="jinja")
    assert load_tokenizer(str(jinja)).render(messages) == rendered
    # /v1/completions: the flattened text, special tokens added
    text = load_tokenizer(str(tokenizer_dir)).for_text_prompts(True)
    flat = "the contract\n[w0-0000001-deadbeef] token cache"
    assert text.count(messages) == len(raw.encode(flat).ids)


def test_a_tokenizer_that_cannot_be_loaded_is_named_in_the_error(tmp_path):
    with pytest.raises(TokenizerError, match=r"--tokenizer /no/such/dir: no such file"):
        load_tokenizer("/no/such/dir")
    (tmp_path / "tokenizer.json").write_text("not json")
    with pytest.raises(TokenizerError, match=r"is not a tokenizers file"):
        load_tokenizer(str(tmp_path / "tokenizer.json"))
    bare = write_tokenizer(tmp_path / "bare")
    (bare / "tokenizer_config.json").write_text("{}")
    with pytest.raises(TokenizerError, match=r"has no chat template"):
        load_tokenizer(str(bare)).count([{"role": "user", "content": "x"}])
    # The CLI refuses it before anything starts (exit 2), naming it.
    res = servescope("load", "chat", "--target", "http://127.0.0.1:9", "--tokenizer",
                     str(tmp_path / "missing.json"), "--quiet", db=tmp_path / "s.db")
    assert res.returncode == 2, res.stderr
    assert f"--tokenizer {tmp_path / 'missing.json'}" in res.stderr


def _hf_cache(root: Path, repo: str, source: Path) -> Path:
    """`repo` laid out in a Hugging Face hub cache at `root`, as a download leaves it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = root / f"models--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (snapshot / name).write_bytes((source / name).read_bytes())
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    return snapshot


def test_a_hugging_face_id_is_found_in_the_local_cache_offline(tokenizer_dir, tmp_path):
    _hf_cache(tmp_path / "hub", "servescope/tiny-chat", tokenizer_dir)
    code = ("import sys; from servescope.loadgen.tokenizer import load_tokenizer, "
            "TokenizerError\n"
            "try:\n    t = load_tokenizer(sys.argv[1])\n"
            "except TokenizerError as e:\n    print('ERROR', e); raise SystemExit(0)\n"
            "print(t.count([{'role': 'user', 'content': 'token cache'}]))")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}

    def load(spec: str) -> str:
        res = subprocess.run([sys.executable, "-c", code, spec], capture_output=True,
                             text=True, env=env, cwd=REPO_ROOT, timeout=60)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    expected = load_tokenizer(str(tokenizer_dir)).count([{"role": "user",
                                                          "content": "token cache"}])
    assert load("servescope/tiny-chat") == str(expected)
    missing = load("servescope/not-cached")
    assert missing.startswith("ERROR --tokenizer servescope/not-cached:")
    assert "HF_HUB_OFFLINE is set" in missing


def scenario(**fields) -> Scenario:
    base = {"name": "t", "seed": 5, "prompt_tokens": {"dist": "uniform", "min": 80,
                                                      "max": 300},
            "output_tokens": 4, "shared_prefix_tokens": 24, "prefix_groups": 3,
            "stages": [{"concurrency": 2, "duration": "10s"}]}
    return Scenario.model_validate({**base, **fields})


def local_builder(s: Scenario, tok: LocalTokenizer) -> PromptBuilder:
    return PromptBuilder("http://127.0.0.1:9", "m", httpx.Client(), s.shared_prefix_tokens,
                         seed=s.seed, tokenizer=tok)


def test_prompts_planned_with_a_local_tokenizer_are_exact_and_reproducible(tokenizer_dir):
    s = scenario()
    tok = load_tokenizer(str(tokenizer_dir))

    def build(order: list[int]) -> dict[str, tuple[int, str]]:
        prompts = local_builder(s, tok)
        out = {}
        for i in order:
            turn = Conversation(s, i).next_turn(prompts)
            assert turn.length_source == "local_tokenizer"
            assert tok.count(turn.messages) == turn.target_prompt_tokens, turn
            out[turn.request_id] = (turn.target_prompt_tokens, json.dumps(turn.messages))
        return out

    forward = build(list(range(60)))
    assert forward == build(list(reversed(range(60))))  # whatever the order they are built in
    # the shared prefix is exactly shared_prefix_tokens longer than no system prompt at all
    prompts = local_builder(s, tok)
    empty = [{"role": "user", "content": ""}]
    system = {"role": "system", "content": prompts.system_message(1)}
    assert tok.count([system, *empty]) == tok.count(empty) + 24


# -- nothing but measured requests during the run -----------------------------------------
@pytest.fixture(scope="module")
def tokenizing_server():
    with StreamingServer(first_token_ms=5, gap_ms=2, tokenize=True) as s:
        yield s


@pytest.fixture(scope="module")
def bare_server():
    with StreamingServer(first_token_ms=5, gap_ms=2) as s:
        yield s


SHAPES = {
    "closed": """\
stages: [{concurrency: 4, duration: 30s}]
max_requests: 40
""",
    "open": """\
arrivals: {process: poisson, rate: 40/s, duration: 1s}
""",
    "closed-turns": """\
turns: 3
stages: [{concurrency: 3, duration: 30s, think_time: 10ms}]
max_requests: 24
""",
    "open-turns": """\
turns: {dist: uniform, min: 2, max: 3}
arrivals: {process: constant, rate: 10/s, duration: 1s, think_time: 10ms}
""",
}


def scenario_text(shape: str) -> str:
    return f"""\
name: side-requests
seed: 3
prompt_tokens: {{dist: uniform, min: 20, max: 60}}
output_tokens: 4
shared_prefix_tokens: 12
prefix_groups: 3
request_timeout: 10s
{shape}"""


def run_load(server: StreamingServer, tmp_path: Path, text: str, *flags: str):
    """`servescope load` against `server` with its access log reset first; returns (records,
    summary, the access log of the run, the CLI's stderr)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path, db, out = tmp_path / "s.yaml", tmp_path / "s.db", tmp_path / "summary.json"
    path.write_text(text)
    server.reset_access()
    res = servescope("load", str(path), "--target", server.url, "--out", str(out), *flags,
                     db=db, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads(out.read_text())
    with Store(db) as store:
        records = store.requests(summary["run_id"])
    return records, summary, server.access(), res.stderr


def assert_nothing_but_measured_requests(records, access) -> list:
    """After the first measured request, only measured requests reached the server: every
    other request arrived before it (by arrival order and by the kernel's receive stamp,
    before the client's first send), and the chat requests are exactly the records sent."""
    chats = [a for a in access if a[1] == "POST" and a[2] == CHAT]
    side = [a for a in access if not (a[1] == "POST" and a[2] == CHAT)]
    assert chats, access
    sent = [r for r in records if r.error_class != "client_overload"]
    assert len(chats) == len(sent) == len({r.request_id for r in sent})
    assert [a for a in side if a[0] > chats[0][0]] == [], "side requests during the run"
    first_send = min(r.send_ns for r in sent)
    assert all(a[3] < first_send for a in side), (side[-1], first_send)
    return side


@pytest.mark.parametrize("shape", list(SHAPES))
def test_only_measured_requests_reach_the_server_during_the_run(tokenizing_server, tmp_path,
                                                                shape):
    records, summary, access, stderr = run_load(tokenizing_server, tmp_path,
                                                scenario_text(SHAPES[shape]))
    side = assert_nothing_but_measured_requests(records, access)
    # The prompts were counted by the server's tokenizer, all before the run ...
    prep = summary["prompt_lengths"]["preparation"]
    assert prep["server_tokenizer_requests"] == sum(a[2] == "/tokenize" for a in side) > 0
    assert "prompts with the server's tokenizer" in stderr  # the preparation's own line
    first = [r for r in records if not re.search(r"-t[1-9]\d*$", r.request_id)]
    assert first and all(r.prompt_length_source == "server_tokenizer" for r in first)
    assert all(r.prompt_tokens == r.target_prompt_tokens for r in first)
    # ... and a later turn, which carries the real answer, was sized without asking it.
    later = [r for r in records if r not in first]
    assert bool(later) == ("turns" in shape)
    assert all(r.prompt_length_source == "estimate" for r in later)
    lengths = summary["prompt_lengths"]
    assert lengths["sources"] == {"server_tokenizer": len(first), **(
        {"estimate": len(later)} if later else {})}
    assert lengths["by_source"]["server_tokenizer"]["exact_share"] == 1.0
    assert lengths["compared"] == len(records)


def test_trace_replay_sends_only_measured_requests(tokenizing_server, tmp_path):
    trace = tmp_path / "trace.jsonl"
    tmp_path.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    trace.write_text("".join(json.dumps({"t": 0.05 * i, "prompt_tokens": rng.randint(20, 80),
                                         "output_tokens": 3}) + "\n" for i in range(12)))
    records, summary, access, _ = run_load(tokenizing_server, tmp_path, f"""\
name: replay
trace: {{file: {trace}}}
request_timeout: 10s
""")
    assert len(records) == 12
    assert_nothing_but_measured_requests(records, access)
    assert all(r.prompt_tokens == r.target_prompt_tokens for r in records)
    assert summary["prompt_lengths"]["exact_share"] == 1.0


def test_a_server_without_a_tokenizer_is_probed_before_the_run_only(bare_server, tmp_path):
    records, summary, access, stderr = run_load(bare_server, tmp_path,
                                                scenario_text(SHAPES["closed-turns"]))
    side = assert_nothing_but_measured_requests(records, access)
    assert [a[2] for a in side if a[2] in ("/tokenize", "/apply-template")] == [
        "/tokenize", "/apply-template"]  # one probe each, both 404
    assert {r.prompt_length_source for r in records} == {"estimate"}
    assert "without a tokenizer" in stderr
    assert summary["prompt_lengths"]["sources"] == {"estimate": len(records)}


def test_a_local_tokenizer_asks_the_server_nothing(tokenizing_server, tokenizer_dir,
                                                   tmp_path):
    records, summary, access, stderr = run_load(
        tokenizing_server, tmp_path, scenario_text(SHAPES["closed-turns"]),
        "--tokenizer", str(tokenizer_dir))
    side = assert_nothing_but_measured_requests(records, access)
    assert not [a for a in side if a[2] in ("/tokenize", "/apply-template")]
    assert {r.prompt_length_source for r in records} == {"local_tokenizer"}
    assert summary["prompt_lengths"]["preparation"]["server_tokenizer_requests"] == 0
    assert f"with the local tokenizer {tokenizer_dir}" in stderr


def test_distributed_workers_prepare_before_the_run(tokenizing_server, tmp_path):
    records, summary, access, _ = run_load(tokenizing_server, tmp_path,
                                           scenario_text(SHAPES["closed"]), "--workers", "2")
    assert_nothing_but_measured_requests(records, access)
    assert {r.worker for r in records} == {"w0", "w1"}
    prep = summary["prompt_lengths"]["preparation"]
    assert set(prep) == {"w0", "w1"} and all(p["server_tokenizer_requests"] > 0
                                             for p in prep.values())
    assert all(r.prompt_tokens == r.target_prompt_tokens for r in records)


def test_past_the_preparation_prompts_are_planned_without_asking_the_server():
    """Sealed after the preparation, the server's tokenizer is never asked again: prompts
    built then (past the prepared ones, or later turns) are planned from the calibration,
    recorded as estimates; with an additive tokenizer they still come out exact."""
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        body = json.loads(request.content)
        return httpx.Response(200, json={"count": sum(len(m["content"].split()) + 4
                                                      for m in body["messages"])})

    s = scenario()
    prompts = PromptBuilder("http://test", "m", httpx.Client(transport=httpx.MockTransport(
        handler)), s.shared_prefix_tokens, seed=s.seed)
    convs = [Conversation(s, i) for i in range(20)]
    for conv in convs[:10]:
        assert conv.prepare(prompts) == "server_tokenizer"
    prompts.seal()
    before = len(asked)
    assert before > 0
    for conv in convs:
        turn = conv.next_turn(prompts)
        words = sum(len(m["content"].split()) + 4 for m in turn.messages)
        assert words == turn.target_prompt_tokens
        assert turn.length_source == ("server_tokenizer" if conv.index < 10 else "estimate")
    assert len(asked) == before  # nothing more reached the server


def run_page() -> None:
    from servescope.core.store import Store
    from servescope.dashboard import run

    run.render(Store())


def test_the_run_page_says_how_prompt_lengths_were_obtained(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from servescope.core.records import RequestRecord

    ms, now = 1_000_000, time.time_ns()
    records = [RequestRecord(
        request_id=f"r{i}", intended_ns=now + i * ms, send_ns=now + i * ms,
        first_token_ns=now + (i + 5) * ms, last_token_ns=now + (i + 9) * ms,
        end_ns=now + (i + 10) * ms, event_offsets_ns=[5 * ms, 9 * ms], prompt_tokens=100 + e,
        output_tokens=2, target_prompt_tokens=100, target_output_tokens=2,
        prompt_length_source=source)
        for i, (source, e) in enumerate([("server_tokenizer", 0)] * 3 + [("estimate", 4)])]
    with Store(tmp_path / "s.db") as store:
        run_id = store.create_run("prep", "chat", {"slos": {}}, "http://127.0.0.1:9", {})
        store.add_requests(run_id, records)
        store.finish_run(run_id, "finished", {"prompt_lengths": {"preparation": {
            "prompts": 3, "seconds": 0.5, "tokenizer": "with the server's tokenizer",
            "server_tokenizer_requests": 80}}})
    monkeypatch.setenv("SERVESCOPE_DB", str(tmp_path / "s.db"))
    at = AppTest.from_function(run_page, default_timeout=60).run()
    assert not at.exception
    assert "Prompt lengths" in [h.value for h in at.subheader]
    table = next(df.value for df in at.dataframe if "length from" in df.value.columns)
    rows = {r["length from"]: r for r in table.to_dict("records")}
    server = rows["the server's tokenizer, before the run"]
    assert server["requests"] == 3 and server["exactly the scenario's"] == "100 %"
    estimate = rows["estimated from lengths calibrated before the run"]
    assert estimate["requests"] == 1 and estimate["max abs error (tokens)"] == 4
    caption = " ".join(c.value for c in at.caption)
    assert "80 tokenizer requests to the server, all before the run" in caption
