"""`servescope compare` against the REAL vLLM CPU server, the REAL Ollama (ipex-llm 0.5.4,
OLLAMA_NUM_PARALLEL=1) and the REAL llama.cpp server (2 slots of 512 tokens), each with its
tiny model (session fixtures): the report is produced, the manifests come from the servers'
own answers, the known differences (safetensors vs GGUF, context per request 2048 vs 512)
raise warnings, the token counts are each server's usage, checked against the scenario's
lengths, and the host's CPU and memory use is in the report. A second llama.cpp serving
the same weights in Q8_0 makes the quantization warning fire from the servers' answers."""

from __future__ import annotations

import json

import pytest

from helpers import servescope
from servescope.core.store import Store

OUTPUT_TOKENS = 16
PROMPT_TOKENS = 64
REQUESTS = 6
SCENARIO = f"""\
name: compare-live
seed: 11
prompt_tokens: {PROMPT_TOKENS}
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
            # ... against the scenario's intended lengths: every answer is exactly as long
            # as asked (ignore_eos / the tiny models' unreachable EOS) on every server
            assert k["prompt_intended_mean"] == PROMPT_TOKENS
            assert k["output_intended_mean"] == OUTPUT_TOKENS
            assert all(r.target_output_tokens == r.output_tokens == OUTPUT_TOKENS
                       for r in records), [r.output_tokens for r in records]
            assert k["short_outputs"] == k["long_outputs"] == k["short_prompts"] == 0
            if t["name"] == "o":  # no /tokenize: sized by an estimate, counted longer
                assert k["long_prompts"] > 0
            else:  # sized with the server's own tokenizer: within 10% of intended
                assert k["long_prompts"] == 0
                assert all(0.9 * PROMPT_TOKENS <= r.prompt_tokens <= 1.1 * PROMPT_TOKENS
                           for r in records), [r.prompt_tokens for r in records]


def test_host_use_is_in_the_report(compared):
    """The host collector ran during each target's levels: CPU and memory use per level and
    over the target, the serving processes' RSS, and the GPU said plainly (none here)."""
    result, out, _, res = compared
    for t in result["targets"]:
        gpus = t["manifest"]["host"]["gpus"]
        for use in [t["host_use"], *(s["host_use"] for s in t["summaries"])]:
            assert use["samples"] >= 1, (t["name"], use)
            assert 0 <= use["cpu_mean_pct"] <= use["cpu_peak_pct"] <= 100
            assert 0 < use["memory_used_peak_bytes"] <= use["memory_total_bytes"]
            assert use["gpu"] == ("present" if gpus else "no GPU")
        assert t["host_use"]["server_rss_peak_bytes"] > 0  # found by the target's port
        assert t["host_use"]["cpu_peak_pct"] > 0
    md = (out / "report.md").read_text()
    assert "## Host use: CPU, memory, GPU" in md and "| l | all |" in md
    assert "Host use during each level" in (out / "report.html").read_text()
    assert "host CPU" in res.stdout


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


def test_quantization_mismatch_fires_from_the_servers_answers(llamacpp_server,
                                                              llamacpp_q8_server, tmp_path):
    """The same tiny weights served as F32 and as Q8_0 by two real llama-servers: each
    names its own file type (/props model_ftype), and the report says the quantizations
    differ, and nothing else that changes the result."""
    scenario, out = tmp_path / "q.yaml", tmp_path / "out"
    scenario.write_text(SCENARIO)
    res = servescope("compare", str(scenario),
                     "--target", f"f32=llamacpp:{llamacpp_server.url}",
                     "--target", f"q8=llamacpp:{llamacpp_q8_server.url}",
                     "--concurrency", "1", "--requests", "3", "--out", str(out), "--quiet",
                     db=tmp_path / "q.db", timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads((out / "compare.json").read_text())
    m = {t["name"]: t["manifest"] for t in result["targets"]}
    assert m["f32"]["quantization"] == "F32" and m["q8"]["quantization"] == "Q8_0"
    assert m["q8"]["model_path"].endswith("tiny-q8_0.gguf")
    assert m["f32"]["parameters"] == m["q8"]["parameters"] == 133696  # the same model
    differs = {w["field"]: w for w in result["warnings"] if w["kind"] == "differs"}
    assert set(differs) == {"quantization"}, result["warnings"]
    assert "quantization differs (f32: F32, q8: Q8_0)" in differs["quantization"]["message"]
    assert set(result["marked"]) == {"f32", "q8"}
    md = (out / "report.md").read_text()
    assert md.index("quantization differs") < md.index("## Verdict")
    assert "warning: quantization differs" in res.stderr
    for t in result["targets"]:  # both answered in full, counted by their own usage
        assert t["tokens"]["output_usage_mean"] == OUTPUT_TOKENS
        assert t["tokens"]["count_sources"] == ["usage"]
