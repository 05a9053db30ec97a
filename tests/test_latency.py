"""Latency metrics from raw stamps: formulas, percentiles with confidence intervals,
warm-up trimming, goodput and SLO attainment; per-request exports."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers import servescope
from servescope.analysis.latency import (
    distribution,
    e2e_ms,
    goodput,
    itl_ms,
    summarize,
    tpot_ms,
    ttft_ms,
)

from servescope.core.records import RequestRecord
from servescope.core.store import Store

MS = 1_000_000


def rec(i: int, ttft: int, gaps: list[int], ok: bool = True, lag: int = 0) -> RequestRecord:
    send = 10_000 * MS + i * 1_000 * MS
    offsets = [ttft * MS]
    for g in gaps:
        offsets.append(offsets[-1] + g * MS)
    return RequestRecord(
        request_id=f"r{i}", intended_ns=send - lag * MS, send_ns=send,
        first_token_ns=send + offsets[0] if ok else None,
        last_token_ns=send + offsets[-1] if ok else None,
        end_ns=send + offsets[-1] + 1 * MS,
        event_offsets_ns=offsets if ok else [], output_tokens=len(offsets) if ok else None,
        error_class=None if ok else "http_500",
    )


def test_formulas_on_known_stamps():
    r = rec(0, ttft=100, gaps=[10, 30], lag=5)
    assert ttft_ms(r) == 100
    assert itl_ms(r) == [10, 30]
    assert e2e_ms(r) == 141  # last event at 140 ms, stream closed 1 ms later
    assert tpot_ms(r) == pytest.approx((141 - 100) / 2)
    s = summarize([r])
    assert s["e2e_from_intended_ms"]["p50"] == 146
    assert s["send_lag_ms"]["p50"] == 5
    assert s["connect_ms"]["count"] == 0  # it reused a connection


def test_time_opening_a_connection_is_not_client_send_lag():
    r = rec(0, ttft=100, gaps=[10], lag=7)
    r.connect_ns = 6 * MS  # of the 7 ms between intended and actual send, 6 were the connect
    s = summarize([r, rec(1, ttft=100, gaps=[10], lag=1)])
    assert s["send_lag_ms"]["max"] == pytest.approx(1)
    assert s["connect_ms"]["count"] == 1 and s["connect_ms"]["p50"] == 6
    assert s["e2e_from_intended_ms"]["max"] == 118  # the user waited for the connect too


def test_distribution_has_tail_percentiles_with_intervals():
    values = list(np.random.default_rng(0).exponential(100, 2_000))
    d = distribution(values)
    assert d["count"] == 2_000
    for key in ("p50", "p90", "p95", "p99", "p99.9"):
        lo, hi = d["ci95"][key]
        assert lo <= d[key] <= hi, key
    assert d["ci95"]["p50"][1] - d["ci95"]["p50"][0] < d["ci95"]["p99"][1] - d["ci95"]["p99"][0]
    assert d["thin_tail"] == ["p99.9"]  # 2,000 < 10 / 0.001


def test_too_few_samples_for_a_tail_percentile_is_a_warning():
    records = [rec(i, ttft=50 + i, gaps=[10]) for i in range(50)]
    s = summarize(records)
    assert any(w.startswith("p99 of ttft_ms rests on 50 samples") for w in s["warnings"])


def test_warmup_requests_are_trimmed_by_send_time():
    records = [rec(i, ttft=1_000 if i < 3 else 100, gaps=[10]) for i in range(10)]
    s = summarize(records, warmup_requests=3)
    assert s["requests_ok"] == 7 and s["ttft_ms"]["max"] == 100
    assert s["warmup_requests_trimmed"] == 3


def test_goodput_counts_requests_meeting_every_slo():
    records = [
        rec(0, ttft=100, gaps=[10, 10]),   # meets both
        rec(1, ttft=300, gaps=[10, 10]),   # TTFT too slow
        rec(2, ttft=100, gaps=[10, 90]),   # its own ITL p95 too slow
        rec(3, ttft=100, gaps=[10], ok=False),  # failed: meets nothing
    ]
    g = goodput(records, {"ttft_ms": {"p95": 200}, "itl_ms": {"p95": 50}}, span_s=2.0)
    assert g["requests"] == 1 and g["ratio"] == 0.25 and g["requests_per_s"] == 0.5
    assert [a["ratio"] for a in g["attainment"]] == [0.5, 0.5]


def test_export_formats_round_trip(tmp_path):
    db = tmp_path / "s.db"
    with Store(db) as store:
        run = store.create_run("r", "chat", {}, "http://127.0.0.1:1", {})
        store.add_requests(run, [rec(i, ttft=100 + i, gaps=[10, 20]) for i in range(5)])
    for fmt in ("jsonl", "csv", "parquet"):
        out = tmp_path / f"requests.{fmt}"
        res = servescope("export", "--out", str(out), db=db)
        assert res.returncode == 0, res.stderr
        if fmt == "jsonl":
            rows = [json.loads(line) for line in out.read_text().splitlines()]
        elif fmt == "csv":
            rows = pd.read_csv(out).to_dict("records")
        else:
            rows = pd.read_parquet(out).to_dict("records")
        assert [r["ttft_ms"] for r in rows] == [100, 101, 102, 103, 104], fmt
        assert rows[0]["send_ns"] == 10_000 * MS
    bad = servescope("export", "--run", "7", "--out", str(tmp_path / "x.csv"), db=db)
    assert bad.returncode == 2 and "no run 7" in bad.stderr
