"""`servescope demo` (what `make run` runs): a real vLLM on this machine, the collector,
a short scenario, and the dashboard, all on loopback. Ctrl-C stops everything it started;
what was measured stays in the store.

`--engine sim` (`make run ENGINE=sim`) starts the SIMULATED engine instead (servescope
sim-server: a catalog model on a catalog GPU, served in real time by the simulator): instant
and nothing to install; its target is named "...-simulated" and its model "M (simulated on
G)", so nothing it shows passes for a measurement of a real engine."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

from servescope.collectors.loop import Collector, TargetSpec
from servescope.collectors.otlp import OTLPReceiver
from servescope.core.errors import CliError
from servescope.core.store import Store
from servescope.core.terminate import Terminated
from servescope.dashboard.launch import dashboard_command
from servescope.loadgen.scenario import scenario_path

OTLP_PORT = 4318


def _say(msg: str) -> None:
    print(f"[servescope] {msg}", file=sys.stderr, flush=True)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _start_receiver(store: Store) -> OTLPReceiver:
    """The collector's OTLP receiver, where the demo's vLLM sends a span per request (the
    server's queue / prefill / decode of each request): 4318, OTLP/HTTP's port, if free."""
    from servescope.engines.process import free_port

    port = OTLP_PORT if _port_free("127.0.0.1", OTLP_PORT) else free_port()
    receiver = OTLPReceiver(store, "127.0.0.1", port).start()
    _say(f"receiving request spans (OTLP) at {receiver.endpoint}")
    return receiver


def _start_sim(args: argparse.Namespace):
    """The simulated engine in its own process (a core of its own keeps its timeline real),
    on --vllm-port when free."""
    from servescope.engines.process import EngineError, free_port
    from servescope.engines.sim_driver import SimConfigError, SimSpec, build_backend
    from servescope.engines.sim_server import SimLocalServer

    spec = SimSpec(model=args.sim_model, gpu=args.sim_gpu)
    try:
        build_backend(spec)  # a model that does not fit is refused here, in one line
    except SimConfigError as exc:
        raise CliError(str(exc), 2) from None
    port = args.vllm_port if _port_free("127.0.0.1", args.vllm_port) else free_port()
    server = SimLocalServer(spec, port=port)
    try:
        server.start_and_wait(progress=_say)
    except EngineError as exc:
        raise CliError(str(exc)) from None
    _say(f"SIMULATED engine: {spec.model} on {spec.gpu} (no real engine runs; every number "
         "it serves comes from the simulator)")
    return server


def run_demo(args: argparse.Namespace) -> int:
    from servescope.engines.process import EngineError, free_port
    from servescope.engines.vllm_cpu import start_local_vllm

    store = Store(args.db)
    scenario = scenario_path(args.scenario)
    if not scenario.exists():
        raise CliError(f"--scenario {args.scenario}: no such file", 2)
    server = None
    dashboard = None
    load = None
    collector = None
    receiver = None
    try:
        simulated = getattr(args, "engine", "vllm") == "sim" and not args.target
        if not simulated:  # the simulated engine sends no spans
            receiver = _start_receiver(store)
        if args.target:
            url = args.target.rstrip("/")
            _say(f"using the running server at {url}")
        elif simulated:
            server = _start_sim(args)
            url = server.url
        else:
            port = args.vllm_port
            if not _port_free("127.0.0.1", port):
                port = free_port()
                _say(f"port {args.vllm_port} is busy; vLLM will use {port}")
            try:
                assert receiver is not None
                server = start_local_vllm(port=port, otlp_traces_endpoint=receiver.endpoint)
            except EngineError as exc:
                raise CliError(str(exc)) from None
            url = server.url
        name = "demo-simulated" if simulated else "demo-vllm" if server else "demo-target"
        spec = TargetSpec(name=name, runtime="vllm", url=url)
        collector = Collector([spec], store, interval=2.0, host=True)
        collector.start()
        _say(f"collecting {url}/metrics every 2s into {store.path}")
        if not args.no_dashboard:
            if not _port_free(args.host, args.port):
                raise CliError(f"dashboard port {args.host}:{args.port} is busy; use --port")
            dashboard = subprocess.Popen(dashboard_command(store.path, args.host, args.port),
                                         stdout=subprocess.DEVNULL)
            _say(f"dashboard: http://{args.host}:{args.port}")
        out = Path(store.path).with_name("demo-summary.json")
        _say(f"running scenario {scenario} against {url}")
        load = subprocess.Popen([sys.executable, "-m", "servescope.cli", "--db", str(store.path),
                                 "load", str(scenario), "--target", url, "--out", str(out)])
        load.wait()
        if load.returncode != 0:
            _say(f"load run exited with {load.returncode}")
        if args.exit_after_run:
            return load.returncode
        where = f"http://{args.host}:{args.port}" if dashboard else "the store"
        _say(f"scenario done; still collecting. Look at {where}. Ctrl-C stops everything.")
        while True:
            time.sleep(1)
            if dashboard is not None and dashboard.poll() is not None:
                raise CliError(f"the dashboard exited with {dashboard.returncode}")
    except KeyboardInterrupt as exc:
        _say("stopping (measurements are kept in the store)")
        if isinstance(exc, Terminated) and load is not None and load.poll() is None:
            load.terminate()  # a Ctrl-C reached it too; a SIGTERM came to this process only
        return 0
    finally:
        if load is not None and load.poll() is None:
            load.wait(30)  # it got the same Ctrl-C (or our SIGTERM) and is saving its summary
        if collector is not None:
            collector.stop()
        if dashboard is not None and dashboard.poll() is None:
            dashboard.terminate()
            dashboard.wait(10)
        if server is not None:
            server.stop()
        if receiver is not None:  # after the server, which sends its last spans as it stops
            receiver.stop()
        store.close()
