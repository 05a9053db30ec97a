"""Hardware sizing with cost: for each GPU kind, the GPUs (tensor parallel x replicas) the
traffic needs under the SLOs, what they cost per hour and per million output tokens, the
cheapest first. Pure: plans and prices in, rows out."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from servescope.capacity.plan import PlanInput, sizing


def compare(inp: PlanInput, gpus: list[Any], prices: dict[str, float],
            slos: dict[str, dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """One row per hardware in `gpus` (catalog Hardware), `inp` on each: gpu, description,
    gpus_needed, tensor_parallel, replicas, sequences_per_replica, output_tokens_per_s,
    price_per_gpu_hour, cost_per_hour, cost_per_million_output_tokens (None without a
    price or where nothing fits), slo_cap (what limits the batch, or why nothing meets the
    SLOs). Sorted by cost per hour (then GPUs needed); rows that cannot serve come last."""
    rows = []
    for hw in gpus:
        size = sizing(dataclasses.replace(inp, hardware=hw), slos)
        price = prices.get(hw.key)
        n = size["gpus_needed"]
        cost = price * n if price is not None and n else None
        tokens = size.get("output_tokens_per_s")
        per_million = cost / (tokens * 3600 / 1e6) if cost is not None and tokens else None
        rows.append({"gpu": hw.key, "description": hw.name, "gpus_needed": n,
                     "tensor_parallel": size["tensor_parallel"], "replicas": size["replicas"],
                     "sequences_per_replica": size["sequences_per_replica"],
                     "needed_concurrency": size["needed_concurrency"],
                     "output_tokens_per_s": tokens, "price_per_gpu_hour": price,
                     "cost_per_hour": cost, "cost_per_million_output_tokens": per_million,
                     "slo_cap": size.get("slo_cap")})

    def key(r: dict[str, Any]) -> tuple[float, float]:
        if r["gpus_needed"] is None:
            return (math.inf, math.inf)
        return (r["cost_per_hour"] if r["cost_per_hour"] is not None else math.inf,
                r["gpus_needed"])

    return sorted(rows, key=key)


def _money(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"${v:,.{digits}f}"


def format_comparison(rows: list[dict[str, Any]], what: str) -> str:
    """The rows as a table, the cheapest first, with what each row assumes."""
    head = (f"{'gpu':<12}{'GPUs':>6}{'TP x replicas':>15}{'seqs/replica':>14}"
            f"{'out tok/s':>11}{'$/GPU-h':>9}{'$/hour':>10}{'$/M out tok':>13}")
    lines = [what, "", head]
    for r in rows:
        if r["gpus_needed"] is None:
            why = r["slo_cap"] or "does not fit"
            lines.append(f"{r['gpu']:<12}{'-':>6}  cannot serve it: {why}")
            continue
        tokens = "-" if r["output_tokens_per_s"] is None else f"{r['output_tokens_per_s']:,.0f}"
        lines.append(
            f"{r['gpu']:<12}{r['gpus_needed']:>6}"
            f"{str(r['tensor_parallel']) + ' x ' + str(r['replicas']):>15}"
            f"{r['sequences_per_replica']:>14}{tokens:>11}"
            f"{_money(r['price_per_gpu_hour']):>9}{_money(r['cost_per_hour']):>10}"
            f"{_money(r['cost_per_million_output_tokens'], 3):>13}")
    caps = [f"{r['gpu']}: {r['slo_cap']}" for r in rows
            if r["gpus_needed"] is not None and r["slo_cap"]]
    lines += ["", "out tok/s: output tokens per second the GPUs serve (the traffic's with "
              "--rate; at the physical bounds otherwise, so an upper bound); $/M out tok: "
              "$/hour over it. GPUs: fewest of the kind, any tensor-parallel size."]
    lines += [f"  {c}" for c in caps]
    return "\n".join(lines)
