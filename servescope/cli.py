"""The `servescope` command line: the parser and main; each command lives in servescope/commands/.

Heavy imports happen inside each command: `load` must import Locust (which monkey-patches
the process for gevent) before anything else touches sockets or ssl.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from servescope.commands import advise, simulate
from servescope.commands.collect import cmd_collect, cmd_proxy, cmd_scrape
from servescope.commands.compare import cmd_compare
from servescope.commands.load import cmd_load, cmd_sweep
from servescope.commands.plan import cmd_plan
from servescope.commands.serve import cmd_dashboard, cmd_demo, cmd_engine, cmd_export
from servescope.core.durations import parse_duration
from servescope.core.errors import CliError
from servescope.core.terminate import sigterm_as_interrupt


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


TOKENIZER_HELP = ("count prompt tokens with this tokenizer (a tokenizer.json, a model folder, "
                  "or a Hugging Face id in the local cache; HF_HUB_OFFLINE is honoured) "
                  "instead of the server's /tokenize, so the server gets no request but "
                  "the measured ones")


_SIZE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3,
               "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def _byte_size(text: str) -> int:
    """A size like 16MiB, 512KiB, 1GiB or a plain number of bytes."""
    number = text.strip().rstrip("bBiIkKmMgG")
    unit = text.strip()[len(number):].lower()
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"expected a size like 16MiB or 1048576, got {text!r}"
                                         ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a size of at least 1 byte, got {text!r}")
    return int(value)


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a list like 1,2,4,8, got {text!r}") from None
    if not levels or any(v < 1 for v in levels):
        raise argparse.ArgumentTypeError(f"levels must be positive integers, got {text!r}")
    return levels


def _rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected rates like 0.5,1,2, got {text!r}") from None
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be positive, got {text!r}")
    return rates


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    cp = sub.add_parser("compare", help="run one scenario against two or more runtimes in "
                        "turn; artifact manifests, mismatch warnings, a report")
    cp.add_argument("scenario", help="scenario YAML (or the name of one in scenarios/)")
    cp.add_argument("--target", action="append", default=[], required=True,
                    help="NAME=RUNTIME:URL, e.g. a=vllm:http://127.0.0.1:8000 (two or more)")
    levels = cp.add_mutually_exclusive_group(required=True)
    levels.add_argument("--concurrency", type=_levels, help="closed-loop levels, e.g. 1,4,16")
    levels.add_argument("--rates", type=_rates, help="open-loop rates per second, e.g. 1,2,4")
    cp.add_argument("--duration", type=_duration, default=30.0, help="per level (default 30s)")
    cp.add_argument("--requests", type=int, help="stop each level after N requests")
    cp.add_argument("--model", action="append", default=[], metavar="[TARGET=]MODEL",
                    help="model per target (TARGET=MODEL) or for all (default: each "
                    "server's first)")
    cp.add_argument("--num-parallel", action="append", default=[], metavar="TARGET=N",
                    help="what a server does not report itself (Ollama's "
                    "OLLAMA_NUM_PARALLEL), recorded in its manifest")
    cp.add_argument("--out", type=Path, help="write compare.json, report.md, report.html here")
    cp.add_argument("--api-key-env", help="environment variable holding a bearer token")
    cp.add_argument("--quiet", action="store_true", help="no progress line")
    cp.add_argument("--tokenizer", metavar="PATH_OR_HF_ID", help=TOKENIZER_HELP)
    cp.set_defaults(func=cmd_compare)


def build_parser() -> argparse.ArgumentParser:
    # Global options are accepted before or after the subcommand (`servescope --db X load`
    # and `servescope load ... --db X`): one parent parser, SUPPRESS so that a subcommand's
    # copy never overwrites a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", type=Path, default=argparse.SUPPRESS,
                        help="store file (default: $SERVESCOPE_DB or "
                        "~/.local/share/servescope/servescope.db)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    p = argparse.ArgumentParser(prog="servescope", description=__doc__.splitlines()[0],
                                parents=[common])
    sub = p.add_subparsers(dest="command", required=True)
    add_parser = sub.add_parser
    sub.add_parser = lambda *a, **kw: add_parser(*a, parents=[common], **kw)  # type: ignore[method-assign]

    s = sub.add_parser("scrape", help="print one normalized snapshot of a server's metrics")
    s.add_argument("source", help="server URL (its /metrics) or a saved /metrics file")
    s.add_argument("--runtime", default="auto",
                   help="auto (default: detected) or the server's runtime (vllm, ollama ...)")
    s.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    s.add_argument("--no-raw", action="store_true", help="leave unmapped metrics out")
    s.add_argument("--timeout", type=_duration, default=5.0)
    s.set_defaults(func=cmd_scrape)

    c = sub.add_parser("collect", help="scrape targets on an interval into the store")
    c.add_argument("--no-host", action="store_true",
                   help="do not collect this host's CPU, memory, GPU and serving processes")
    c.add_argument("--target", action="append", default=[],
                   help="NAME=RUNTIME:URL, e.g. local=vllm:http://127.0.0.1:8000; RUNTIME is "
                   "auto (detected) or the server's; user:password@ in the URL is sent as "
                   "basic auth, never shown or stored (repeatable)")
    c.add_argument("--interval", type=_duration, default=2.0, help="e.g. 2s (default)")
    c.add_argument("--duration", type=_duration, default=None, help="stop after this long")
    c.add_argument("--metrics-host", default="127.0.0.1", help="exporter address")
    c.add_argument("--metrics-port", type=int, default=9465,
                   help="serve the normalized series for Prometheus here (0: off)")
    c.add_argument("--retain", type=_duration, default=None, metavar="DURATION",
                   help="delete samples older than this, e.g. 30d (default: keep all)")
    c.add_argument("--otlp", metavar="HOST:PORT",
                   help="also receive request spans over OTLP/HTTP (protobuf, /v1/traces), "
                   "e.g. 127.0.0.1:4318, for vLLM's --otlp-traces-endpoint")
    c.set_defaults(func=cmd_collect)

    ld = sub.add_parser("load", help="run a load scenario against an OpenAI-compatible server")
    ld.add_argument("scenario", nargs="?",
                    help="scenario YAML (or the name of one in scenarios/); a --worker takes "
                    "it from its master")
    ld.add_argument("--target", help="server base URL, e.g. http://127.0.0.1:8000 (required; a "
                    "--worker takes the master's unless given, and needs its own when it "
                    "holds an API key)")
    ld.add_argument("--model", help="model name (default: the first one /v1/models lists)")
    ld.add_argument("--concurrency", type=int, help="one closed-loop stage with N users")
    ld.add_argument("--duration", type=_duration,
                    help="e.g. 30s: closed loop, one stage at peak concurrency for this long; "
                    "open loop, the schedule is cut there (or its last stage lengthened); "
                    "trace replay stops there")
    ld.add_argument("--rate", help="one open-loop stage at this rate, e.g. 5, 5/s or 300/m")
    ld.add_argument("--arrival-process", choices=["poisson", "gamma", "constant"],
                    help="open loop: how arrivals are spread")
    ld.add_argument("--cv", type=float, help="gamma arrivals: coefficient of variation")
    ld.add_argument("--max-in-flight", type=int,
                    help="open loop/replay: arrivals beyond this many in flight are recorded "
                    "as client_overload failures")
    ld.add_argument("--time-scale", type=float, help="trace replay: multiply the timestamps")
    ld.add_argument("--seed", type=int, help="replace the scenario's seed")
    ld.add_argument("--requests", type=int, help="stop after N requests")
    ld.add_argument("--out", type=Path, help="write the summary JSON here")
    ld.add_argument("--api-key-env", help="environment variable holding a bearer token "
                    "(default SERVESCOPE_API_KEY if set)")
    ld.add_argument("--no-ignore-eos", action="store_true",
                    help="do not ask the server to ignore EOS (for servers that reject it)")
    ld.add_argument("--quiet", action="store_true", help="no progress line")
    ld.add_argument("--tokenizer", metavar="PATH_OR_HF_ID", help=TOKENIZER_HELP)
    dist = ld.add_argument_group(
        "distributed (Locust master and workers)",
        "--workers N runs N worker processes here; --master waits for workers started "
        "elsewhere with --worker. The master holds the store and sends each worker the "
        "scenario; workers send back every request record.")
    dist.add_argument("--workers", type=int, metavar="N", help="run N local worker processes")
    dist.add_argument("--master", action="store_true",
                      help="be the master for workers on other machines")
    dist.add_argument("--master-bind-host", metavar="HOST",
                      help="interface the master listens on (default 127.0.0.1; e.g. 0.0.0.0 "
                      "to accept workers from other machines)")
    dist.add_argument("--master-port", type=int, metavar="PORT",
                      help="master port (default 5557; with --workers a free one)")
    dist.add_argument("--expect-workers", type=int, metavar="N",
                      help="--master: start when this many workers connected (default 1)")
    dist.add_argument("--worker", action="store_true",
                      help="serve one run for a master, then exit")
    dist.add_argument("--master-host", metavar="HOST",
                      help="--worker: the master's address (default 127.0.0.1)")
    dist.add_argument("--connect-timeout", type=_duration, default=60.0, metavar="DURATION",
                      help="how long a master waits for its workers, or a worker for its "
                      "master (default 60s)")
    ld.set_defaults(func=cmd_load)

    sw = sub.add_parser("sweep", help="run a scenario at increasing concurrency; find the "
                        "saturation point and the highest level meeting the SLOs")
    sw.add_argument("scenario", help="scenario YAML (or the name of one in scenarios/)")
    sw.add_argument("--target", required=True, help="server base URL")
    levels = sw.add_mutually_exclusive_group(required=True)
    levels.add_argument("--concurrency", type=_levels, help="closed-loop levels, e.g. 1,2,4,8")
    levels.add_argument("--rates", type=_rates, help="open-loop request rates per second, "
                        "e.g. 0.5,1,2,4 (Poisson arrivals unless the scenario says otherwise)")
    sw.add_argument("--duration", type=_duration, default=30.0, help="per level (default 30s)")
    sw.add_argument("--requests", type=int, help="stop each level after N requests")
    sw.add_argument("--model", help="model name (default: the first one /v1/models lists)")
    sw.add_argument("--out", type=Path, help="write the curve and findings as JSON")
    sw.add_argument("--api-key-env", help="environment variable holding a bearer token")
    sw.add_argument("--quiet", action="store_true", help="no progress line")
    sw.add_argument("--tokenizer", metavar="PATH_OR_HF_ID", help=TOKENIZER_HELP)
    sw.set_defaults(func=cmd_sweep)

    d = sub.add_parser("dashboard", help="serve the Streamlit dashboard")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8501)
    d.set_defaults(func=cmd_dashboard)

    e = sub.add_parser("engine", help="install or serve the local vLLM CPU engine")
    e.add_argument("action", choices=["install", "serve"])
    e.add_argument("--port", type=int, default=8000)
    e.add_argument("--max-num-seqs", type=int, default=8)
    e.set_defaults(func=cmd_engine)

    px = sub.add_parser("proxy", help="observing proxy for Ollama: forwards traffic, "
                        "exports each response's timings as Prometheus metrics")
    px.add_argument("--listen", default="127.0.0.1:11435", help="HOST:PORT to accept clients on")
    px.add_argument("--upstream", default="http://127.0.0.1:11434", help="the Ollama server")
    px.add_argument("--max-body-size", type=_byte_size, default="16MiB",
                    help="largest request body forwarded (16MiB; larger ones get a 413): "
                    "raise it to push models through the proxy")
    px.set_defaults(func=cmd_proxy)

    x = sub.add_parser("export", help="write a run's per-request records (JSONL, CSV, Parquet)")
    x.add_argument("--run", type=int, help="run id (default: the newest)")
    x.add_argument("--out", type=Path, required=True, help="file; its suffix picks the format")
    x.add_argument("--format", choices=["jsonl", "csv", "parquet"])
    x.set_defaults(func=cmd_export)

    m = sub.add_parser("demo", help="local vLLM (or a simulated engine) + collector + a "
                       "scenario + the dashboard")
    m.add_argument("--target", help="use this running server instead of starting vLLM")
    m.add_argument("--engine", choices=["vllm", "sim"], default="vllm",
                   help="vllm: the real vLLM CPU engine (installed on first use); sim: the "
                   "SIMULATED engine (servescope sim-server: instant, nothing to install)")
    m.add_argument("--sim-model", default="llama-3.1-8b", help="--engine sim: catalog model")
    m.add_argument("--sim-gpu", default="h100-80gb", help="--engine sim: catalog GPU")
    m.add_argument("--scenario", default="chat")
    m.add_argument("--host", default="127.0.0.1")
    m.add_argument("--port", type=int, default=8501)
    m.add_argument("--vllm-port", type=int, default=8000)
    m.add_argument("--no-dashboard", action="store_true")
    m.add_argument("--exit-after-run", action="store_true",
                   help="stop when the scenario finished (default: keep serving until Ctrl-C)")
    m.set_defaults(func=cmd_demo)

    pl = sub.add_parser("plan", help="capacity plan: weights, KV cache as vLLM sizes it, "
                        "sequences that fit, settings and GPUs for a model on some hardware")
    pl.add_argument("--model", required=True,
                    help="catalog name (llama-3.1-8b, qwen3-32b ...), a config.json, a model "
                    "folder, a Hugging Face id in the local cache, or a running server's URL "
                    "(vLLM, Ollama, llama.cpp: its model and reported KV capacity)")
    pl.add_argument("--gpu", required=True, help="hardware name: h100-80gb, a100-80gb, l4, "
                    "rtx-4090, mi300x, cpu-server ... (lowercase, hyphenated); several, "
                    "comma-separated, compare the GPUs needed and their cost")
    pl.add_argument("--price", action="append", default=[], metavar="GPU=USD",
                    help="USD per GPU-hour, e.g. h100-80gb=2.49 (repeatable): cost per hour "
                    "and per million output tokens")
    pl.add_argument("--slo", action="append", default=[], metavar="METRIC_STAT=TIME",
                    help="e.g. ttft_p95=2000ms or itl_p95=50ms (repeatable): caps the batch "
                    "per replica at the physical latency bounds")
    pl.add_argument("--gpus", type=int, help="GPUs in all (default: --tp)")
    pl.add_argument("--tp", type=int, help="tensor-parallel size (default: --gpus, else 1)")
    pl.add_argument("--quantization", help="weights format: bf16, fp16, fp8, int8, awq, gptq, "
                    "mxfp4, nvfp4, gguf-q4_k_m ... (default: the checkpoint's)")
    pl.add_argument("--kv-cache-dtype", default="auto", help="auto (the model dtype) or fp8")
    pl.add_argument("--dtype", default="auto", help="model dtype as vLLM's --dtype (auto)")
    pl.add_argument("--max-model-len", type=int,
                    help="vLLM's --max-model-len (default: the model's maximum)")
    pl.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    pl.add_argument("--block-size", type=int, help="KV block size (default: vLLM's for the "
                    "device and attention kind)")
    pl.add_argument("--enforce-eager", action="store_true",
                    help="no CUDA graphs (as vLLM's --enforce-eager)")
    pl.add_argument("--kv-cache-space", type=int, metavar="GIB",
                    help="CPU build: VLLM_CPU_KVCACHE_SPACE in GiB (the KV budget, exactly)")
    pl.add_argument("--vllm-version", metavar="X.Y.Z", help="size for this vLLM release "
                    "(default: the current one): older releases account CUDA graphs, batch "
                    "defaults and the reported KV size differently")
    pl.add_argument("--vllm-engine", choices=("v0", "v1"), help="for 0.8-0.10, which engine "
                    "ran (VLLM_USE_V1=0 is v0; default: v0 before 0.8, else v1)")
    lengths = pl.add_mutually_exclusive_group()
    lengths.add_argument("--scenario", help="size for this scenario's request lengths")
    lengths.add_argument("--prompt-tokens", type=int, help="prompt length (with --output-tokens)")
    pl.add_argument("--output-tokens", type=int, help="output length (with --prompt-tokens)")
    traffic = pl.add_mutually_exclusive_group()
    traffic.add_argument("--rate", type=float, help="requests per second to serve")
    traffic.add_argument("--concurrency", type=int, help="concurrent requests to serve")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    # --model URL (commands/plan_live.py): the model a running server serves
    pl.add_argument("--runtime", choices=("auto", "vllm", "ollama", "llamacpp"),
                    default="auto", help="with --model URL: the server's runtime (default: "
                    "detected)")
    pl.add_argument("--served-model", help="with --model URL: which served model (default: "
                    "the first listed)")
    pl.add_argument("--num-parallel", type=int, help="with --model URL of an Ollama: its "
                    "OLLAMA_NUM_PARALLEL (no API reports it)")
    from servescope.commands.plan_sim import add_plan_sim_arguments

    add_plan_sim_arguments(pl)  # --simulate, --profile, --sim-seqs, --sim-batched-tokens
    pl.set_defaults(func=cmd_plan)
    add_compare_parser(sub)
    advise.add_parsers(sub)  # advise, tune
    simulate.add_parsers(sub)  # simulate, calibrate, sim-server
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.db = getattr(args, "db", None)
    args.verbose = getattr(args, "verbose", False)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "httpcore", "locust"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        with sigterm_as_interrupt():  # the same clean-up as on Ctrl-C
            return args.func(args)
    except CliError as exc:
        print(f"servescope {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `servescope scrape URL | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
