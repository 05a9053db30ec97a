"""Validation of the advisor (issue 10): a brute-force grid over max_num_seqs on the real
vLLM CPU server against the value `servescope tune`'s advisor picks from at most 3 runs.

Each grid value: restart the local vLLM CPU engine with it, sweep the same closed-loop
levels with the same scenario (the `servescope sweep` code path, a collector recording the
server's series), and take the best goodput under the scenario's SLOs over the levels.
The advisor then runs its search (capacity/tune_search.py) starting from --start; a value
it asks for that the grid measured is answered with that measurement (the same server,
value and workload: measuring it again would only add noise and minutes), a value the grid
lacks is measured live. Printed: the grid, the advisor's steps, both goodputs and their
ratio (goal: at least 95% of the grid's best).

    flock /tmp/servescope-engine.lock python -m bench tune
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCENARIO = """\
name: tunebench
description: Fixed short chat requests for the max_num_seqs grid (bench/tune.py).
seed: 7
prompt_tokens: 64
output_tokens: 64
stages:
  - {{concurrency: 1, duration: 60s}}
request_timeout: 180s
slos:
  ttft_ms: {{p95: {ttft}}}
  itl_ms: {{p95: {itl}}}
"""


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench tune", description=__doc__.splitlines()[0])
    p.add_argument("--grid", default="1,2,4,8,16,32,64", help="max_num_seqs values")
    p.add_argument("--levels", default="4,16,64", help="closed-loop levels of every sweep")
    p.add_argument("--requests", type=int, default=96, help="requests per level")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per level at most")
    p.add_argument("--ttft-ms", type=float, default=3000.0, help="TTFT p95 SLO")
    p.add_argument("--itl-ms", type=float, default=50.0, help="ITL p95 SLO")
    p.add_argument("--start", type=int, default=8, help="the advisor's first value")
    p.add_argument("--max-runs", type=int, default=3)
    p.add_argument("--db", type=Path, help="store (default: a temporary one)")
    p.add_argument("--out", type=Path, help="write the figures as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[2:] if argv is None else argv)
    import servescope.loadgen.run  # noqa: F401 - Locust first (servescope/cli.py)
    from servescope.capacity.advise import best_goodput
    from servescope.capacity.tune_search import search
    from servescope.commands.tune import (
        KNOB,
        _EngineServer,
        measure_sweep,
        start_collector,
        stop_collector,
    )
    from servescope.core.store import Store

    grid = [int(v) for v in args.grid.split(",")]
    levels = [int(v) for v in args.levels.split(",")]
    work = Path(tempfile.mkdtemp(prefix="servescope-bench-tune-"))
    scenario = work / "tunebench.yaml"
    scenario.write_text(SCENARIO.format(ttft=args.ttft_ms, itl=args.itl_ms))
    db = args.db or work / "tune.db"
    store = Store(db)
    sweep_args = argparse.Namespace(scenario=str(scenario), concurrency=levels,
                                    duration=args.duration, requests=args.requests,
                                    quiet=True, db=db)
    server = _EngineServer(0)
    collector = start_collector(db, server.url)
    settings = {"knob": KNOB, "source": "bench tune started vLLM with it", "dtype": "float32"}
    measured: dict[int, dict[str, Any]] = {}
    live: list[int] = []
    started = time.monotonic()

    def measure(value: int) -> dict[str, Any]:
        if value not in measured:
            measured[value] = measure_sweep(sweep_args, store, server, value,
                                            {**settings, "value": value})
        return measured[value]

    print(f"bench tune: grid {grid} x levels {levels}, {args.requests} requests per level, "
          f"SLOs TTFT p95 <= {args.ttft_ms:g} ms, ITL p95 <= {args.itl_ms:g} ms; store {db}",
          flush=True)
    try:
        for value in grid:
            ev = measure(value)
            level, g = best_goodput(ev)
            print(f"grid {KNOB} {value}: best goodput {g or 0:.3f} req/s at concurrency "
                  f"{level} ({time.monotonic() - started:.0f}s)", flush=True)

        def advised(value: int) -> dict[str, Any]:
            if value not in measured:
                live.append(value)
            return measure(value)

        result = search(advised, args.start, args.max_runs)
    finally:
        server.stop()
        stop_collector(collector)
    grid_goodput = {v: best_goodput(measured[v]) for v in grid}
    best_value = max(grid, key=lambda v: grid_goodput[v][1] or 0)
    best_g = grid_goodput[best_value][1] or 0
    pick, pick_g = result["best"], result["best_goodput_per_s"] or 0
    ratio = pick_g / best_g if best_g else None
    print(f"\n{KNOB:>12}{'goodput req/s':>15}{'at level':>10}")
    for v in grid:
        level, g = grid_goodput[v]
        print(f"{v:>12}{g or 0:>15.3f}{level!s:>10}")
    print("\nadvisor steps:")
    for s in result["steps"]:
        how = "measured live" if s["value"] in live else "the grid's measurement"
        print(f"  {KNOB} {s['value']}: goodput {s['goodput_per_s'] or 0:.3f} req/s, limit "
              f"{s['limit']}, next {s['next']} ({how})")
        for r in s["recommendations"]:
            print(f"    {r['knob']} -> {r['value']}: {r['reason']}")
    print(f"\ngrid best: {KNOB} {best_value}, {best_g:.3f} req/s; advisor's pick after "
          f"{len(result['steps'])} run(s): {KNOB} {pick}, {pick_g:.3f} req/s; ratio "
          + (f"{ratio:.1%}" if ratio is not None else "-")
          + f" (goal >= 95%); wall {time.monotonic() - started:.0f}s")
    if args.out:
        args.out.write_text(json.dumps({
            "grid": {str(v): {"level": grid_goodput[v][0], "goodput_per_s": grid_goodput[v][1]}
                     for v in grid},
            "advisor": result, "live": live, "grid_best": best_value,
            "grid_best_goodput_per_s": best_g, "pick": pick, "pick_goodput_per_s": pick_g,
            "ratio": ratio, "levels": levels, "requests": args.requests,
            "slos": {"ttft_ms": args.ttft_ms, "itl_ms": args.itl_ms}}, indent=2))
    store.close()
