"""`servescope compare` end to end against two scheduled streaming servers (one fast, one
slow: no engine needed), then its Compare page in a REAL headless Chromium: the manifests
side by side, the figures drawn by plotly, no exception."""

from __future__ import annotations

import json
import time

import pytest

from browser import NO_EXCEPTION, Browser, dashboard_in_browser, free_port
from helpers import servescope
from testsupport.streaming_server import StreamingServer

pytestmark = pytest.mark.browser  # test tier (a real headless Chromium): see pyproject.toml

SCENARIO = ("name: cmp\nseed: 2\nprompt_tokens: 24\noutput_tokens: 8\n"
            "stages:\n  - {concurrency: 1, duration: 60s}\n")


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare-browser")
    db, out, scenario = tmp / "cmp.db", tmp / "out", tmp / "cmp.yaml"
    scenario.write_text(SCENARIO)
    with StreamingServer(first_token_ms=5, gap_ms=2) as fast, \
            StreamingServer(first_token_ms=60, gap_ms=10) as slow:
        res = servescope("compare", str(scenario), "--target", f"fast={fast.url}",
                         "--target", f"slow={slow.url}", "--concurrency", "1,2",
                         "--requests", "6", "--out", str(out), "--quiet", db=db)
    assert res.returncode == 0, res.stdout + res.stderr
    return db, out, res


def test_compare_cli_writes_the_report(compared):
    _, out, _ = compared
    result = json.loads((out / "compare.json").read_text())
    assert [t["name"] for t in result["targets"]] == ["fast", "slow"]
    assert result["verdicts"]["interactive"]["target"] == "fast"  # 5 ms vs 60 ms to first
    for t in result["targets"]:
        assert t["tokens"]["output_usage_total"] == 2 * 6 * 8  # the servers' usage
        # the host collector ran during each level: CPU and memory use, and no GPU here
        assert t["host_use"]["samples"] >= 1 and t["host_use"]["cpu_peak_pct"] is not None
        assert t["host_use"]["gpu"] == "no GPU"
        assert all(s["host_use"]["memory_used_peak_bytes"] > 0 for s in t["summaries"])
        assert t["manifest"]["schema"] == "servescope.manifest/1"
    assert (out / "report.html").stat().st_size > 1_000_000  # plotly.js is inside


def test_the_compare_page_shows_both_sides(compared):
    db, _, _ = compared
    with dashboard_in_browser(db) as (url, browser):
        browser.goto(f"{url}/compare")
        # the page renders top to bottom: wait for its last section, not the first
        text = browser.wait_for("document.body.innerText.includes('context per request') && "
                                "document.body.innerText.includes('Host use: CPU') && "
                                "document.body.innerText.includes('no GPU') && "
                                "document.body.innerText")
        # both targets' sweeps side by side, each with its manifest (the servers' answers)
        assert "sweep 1 (openai-compatible)" in text and "sweep 2 (openai-compatible)" in text
        assert "stream-test" in text and "manifests agree" in text
        assert "Host use: CPU, memory, GPU" in text and "no GPU" in text  # this host has none
        plots = "Array.from(document.querySelectorAll('.js-plotly-plot'))"
        drawn = f"{plots}.filter(p => p.querySelector('.trace .point, .trace .js-line')).length"
        assert browser.wait_for(f"{drawn} >= 3 && {drawn}") >= 3
        time.sleep(1)
        assert browser.evaluate(NO_EXCEPTION), text[:2000]


def test_report_html_draws_its_plots_offline(compared):
    """report.html alone (file://, no server, no network) draws every figure."""
    _, out, _ = compared
    browser = Browser(free_port())
    try:
        browser.goto((out / "report.html").resolve().as_uri())
        plots = "Array.from(document.querySelectorAll('.js-plotly-plot'))"
        drawn = f"{plots}.filter(p => p.querySelector('.trace')).length"
        # throughput, latency, goodput and host use drawn; the streaming server reports no
        # phases, so the server-side split says so instead of drawing bars
        assert browser.wait_for(f"{drawn} >= 4 && {plots}.length === 5 && {drawn}") == 4
        text = browser.evaluate("document.body.innerText")
        assert "no server reported per-request phases" in text
        assert "Host use during each level" in text and "no GPU" in text
        assert "Artifact manifests" in text and "Verdict" in text
    finally:
        browser.close()
