"""`servescope dashboard`, `engine`, `demo` and `export`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from servescope.commands.common import _store
from servescope.core.errors import EXIT_BAD_INPUT, CliError


def cmd_dashboard(args: argparse.Namespace) -> int:
    from servescope.core.store import default_db_path

    # The dashboard only reads: it never creates or migrates the store (it says so when the
    # store is missing, and reads it once a collector or a load run has made it).
    path = Path(args.db).expanduser() if args.db else default_db_path()
    print(f"dashboard on http://{args.host}:{args.port} (store {path})", file=sys.stderr)
    from servescope.dashboard.launch import dashboard_command

    os.execv(sys.executable, dashboard_command(path, args.host, args.port))
    return 0  # not reached


def cmd_engine(args: argparse.Namespace) -> int:
    from servescope.engines.vllm_cpu import EngineError, ensure_env, start_local_vllm

    try:
        if args.action == "install":
            ensure_env()
            return 0
        server = start_local_vllm(port=args.port, max_num_seqs=args.max_num_seqs)
    except EngineError as exc:
        raise CliError(str(exc)) from None
    try:  # the line first inside: a Ctrl-C or SIGTERM the moment it is read stops cleanly
        print(f"vLLM serving {server.served_model_name} at {server.url}; Ctrl-C stops it",
              flush=True)
        while server.proc and server.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from servescope.demo import run_demo

    return run_demo(args)


def cmd_export(args: argparse.Namespace) -> int:
    from servescope.core.store import StoreError
    from servescope.export import export_run

    store = _store(args)
    run_id = args.run if args.run is not None else (store.runs() or [{"id": None}])[0]["id"]
    if run_id is None:
        raise CliError(f"no runs in store {store.path}; run `servescope load` first")
    fmt = args.format or (args.out.suffix.lstrip(".") or "jsonl")
    try:
        n = export_run(store, run_id, fmt, args.out)
    except (ValueError, StoreError) as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    print(f"run {run_id}: {n} requests written to {args.out} ({fmt})", file=sys.stderr)
    return 0
