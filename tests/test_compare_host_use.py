"""Host CPU / memory / GPU use in a comparison (analysis/host_use.py), read from samples
stored the way the host collector stores them, and shown in report.md / report.html."""

from __future__ import annotations

import json

import pytest

from servescope.analysis.host_use import (
    NO_GPU,
    NO_SAMPLES,
    combine,
    host_cells,
    host_line,
    run_host_use,
)
from servescope.compare_report import render_html, render_markdown
from servescope.core.records import RequestRecord, Sample
from servescope.dashboard.figures_compare import host_figure

GIB = 2**30
T0 = 1_700_000_000.0


def host_scrape(cpu: tuple[float, float], mem_gib: float, rss_gib: tuple[float, float],
                cpu_s: tuple[float, float], gpu: tuple[float, float] | None = None
                ) -> list[Sample]:
    """One scrape of a 2-core host serving with a parent and a child process."""
    out = [Sample("cpu_utilization_ratio", v, "psutil.cpu_times", {"cpu": str(i)})
           for i, v in enumerate(cpu)]
    out += [Sample("memory_used_bytes", mem_gib * GIB, "psutil.virtual_memory.used"),
            Sample("memory_total_bytes", 24.0 * GIB, "psutil.virtual_memory.total")]
    for pid, rss, secs in (("10", rss_gib[0], cpu_s[0]), ("11", rss_gib[1], cpu_s[1])):
        labels = {"pid": pid, "name": "server"}
        out += [Sample("process_resident_memory_bytes", rss * GIB, "rss", labels),
                Sample("process_cpu_seconds_total", secs, "cpu_times", dict(labels))]
    if gpu is not None:
        labels = {"gpu": "0", "name": "H100", "uuid": "GPU-x"}
        out += [Sample("gpu_utilization_ratio", gpu[0], "nvml", labels),
                Sample("gpu_memory_used_bytes", gpu[1] * GIB, "nvml", dict(labels)),
                Sample("gpu_memory_total_bytes", 80.0 * GIB, "nvml", dict(labels))]
    return out


def stored_run(store, gpu: bool = False) -> int:
    """A run whose requests went out between T0+1 and T0+3, with host scrapes at T0 (before
    the load), T0+2, T0+3.5 (inside the window and its one-second tail) and T0+10 (after)."""
    host = store.upsert_target("host", "host", "host://localhost")
    g = (lambda u, m: (u, m)) if gpu else (lambda u, m: None)
    store.add_samples(host, T0, host_scrape((0.0, 0.0), 2.0, (0.5, 0.1), (10, 1), g(0, 1)))
    store.add_samples(host, T0 + 2, host_scrape((0.8, 0.6), 5.0, (1.0, 0.5), (12, 2),
                                                g(0.5, 20)))
    store.add_samples(host, T0 + 3.5, host_scrape((1.0, 1.0), 6.0, (1.5, 0.5), (14, 3.5),
                                                  g(0.9, 30)))
    store.add_samples(host, T0 + 10, host_scrape((0.0, 0.0), 9.0, (3.0, 3.0), (99, 99),
                                                 g(0, 60)))
    run = store.create_run("r", "s", {}, "http://127.0.0.1:8000", {})
    ns = int(1e9)
    store.add_requests(run, [
        RequestRecord(request_id="a", intended_ns=int(T0 + 1) * ns, send_ns=int(T0 + 1) * ns,
                      end_ns=int(T0 + 2) * ns),
        RequestRecord(request_id="b", intended_ns=int(T0 + 2) * ns, send_ns=int(T0 + 2) * ns,
                      end_ns=int(T0 + 3) * ns)])
    store.finish_run(run, "finished", {})
    return run


def test_window_use_reads_the_load_window_only(store):
    use = run_host_use(store, stored_run(store))
    assert use["samples"] == 2  # T0+2 and T0+3.5; not the scrapes before or long after
    assert use["cpu_mean_pct"] == pytest.approx((70 + 100) / 2)
    assert use["cpu_peak_pct"] == pytest.approx(100)
    assert use["memory_used_peak_bytes"] == 6 * GIB and use["memory_total_bytes"] == 24 * GIB
    assert use["server_rss_peak_bytes"] == 2 * GIB  # parent + child at the same scrape
    # CPU seconds of both processes, from the scrape before the window (T0) on:
    # (2 + 1) s over 2 s, then (2 + 1.5) s over 1.5 s.
    assert use["server_cpu_cores_mean"] == pytest.approx((1.5 + 7 / 3) / 2)
    assert use["server_cpu_cores_peak"] == pytest.approx(7 / 3)
    assert use["gpu"] == NO_GPU and use["gpu_util_mean_pct"] is None
    assert host_cells(use)[-1] == NO_GPU == "no GPU"
    assert "GPU: no GPU" in host_line(use) and "70%" not in host_line(use)


def test_gpu_use_when_nvml_reported(store):
    use = run_host_use(store, stored_run(store, gpu=True))
    assert use["gpu"] == "present"
    assert use["gpu_util_mean_pct"] == pytest.approx(70) and use["gpu_util_peak_pct"] == 90
    assert use["gpu_memory_used_peak_bytes"] == 30 * GIB
    assert "util 70% mean, 90% peak" in host_cells(use)[-1]


def test_a_window_shorter_than_the_scrape_interval_takes_the_scrape_after_it(store):
    """A level of a few fast requests can fall between two scrapes; the first scrape after
    it (its CPU reading covers the load) stands for it, the later ones don't."""
    host = store.upsert_target("host", "host", "host://localhost")
    for ts, cpu in ((T0, 0.1), (T0 + 2.5, 0.9), (T0 + 3.5, 0.2)):
        store.add_samples(host, ts, host_scrape((cpu, cpu), 3.0, (1, 0), (1, 0)))
    run = store.create_run("r", "s", {}, "http://127.0.0.1:8000", {})
    ns = int(1e9)
    store.add_requests(run, [RequestRecord(request_id="a", intended_ns=int(T0 + 1) * ns,
                                           send_ns=int(T0 + 1) * ns,
                                           end_ns=int((T0 + 1.1) * ns))])
    use = run_host_use(store, run)
    assert use["samples"] == 1 and use["cpu_mean_pct"] == pytest.approx(90)


def test_no_host_collector_is_none_and_said_plainly(store):
    run = store.create_run("r", "s", {}, "http://127.0.0.1:8000", {})
    assert run_host_use(store, run) is None
    assert host_line(None) == NO_SAMPLES


def test_combine_weights_means_and_keeps_peaks():
    a = {"samples": 1, "cpu_mean_pct": 40.0, "cpu_peak_pct": 40.0, "gpu": NO_GPU,
         "memory_used_peak_bytes": 5.0, "server_cpu_cores_mean": 1.0}
    b = {"samples": 3, "cpu_mean_pct": 80.0, "cpu_peak_pct": 95.0, "gpu": NO_GPU,
         "memory_used_peak_bytes": 7.0, "server_cpu_cores_mean": None}
    full = {k: None for k in ("memory_total_bytes", "server_rss_peak_bytes",
                              "server_cpu_cores_peak", "gpu_util_mean_pct",
                              "gpu_util_peak_pct", "gpu_memory_used_peak_bytes",
                              "gpu_memory_total_bytes")}
    out = combine([full | a, full | b])
    assert out["samples"] == 4 and out["cpu_mean_pct"] == pytest.approx(70.0)
    assert out["cpu_peak_pct"] == 95.0 and out["memory_used_peak_bytes"] == 7.0
    assert out["server_cpu_cores_mean"] == 1.0 and out["gpu"] == NO_GPU
    assert combine([])["samples"] == 0


def test_reports_show_host_use_per_level_and_say_no_gpu(store):
    use = run_host_use(store, stored_run(store))
    target = {"name": "v", "runtime": "vllm", "manifest": {"runtime": "vllm"},
              "summaries": [{"level": 1, "host_use": use}], "curve": [{"level": 1}],
              "host_use": combine([use]), "tokens": {
                  "prompt_intended_mean": 64, "prompt_usage_mean": 64,
                  "output_intended_mean": 16, "output_usage_mean": 16, "short_prompts": 0,
                  "long_prompts": 0, "short_outputs": 0, "requests": 2,
                  "count_sources": ["usage"]}}
    result = {"scenario": "s", "kind": "concurrency", "targets": [target], "warnings": [],
              "marked": {}, "scaling": {}, "request_settings": {},
              "verdicts": {c: {"text": "x"} for c in ("interactive", "batch", "many_users")}}
    md = render_markdown(result)
    assert "## Host use: CPU, memory, GPU" in md
    assert "| v | 1 | 85% | 100% | 6.00 GiB of 24.00 GiB | 2.00 GiB | 1.92 | no GPU |" in md
    assert "| v | all |" in md
    html = render_html(result)
    assert "id='host-use'" in html and "Host use during each level" in html
    fig = host_figure([target])
    assert [tr.y[0] for tr in fig.data[:2]] == [85.0, 100.0]  # CPU mean, peak
    assert any(a.text == "no GPU" for a in fig.layout.annotations)
    json.dumps(result)  # compare.json can hold it
