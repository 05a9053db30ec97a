"""The dashboard in a REAL headless Chromium: `servescope dashboard` serves a store holding a
run the load generator just made against the scheduled streaming server. The Run page
shows the run and plotly draws its figures in the browser; the Live and Sweep pages load;
no page shows an exception."""

from __future__ import annotations

import time

import pytest

from browser import NO_EXCEPTION, dashboard_in_browser
from helpers import servescope
from testsupport.streaming_server import StreamingServer

pytestmark = pytest.mark.browser  # test tier (a real headless Chromium): see pyproject.toml

REQUESTS = 24
@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    db = tmp / "browser.db"
    scenario = tmp / "browser.yaml"
    scenario.write_text(f"name: browser\nseed: 2\nprompt_tokens: 24\noutput_tokens: 12\n"
                        f"stages:\n  - {{concurrency: 4, duration: 60s}}\n"
                        f"max_requests: {REQUESTS}\n")
    with StreamingServer(first_token_ms=20, gap_ms=5) as srv:
        res = servescope("load", str(scenario), "--target", srv.url, "--quiet", db=db)
    assert res.returncode == 0, res.stdout + res.stderr
    with dashboard_in_browser(db) as (url, browser):
        yield url, browser


def test_the_run_page_shows_the_run_and_draws_its_figures(dashboard):
    url, browser = dashboard
    browser.goto(f"{url}/run")
    text = browser.wait_for("document.body.innerText.includes('TTFT distribution') && "
                            "document.body.innerText")
    assert f"Requests ok\n\n{REQUESTS}" in text, text[:2000]
    assert "Latency (client)" in text and "Where the time went" in text
    # plotly drew the figures in the browser: every one has a trace with bars, points or a
    # line drawn in it
    plots = "Array.from(document.querySelectorAll('.js-plotly-plot'))"
    drawn = f"{plots}.filter(p => p.querySelector('.trace .point, .trace .js-line')).length"
    assert browser.wait_for(f"{drawn} >= 4 && {drawn} === {plots}.length && {drawn}") >= 4
    assert browser.evaluate(NO_EXCEPTION)


@pytest.mark.parametrize(("path", "heading"),
                         [("", "Live"), ("/live", "Live"), ("/sweep", "Sweep")])
def test_the_other_pages_load_without_an_exception(dashboard, path: str, heading: str):
    url, browser = dashboard
    browser.goto(f"{url}{path}")
    browser.wait_for(f"Array.from(document.querySelectorAll('h1')).some("
                     f"h => h.innerText.trim() === {heading!r})")
    time.sleep(2)  # what renders after the heading (figures, tables) has had its turn
    text = browser.evaluate("document.body.innerText")
    assert browser.evaluate(NO_EXCEPTION), text[:2000]
    assert "Page not found" not in text, text[:2000]
    # every page has a URL of its own: the root moves on to Live's
    expected = path or "/live"
    assert browser.evaluate("window.location.pathname") == expected
