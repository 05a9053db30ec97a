"""The planner's KV capacity against the REAL vLLM CPU server: for tiny random-weights
models of each architecture whose KV cache is sized differently (head_dim apart from
hidden/heads, every layer windowed, mixture of experts, MLA, a sliding/full hybrid, linear
attention), the number vLLM logs at start-up ("CPU KV cache size: N tokens, Maximum
concurrency for L tokens per request: X") must equal the prediction exactly.

Engines start one at a time (1-2 minutes each on a busy 2-core machine, --enforce-eager);
a server that cannot be built or started fails the test."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from servescope.capacity import catalog
from servescope.capacity.plan import PlanInput, setup
from servescope.engines.process import run_build, servescope_home
from servescope.engines.vllm_cpu import VLLMServer, ensure_env

pytestmark = pytest.mark.engine

REPO = Path(__file__).resolve().parents[1]
MAX_MODEL_LEN = 2000  # not a multiple of the block size: vLLM's float arithmetic shows
MAX_NUM_SEQS = 8
KV_GIB = 1
LOG_LINE = re.compile(r"CPU KV cache size: ([\d,]+) tokens, Maximum concurrency for "
                      r"([\d,]+) tokens per request: ([\d.]+)x")

# name -> vLLM --dtype (float32 runs faster on AVX2; the CPU MLA and gated-delta-net
# kernels run in bfloat16 only: "CPU GDN attention requires BF16.")
ARCHITECTURES = {
    "qwen3": "float32",
    "mistral-sw": "float32",
    "qwen3-moe": "float32",
    "deepseek-v2": "bfloat16",
    "gemma3": "float32",
    "qwen3-next": "bfloat16",
}


def _progress(msg: str) -> None:
    print(f"[capacity] {msg}", flush=True)


@pytest.fixture(scope="module")
def tiny_models() -> tuple[Path, Path]:
    """(vLLM's Python, the folder of tiny models), built once (seconds each)."""
    try:
        python = ensure_env(_progress)
        out = servescope_home() / "models" / "capacity"
        run_build([str(python), str(REPO / "testsupport" / "build_tiny_models.py"), str(out),
                   *ARCHITECTURES], "the capacity test models")
    except Exception as exc:
        pytest.fail(f"could not build the tiny models: {type(exc).__name__}: {exc}",
                    pytrace=False)
    return python, out


def _cpu_has_avx512_bf16() -> bool:
    try:
        return " avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _predicted(model_dir: Path, dtype: str) -> tuple[int, str, int]:
    # vLLM's CPU build keeps linear-attention states in float32 where AVX512-BF16 exists
    inp = PlanInput(model=catalog.model(str(model_dir)), hardware=catalog.hardware("cpu-server"),
                    dtype=dtype, max_model_len=MAX_MODEL_LEN, max_num_seqs=MAX_NUM_SEQS,
                    kv_cache_space_gib=KV_GIB,
                    mamba_ssm_dtype="float32" if _cpu_has_avx512_bf16() else None)
    s = setup(inp, 1)
    return s.cap.tokens, f"{s.cap.max_concurrency:.2f}", s.layout.block_size


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_predicted_kv_tokens_equal_what_vllm_logs(tiny_models, name):
    python, models = tiny_models
    model_dir, dtype = models / name, ARCHITECTURES[name]
    server = VLLMServer(model_dir=model_dir, python=python, max_num_seqs=MAX_NUM_SEQS,
                        max_model_len=MAX_MODEL_LEN, kv_cache_gib=KV_GIB,
                        served_model_name=name, dtype=dtype)
    try:
        server.start_and_wait(_progress)
        # it serves: one short completion runs the architecture's forward pass
        reply = httpx.post(f"{server.url}/v1/completions", timeout=120,
                           json={"model": name, "prompt": "def f(x):", "max_tokens": 4})
        assert reply.status_code == 200, reply.text[:500]
    except Exception as exc:
        pytest.fail(f"vLLM did not serve {name}: {type(exc).__name__}: {exc}\n"
                    f"{server.log_tail(30)}", pytrace=False)
    finally:
        server.stop()
    log = server.log_path.read_text(errors="replace")
    found = LOG_LINE.search(log)
    assert found, f"no KV cache size line in {server.log_path}"
    logged_tokens = int(found[1].replace(",", ""))
    assert int(found[2].replace(",", "")) == MAX_MODEL_LEN
    tokens, concurrency, block = _predicted(model_dir, dtype)
    assert (tokens, concurrency) == (logged_tokens, found[3]), (
        f"{name}: predicted {tokens:,} tokens / {concurrency}x (block {block}), "
        f"vLLM logged {found[0]!r} ({server.log_path})")
