"""Against a REAL Ollama server (ipex-llm build of Ollama 0.5.4 on the CPU, tiny
random-weights model built by the suite): what the collector reads from /api/ps and
/api/show, and the per-request phases, agree with what the server did.

The server (tests/conftest.py) is started once per session with OLLAMA_NUM_PARALLEL=1.
If it cannot be installed or started, every test here fails with the reason; none skips.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import httpx
import pytest

from servescope.collectors.ollama import model_events, phases_from_response, poll_ollama

MODEL = "tiny"
LOADED = "tiny:latest"  # the name /api/ps reports


@pytest.fixture(scope="module")
def ollama(ollama_server):
    return ollama_server


@pytest.fixture()
def client(ollama):
    with httpx.Client(base_url=ollama.url, timeout=60) as c:
        yield c


def _load(client: httpx.Client) -> dict:
    body = client.post("/api/generate", json={"model": MODEL}).json()
    assert body["done_reason"] == "load", body
    return body


def _unload(client: httpx.Client) -> dict:
    body = client.post("/api/generate", json={"model": MODEL, "keep_alive": 0}).json()
    assert body["done_reason"] == "unload", body
    return body


def _generate(client: httpx.Client, num_predict: int) -> dict:
    resp = client.post("/api/generate", json={
        "model": MODEL, "prompt": "why is the sky blue", "stream": False,
        "options": {"num_predict": num_predict, "seed": 7}})
    resp.raise_for_status()
    return resp.json()


def _wait_until_unloaded(url: str, client: httpx.Client):
    deadline = time.monotonic() + 10
    while (snap := poll_ollama(url, client)).loaded and time.monotonic() < deadline:
        time.sleep(0.1)
    return snap


def test_loaded_model_shows_in_ps_with_its_size(ollama, client):
    _unload(client)
    before = _wait_until_unloaded(ollama.url, client)
    _load(client)
    snap = poll_ollama(ollama.url, client)

    assert snap.info["version"].startswith("0.5.4")
    assert snap.loaded == [LOADED]
    assert snap.value("models_loaded") == 1
    assert snap.value("model_size_bytes", LOADED) > 500_000  # weights (0.5 MB) + KV + graph
    assert snap.value("model_vram_bytes", LOADED) == 0  # CPU only
    assert snap.value("model_context_length", LOADED) == 2048  # trained, from model_info
    show = snap.info["models"][0]["show"]
    assert (show["family"], show["parameter_count"]) == ("llama", 133696)
    assert show["parameters"]["num_ctx"] == 512  # from the suite's Modelfile
    assert model_events(before, snap) == [("load", LOADED)]


def test_generate_phases_are_consistent(client):
    _load(client)
    started = time.perf_counter()
    body = _generate(client, num_predict=64)
    wall_s = time.perf_counter() - started
    p = phases_from_response(body)

    for key in ("total_s", "load_s", "prefill_s", "decode_s", "queue_and_overhead_s"):
        assert p[key] is not None and p[key] >= 0, (key, body)
    assert p["load_s"] + p["prefill_s"] + p["decode_s"] <= p["total_s"]
    assert p["total_s"] <= wall_s  # the server's clock runs inside the client's
    assert p["prompt_tokens"] > 0
    # The tiny model never samples an end token, so it writes exactly num_predict tokens.
    assert p["output_tokens"] == 64 and body["done_reason"] == "length"
    assert p["decode_tokens_per_s"] > 0


def _server_ns(created_at: str) -> int:
    """Ollama's RFC 3339 stamp with nanoseconds ("...T22:34:05.8163084Z") -> Unix ns."""
    whole, _, frac = created_at.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return int(seconds) * 1_000_000_000 + int(frac.ljust(9, "0")[:9] or 0)


def _send_two_at_once(client: httpx.Client, num_predict: int) -> list[dict]:
    start = threading.Barrier(2)
    bodies: list[dict] = []

    def send(prompt: str) -> None:
        start.wait()
        bodies.append(client.post("/api/generate", json={
            "model": MODEL, "prompt": prompt, "stream": False,
            "options": {"num_predict": num_predict, "seed": 1}}).json())

    threads = [threading.Thread(target=send, args=(p,)) for p in ("hello world", "sky")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return sorted(bodies, key=lambda b: _server_ns(b["created_at"]))


def test_second_request_waits_for_the_first_with_one_slot(client, ollama):
    """OLLAMA_NUM_PARALLEL=1, two generates sent at once: the one served second waits
    until the first is done, and that wait shows in its total, not in its prefill or
    decode. Which one goes first is the server's choice; server stamps decide
    (created_at ends a request, created_at - total_duration is its arrival)."""
    assert ollama.num_parallel == 1
    _load(client)
    overlap_s = 0.0
    for _attempt in range(3):  # a starved client thread can send its request too late
        first, second = _send_two_at_once(client, num_predict=400)
        first_end_ns = _server_ns(first["created_at"])
        second_arrival_ns = _server_ns(second["created_at"]) - second["total_duration"]
        overlap_s = (first_end_ns - second_arrival_ns) / 1e9
        if overlap_s > 0.05:
            break
    assert overlap_s > 0.05, "the two requests were never at the server at the same time"

    p1, p2 = phases_from_response(first), phases_from_response(second)
    assert p1["output_tokens"] == p2["output_tokens"] == 400
    # Time spent not computing. Mostly queue_and_overhead (the runner's one slot); part
    # can land in load_duration: before reusing a loaded runner the scheduler pings it,
    # and a busy runner answers late.
    wait1, wait2 = (p["total_s"] - p["prefill_s"] - p["decode_s"] for p in (p1, p2))
    # The second waited (almost) from its arrival until the first one ended ...
    assert wait2 >= 0.8 * overlap_s - 0.01, (p1, p2, overlap_s)
    assert p2["queue_and_overhead_s"] > 0, p2
    # ... and the first, alone in the slot, waited less.
    assert wait1 < wait2, (p1, p2)


def test_unload_with_keep_alive_zero_is_an_unload_event(ollama, client):
    _load(client)
    loaded = poll_ollama(ollama.url, client)
    assert loaded.loaded == [LOADED]

    _unload(client)
    after = _wait_until_unloaded(ollama.url, client)

    assert after.value("models_loaded") == 0
    assert model_events(loaded, after) == [("unload", LOADED)]
