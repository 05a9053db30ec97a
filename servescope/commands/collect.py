"""`servescope scrape`, `collect` and `proxy`: what reads servers and hosts."""

from __future__ import annotations

import argparse
import json
import sys
import time

from servescope.commands.common import _store
from servescope.core.errors import EXIT_BAD_INPUT, CliError


def _check_runtime(flag: str, runtime: str) -> None:
    """An unknown runtime is refused up front (else the target would just stay down)."""
    from servescope.collectors.sources import RUNTIMES

    if runtime not in RUNTIMES:
        raise CliError(f"{flag} {runtime!r}: unknown runtime; known: {', '.join(RUNTIMES)}",
                       EXIT_BAD_INPUT)


def cmd_scrape(args: argparse.Namespace) -> int:
    from servescope.collectors.scrape import ScrapeError
    from servescope.collectors.sources import is_http_url, redact_credentials, snapshot

    _check_runtime("--runtime", args.runtime)
    # A URL (else a saved page) is checked up front; its credentials, sent as basic auth by
    # snapshot(), are never shown.
    if "://" in args.source and not is_http_url(args.source):
        raise CliError(f"SOURCE {redact_credentials(args.source)!r}: expected an http:// or "
                       "https:// URL with a host, or a saved /metrics page", EXIT_BAD_INPUT)
    try:
        snap, _ = snapshot(args.source, args.runtime, timeout=args.timeout)
    except ScrapeError as exc:
        raise CliError(str(exc)) from None
    data = snap.to_json(include_raw=not args.no_raw)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    for key in ("running", "waiting", "kv_usage", "kv_capacity_tokens", "kv_free_tokens",
                "prompt_tokens_total", "generation_tokens_total", "preemptions_total"):
        print(f"{key:26} {data[key]}")
    for name, h in data["histograms"].items():
        mean = h["sum"] / h["count"] if h["count"] else None
        print(f"{name:26} count={h['count']:.0f} mean={mean}")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from servescope.collectors.exporter import SnapshotExporter, serve
    from servescope.collectors.loop import Collector, TargetSpec

    try:
        specs = [TargetSpec.parse(t) for t in args.target]
    except ValueError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise CliError(f"--target names must be unique, got {names}", EXIT_BAD_INPUT)
    store = _store(args)
    _say_retention(args.retain)
    exporter = None
    if args.metrics_port:
        exporter = SnapshotExporter()
        try:
            serve(exporter, args.metrics_host, args.metrics_port)
        except OSError as exc:
            raise CliError(f"--metrics-port {args.metrics_port}: cannot listen on "
                           f"{args.metrics_host}:{args.metrics_port} ({exc.strerror})") from None
        print(f"exporter: http://{args.metrics_host}:{args.metrics_port}/metrics",
              file=sys.stderr)
    collector = Collector(specs, store, interval=args.interval, exporter=exporter,
                          host=not args.no_host, retain=args.retain)
    if not specs and args.no_host and not args.otlp:
        raise CliError("nothing to collect: give --target NAME=RUNTIME:URL, or drop --no-host",
                       EXIT_BAD_INPUT)
    what = [f"{s.name} ({s.runtime} {s.url})" for s in specs] + ([] if args.no_host else ["host"])
    receiver = _start_otlp(args.otlp, store) if args.otlp else None
    print(f"collecting {', '.join(what) or 'nothing but traces'} every "
          f"{args.interval:g}s into {store.path}; Ctrl-C stops", file=sys.stderr)
    collector.start()
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        collector.stop()
        if receiver is not None:
            receiver.stop()
            print(f"otlp: {receiver.spans_stored} request spans stored", file=sys.stderr)
    for w in collector.workers:
        errors = sum(w.errors.values())
        print(f"{w.spec.name}: {w.scrapes_ok} scrapes stored, {w.scrapes_failed} failed"
              + (f", {errors} collector errors ({_kinds(w.errors)})" if errors else ""),
              file=sys.stderr)
    if collector.retention is not None:
        print(f"retention: {collector.retention.deleted} old samples deleted", file=sys.stderr)
    return 0


def _start_otlp(listen: str, store):
    """`collect --otlp HOST:PORT`: receive the servers' request spans (OTLP/HTTP protobuf)."""
    from servescope.collectors.otlp import OTLPReceiver, parse_listen

    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    try:
        receiver = OTLPReceiver(store, host, port).start()
    except OSError as exc:
        raise CliError(f"--otlp {listen}: cannot listen on {host}:{port} ({exc.strerror})"
                       ) from None
    print(f"otlp: receiving traces at {receiver.endpoint} (start vLLM with "
          f"--otlp-traces-endpoint {receiver.endpoint} and "
          "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf)", file=sys.stderr)
    return receiver


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in counts.items())


def _say_retention(retain: float | None) -> None:
    if retain:
        unit, size = next((u, n) for u, n in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
                          if retain >= n or u == "s")
        print(f"keeping {retain / size:g}{unit} of samples: older ones are deleted as they age",
              file=sys.stderr)


def cmd_proxy(args: argparse.Namespace) -> int:
    from servescope.collectors.ollama_proxy import OllamaProxy

    host, _, port = args.listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:11435
    if not host or not port.isdigit():
        raise CliError(f"--listen {args.listen!r}: expected HOST:PORT, e.g. 127.0.0.1:11435",
                       EXIT_BAD_INPUT)
    if not args.upstream.startswith(("http://", "https://")):
        raise CliError(f"--upstream {args.upstream!r}: expected a URL like "
                       "http://127.0.0.1:11434", EXIT_BAD_INPUT)
    try:
        proxy = OllamaProxy(args.upstream, host, int(port), store=_store(args),
                            max_body=args.max_body_size)
    except OSError as exc:
        raise CliError(f"--listen {args.listen}: cannot listen "
                       f"({exc.strerror or exc})") from None
    print(f"proxying {proxy.url} -> {proxy.upstream}; metrics at {proxy.url}/metrics; "
          "Ctrl-C stops", file=sys.stderr)
    try:
        proxy.serve_forever()  # uvicorn: on Ctrl-C/SIGTERM it drains, then re-raises it
    except KeyboardInterrupt:
        pass
    finally:
        proxy.close()
    return 0
