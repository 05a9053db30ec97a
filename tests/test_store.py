"""The store: versioned schema, concurrent writers from several processes, no lost rows."""

import sqlite3
import subprocess
import sys

import pytest

from servescope.core.records import RequestRecord, Sample
from servescope.core.store import SCHEMA_VERSION, Store, StoreError


def _record(i: int) -> RequestRecord:
    return RequestRecord(
        request_id=f"r{i}", intended_ns=1_000 + i, send_ns=2_000 + i, first_token_ns=5_000 + i,
        end_ns=9_000 + i, event_offsets_ns=[3_000, 4_000], output_tokens=2,
        connect_ns=700 if i % 2 else None,
    )


def test_new_store_is_wal_and_at_the_current_schema(tmp_path):
    with Store(tmp_path / "a.db") as store:
        assert store.schema_version == SCHEMA_VERSION
    conn = sqlite3.connect(tmp_path / "a.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_store_from_a_newer_servescope_is_refused(tmp_path):
    conn = sqlite3.connect(tmp_path / "b.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this servescope"):
        Store(tmp_path / "b.db")


def test_requests_round_trip_and_duplicates_are_ignored(store):
    run = store.create_run("r", "chat", {"name": "chat"}, "http://127.0.0.1:1", {"model": "m"})
    assert store.add_requests(run, [_record(1), _record(2)]) == 2
    assert store.add_requests(run, [_record(2)]) == 0  # re-delivered: stored once
    got = store.requests(run)
    assert [r.request_id for r in got] == ["r1", "r2"]
    assert got[0] == _record(1)


def test_samples_round_trip_with_raw_name_labels_and_histogram(store):
    tid = store.upsert_target("t", "vllm", "http://127.0.0.1:1")
    h = Sample("ttft_seconds", 3, "vllm:time_to_first_token_seconds", {"engine": "0"},
               extra={"sum": 1.5, "buckets": [[0.1, 1], [float("inf"), 3]]})
    store.add_samples(tid, 10.0, [Sample("running", 2, "vllm:num_requests_running", {}), h])
    df = store.samples(tid)
    assert list(df["concept"]) == ["running", "ttft_seconds"]
    assert df.iloc[1]["extra"]["buckets"][1][0] == float("inf")
    assert df.iloc[1]["labels"] == {"engine": "0"}


WRITER = """
import sys
from servescope.core.records import RequestRecord, Sample
from servescope.core.store import Store
path, worker, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = Store(path)
run, tid = store.runs()[0]["id"], store.targets()[0]["id"]
for i in range(n):
    rid = worker * 100_000 + i
    store.add_requests(run, [RequestRecord(request_id=f"r{rid}", intended_ns=rid, send_ns=rid)])
    store.add_samples(tid, float(i), [Sample("running", i, "x", {"w": str(worker)})])
"""


def test_several_processes_write_at_once_without_losing_rows(tmp_path):
    """Four processes (think: a collector and three load-generator workers) writing one
    store at once: every row lands, and no writer sees "database is locked"."""
    path = str(tmp_path / "c.db")
    with Store(path) as store:
        store.create_run("r", "chat", {}, "http://127.0.0.1:1", {})
        store.upsert_target("t", "vllm", "http://127.0.0.1:1")
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, path, str(w), "150"],
                         stderr=subprocess.PIPE, text=True)
        for w in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    assert not any("locked" in e for e in errors)
    with Store(path) as store:
        assert store.count_requests(store.runs()[0]["id"]) == 600
        assert len(store.samples(store.targets()[0]["id"])) == 600


def test_a_v1_store_is_migrated_in_place_and_keeps_its_runs(tmp_path):
    import sqlite3 as sq

    from servescope.core.store import MIGRATIONS, _statements

    path = tmp_path / "old.db"
    conn = sq.connect(path)
    for statement in _statements(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO runs(name, scenario_name, scenario, target_url, target, started_at, status)"
        " VALUES ('old', 'chat', '{}', 'http://127.0.0.1:1', '{}', 1.0, 'finished')"
    )
    conn.commit()
    conn.close()
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION >= 2
        (run,) = store.runs()
        assert run["name"] == "old" and run["sweep_id"] is None
        sweep = store.create_sweep("s", "chat", "http://127.0.0.1:1", "concurrency", [1, 2])
        store.add_run_to_sweep(run["id"], sweep)
        assert store.runs()[0]["sweep_id"] == sweep
