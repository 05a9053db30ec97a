"""Shared fixtures. The real vLLM CPU server is started once per test session (its start-up
is the slow part) and torn down at the end. If it cannot be installed or started, the tests
that need it fail with the reason; they never skip."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"


def _progress(msg: str) -> None:
    print(f"[vllm fixture] {msg}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    assert FIXTURES.is_dir(), f"captured payloads not found at {FIXTURES}"
    return FIXTURES


@pytest.fixture(scope="session")
def vllm_server():
    from servescope.engines.vllm_cpu import start_local_vllm

    server = start_local_vllm(progress=_progress, max_num_seqs=8)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def store(tmp_path):
    from servescope.store import Store

    with Store(tmp_path / "servescope.db") as s:
        yield s
