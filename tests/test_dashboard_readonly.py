"""The dashboard only reads: it opens the store read-only, never creates or migrates it, and
says clearly when there is no store (or one it cannot read) instead of making one."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest
from test_store_schema import folder_state, newer_store

from helpers import REPO_ROOT
from servescope.core.store import SCHEMA_VERSION, Store

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
TIMEOUT_S = 30


def warnings(at: AppTest) -> str:
    return " ".join(w.value for w in at.warning)


@pytest.fixture(autouse=True)
def no_cached_store():
    """Each test opens its own store (the app caches one handle per process and path)."""
    st.cache_resource.clear()
    yield
    st.cache_resource.clear()


def test_a_missing_store_is_explained_not_created(tmp_path, monkeypatch):
    path = tmp_path / "data" / "servescope.db"
    monkeypatch.setenv("SERVESCOPE_DB", str(path))
    monkeypatch.setattr("sys.argv", ["app.py"])
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert f"no store at {path}" in warnings(at)
    assert "servescope collect" in warnings(at)
    assert not (tmp_path / "data").exists()
    # Once a collector or a load run made it, the next rerun shows the pages.
    Store(path).close()
    at.run()
    assert not at.exception and not at.warning
    assert [t.value for t in at.title] == ["Live"]


def test_a_store_it_cannot_read_is_explained_and_left_untouched(tmp_path, monkeypatch):
    path = tmp_path / "future.db"
    newer_store(path, "wal")
    before = folder_state(tmp_path)
    monkeypatch.setenv("SERVESCOPE_DB", str(path))
    monkeypatch.setattr("sys.argv", ["app.py"])
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert f"schema v{SCHEMA_VERSION + 1}, newer than this servescope" in warnings(at)
    assert folder_state(tmp_path) == before


def test_the_dashboard_reads_without_migrating(tmp_path, monkeypatch):
    """An older store stays at its version: the dashboard asks for a writing command."""
    path = tmp_path / "old.db"
    with Store(path):
        pass
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION - 1}")
    conn.close()
    monkeypatch.setenv("SERVESCOPE_DB", str(path))
    monkeypatch.setattr("sys.argv", ["app.py"])
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S).run()
    assert "older than this servescope" in warnings(at)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION - 1
    conn.close()


def test_servescope_dashboard_serves_without_creating_the_store(tmp_path):
    path = tmp_path / "nothing-yet" / "servescope.db"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "servescope.cli", "dashboard", "--db", str(path), "--port",
         str(port)], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the dashboard never answered"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/_stcore/health").text == "ok":
                    break
            except httpx.TransportError:
                time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(30)
    assert not (tmp_path / "nothing-yet").exists()
