"""Advice from measurements: what to set (max_num_seqs, max_num_batched_tokens,
OLLAMA_NUM_PARALLEL, --parallel, replicas) and why, read from a sweep's evidence
(analysis/sweep_evidence.py: the client's figures per level beside the server's running,
waiting, KV use, preemptions and queue share).

The reading, in plain terms:
- requests WAIT while the KV cache has room: the concurrency knob is the limit; raise it
  to what the demand, the KV cache and the latency SLOs allow;
- the KV cache FILLS or requests are preempted: the knob asks for more sequences than the
  memory holds; lower it to what KV holds, or give the cache more memory;
- TTFT misses its SLO with little queueing while the time goes to prefill: the prefill
  token budget (max_num_batched_tokens) is the limit;
- throughput stops growing while sequences run, not wait: the server's compute is the
  limit; add replicas;
- a level the load generator limited says nothing about the server.
The latency SLOs' limit on the batch comes from a straight-line fit of the SLO's ITL and
TTFT percentile against the sequences running, over the levels where nothing queued.
Pure: a dict in, a dict out.
"""

from __future__ import annotations

import math
from typing import Any

KNOBS = {"vllm": "max_num_seqs", "sglang": "max_running_requests",
         "ollama": "OLLAMA_NUM_PARALLEL", "llamacpp": "--parallel"}
# A level queues when this many requests wait on average, or this share of the server's
# time per request is queue.
QUEUED_WAITING = 0.5
QUEUED_SHARE = 0.2
KV_FULL = 0.9
# Without server series: a level queues when its median TTFT is this many times the
# lightest level's.
QUEUED_TTFT_GROWTH = 2.0
BATCHED_TOKENS_MAX = 16384


def _f(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 10 else f"{v:.3g}"


def _server(level: dict[str, Any]) -> dict[str, Any]:
    return level.get("server") or {}


def _running(level: dict[str, Any], kind: str, current: int | None) -> float | None:
    """Sequences running together at this level: the server's mean, else the users the
    knob lets in."""
    mean = _server(level).get("running_mean")
    if mean is not None:
        return mean
    if kind == "concurrency":
        return min(level["level"], current) if current else level["level"]
    return None


def _queued(level: dict[str, Any], kind: str, current: int | None, base_ttft: float | None
            ) -> bool:
    srv, phases = _server(level), level.get("phases") or {}
    if srv.get("waiting_mean") is not None:
        return srv["waiting_mean"] >= QUEUED_WAITING
    if phases.get("queue_share") is not None:
        return phases["queue_share"] >= QUEUED_SHARE
    ttft = level["ttft_ms"].get("p50")
    above = kind == "concurrency" and current is not None and level["level"] > current
    return bool(above and ttft and base_ttft and ttft > QUEUED_TTFT_GROWTH * base_ttft)


def _demand(level: dict[str, Any], kind: str) -> float:
    """Requests that wanted to run at once: the users (closed loop), else running + waiting."""
    if kind == "concurrency":
        return level["level"]
    srv = _server(level)
    return (srv.get("running_max") or 0) + (srv.get("waiting_max") or 0)


def _fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least-squares line y = a + k x; None with fewer than two distinct x."""
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    k = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - k * mx, k


def latency_limit(levels: list[dict[str, Any]], slos: dict[str, dict[str, float]],
                  running: list[float | None], queued: list[bool] | None = None
                  ) -> tuple[int | None, str | None]:
    """The most sequences running together that keep the ITL and TTFT SLOs, by a line fit
    over `levels` against `running` (TTFT only over the levels where nothing `queued`: the
    queue inflates it); (None, None) when no SLO or too few points say."""
    best: tuple[int, str] | None = None
    queued = queued or [False] * len(levels)
    for metric, label in (("itl_ms", "ITL"), ("ttft_ms", "TTFT")):
        for stat, target in (slos.get(metric) or {}).items():
            pts = [(b, lv[metric].get(stat))
                   for lv, b, q in zip(levels, running, queued, strict=True)
                   if b is not None and lv[metric].get(stat) is not None
                   and not (q and metric == "ttft_ms")]
            fit = _fit(pts)
            if fit is None:
                continue
            a, k = fit
            if k <= 0:
                continue  # the latency does not grow with the batch here
            n = max(0, math.floor((target - a) / k))
            why = (f"{label} {stat} grows about {_f(k)} ms per running sequence "
                   f"({_f(a)} ms + {_f(k)} ms x sequences over {len(pts)} levels): "
                   f"the {_f(target)} ms SLO holds up to about {n}")
            if best is None or n < best[0]:
                best = (n, why)
    return best if best else (None, None)


def _kv_allows(ev: dict[str, Any], levels: list[dict[str, Any]], cap: int | None
               ) -> tuple[int | None, float | None]:
    """(sequences the KV cache holds at the workload's p95 length, that length)."""
    lengths = [lv.get("total_tokens_p95") for lv in levels if lv.get("total_tokens_p95")]
    if not lengths:
        lengths = [(lv.get("prompt_tokens_mean") or 0) + (lv.get("output_tokens_mean") or 0)
                   for lv in levels]
        lengths = [n for n in lengths if n > 0]
    per_seq = max(lengths) if lengths else None
    if cap and per_seq:
        return int(cap // per_seq), per_seq
    # no capacity: scale what the fullest level short of full used by the sequences it ran
    used = [(s["kv_usage_max"], s["running_max"]) for lv in levels
            if (s := _server(lv)).get("kv_usage_max") and s.get("running_max")
            and s["kv_usage_max"] < KV_FULL]
    if used:
        usage, running = max(used)
        return int(running / usage), per_seq
    return None, per_seq


def best_goodput(ev: dict[str, Any]) -> tuple[float | None, float | None]:
    """(level, goodput req/s) of the sweep's best level by goodput under its SLOs."""
    rows = [(lv["goodput_per_s"], lv["level"]) for lv in ev.get("levels") or []
            if lv.get("goodput_per_s") is not None]
    if not rows:
        return None, None
    g, level = max(rows)
    return level, g


def _rec(runtime: str, knob: str, current: Any, value: Any, reason: str) -> dict[str, Any]:
    return {"runtime": runtime, "knob": knob, "current": current, "value": value,
            "reason": reason}


def advise(evidence: dict[str, Any], kv_capacity_tokens: int | None = None) -> dict[str, Any]:
    """Recommendations from a sweep's evidence (analysis.sweep_evidence.evidence).

    Returns {runtime, knob, current, limit, recommendations, notes, next_candidate}:
    `limit` names what bounds the server ("queue": the concurrency knob, "kv": KV memory,
    "latency": the SLOs cap the batch, "prefill", "compute", "client": the load generator,
    or None when the sweep shows none); `recommendations` is a list of {runtime, knob
    ("max_num_seqs", "max_num_batched_tokens", "OLLAMA_NUM_PARALLEL", "--parallel",
    "max_running_requests" or "replicas"), current (None: unknown), value, reason (plain
    words)}; `notes` are sentences about the measurement itself; `next_candidate` is the
    concurrency knob's value to measure next (None: nothing to change), which
    `servescope tune` follows. `kv_capacity_tokens` overrides the evidence's."""
    ev = evidence
    kind = ev.get("kind") or "concurrency"
    runtime = ev.get("runtime") or "vllm"
    knob = (ev.get("knob") or {}).get("name") or KNOBS.get(runtime, "max_num_seqs")
    current = (ev.get("knob") or {}).get("value")
    out: dict[str, Any] = {"runtime": runtime, "knob": knob, "current": current,
                           "limit": None, "recommendations": [], "notes": [],
                           "next_candidate": None}
    recs, notes = out["recommendations"], out["notes"]
    measured = [lv for lv in ev.get("levels") or [] if lv.get("requests_ok")]
    limited = [lv["level"] for lv in measured if lv.get("client_limited")]
    levels = [lv for lv in measured if not lv.get("client_limited")]
    if limited:
        notes.append(f"the load generator limited {kind} {', '.join(_f(v) for v in limited)}"
                     ": those figures are the client's, not the server's, and are left out; "
                     "run it on cores the server does not use, or on another machine")
    if not levels:
        out["limit"] = "client" if limited else None
        if not limited:
            notes.append("no level finished a request: nothing to read")
        return out
    if not any(lv.get("server") for lv in levels):
        notes.append("no server series in the sweep's windows (run `servescope collect` "
                     "against the target during the sweep): queueing is read from TTFT")
    if current is None:  # the knob's value from the running plateau where requests waited
        plateau = [_server(lv).get("running_max") for lv in levels
                   if (_server(lv).get("waiting_max") or 0) >= 1]
        if plateau and all(p is not None for p in plateau):
            current = int(max(plateau))
            notes.append(f"{knob} read from the sweep: at most {current} ran while others "
                         "waited")
            out["current"] = current
    cap = kv_capacity_tokens or ev.get("kv_capacity_tokens")
    kv_allows, per_seq = _kv_allows(ev, levels, cap)
    base = levels[0]["ttft_ms"].get("p50")
    queued = [lv for lv in levels if _queued(lv, kind, current, base)]
    running = [_running(lv, kind, current) for lv in levels]
    lat_n, lat_why = latency_limit(levels, ev.get("slos") or {}, running,
                                   [lv in queued for lv in levels])
    kv_usage = max((_server(lv).get("kv_usage_max") or 0 for lv in levels), default=0)
    preempted = sum(_server(lv).get("preemptions") or 0 for lv in levels)
    kv_text = f", KV allows {kv_allows}" if kv_allows is not None else ""
    per_text = f" of {_f(per_seq)} tokens (p95)" if per_seq else ""

    # 1. the KV cache is full, or sequences were preempted
    if preempted > 0 or kv_usage >= KV_FULL:
        out["limit"] = "kv"
        where = next(lv for lv in levels if (_server(lv).get("preemptions") or 0) > 0
                     or (_server(lv).get("kv_usage_max") or 0) >= KV_FULL)
        value = kv_allows if kv_allows is not None else \
            max(1, math.floor(_server(where).get("running_mean") or 1))
        if current is not None:
            value = min(value, current)
        more = ("give the KV cache more memory (VLLM_CPU_KVCACHE_SPACE on CPU, "
                "--gpu-memory-utilization, a larger GPU or tensor parallelism)")
        seen = (f"at {kind} {_f(where['level'])} the KV cache was {kv_usage:.0%} full and "
                f"{_f(preempted)} requests were preempted (recomputed from scratch)")
        holds = f"{kv_allows if kv_allows else '?'} sequences{per_text}"
        if current is None or value < current:
            reason = (f"{seen}: {knob} asks for more sequences than the KV cache holds "
                      f"({holds}); lower it to {value}, or {more}")
        else:
            reason = (f"{seen}: the KV cache ({holds}) is the limit, not {knob}; to run "
                      f"more at once, {more}")
        recs.append(_rec(runtime, knob, current, value, reason))
        if current is None or value < current:
            out["next_candidate"] = value
        return out

    # 2. requests wait while KV has room: the concurrency knob is the limit
    if queued and current is not None:
        top = max(queued, key=lambda lv: lv["level"])
        demand = max(_demand(lv, kind) for lv in queued)
        bounds = [("the demand", demand)]
        if kv_allows is not None:
            bounds.append(("the KV cache", kv_allows))
        if lat_n is not None:
            bounds.append(("the latency SLOs", lat_n))
        by, value = min(bounds, key=lambda b: b[1])
        value = int(value)
        waiting = _server(top).get("waiting_max")
        wait_text = (f"up to {_f(waiting)} waiting at {kind} {_f(top['level'])}"
                     if waiting is not None else f"TTFT grows at {kind} {_f(top['level'])}")
        share = (top.get("phases") or {}).get("queue_share")
        if share is not None:
            wait_text += f", {share:.0%} of the server's time per request in the queue"
        if value > current:
            out["limit"] = "queue"
            reason = (f"above {current} sequences requests wait in the queue ({wait_text}) "
                      f"while KV is {kv_usage:.0%} used: {knob} is the limit; raise it to "
                      f"{value}{kv_text}")
            if lat_why:
                reason += f"; {lat_why}"
            if by != "the demand":
                reason += f" (set by {by})"
            recs.append(_rec(runtime, knob, current, value, reason))
            out["next_candidate"] = value
        else:
            out["limit"] = "latency"
            recs.append(_rec(runtime, knob, current, current, (
                f"requests wait in the queue above {current} sequences ({wait_text}), but "
                f"more running at once would break the SLOs: {lat_why}. {knob} {current} "
                "is at that limit: keep it, and add replicas to serve more")))
            _replicas(out, ev, levels, kind, runtime, "more sequences would break the "
                      "latency SLOs")
        _prefill(out, ev, levels, runtime)
        return out

    # 3. nothing queued: the SLOs may already cap the batch below the knob
    missed = [lv for lv in levels if lv.get("slos_met") is False]
    if lat_n is not None and current is not None and lat_n < current and missed:
        out["limit"] = "latency"
        value = max(1, lat_n)
        recs.append(_rec(runtime, knob, current, value, (
            f"{_f(missed[0]['level'])} {kind} miss the SLOs with nothing queued: {lat_why}; "
            f"lower {knob} to {value} (more requests then wait: watch TTFT) or add "
            "replicas")))
        out["next_candidate"] = value
    if _prefill(out, ev, levels, runtime) and out["limit"] is None:
        out["limit"] = "prefill"
    _replicas(out, ev, levels, kind, runtime, "")
    if out["limit"] is None:
        notes.append(f"no limit reached up to {kind} {_f(levels[-1]['level'])}: nothing "
                     "queued, KV had room and throughput still grew; sweep higher levels")
    return out


def _prefill(out: dict[str, Any], ev: dict[str, Any], levels: list[dict[str, Any]],
             runtime: str) -> bool:
    """max_num_batched_tokens when TTFT misses its SLO with little queueing while the time
    goes to prefill (vLLM only: its chunked prefill splits a long prompt over steps)."""
    if runtime != "vllm":
        return False
    ttft_slo = (ev.get("slos") or {}).get("ttft_ms") or {}
    for lv in levels:
        ph = lv.get("phases") or {}
        prefill, share = ph.get("prefill_ms_mean"), ph.get("queue_share")
        for stat, target in ttft_slo.items():
            ttft = lv["ttft_ms"].get(stat)
            if ttft is None or ttft <= target or prefill is None or share is None:
                continue
            if share < QUEUED_SHARE and prefill >= 0.5 * (lv["ttft_ms"].get("mean") or ttft):
                prompt = lv.get("prompt_tokens_p95") or lv.get("prompt_tokens_mean") or 0
                value = min(BATCHED_TOKENS_MAX, 1 << max(0, math.ceil(math.log2(max(1, prompt)))))
                out["recommendations"].append(_rec(runtime, "max_num_batched_tokens", None,
                    value, (
                        f"at {ev.get('kind')} {_f(lv['level'])} TTFT {stat} is "
                        f"{_f(ttft)} ms against {_f(target)} ms with only {share:.0%} "
                        f"queueing; prefill takes {_f(prefill)} ms on average for prompts "
                        f"of up to {_f(prompt)} tokens: raise max_num_batched_tokens to "
                        f"{value} so a prompt is prefilled in one step (decode steps then "
                        "wait longer behind it: watch ITL)")))
                return True
    return False


def _replicas(out: dict[str, Any], ev: dict[str, Any], levels: list[dict[str, Any]],
              kind: str, runtime: str, because: str) -> None:
    """More replicas when throughput stopped growing while sequences ran, not waited."""
    sat = ev.get("saturation_level")
    if sat is None:
        return
    at = next((lv for lv in levels if lv["level"] == sat), None)
    if at is None:
        return
    top = levels[-1]
    best = ev.get("max_level_meeting_slos") or sat
    n = max(2, math.ceil(top["level"] / best))
    srv = _server(at)
    running = srv.get("running_mean")
    state = (f" with {_f(running)} sequences running and KV {srv.get('kv_usage_max') or 0:.0%}"
             " used" if running is not None else "")
    if out["limit"] is None:
        out["limit"] = "compute"
    out["recommendations"].append(_rec(runtime, "replicas", 1, n, (
        f"throughput stops growing at {kind} {_f(sat)} "
        f"({_f(at.get('output_tokens_per_s') or 0)} output tokens/s){state}"
        f"{': ' + because if because else ''}: the server's compute is the limit; serving "
        f"{kind} {_f(top['level'])} within the SLOs takes about {n} replicas (one meets them "
        f"up to {_f(best)})")))
