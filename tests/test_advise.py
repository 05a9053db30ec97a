"""The advisor reads a sweep's evidence the way a person would: requests waiting while KV
has room means the concurrency knob is the limit; a full KV cache or preemptions mean the
knob asks for too much; flat throughput with sequences running means compute; a level the
load generator limited says nothing. The sweeps come from a simulated server
(tests/advise_sweeps.py) whose numbers follow from its parameters."""

from __future__ import annotations

import json

import pytest
from advise_sweeps import OUTPUT, PROMPT, SimServer, add_sweep

from servescope.analysis.sweep_evidence import evidence
from servescope.capacity.advise import advise, best_goodput, latency_limit
from servescope.core.store import StoreError

SLOS = {"ttft_ms": {"p95": 1000.0}, "itl_ms": {"p95": 50.0}}
LEVELS = [1, 2, 4, 8, 16, 32]


def test_evidence_holds_the_server_series_of_each_level(store):
    # 8 slots; the gap between tokens is 10 + 2 x running ms
    sweep_id = add_sweep(store, SimServer(8, lambda b: 10 + 2 * b), LEVELS, SLOS, knob=8)
    ev = evidence(store, sweep_id)
    json.dumps(ev)  # plain data
    assert ev["runtime"] == "vllm" and ev["target"] == "sim" and ev["kind"] == "concurrency"
    assert ev["knob"] == {"name": "max_num_seqs", "value": 8,
                          "source": "the run's target (as started)"}
    assert ev["slos"] == SLOS
    assert [lv["level"] for lv in ev["levels"]] == LEVELS
    at32 = ev["levels"][-1]
    assert at32["server"]["running_max"] == 8 and at32["server"]["running_mean"] == 8
    assert at32["server"]["waiting_max"] == 24 and at32["server"]["waiting_mean"] == 24
    assert at32["server"]["kv_usage_max"] == pytest.approx(8 * 132 / 100_000)
    assert at32["server"]["preemptions"] == 0
    assert at32["total_tokens_p95"] == PROMPT + OUTPUT
    assert at32["prompt_tokens_mean"] == PROMPT
    # 8 running: gaps of 26 ms; level 8 runs everything at once: 8 users x 4 requests of
    # 20 + 31 x 26 = 826 ms each, back to back: 32 requests in 3.304 s
    at8 = ev["levels"][3]
    assert at8["itl_ms"]["p95"] == pytest.approx(26.0)
    assert at8["goodput_per_s"] == pytest.approx(32 / 3.304)
    assert at8["slos_met"] is True and at32["slos_met"] is False
    assert at8["server"]["waiting_mean"] == 0


def test_queueing_with_kv_to_spare_raises_max_num_seqs_to_what_the_itl_slo_allows(store):
    sweep_id = add_sweep(store, SimServer(8, lambda b: 10 + 2 * b), LEVELS, SLOS, knob=8)
    out = advise(evidence(store, sweep_id), kv_capacity_tokens=100_000)
    assert out["limit"] == "queue" and out["current"] == 8
    (rec,) = out["recommendations"]
    # ITL p95 = 10 + 2b ms is fitted exactly from levels 1-8: the 50 ms SLO holds up to
    # b = 20; KV holds 100,000 // 132 = 757 sequences; 32 users want to run
    assert rec["knob"] == "max_num_seqs" and rec["value"] == 20 and out["next_candidate"] == 20
    assert rec["reason"].startswith(
        "above 8 sequences requests wait in the queue (up to 24 waiting at concurrency 32) "
        "while KV is 1% used: max_num_seqs is the limit; raise it to 20, KV allows 757")
    assert "the 50 ms SLO holds up to about 20" in rec["reason"]


def test_without_a_latency_bound_the_demand_sets_the_new_value(store):
    slos = {"ttft_ms": {"p95": 5000.0}}  # TTFT does not grow with the batch here
    sweep_id = add_sweep(store, SimServer(8, lambda b: 10.0), LEVELS, slos, knob=8)
    out = advise(evidence(store, sweep_id), kv_capacity_tokens=100_000)
    (rec,) = out["recommendations"]
    assert rec["value"] == 32  # the 32 users of the highest level


def test_kv_full_and_preemptions_lower_max_num_seqs_to_what_kv_holds(store):
    # 1,000 tokens of KV hold 7 requests of 132 tokens; 8 slots overflow it
    server = SimServer(8, lambda b: 10 + 2 * b, kv_capacity_tokens=1000)
    sweep_id = add_sweep(store, server, [1, 2, 4, 8], SLOS, knob=8)
    ev = evidence(store, sweep_id)
    assert ev["levels"][-1]["server"]["preemptions"] == 8
    out = advise(ev, kv_capacity_tokens=1000)
    assert out["limit"] == "kv"
    (rec,) = out["recommendations"]
    assert rec["value"] == 7 and out["next_candidate"] == 7
    assert "the KV cache was 100% full and 8 requests were preempted" in rec["reason"]
    assert "lower it to 7, or give the KV cache more memory" in rec["reason"]
    # without the capacity: from level 4, 4 sequences filled 52.8%: 4 / 0.528 = 7.6
    assert advise(ev)["recommendations"][0]["value"] == 7


def test_flat_throughput_with_sequences_running_asks_for_replicas(store):
    # no queue (64 slots); up to 4 sequences each gap is 10 ms, beyond 2.5 ms per sequence:
    # throughput is flat from 4 on while latency climbs
    server = SimServer(64, lambda b: max(10.0, 2.5 * b))
    slos = {"itl_ms": {"p95": 30.0}}
    sweep_id = add_sweep(store, server, LEVELS, slos, knob=64)
    ev = evidence(store, sweep_id)
    assert ev["saturation_level"] == 4 and ev["max_level_meeting_slos"] == 8
    out = advise(ev)
    assert out["limit"] == "latency"
    knobs = {r["knob"]: r for r in out["recommendations"]}
    assert knobs["max_num_seqs"]["value"] < 16  # the 30 ms ITL breaks at 12 sequences
    # 32 users within the SLOs, each replica meeting them up to 8: 4 replicas
    assert knobs["replicas"]["value"] == 4
    assert "throughput stops growing at concurrency 4" in knobs["replicas"]["reason"]
    assert "the server's compute is the limit" in knobs["replicas"]["reason"]


def test_client_limited_levels_are_left_out_and_said(store):
    sweep_id = add_sweep(store, SimServer(8, lambda b: 10 + 2 * b), LEVELS, SLOS, knob=8,
                         client_limited=(16, 32))
    out = advise(evidence(store, sweep_id))
    assert out["notes"][0].startswith("the load generator limited concurrency 16, 32")
    assert out["limit"] != "queue"  # the queued levels were the client's
    everything = add_sweep(store, SimServer(8, lambda b: 10.0), [1, 2], SLOS,
                           client_limited=(1, 2))
    assert advise(evidence(store, everything))["limit"] == "client"


def test_without_server_series_queueing_is_read_from_ttft_and_knob_from_the_plateau(store):
    sweep_id = add_sweep(store, SimServer(8, lambda b: 10 + 2 * b), LEVELS, SLOS,
                         series=False, knob=8)
    ev = evidence(store, sweep_id)
    assert all(lv["server"] is None for lv in ev["levels"]) and ev["runtime"] is None
    out = advise(ev)
    assert any("no server series" in n for n in out["notes"])
    assert out["limit"] == "queue" and out["recommendations"][0]["value"] == 20


def test_knob_unknown_is_read_from_where_running_stopped_growing(store):
    sweep_id = add_sweep(store, SimServer(8, lambda b: 10 + 2 * b), LEVELS, SLOS)
    ev = evidence(store, sweep_id)
    assert ev["knob"]["value"] is None
    out = advise(ev)
    assert out["current"] == 8 and out["recommendations"][0]["value"] == 20
    assert "max_num_seqs read from the sweep: at most 8 ran while others waited" in out["notes"]


def test_ollama_and_llamacpp_name_their_own_knob():
    ev = {"kind": "concurrency", "runtime": "ollama", "knob": {"value": 1},
          "slos": {}, "levels": [
              {"level": 1, "requests_ok": 4, "ttft_ms": {"p50": 10}, "itl_ms": {},
               "server": {"running_mean": 1, "waiting_mean": 0}},
              {"level": 4, "requests_ok": 4, "ttft_ms": {"p50": 50}, "itl_ms": {},
               "server": {"running_mean": 1, "running_max": 1, "waiting_mean": 3,
                          "waiting_max": 3}}]}
    out = advise(ev, kv_capacity_tokens=8192)
    rec = out["recommendations"][0]
    assert rec["knob"] == "OLLAMA_NUM_PARALLEL" and rec["value"] == 4
    ev["runtime"] = "llamacpp"
    assert advise(ev)["recommendations"][0]["knob"] == "--parallel"


def test_latency_limit_is_a_line_fit_and_best_goodput_the_top_level():
    levels = [{"itl_ms": {"p95": 12.0}, "ttft_ms": {}}, {"itl_ms": {"p95": 20.0}, "ttft_ms": {}}]
    n, why = latency_limit(levels, {"itl_ms": {"p95": 40.0}}, [1, 3])
    assert n == 8 and "4 ms per running sequence" in why  # 8 + 4b <= 40
    assert latency_limit(levels, {}, [1, 3]) == (None, None)
    assert best_goodput({"levels": [{"level": 1, "goodput_per_s": 2.0},
                                     {"level": 4, "goodput_per_s": 5.0}]}) == (4, 5.0)


def test_unknown_sweep_is_a_clear_error(store):
    with pytest.raises(StoreError, match="no sweep 99"):
        evidence(store, 99)


def test_ttft_lost_to_long_prefills_raises_max_num_batched_tokens():
    level = {"level": 4, "requests_ok": 20, "client_limited": False, "slos_met": False,
             "ttft_ms": {"p50": 2500.0, "p95": 3200.0, "mean": 2600.0},
             "itl_ms": {"p95": 30.0}, "prompt_tokens_p95": 6000,
             "server": {"running_mean": 4, "waiting_mean": 0.1, "kv_usage_max": 0.3},
             "phases": {"queue_share": 0.05, "prefill_ms_mean": 2100.0}}
    ev = {"kind": "concurrency", "runtime": "vllm", "knob": {"value": 16},
          "slos": {"ttft_ms": {"p95": 2000.0}}, "levels": [level]}
    out = advise(ev)
    assert out["limit"] == "prefill"
    (rec,) = out["recommendations"]
    # a 6,000-token prompt fits one step of 8,192 tokens
    assert rec["knob"] == "max_num_batched_tokens" and rec["value"] == 8192
    assert "TTFT p95 is 3,200 ms against 2,000 ms with only 5% queueing" in rec["reason"]
    # another runtime has no such knob: nothing to say about it
    assert advise(ev | {"runtime": "llamacpp"})["limit"] is None
