"""`servescope compare` against the REAL vLLM CPU server, the REAL Ollama (ipex-llm 0.5.4,
OLLAMA_NUM_PARALLEL=1) and the REAL llama.cpp server (2 slots of 512 tokens), each with its
tiny model (session fixtures): the report is produced, the manifests come from the servers'
own answers, the known differences (safetensors vs GGUF, context per request 2048 vs 512)
raise warnings, and the token counts are each server's usage."""

from __future__ import annotations

import json

import pytest

from helpers import servescope
from servescope.core.store import Store

OUTPUT_TOKENS = 16
REQUESTS = 6
SCENARIO = f"""\
name: compare-live
seed: 11
prompt_tokens: 64
output_tokens: {OUTPUT_TOKENS}
stages:
  - {{concurrency: 1, duration: 5m}}
request_timeout: 120s
"""


@pytest.fixture(scope="module")
def compared(vllm_server, ollama_server, llamacpp_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    scenario, db, out = tmp / "compare.yaml", tmp / "compare.db", tmp / "out"
    scenario.write_text(SCENARIO)
    res = servescope("compare", str(scenario),
                     "--target", f"v=vllm:{vllm_server.url}",
                     "--target", f"o=ollama:{ollama_server.url}",
                     "--target", f"l=llamacpp:{llamacpp_server.url}",
                     "--concurrency", "1,2", "--requests", str(REQUESTS),
                     "--num-parallel", "o=1", "--out", str(out), "--quiet",
                     db=db, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads((out / "compare.json").read_text()), out, db, res


def test_report_files_are_written(compared):
    result, out, _, res = compared
    assert [t["name"] for t in result["targets"]] == ["v", "o", "l"]
    md = (out / "report.md").read_text()
    assert md.index("Not like for like") < md.index("## Verdict")
    html = (out / "report.html").read_text()
    assert "<script src=" not in html and "Plotly.newPlot" in html  # self-contained
    for t in result["targets"]:
        assert t["status"] == "finished"
        assert [s["level"] for s in t["summaries"]] == [1, 2]
        assert all(s["requests_ok"] == REQUESTS for s in t["summaries"]), t["summaries"]
    assert "interactive" in res.stdout and "batch" in res.stdout


def test_manifests_come_from_the_servers(compared, vllm_server):
    result, *_ = compared
    m = {t["name"]: t["manifest"] for t in result["targets"]}
    assert m["v"]["runtime"] == "vllm" and m["v"]["weights_format"] == "safetensors"
    assert m["v"]["context_effective"] == 2048 and m["v"]["kv_capacity_tokens"] > 0
    assert m["v"]["quantization"] == "float32"  # the served folder's config.json
    assert m["v"]["chat_template_sha256"] and m["v"]["chat_template_format"] == "jinja"
    assert m["o"]["chat_template_format"] == "go"
    assert m["o"]["runtime_version"].startswith("0.5.4")
    assert m["o"]["weights_format"] == "gguf" and m["o"]["weights_digest"].startswith("sha256:")
    assert m["o"]["quantization"] == "F32" and m["o"]["chat_template_sha256"]
    assert m["o"]["concurrency_value"] == 1
    assert m["l"]["weights_format"] == "gguf" and m["l"]["quantization"] == "F32"
    assert m["l"]["context_effective"] == 512 and m["l"]["concurrency_value"] == 2
    assert m["l"]["kv_capacity_tokens"] == 1024 and m["l"]["chat_template_sha256"]
    for manifest in m.values():
        assert manifest["host"]["cores_logical"] >= 1


def test_known_differences_raise_warnings(compared):
    result, *_ = compared
    fields = {w["field"]: w for w in result["warnings"] if w["kind"] == "differs"}
    assert "weights_format" in fields  # safetensors (vLLM) vs GGUF (Ollama, llama.cpp)
    assert "context_effective" in fields  # 2048 vs 512
    # All three tiny models are 32-bit floats: F32 GGUF and a float32 checkpoint are the
    # same precision, so no quantization warning may fire.
    assert "quantization" not in fields
    # The GGUF vocabulary (SPM, 402 tokens) is the same model's on Ollama and llama.cpp,
    # spelled alike; vLLM's Qwen2 has its own BPE tokenizer.
    assert set(fields["tokenizer"]["values"].values()) == {
        "llama (SPM), 402 tokens", result["targets"][0]["manifest"]["tokenizer"]}
    assert set(result["marked"]) == {"v", "o", "l"}
    # Ollama has no /tokenize: its prompts were sized by an estimate, and its own usage
    # shows them longer than intended; the report says so (the others are exact).
    long = [w["targets"] for w in result["warnings"] if w["kind"] == "long"]
    assert long == [["o"]], result["warnings"]


def test_token_counts_are_each_servers_usage(compared):
    result, _, db, _ = compared
    with Store(db) as store:
        for t in result["targets"]:
            records = [r for run in t["run_ids"] for r in store.requests(run) if r.ok]
            assert len(records) == 2 * REQUESTS
            assert all(r.token_count_source == "usage" for r in records)
            k = t["tokens"]
            assert k["requests"] == len(records)
            assert k["output_usage_total"] == sum(r.output_tokens for r in records)
            assert k["prompt_usage_total"] == sum(r.prompt_tokens for r in records)
            # Each run stored the target's manifest.
            assert all(store.run_manifest(run)["runtime"] == t["runtime"]
                       for run in t["run_ids"])


def test_a_prompt_cut_by_ollamas_context_is_flagged(vllm_server, ollama_server, tmp_path):
    """Ollama's tiny model has num_ctx 512: a 900-token prompt is cut silently, and its own
    usage (prompt_eval_count) says so; vLLM (2048) takes it whole."""
    scenario, out = tmp_path / "long.yaml", tmp_path / "out"
    scenario.write_text("name: long\nseed: 3\nprompt_tokens: 900\noutput_tokens: 4\n"
                        "stages:\n  - {concurrency: 1, duration: 5m}\nrequest_timeout: 120s\n")
    res = servescope("compare", str(scenario), "--target", f"v=vllm:{vllm_server.url}",
                     "--target", f"o=ollama:{ollama_server.url}", "--concurrency", "1",
                     "--requests", "2", "--out", str(out), "--quiet", db=tmp_path / "l.db",
                     timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads((out / "compare.json").read_text())
    cut = [w for w in result["warnings"] if w["kind"] == "truncated"]
    assert [w["targets"] for w in cut] == [["o"]], result["warnings"]
    assert "truncated by the server" in cut[0]["message"]
    tokens = {t["name"]: t["tokens"] for t in result["targets"]}
    assert tokens["o"]["prompt_usage_mean"] <= 512 < tokens["v"]["prompt_usage_mean"]
    assert "truncated" in res.stderr  # printed as a warning too
