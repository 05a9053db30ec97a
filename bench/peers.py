"""The peer load generators the benches run beside servescope: `vllm bench serve` (from the
vLLM CPU engine's environment) and GuideLLM (its own venv, installed on first use). Shared by
bench/loadgen.py and bench/agree.py so both call the peers the same way."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from servescope.engines.vllm_cpu import MODEL_NAME, env_dir, servescope_home

TINY_MODEL = servescope_home() / "models" / MODEL_NAME  # its tokenizer, for the peers' prompts
VLLM_PY = env_dir() / "bin" / "python"
GUIDELLM_ENV = servescope_home() / "bench-envs" / "guidellm"
GUIDELLM_VERSION = "0.8.1"

# `vllm bench serve` called through its module: the CPU build's package metadata is named
# vllm-cpu, so the `vllm` CLI itself stops at its version lookup.
VLLM_WRAPPER = """\
import sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.benchmarks.serve import add_cli_args, main
parser = FlexibleArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


def pin(cpus: int | Iterable[int]) -> Callable[[], None]:
    """A preexec_fn that pins the child (and the processes it starts) to `cpus`."""
    allowed = {cpus} if isinstance(cpus, int) else set(cpus)
    return lambda: os.sched_setaffinity(0, allowed)


def vllm_missing() -> str | None:
    """Why `vllm bench serve` cannot run here, or None when it can."""
    if not VLLM_PY.exists() or not TINY_MODEL.exists():
        return (f"no vLLM CPU env at {VLLM_PY.parent.parent} or no {TINY_MODEL}"
                " (servescope engine install)")
    return None


def vllm_bench(args: list[str], tmp: Path, cpus: int | Iterable[int],
                   timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`vllm bench serve ARGS`, pinned to `cpus`, its wrapper script written into `tmp`."""
    wrapper = tmp / "vllm_bench.py"
    wrapper.write_text(VLLM_WRAPPER)
    return subprocess.run([str(VLLM_PY), str(wrapper), *args], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=pin(cpus))


def ensure_guidellm() -> str | None:
    """GuideLLM's own venv (never servescope's): None when ready, else why not."""
    exe = GUIDELLM_ENV / "bin" / "guidellm"
    if exe.exists():
        return None
    print(f"installing guidellm=={GUIDELLM_VERSION} into {GUIDELLM_ENV} (first use) ...",
          flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(GUIDELLM_ENV)], check=True)
        subprocess.run([str(GUIDELLM_ENV / "bin" / "pip"), "install", "--quiet",
                        "--disable-pip-version-check", f"guidellm=={GUIDELLM_VERSION}"],
                       check=True, timeout=1200)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"could not install guidellm: {exc}"
    return None if exe.exists() else "guidellm installed no executable"


def guidellm(args: list[str], cpus: int | Iterable[int],
                 timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`guidellm run ARGS`, pinned to `cpus`, offline (the tokenizer is a local folder)."""
    return subprocess.run(
        [str(GUIDELLM_ENV / "bin" / "guidellm"), "run", *args], capture_output=True,
        text=True, timeout=timeout, preexec_fn=pin(cpus),
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def failure(proc: subprocess.CompletedProcess[str]) -> str:
    """The end of a failed peer's output, for a one-line note."""
    return f"failed: {(proc.stderr or proc.stdout).strip()[-200:]}"
