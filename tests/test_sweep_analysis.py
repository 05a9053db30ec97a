"""Sweep reading: saturation where throughput flattens while latency climbs; the highest
level that met the SLOs."""

from capacity.sweep import analyze


def level(tps: float, p95: float, met: bool, failed: int = 0) -> dict:
    return {"output_tokens_per_s": tps, "e2e_ms": {"p95": p95}, "requests_ok": 10,
            "requests_failed": failed, "slos": [{"met": met}]}


def test_saturation_and_slo_limit():
    levels = [1, 2, 4, 8, 16]
    summaries = [level(100, 500, True), level(190, 520, True), level(350, 600, True),
                 level(370, 1100, False), level(372, 2300, False)]
    result = analyze(levels, summaries)
    assert result["saturation_level"] == 4  # 4 -> 8: +6 % throughput, +83 % latency
    assert result["max_level_meeting_slos"] == 4
    assert [r["level"] for r in result["curve"]] == levels


def test_no_saturation_when_throughput_keeps_growing():
    result = analyze([1, 2], [level(100, 500, True), level(200, 900, True)])
    assert result["saturation_level"] is None
    assert result["max_level_meeting_slos"] == 2


def test_a_level_with_failures_does_not_meet_slos():
    result = analyze([1, 2, 4], [level(100, 500, True), level(150, 600, True, failed=3),
                                 level(160, 600, True)])
    assert result["max_level_meeting_slos"] == 1
