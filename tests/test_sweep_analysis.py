"""Sweep reading: saturation where throughput flattens while latency climbs; the highest
level that met the SLOs."""

from servescope.analysis.sweep import analyze


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


def limited(summary: dict, by_client: bool) -> dict:
    return {**summary, "client": {"limited_by_client": by_client, "reasons": []}}


def test_a_client_limited_level_is_marked_and_never_read_as_saturation():
    # The CI failure that taught this: 4 users measured below 1 user because the load
    # generator sat off-CPU for ~0.4 s at a time. Flat throughput with latency climbing
    # looks like saturation, but it was the client's.
    levels = [1, 4, 8]
    summaries = [limited(level(211, 450, True), False), limited(level(200, 900, True), True),
                 limited(level(700, 950, True), False)]
    result = analyze(levels, summaries)
    assert [r["client_limited"] for r in result["curve"]] == [False, True, False]
    assert result["client_limited_levels"] == [4]
    assert result["saturation_level"] is None
    # the same figures without the flag do read as saturation at 1
    unflagged = analyze(levels, [limited(s, False) for s in summaries])
    assert unflagged["saturation_level"] == 1 and unflagged["client_limited_levels"] == []


def test_a_summary_without_client_health_is_not_called_limited_or_clean():
    result = analyze([1], [level(100, 500, True)])
    assert result["curve"][0]["client_limited"] is None
    assert result["client_limited_levels"] == []
