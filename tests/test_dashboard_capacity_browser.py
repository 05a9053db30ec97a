"""The Capacity page in a REAL headless Chromium: `servescope dashboard` on a store holding a
real `servescope sweep` (three concurrency levels against the scheduled streaming server)
and a vLLM target scraped from the captured page. Every section renders, plotly draws the
figures, and no exception shows; a screenshot is kept in the test's folder."""

from __future__ import annotations

import base64
import json
import time

import pytest
from test_dashboard_capacity import add_server

from browser import NO_EXCEPTION, dashboard_in_browser
from helpers import servescope
from servescope.core.store import Store
from testsupport.streaming_server import StreamingServer

pytestmark = pytest.mark.browser  # test tier (a real headless Chromium): see pyproject.toml

LEVELS = "1,2,4"


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("capacity-browser")
    db = tmp / "capacity.db"
    scenario = tmp / "sweep.yaml"
    scenario.write_text("name: capacity\nseed: 3\nprompt_tokens: 24\noutput_tokens: 12\n"
                        "stages:\n  - {concurrency: 1, duration: 60s}\n"
                        "slos:\n  e2e_ms: {p95: 2000}\n")
    with StreamingServer(first_token_ms=20, gap_ms=5) as srv:
        res = servescope("sweep", str(scenario), "--target", srv.url, "--concurrency", LEVELS,
                         "--requests", "8", "--quiet", db=db)
    assert res.returncode == 0, res.stdout + res.stderr
    with Store(db) as store:
        (sweep,) = store.sweeps()
        assert sweep["status"] == "finished"
    add_server(db)
    with dashboard_in_browser(db) as (url, browser):
        yield url, browser, tmp


def test_the_capacity_page_renders_every_section(dashboard):
    url, browser, tmp = dashboard
    browser.goto(f"{url}/capacity")
    # every section's headings and a figure of each, waited for together: the page streams
    # in, and on a busy machine a snapshot taken when the last section appears has missed
    # one before it still drawing (CI once saw the live headroom's metrics missing)
    needed = ["KV headroom of live servers", "Headroom (requests)", "Advice from a sweep",
              "Limit", "What if", "Planned KV capacity (tokens)",
              "Sequences that fit by request length", "Simulated load (physics, uncalibrated)",
              "Throughput by users (simulated)", "Predicted vs measured"]
    every = " && ".join(f"document.body.innerText.includes({json.dumps(s)})" for s in needed)
    try:
        browser.wait_for(every, 90)
    except TimeoutError:
        text = browser.evaluate("document.body.innerText") or ""
        pytest.fail(f"missing {[s for s in needed if s not in text]}: {text[:3000]}")
    plots = "Array.from(document.querySelectorAll('.js-plotly-plot'))"
    drawn = f"{plots}.filter(p => p.querySelector('.trace .point, .trace .js-line, " \
            f".trace path')).length"
    assert browser.wait_for(f"{drawn} >= 7 && {drawn}") >= 7
    time.sleep(2)  # what renders after the last figure has had its turn
    assert browser.evaluate(NO_EXCEPTION), browser.evaluate("document.body.innerText")[:3000]
    assert "Page not found" not in browser.evaluate("document.body.innerText")
    for name in ("top", "simulated", "bottom"):  # the page scrolls in Streamlit's main
        if name == "simulated":
            browser.evaluate("Array.from(document.querySelectorAll('h3')).find(h => "
                             "h.innerText.includes('Simulated load')).scrollIntoView()")
            time.sleep(1)
        if name == "bottom":
            browser.evaluate("document.querySelector('[data-testid=\"stMain\"]')"
                             ".scrollTo(0, 1e6)")
            time.sleep(1)
        shot = browser.call("Page.captureScreenshot", format="png")["data"]
        (tmp / f"capacity-page-{name}.png").write_bytes(base64.b64decode(shot))
