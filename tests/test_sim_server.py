"""The simulated server (servescope sim-server) against the real clients: the collector's
vLLM mapping, the load generator's stream parser and timed requests, and the physics it
claims (a decode step no faster than the weights read at the GPU's bandwidth; more
sequences in a batch: more tokens per second and longer gaps between them).

Bounds are generous: the server's histograms hold the simulator's timeline (exact), a
busy machine only adds lag (longer gaps), and the effects compared are several-fold."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from servescope.capacity import catalog
from servescope.capacity.perf import decode_bound
from servescope.collectors.loop import Collector, TargetSpec
from servescope.collectors.scrape import scrape
from servescope.core.clock import now_ns
from servescope.engines.sim_driver import SimSpec, build_backend, chat_tokens
from servescope.engines.sim_server import SimServer
from servescope.loadgen.openai_chat import ChatRequest, CompletionRequest, stream_chat
from servescope.loadgen.sse import SSEParser, parse_openai_chunk
from servescope.loadgen.wire import Wire

MODEL, GPU = "llama-3.1-8b", "h100-80gb"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    backend = build_backend(SimSpec(MODEL, GPU, max_num_seqs=64))
    with SimServer(backend, port=0) as server:
        yield server


def _chat(url: str, content: str, max_tokens: int, **extra) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
        **extra})


def _metric(url: str, name: str) -> float:
    """The sum of one family's samples named `name` (e.g. a histogram's _sum)."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_it_says_it_is_simulated_everywhere(sim):
    models = httpx.get(f"{sim.url}/v1/models")
    assert models.headers["x-servescope-simulated"] == "true"
    entry = models.json()["data"][0]
    assert entry["id"] == f"{MODEL} (simulated on {GPU})" and entry["simulated"] is True
    assert entry["max_model_len"] == 131072
    page = httpx.get(f"{sim.url}/metrics").text
    assert 'servescope_simulated{gpu="h100-sxm",model="llama-3.1-8b",step_model="physics"} 1.0' \
        in page
    assert _chat(sim.url, "hi", 2).headers["x-servescope-simulated"] == "true"
    assert httpx.get(f"{sim.url}/health").status_code == 200


def test_the_stream_has_vllms_shape_and_the_loadgen_times_it(sim):
    body = {"model": f"{MODEL} (simulated on {GPU})", "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": 6, "ignore_eos": True,
            "messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "What is a KV cache?"}]}
    with httpx.stream("POST", f"{sim.url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        parser, events = SSEParser(), []
        for chunk in r.iter_raw():
            events += parser.feed(chunk, now_ns())
    assert parser.pending == b"" and events[-1].data == "[DONE]"
    infos = [parse_openai_chunk(e.data) for e in events[:-1]]
    assert not infos[0].token  # the role announcement
    assert [i.token for i in infos[1:7]] == [True] * 6
    assert infos[6].finish_reason == "length" and infos[7].usage == {
        "prompt_tokens": chat_tokens(body["messages"]), "completion_tokens": 6,
        "total_tokens": chat_tokens(body["messages"]) + 6}
    assert json.loads(events[7].data)["choices"] == []

    # The load generator's own timed request, both APIs: every token an event, usage counted.
    wire = Wire(sim.url)
    try:
        messages = [{"role": "user", "content": "x" * 400}]
        for path, cls in (("/v1/chat/completions", ChatRequest),
                          ("/v1/completions", CompletionRequest)):
            rec = stream_chat(wire, path, cls(MODEL, messages, 12), f"r-{path}", now_ns(), 30)
            assert rec.ok, (path, rec.error_class, rec.error)
            assert rec.output_tokens == 12 and rec.token_count_source == "usage"
            assert len(rec.event_offsets_ns) == 12
            assert rec.prompt_tokens == (chat_tokens(messages) if cls is ChatRequest else 101)
    finally:
        wire.close()


def test_tokenize_counts_as_usage_does_and_errors_are_vllms(sim):
    messages = [{"role": "system", "content": "s" * 33}, {"role": "user", "content": "u" * 90}]
    counted = httpx.post(f"{sim.url}/tokenize", json={"model": MODEL, "messages": messages})
    assert counted.json()["count"] == chat_tokens(messages) == (9 + 4) + (23 + 4) + 3
    whole = httpx.post(f"{sim.url}/v1/chat/completions", timeout=30,
                       json={"messages": messages, "max_completion_tokens": 3}).json()
    assert whole["usage"]["prompt_tokens"] == counted.json()["count"]
    assert whole["choices"][0]["finish_reason"] == "length"
    assert len(whole["choices"][0]["message"]["content"]) == 3 * 4  # 4 characters a token

    too_long = _chat(sim.url, "x" * 600_000, 10)
    assert too_long.status_code == 400 and "maximum context length" in \
        too_long.json()["error"]["message"]
    unknown = _chat(sim.url, "hi", 2, model="gpt-9")
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"
    bad = httpx.post(f"{sim.url}/v1/completions", content=b"{not json")
    assert bad.status_code == 400
    assert httpx.post(f"{sim.url}/v1/completions", json={"prompt": ""}).status_code == 400


def _load(url: str, users: int, requests_each: int, prompt_chars: int,
          max_tokens: int) -> float:
    """`users` threads, each sending `requests_each` streamed requests; wall seconds."""
    errors: list[str] = []

    def user(i: int) -> None:
        with httpx.Client(timeout=120) as client:
            for k in range(requests_each):
                r = client.post(f"{url}/v1/completions", json={
                    "prompt": f"{i}-{k} " + "y" * prompt_chars, "max_tokens": max_tokens})
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    return time.monotonic() - start


def test_the_collector_reads_it_through_the_vllm_mapping(sim, store):
    before = scrape(sim.url, "auto").to_json()
    done = threading.Event()
    job = threading.Thread(target=lambda: (_load(sim.url, 24, 1, 4000, 150), done.set()))
    job.start()
    busy = None
    deadline = time.monotonic() + 30
    while not done.is_set() and time.monotonic() < deadline:
        snap = scrape(sim.url, "auto")
        if (snap.scalar("running") or 0) >= 8:
            busy = snap
            break
        time.sleep(0.02)
    with Collector([TargetSpec(name="sim", runtime="vllm", url=sim.url)], store, interval=0.2):
        job.join(60)
        time.sleep(0.6)
    assert busy is not None, "never saw 8 requests running"
    assert busy.runtime == "vllm"
    assert 0 < busy.kv_usage() < 1
    cache = busy.info["cache_config"]["0"]
    assert busy.scalar("kv_capacity_tokens") == int(cache["num_gpu_blocks"]) * 16
    after = scrape(sim.url, "auto").to_json()
    assert after["running"] == 0 and after["waiting"] == 0
    assert after["requests_finished_total"] - before["requests_finished_total"] == 24
    assert after["generation_tokens_total"] - before["generation_tokens_total"] == 24 * 150
    ttft = after["histograms"]["ttft_seconds"]
    assert ttft["count"] - before["histograms"]["ttft_seconds"]["count"] == 24
    for concept in ("itl_seconds", "e2e_seconds", "queue_seconds", "prefill_seconds",
                    "decode_seconds"):
        assert after["histograms"][concept]["count"] >= 24, concept
    target = next(t for t in store.targets() if t["name"] == "sim")
    stored = store.samples(target["id"], concepts=["running", "kv_usage", "ttft_seconds"])
    assert {"running", "kv_usage", "ttft_seconds"} <= set(stored["concept"])
    assert "(simulated on h100-80gb)" in target["info"]["model"]


def test_decode_obeys_physics_and_batching_trades_latency_for_throughput(sim):
    info, hw = catalog.model(MODEL), catalog.hardware(GPU)
    backend = sim.app.backend
    floor = decode_bound(info.spec, backend.setup.fmt, hw, 1, 1, 0,
                         backend.setup.kv_bytes).seconds_per_step
    assert floor > 0.004  # 16 GB of weights at 3.35 TB/s

    def run(users: int, each: int) -> tuple[float, float]:
        gaps, n = (_metric(sim.url, "vllm:inter_token_latency_seconds_sum"),
                   _metric(sim.url, "vllm:inter_token_latency_seconds_count"))
        wall = _load(sim.url, users, each, 6000, 64)
        gaps = _metric(sim.url, "vllm:inter_token_latency_seconds_sum") - gaps
        n = _metric(sim.url, "vllm:inter_token_latency_seconds_count") - n
        assert n == users * each * 63
        return gaps / n, users * each * 64 / wall

    itl_1, rate_1 = run(1, 3)
    itl_32, rate_32 = run(32, 1)
    assert itl_1 >= floor and itl_32 >= floor
    print(f"floor {floor * 1e3:.2f} ms, ITL {itl_1 * 1e3:.2f} -> {itl_32 * 1e3:.2f} ms, "
          f"{rate_1:.0f} -> {rate_32:.0f} tokens/s, lag {sim.app.driver.lag_s:.3f} s")
    assert itl_32 > 1.2 * itl_1, (itl_1, itl_32)  # KV reads and prefill chunks in the batch
    assert rate_32 > 2 * rate_1, (rate_1, rate_32)


def test_the_artifact_manifest_reads_its_limits(sim):
    from servescope.collectors.manifest import fetch_manifest

    m = fetch_manifest(sim.url)
    assert m["runtime"] == "vllm" and m["model"] == f"{MODEL} (simulated on {GPU})"
    assert m["concurrency_value"] == 64  # from /server_info, as a dev-mode vLLM says it
    assert m["kv_capacity_tokens"] == sim.app.backend.scheduler.kv_blocks * 16


def test_a_client_that_leaves_is_counted_as_an_abort(sim):
    def aborted() -> float:
        return _metric(sim.url, 'vllm:request_success_total{engine="0",finished_reason="abort"'
                       f',model_name="{MODEL} (simulated on {GPU})"}}')

    before = aborted()
    body = {"prompt": "go", "max_tokens": 150, "stream": True}
    with httpx.stream("POST", f"{sim.url}/v1/completions", json=body, timeout=30) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 4:
                break
    deadline = time.monotonic() + 30
    while aborted() == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert aborted() == before + 1
    assert sim.app.driver.streams == {}


def test_a_calibrated_profile_sets_the_step_time(tmp_path):
    from servescope.capacity.sim_calibrate import Calibration
    from servescope.capacity.sim_profile import Profile
    from servescope.capacity.steptime import LinearStepModel

    profile = tmp_path / "profile.json"
    step = LinearStepModel(a_s=0.02, prefill_s_per_token=1e-5, decode_s_per_seq=0.001,
                           kv_s_per_token=0.0)
    profile.write_text(json.dumps(Profile(Calibration(step, 0.01, 0.0, 10, 0), {}).to_dict()))
    backend = build_backend(SimSpec("qwen3-0.6b", "l4", profile=profile))
    assert backend.step_model_name == f"calibrated: {profile}"
    with SimServer(backend, port=0) as server:
        started = time.monotonic()
        r = httpx.post(f"{server.url}/v1/completions", timeout=30,
                       json={"prompt": "calibrated", "max_tokens": 20})
        took = time.monotonic() - started
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 20
        itl = _metric(server.url, "vllm:inter_token_latency_seconds_sum") / 19
        assert itl >= 0.021  # a + one decode, from the profile
        assert took >= 0.01 + 20 * 0.021
        assert 'step_model="calibrated"' in httpx.get(f"{server.url}/metrics").text

    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match=r"bad\.json"):
        build_backend(SimSpec("qwen3-0.6b", "l4", profile=bad))


def test_a_profile_faster_than_the_gpu_is_held_to_its_roofline(tmp_path):
    from servescope.capacity.sim_calibrate import Calibration
    from servescope.capacity.steptime import LinearStepModel

    profile = tmp_path / "too-fast.json"
    profile.write_text(json.dumps(Calibration(
        LinearStepModel(0.0, 1e-9, 1e-6, 0.0), 0.0, 0.0, 10, 0).to_dict()))
    backend = build_backend(SimSpec(MODEL, GPU, profile=profile))
    floor = decode_bound(catalog.model(MODEL).spec, backend.setup.fmt, catalog.hardware(GPU),
                         1, 1, 0, backend.setup.kv_bytes).seconds_per_step
    assert backend.step_model.step_seconds(0, 1, 100) >= floor
    with SimServer(backend, port=0) as server:
        assert _chat(server.url, "fast?", 30).status_code == 200
        assert _metric(server.url, "vllm:inter_token_latency_seconds_sum") / 29 >= floor
