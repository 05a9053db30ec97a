"""The Live page's Ollama cards, on samples made from payloads captured from a real Ollama
0.5.4 (ipex-llm build): what is loaded, its load/unload events, and each proxied
response's phases."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_dashboard import TIMEOUT_S, chart_specs, frame_with, texts, trace_names, ys

from servescope.collectors.ollama import model_events, phases_from_response, snapshot_from_payloads
from servescope.collectors.ollama_proxy import _phase_samples
from servescope.core.store import Store

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PREFIX = "ollama-0.5.4-ipexllm-"
MODEL = "tiny:latest"
MIB = 1024**2


def live_page() -> None:
    from servescope.core.store import Store
    from servescope.dashboard import live

    live.render(Store())  # SERVESCOPE_DB names the store


def payload(name: str):
    return json.loads((FIXTURES / f"{PREFIX}{name}").read_text())


def add_ollama(store: Store, now: float) -> None:
    """Five polls 10 s apart as the collector makes them: loaded, loaded, unloaded, empty,
    loaded again; the info is the first poll's (the collector writes it when the target
    comes up), the events the changes between polls."""
    version, show = payload("version.json"), payload("show.json")
    polls = [payload(n) for n in ("ps.json", "ps.json", "ps-after-unload.json")]
    polls += [payload("ps-empty.json"), payload("ps.json")]
    snaps = [
        snapshot_from_payloads(
            version,
            ps,
            {m["name"]: show for m in ps["models"]},
            source="http://127.0.0.1:11434",
            ts=now - 50 + 10 * i,
        )
        for i, ps in enumerate(polls)
    ]
    target = store.upsert_target("ollama", "ollama", "http://127.0.0.1:11434", info=snaps[0].info)
    store.set_target_status(target, up=True, ts=snaps[0].ts)
    for prev, snap in zip([None, *snaps], snaps, strict=False):
        store.add_samples(target, snap.ts, snap.samples)
        if prev is not None:
            for kind, model in model_events(prev, snap):
                store.add_target_event(target, kind, model, snap.ts)


def proxied_bodies() -> list[tuple[str, dict]]:
    """Final bodies of real responses: a generate, a chat, two concurrent generates."""
    lines = (FIXTURES / f"{PREFIX}generate-concurrent.ndjson").read_text().splitlines()
    return [
        ("/api/generate", payload("generate.json")),
        ("/api/chat", payload("chat.json")),
        *(("/api/generate", json.loads(line)) for line in lines),
    ]


def add_proxy(store: Store, now: float) -> None:
    """What `servescope proxy` stores: each response's phases, one second apart."""
    target = store.upsert_target("proxy:127.0.0.1:11435", "ollama-proxy", "http://127.0.0.1:11434")
    for i, (endpoint, body) in enumerate(proxied_bodies()):
        samples = _phase_samples(endpoint, body, phases_from_response(body))
        store.add_samples(target, now - 30 + i, samples)


@pytest.fixture
def ollama_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ollama.db"
    with Store(path) as store:
        now = time.time()
        add_ollama(store, now)
        add_proxy(store, now)
    monkeypatch.setenv("SERVESCOPE_DB", str(path))
    return path


def charts_by_title(at: AppTest) -> dict[str, dict]:
    return {c["layout"]["title"]["text"]: c for c in chart_specs(at)}


def test_ollama_card_shows_loaded_models_and_their_events(ollama_db: Path) -> None:
    at = AppTest.from_function(live_page, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert [s.value for s in at.subheader] == ["ollama", "proxy:127.0.0.1:11435"]
    metrics = {m.label: m.value for m in at.metric}
    assert "Ollama version **0.5.4-ipexllm-20250407**" in texts(at.markdown)
    assert metrics["Their memory"] == "11.8 MiB"
    assert metrics["Models loaded now"] == "1"
    assert (metrics["Loads in range"], metrics["Unloads in range"]) == ("1", "1")
    assert "5 polls in this range" in texts(at.caption)

    (row,) = frame_with(at, "processor").to_dict("records")
    assert row == {
        "model": MODEL,
        "size": "11.8 MiB",  # 12394752 bytes in /api/ps
        "VRAM": "0 B",
        "processor": "100% CPU",
        "context (tokens)": "2,048",  # the trained context, from /api/show
        "family": "llama",
        "parameters": "134K",
        "quantization": "unknown",
    }

    charts = charts_by_title(at)
    loaded = charts["Models loaded"]
    assert trace_names(loaded) == ["models loaded", "load", "unload"]
    assert ys(loaded["data"][0]) == [1, 1, 0, 0, 1]
    # Each event sits on the line at the poll that saw it: unload at 0, load back at 1.
    assert ys(loaded["data"][1]) == [1] and loaded["data"][1]["text"] == [MODEL]
    assert ys(loaded["data"][2]) == [0] and loaded["data"][2]["text"] == [MODEL]
    memory = charts["Model memory"]
    assert trace_names(memory) == [f"{MODEL} size", f"{MODEL} VRAM"]
    assert ys(memory["data"][0])[-1] == pytest.approx(12394752 / MIB)
    assert memory["layout"]["yaxis"]["title"]["text"] == "MiB"

    events = frame_with(at, "event")
    assert list(events["event"]) == ["load", "unload"]  # newest first
    assert list(events["model"]) == [MODEL, MODEL]


def test_proxy_card_splits_each_response_into_phases(ollama_db: Path) -> None:
    at = AppTest.from_function(live_page, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Responses in range"] == "4"
    assert "4 responses in this range" in texts(at.caption)
    assert "servescope proxy in front of the Ollama at http://127.0.0.1:11434" in texts(at.caption)

    charts = charts_by_title(at)
    bars = charts["Phases per response"]
    assert trace_names(bars) == ["queue + overhead", "load", "prefill", "decode"]
    assert bars["layout"]["yaxis"]["title"]["text"] == "ms"
    # The captured generate: total 19564478 ns = load 2198269 + prompt_eval 3000000 +
    # eval 12000000 + 2366209 left over (queue and overhead).
    first = [ys(trace)[0] for trace in bars["data"]]
    assert first == pytest.approx([2.366209, 2.198269, 3.0, 12.0])
    chat = [ys(trace)[1] for trace in bars["data"]]
    assert sum(chat) == pytest.approx(39.868097)

    rates = charts["Decode tokens/s"]
    assert trace_names(rates) == ["tiny"]
    expected = [phases_from_response(body)["decode_tokens_per_s"] for _, body in proxied_bodies()]
    assert ys(rates["data"][0]) == pytest.approx(expected)
    assert ys(rates["data"][0])[0] == pytest.approx(2000.0)  # 24 tokens in 12 ms

    means = charts["Mean phases per model"]
    assert [t["y"] for t in means["data"]] == [["tiny"]] * 4
    decode_mean = sum(body["eval_duration"] for _, body in proxied_bodies()) / 4 / 1e6
    assert means["data"][3]["x"][0] == pytest.approx(decode_mean)


def test_ollama_cards_say_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "idle.db"
    with Store(path) as store:
        target = store.upsert_target("ollama", "ollama", "http://127.0.0.1:11434")
        store.set_target_status(target, up=True)
        snap = snapshot_from_payloads(payload("version.json"), payload("ps-empty.json"), {})
        store.add_samples(target, snap.ts, snap.samples)
        store.upsert_target("proxy:127.0.0.1:11435", "ollama-proxy", "http://127.0.0.1:11434")
    monkeypatch.setenv("SERVESCOPE_DB", str(path))
    at = AppTest.from_function(live_page, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Models loaded now"] == "0"
    assert metrics["Their memory"] == "0 B"
    assert "Ollama version **unknown**" in texts(at.markdown)  # no info until collected
    captions = texts(at.caption)
    assert "No model is loaded now" in captions
    assert "No model was loaded or unloaded in this time range." in captions
    assert "No responses through this proxy in the selected time range." in texts(at.info)
    assert "never scraped" not in texts(at.markdown)  # a proxy has no up/down status
