"""Stored sweeps of a simulated server, for the advisor's tests: a closed loop at each
level against a server that runs at most `slots` sequences at once (the rest wait), whose
inter-token gap grows with the sequences running, and whose collector series (running,
waiting, KV use, preemptions) say the same. Every number follows from the parameters, so
a test can check the advice by hand."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from servescope.analysis.latency import summarize
from servescope.analysis.slo import evaluate_slos
from servescope.analysis.sweep import analyze
from servescope.core.records import RequestRecord, Sample
from servescope.core.store import Store

MS = 1_000_000
URL = "http://127.0.0.1:8000"
PROMPT, OUTPUT = 100, 32  # tokens per request: 132 in the KV cache at its end
ROUNDS = 4
TTFT_MS = 20.0


@dataclass
class SimServer:
    slots: int
    itl_ms: Callable[[int], float]  # inter-token gap with this many sequences running
    kv_capacity_tokens: int = 100_000
    preempt_when_full: bool = True

    def service_ms(self, running: int) -> float:
        return TTFT_MS + (OUTPUT - 1) * self.itl_ms(running)


def level_records(server: SimServer, level: int, start_ns: int) -> list[RequestRecord]:
    """`level` users, each sending ROUNDS requests back to back; above `slots` users a
    request waits (level / slots - 1) service times before it runs."""
    running = min(level, server.slots)
    service = server.service_ms(running)
    wait = max(0.0, (level / server.slots - 1)) * service
    e2e = wait + service
    gap = server.itl_ms(running)
    out = []
    for user in range(level):
        for k in range(ROUNDS):
            send = start_ns + int(k * e2e * MS)
            first = wait + TTFT_MS
            offsets = [int((first + gap * j) * MS) for j in range(OUTPUT)]
            out.append(RequestRecord(
                request_id=f"l{level}-u{user}-{k}", intended_ns=send, send_ns=send,
                headers_ns=send + MS, first_token_ns=send + offsets[0],
                last_token_ns=send + offsets[-1], end_ns=send + int(e2e * MS),
                event_offsets_ns=offsets, prompt_tokens=PROMPT, output_tokens=OUTPUT,
                status_code=200))
    return out


def add_sweep(store: Store, server: SimServer, levels: list[int], slos: dict,
              series: bool = True, knob: int | None = None,
              client_limited: tuple[int, ...] = ()) -> int:
    """A finished sweep over `levels`, a run per level 100 s apart (in the future, so the
    windows never overlap), analyzed like `servescope sweep`; with `series`, a collector's
    samples every second of each level; with `knob`, the run's target records
    max_num_seqs (as `servescope tune` does)."""
    sweep_id = store.create_sweep("sim-sweep", "sim", URL, "concurrency", levels)
    target_id = store.upsert_target("sim", "vllm", URL) if series else None
    base_ns = time.time_ns() + 10 * 10**9
    summaries = []
    preempted = 0.0
    for i, level in enumerate(levels):
        scenario = {"name": "sim", "stages": [{"concurrency": level}], "slos": slos}
        target = {"url": URL} | ({"max_num_seqs": knob} if knob is not None else {})
        run_id = store.create_run(f"sim-{level}", "sim", scenario, URL, target)
        records = level_records(server, level, base_ns + i * 100 * 10**9)
        store.add_requests(run_id, records)
        summary = summarize(records, slos=slos)
        summary["slos"] = evaluate_slos(slos, summary)
        summary["model"] = "sim-model"
        summary["client"] = {"limited_by_client": level in client_limited, "reasons": []}
        store.finish_run(run_id, "finished", summary)
        store.add_run_to_sweep(run_id, sweep_id)
        summaries.append(summary)
        if target_id is not None:
            first = min(r.send_ns for r in records) / 1e9
            last = max(r.end_ns for r in records) / 1e9
            running = min(level, server.slots)
            waiting = level - running
            usage = running * (PROMPT + OUTPUT) / server.kv_capacity_tokens
            before = preempted
            if usage > 1 and server.preempt_when_full:
                preempted += level  # the overflowing sequences are preempted and recomputed
                usage = 1.0
            ts = first - 1.0
            while ts <= last + 1.0:
                inside = first <= ts <= last
                store.add_samples(target_id, ts, [
                    Sample("running", running if inside else 0, "vllm:num_requests_running"),
                    Sample("waiting", waiting if inside else 0, "vllm:num_requests_waiting"),
                    Sample("kv_usage", usage if inside else 0, "vllm:kv_cache_usage_perc"),
                    Sample("preemptions_total", preempted if ts > first else before,
                           "vllm:num_preemptions_total"),
                ])
                ts += 1.0
    store.finish_sweep(sweep_id, "finished", analyze(levels, summaries))
    return sweep_id
