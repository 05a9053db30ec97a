"""What `python -m bench agree` found and how it is told: the runs, the comparison of
servescope's medians with each peer's against both tools' run-to-run spreads, the check
that every tool sent the same prompt length, and the one-line verdict."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

OURS, VLLM, GUIDE = "servescope", "vllm bench serve", "GuideLLM"
METRICS = {  # key: (label, unit)
    "ttft_p50": ("TTFT p50", "ms"), "ttft_p99": ("TTFT p99", "ms"),
    "tpot_p50": ("TPOT p50", "ms"), "tpot_p99": ("TPOT p99", "ms"),
    "itl_p50": ("ITL p50", "ms"), "itl_p99": ("ITL p99", "ms"),
    "output_tps": ("output", "tok/s"),
}
SPREAD_DEFINITION = ("spread = max/min - 1 over a tool's runs; a ratio (ours / peer) agrees "
                     "when 1/(1+s) <= ratio <= 1+s, s the larger of the two tools' spreads")


@dataclass
class Config:
    """The workload every tool runs, and what the bench found out about it beforehand."""

    prompt_tokens: int = 256
    output_tokens: int = 64
    concurrency: int = 4
    requests: int = 48
    runs: int = 3
    guidellm: bool = True
    template_tokens: int = 0  # what the chat template adds around the user's text
    seed: int = 0  # the first run's; run k of tool t uses seed + 10 * k + t


@dataclass
class Run:
    """One tool's run: its own figures, its sample counts and what the server counted."""

    tool: str
    index: int
    seed: int
    values: dict[str, float | None] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)  # ttft, tpot, itl sample counts
    server: dict[str, float] = field(default_factory=dict)  # /metrics deltas
    usage_prompt_tokens: list[int] = field(default_factory=list)  # min, max per request
    wall_s: float = 0.0
    note: str = ""


# -- the comparison ----------------------------------------------------------------------
def spread(values: list[float]) -> float | None:
    """max/min - 1 over a tool's runs (None with fewer than two)."""
    if len(values) < 2 or min(values) <= 0:
        return None
    return max(values) / min(values) - 1


def per_tool(runs: list[Run]) -> dict[str, dict[str, dict[str, Any]]]:
    """tool -> metric -> its runs' values, median and spread."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for tool in dict.fromkeys(r.tool for r in runs):
        out[tool] = {}
        for key in METRICS:
            vals = [r.values[key] for r in runs if r.tool == tool and r.values.get(key) is not None]
            out[tool][key] = {"runs": vals, "median": statistics.median(vals) if vals else None,
                              "spread": spread(vals)}
    return out


def against(tools: dict[str, dict[str, dict[str, Any]]], peer: str) -> dict[str, dict[str, Any]]:
    """Per metric: ours / the peer's median, the larger spread, and whether the ratio lies
    inside it (None: one side has no figure, or no spread with a single run)."""
    rows = {}
    for key in METRICS:
        a, b = tools[OURS][key], tools[peer][key]
        ratio = a["median"] / b["median"] if a["median"] and b["median"] else None
        spreads = [s for s in (a["spread"], b["spread"]) if s is not None]
        limit = max(spreads) if len(spreads) == 2 else None
        inside = None if ratio is None or limit is None else \
            1 / (1 + limit) <= ratio <= 1 + limit
        rows[key] = {"ours": a["median"], "peer": b["median"], "ratio": ratio,
                     "spread_ours": a["spread"], "spread_peer": b["spread"], "limit": limit,
                     "agrees": inside}
    return rows


def prompt_check(runs: list[Run]) -> dict[str, Any]:
    """The server-counted prompt tokens per request of every tool, and whether they match."""
    per: dict[str, dict[str, Any]] = {}
    for tool in dict.fromkeys(r.tool for r in runs):
        mine = [r for r in runs if r.tool == tool and not r.note.startswith(("not run",
                                                                              "failed"))]
        usage = [n for r in mine for n in r.usage_prompt_tokens]
        per[tool] = {
            "server_per_request": sorted({round(r.server["prompt_tokens_per_request"], 2)
                                          for r in mine}),
            "server_requests": [int(r.server["requests"]) for r in mine],
            "usage_min_max": [min(usage), max(usage)] if usage else [],
        }
    seen = {v for p in per.values() for v in p["server_per_request"]}
    gap = (max(seen) / min(seen) - 1) if seen and min(seen) > 0 else None
    return {"tools": per, "equal": len(seen) == 1, "max_difference": gap}


def label(key: str) -> str:
    """A metric's short name: "TTFT p50", "output tok/s"."""
    name, unit = METRICS[key]
    return f"{name} {unit}" if unit == "tok/s" else name


def prompt_words(check: dict[str, Any]) -> str:
    if check["equal"]:
        return "equal: yes"
    if check["max_difference"] is None:
        return "equal: not known (a tool sent nothing)"
    return f"equal: NO, up to {check['max_difference']:.2%} apart"


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    return f"{v:,.1f}" if unit == "tok/s" else f"{v:.3f}"


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def report(runs: list[Run], cfg: Config) -> dict[str, Any]:
    """Print the comparison tables, the prompt-length check and the sample counts; return
    them for the JSON file."""
    tools = per_tool(runs)
    peers = [p for p in (VLLM, GUIDE) if p in tools]
    comparison = {p: against(tools, p) for p in peers}
    print(f"\n{SPREAD_DEFINITION}.")
    for peer, rows in comparison.items():
        print(f"\nservescope vs {peer}: medians over {cfg.runs} run(s); ratio = ours / theirs")
        print(f"{'metric':16}{'servescope':>12}{peer[:16]:>18}{'ratio':>8}{'spread ours':>13}"
              f"{'spread peer':>13}{'agrees':>8}")
        for key, (name, unit) in METRICS.items():
            r = rows[key]
            agrees = {True: "yes", False: "NO", None: "-"}[r["agrees"]]
            print(f"{name + ' ' + unit:16}{fmt(r['ours'], unit):>12}{fmt(r['peer'], unit):>18}"
                  f"{fmt(r['ratio']):>8}{pct(r['spread_ours']):>13}{pct(r['spread_peer']):>13}"
                  f"{agrees:>8}")
    if GUIDE in tools:
        print("GuideLLM: its inter_token_latency is per request (last - first token) / "
              "(tokens - 1), compared as TPOT; it keeps no per-token times, so no ITL over "
              "every gap. Its output tok/s: its output tokens / (last end - first start).")
    prompts = prompt_check(runs)
    print(f"\nprompt tokens per request as the server counted them (/metrics deltas; scenario "
          f"{cfg.prompt_tokens}, of which {cfg.template_tokens} chat template: the peers ask "
          f"for {cfg.prompt_tokens - cfg.template_tokens} tokens of user text):")
    for tool, p in prompts["tools"].items():
        print(f"  {tool:17} server {p['server_per_request']} per request over "
              f"{p['server_requests']} requests; usage per request "
              f"{'..'.join(map(str, p['usage_min_max'])) or '-'}")
    print(f"  {prompt_words(prompts)}")
    samples = {t: {m: sorted({r.samples.get(m, 0) for r in runs if r.tool == t})
                   for m in ("ttft", "tpot", "itl")} for t in tools}
    print("\nsamples per run behind each percentile (TTFT / TPOT: one per request; ITL: one "
          "per gap between tokens):")
    for tool, s in samples.items():
        print(f"  {tool:17} TTFT {s['ttft']}, TPOT {s['tpot']}, "
              f"ITL {s['itl'] if any(s['itl']) else 'none'}")
    n, gaps_n = cfg.requests, cfg.requests * (cfg.output_tokens - 1)
    top = n - math.floor(0.99 * (n - 1))  # numpy's linear rule interpolates between these
    print(f"  thin tails: a p99 needs about {10 / (1 - 0.99):.0f} samples to be stable. The "
          f"TTFT and TPOT p99 over {n} requests is interpolated between the {top} largest "
          f"values alone; the ITL p99 over ~{gaps_n} gaps has ~{max(1, round(gaps_n * 0.01))} "
          "above it.")
    gaps = {t: [r.samples["itl"] / r.samples["ttft"] for r in runs
                if r.tool == t and r.samples.get("itl") and r.samples.get("ttft")] for t in tools}
    gaps = {t: round(statistics.mean(g), 1) for t, g in gaps.items() if g}
    if gaps:
        print(f"  ITL gaps per request: {', '.join(f'{t} {g}' for t, g in gaps.items())}; "
              f"{cfg.output_tokens} tokens have {cfg.output_tokens - 1} gaps between them.")
        if gaps.get(VLLM, 0) >= cfg.output_tokens:
            print("  vllm bench serve times every streamed chunk, vLLM's first, role-only "
                  "chunk included (one near-zero gap a request).")
        if gaps.get(OURS, cfg.output_tokens) < cfg.output_tokens - 1.5:
            print("  servescope has fewer: a token whose text is empty (vLLM streams a partial "
                  "UTF-8 character as content \"\") is not an event it times, so its gap "
                  "joins the next one and doubles it, which lifts the ITL tail.")
    return {"per_tool": tools, "comparison": comparison, "prompt_tokens": prompts,
            "samples": samples, "itl_gaps_per_request": gaps}


def verdict(result: dict[str, Any]) -> str:
    """One line: per peer, how many ratios lie inside the larger spread, which do not, and
    which could not be judged (a tool with fewer than two good runs has no spread)."""
    parts = []
    for peer, rows in result["comparison"].items():
        said = []
        judged = {k: r for k, r in rows.items() if r["agrees"] is not None}
        if judged:
            off = [f"{label(k)} {r['ratio']:.2f} (limit {1 + r['limit']:.2f})"
                   for k, r in judged.items() if not r["agrees"]]
            said.append(f"{len(judged) - len(off)}/{len(judged)} agree"
                        + (f", outside: {', '.join(off)}" if off else ""))
        unspread = {k: r for k, r in rows.items() if r["ratio"] is not None and k not in judged}
        if unspread:
            said.append("not judged (a tool has fewer than 2 good runs: no spread), ratios "
                        + ", ".join(f"{label(k)} {r['ratio']:.2f}"
                                    for k, r in unspread.items()))
        if missing := [label(k) for k, r in rows.items() if r["ratio"] is None]:
            said.append(f"no figure for {', '.join(missing)}")
        parts.append(f"{peer}: {'; '.join(said)}")
    parts.append(f"prompt tokens {prompt_words(result['prompt_tokens'])}")
    return "verdict: " + " | ".join(parts)
