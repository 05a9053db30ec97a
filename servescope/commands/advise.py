"""`servescope advise` (what to set, and why, from a stored sweep) and `servescope tune`
(measure candidates on a server servescope starts: servescope/commands/tune.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from servescope.core.errors import EXIT_BAD_INPUT, CliError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this module's subcommands on the CLI's subparsers."""
    a = sub.add_parser("advise", help="read a stored sweep: what limits the server, what to "
                       "set (max_num_seqs, max_num_batched_tokens, OLLAMA_NUM_PARALLEL, "
                       "--parallel, replicas) and why; decode's memory-bandwidth use")
    a.add_argument("sweep", help="sweep id (see the Sweep page), or 'latest'")
    a.add_argument("--kv-capacity-tokens", type=int, metavar="N",
                   help="the server's KV cache size in tokens, where the sweep did not "
                   "record it (vLLM logs 'KV cache size: N tokens')")
    add_physics_flags(a)
    a.add_argument("--json", action="store_true", help="print evidence and advice as JSON")
    a.set_defaults(func=cmd_advise)
    from servescope.commands.tune import add_tune_parser

    add_tune_parser(sub)


def add_physics_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("physics check (decode's memory-bandwidth use)")
    g.add_argument("--model", help="catalog name, config.json or model folder (default: the "
                   "served folder, when it is on this machine)")
    hw = g.add_mutually_exclusive_group()
    hw.add_argument("--gpu", help="hardware catalog name, e.g. h100-sxm (default: the GPU "
                    "NVML named during the sweep)")
    hw.add_argument("--bandwidth-gbs", type=float, metavar="GBS",
                    help="a CPU server: its memory bandwidth in GB/s")
    g.add_argument("--tp", type=int, default=1, help="tensor-parallel size (default 1)")
    g.add_argument("--quantization", help="weight format (default: the model's)")
    g.add_argument("--dtype", help="as served, e.g. float32 (default: as recorded, else the "
                   "model's)")


def _sweep_id(store: Any, text: str) -> int:
    if text == "latest":
        sweeps = store.sweeps()
        if not sweeps:
            raise CliError(f"no sweep in store {store.path}: run `servescope sweep` first",
                           EXIT_BAD_INPUT)
        return int(sweeps[0]["id"])
    try:
        return int(text)
    except ValueError:
        raise CliError(f"sweep {text!r}: expected a sweep id or 'latest'",
                       EXIT_BAD_INPUT) from None


def physics(ev: dict[str, Any], args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """Per-level decode checks where the model and hardware are known; else why not."""
    from servescope.capacity.physics import evidence_checks, resolve

    if args.bandwidth_gbs is not None and args.bandwidth_gbs <= 0:
        raise CliError(f"--bandwidth-gbs {args.bandwidth_gbs}: must be positive",
                       EXIT_BAD_INPUT)
    info, hw, why = resolve(args.model, ev.get("model_path"), args.gpu, args.bandwidth_gbs,
                            ev.get("gpu_names") or [])
    if info is None or hw is None:
        return [], why
    try:
        return evidence_checks(ev, info, hw, tp=args.tp, quantization=args.quantization,
                               dtype=args.dtype), []
    except (ValueError, KeyError) as exc:
        return [], [f"physics check: {exc}"]


def cmd_advise(args: argparse.Namespace) -> int:
    from servescope.analysis.sweep_evidence import evidence
    from servescope.capacity.advise import advise
    from servescope.commands.common import _store
    from servescope.core.store import StoreError

    store = _store(args)
    sweep_id = _sweep_id(store, args.sweep)
    try:
        ev = evidence(store, sweep_id)
    except StoreError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    if args.kv_capacity_tokens is not None and args.kv_capacity_tokens < 1:
        raise CliError(f"--kv-capacity-tokens {args.kv_capacity_tokens}: must be at least 1",
                       EXIT_BAD_INPUT)
    advice = advise(ev, args.kv_capacity_tokens)
    checks, unknown = physics(ev, args)
    if args.json:
        print(json.dumps({"evidence": ev, "advice": advice, "physics": checks,
                          "physics_unknown": unknown}, indent=2))
        return 0
    print("\n".join(report_lines(ev, advice, checks, unknown)))
    return 0


def _f(v: float | None, pattern: str = "{:.1f}") -> str:
    return "-" if v is None else pattern.format(v)


def evidence_table(ev: dict[str, Any]) -> list[str]:
    kind = ev["kind"]
    head = (f"{kind:>12}{'out tok/s':>10}{'goodput':>9}{'TTFT p95':>10}{'ITL p95':>9}"
            f"{'SLOs':>6}{'running':>9}{'waiting':>9}{'KV max':>8}{'preempt':>8}{'queue':>7}")
    lines = [head]
    for lv in ev["levels"]:
        srv, ph = lv.get("server") or {}, lv.get("phases") or {}
        slos = {True: "met", False: "MISS", None: "-"}[lv.get("slos_met")]
        if lv.get("client_limited"):
            slos += "*"
        lines.append(
            f"{lv['level']:>12g}{_f(lv['output_tokens_per_s']):>10}"
            f"{_f(lv['goodput_per_s'], '{:.2f}'):>9}{_f(lv['ttft_ms']['p95']):>10}"
            f"{_f(lv['itl_ms']['p95']):>9}{slos:>6}"
            f"{_f(srv.get('running_mean')):>9}{_f(srv.get('waiting_mean')):>9}"
            f"{_f(srv.get('kv_usage_max'), '{:.1%}'):>8}{_f(srv.get('preemptions'), '{:g}'):>8}"
            f"{_f(ph.get('queue_share'), '{:.0%}'):>7}")
    lines.append("(goodput: requests/s meeting every SLO; running and waiting: the server's "
                 "means while the level ran; queue: share of the server's time per request; "
                 "* the load generator limited the level)")
    return lines


def report_lines(ev: dict[str, Any], advice: dict[str, Any], checks: list[dict],
                 unknown: list[str]) -> list[str]:
    knob = ev.get("knob") or {}
    current = (f"{knob['name']} {knob['value']} ({knob['source']})" if knob.get("value")
               is not None else f"{knob.get('name') or 'concurrency knob'} unknown")
    kv = (f", KV cache {ev['kv_capacity_tokens']:,} tokens" if ev.get("kv_capacity_tokens")
          else "")
    lines = [f"sweep {ev['sweep_id']} {ev['name']} ({ev['status']}): "
             f"{ev.get('runtime') or 'runtime unknown'} at {ev['target_url']}, "
             f"{ev.get('model') or 'model unknown'}; {current}{kv}", ""]
    lines += evidence_table(ev)
    lines += ["", f"limit: {advice['limit'] or 'none found'}"]
    for r in advice["recommendations"]:
        was = "?" if r["current"] is None else r["current"]
        lines.append(f"- set {r['knob']}: {was} -> {r['value']}")
        lines.append(f"  {r['reason']}")
    if not advice["recommendations"]:
        lines.append("- nothing to change from this sweep")
    lines += [f"note: {n}" for n in advice["notes"]]
    if checks:
        lines += ["", "physics (decode):"]
        lines += [f"  {ev['kind']} {c['level']:g}: {c['line']}" for c in checks]
    elif unknown:
        lines += ["", "physics (decode): not checked: " + "; ".join(unknown)]
    return lines
