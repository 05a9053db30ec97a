"""`servescope sim-server`: serve the simulator as a live, OpenAI-compatible engine with
vLLM's /metrics (servescope/engines/sim_server.py)."""

from __future__ import annotations

import argparse
import contextlib
import sys

from servescope.core.errors import EXIT_BAD_INPUT, CliError


def add_sim_server_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "sim-server", help="serve a SIMULATED engine (any catalog model on any catalog GPU): "
        "OpenAI API and vLLM's /metrics, driven in real time by the simulator")
    s.add_argument("--model", required=True,
                   help="catalog name (llama-3.1-8b, qwen3-32b ...) or a config.json / folder")
    s.add_argument("--gpu", required=True, help="hardware name: h100-80gb, a100-80gb, l4 ...")
    s.add_argument("--max-num-seqs", type=int, help="vLLM's max_num_seqs (default: vLLM's "
                   "for this GPU)")
    s.add_argument("--max-num-batched-tokens", type=int,
                   help="vLLM's max_num_batched_tokens (default: vLLM's for this GPU)")
    s.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    s.add_argument("--tp", type=int, default=1, help="tensor-parallel size (default 1)")
    s.add_argument("--profile", help="a calibrated step-time profile (`servescope calibrate`); "
                   "default: physics from the catalog, uncalibrated")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--seed", type=int, default=0, help="seed of the step-time noise")
    s.set_defaults(func=cmd_sim_server)


def cmd_sim_server(args: argparse.Namespace) -> int:
    from pathlib import Path

    from servescope.engines.sim_driver import SimConfigError, SimSpec, build_backend
    from servescope.engines.sim_server import SimServer

    for flag in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "tp"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise CliError(f"--{flag.replace('_', '-')} must be at least 1, got {value}",
                           EXIT_BAD_INPUT)
    spec = SimSpec(model=args.model, gpu=args.gpu, max_num_seqs=args.max_num_seqs,
                   max_num_batched_tokens=args.max_num_batched_tokens,
                   max_model_len=args.max_model_len, tp=args.tp,
                   profile=Path(args.profile) if args.profile else None, seed=args.seed)
    try:
        backend = build_backend(spec)
    except SimConfigError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    try:
        server = SimServer(backend, args.host, args.port)
    except OSError as exc:
        raise CliError(f"sim-server: cannot listen on {args.host}:{args.port}: {exc}") from None
    sch = backend.scheduler
    print(f"[servescope] SIMULATED {backend.served_name} at {server.url} "
          f"(step model: {backend.step_model_name}; max_num_seqs {sch.max_num_seqs}, "
          f"max_num_batched_tokens {sch.max_num_batched_tokens}, KV {sch.kv_blocks} blocks "
          f"of {sch.block_size} tokens, max_model_len {backend.max_model_len}). "
          "Ctrl-C stops it.", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C or SIGTERM: uvicorn has stopped
        server.serve_forever()
    print("[servescope] sim-server stopped", file=sys.stderr, flush=True)
    return 0
