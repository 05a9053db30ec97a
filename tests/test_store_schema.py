"""The store's schema edges: a store from a newer servescope is refused and left exactly as
it was; the read-only mode never creates, migrates or writes; the requests table is
written and read by column name, generated from RequestRecord's fields."""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import fields
from pathlib import Path

import pytest

from helpers import servescope
from servescope.core.records import RequestRecord, Sample
from servescope.core.store import (
    MIGRATIONS,
    REQUEST_COLUMNS,
    SCHEMA_VERSION,
    Store,
    StoreError,
    _newer_schema,
    _statements,
)


def folder_state(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file in `folder`: its content hash and modification time, to the nanosecond."""
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
    }


def newer_store(path: Path, journal_mode: str) -> None:
    """A store as a newer servescope would leave it: its schema, plus a table of its own."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode={journal_mode}")
    for statement in _statements(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("CREATE TABLE from_the_future (x)")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
@pytest.mark.parametrize("opener", [Store, Store.open_readonly], ids=["write", "read-only"])
def test_a_newer_store_is_refused_and_left_byte_for_byte_untouched(tmp_path, journal_mode,
                                                                   opener):
    path = tmp_path / "future.db"
    newer_store(path, journal_mode)
    before = folder_state(tmp_path)
    assert list(before) == ["future.db"]  # no -wal/-shm left by the writer
    with pytest.raises(StoreError) as info:
        opener(path)
    message = str(info.value)
    assert str(path) in message
    assert f"schema v{SCHEMA_VERSION + 1}, newer than this servescope (v{SCHEMA_VERSION})" \
        in message
    assert "upgrade servescope" in message
    assert folder_state(tmp_path) == before  # same files, same bytes, same times


def test_commands_refuse_a_newer_store_in_one_line(tmp_path):
    path = tmp_path / "future.db"
    newer_store(path, "wal")
    before = folder_state(tmp_path)
    res = servescope("collect", "--no-host", "--metrics-port", "0", "--duration", "1s",
                     db=path, timeout=60)
    assert res.returncode == 1
    assert res.stderr.strip() == \
        f"servescope collect: error: {_newer_schema(path, SCHEMA_VERSION + 1)}"
    assert folder_state(tmp_path) == before


def test_a_file_that_is_not_a_store_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 10)
    before = folder_state(tmp_path)
    with pytest.raises(StoreError, match="not a servescope store"):
        Store(path)
    assert folder_state(tmp_path) == before


def test_read_only_never_creates_a_missing_store(tmp_path):
    path = tmp_path / "nowhere" / "servescope.db"
    with pytest.raises(StoreError, match=r"no store at .*servescope collect"):
        Store.open_readonly(path)
    assert not (tmp_path / "nowhere").exists()


def test_read_only_never_migrates_an_older_store(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in _statements(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    before = folder_state(tmp_path)
    with pytest.raises(StoreError, match=r"older than this servescope.*upgrade it"):
        Store.open_readonly(path)
    assert folder_state(tmp_path) == before
    with Store(path) as store:  # a writing command upgrades it
        assert store.schema_version == SCHEMA_VERSION


def test_read_only_sees_what_a_writer_commits_and_cannot_write(tmp_path):
    path = tmp_path / "live.db"
    writer = Store(path)
    tid = writer.upsert_target("t", "vllm", "http://127.0.0.1:1")
    reader = Store.open_readonly(path)
    try:
        assert reader.readonly and reader.schema_version == SCHEMA_VERSION
        assert reader.samples(tid).empty
        writer.add_samples(tid, 1.0, [Sample("running", 3, "vllm:num_requests_running")])
        assert list(reader.samples(tid)["value"]) == [3]  # a live dashboard sees new rows
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.add_samples(tid, 2.0, [Sample("running", 4, "x")])
        assert list(writer.samples(tid)["value"]) == [3]
    finally:
        reader.close()
        writer.close()


def test_every_record_field_has_its_column(tmp_path):
    """Adding a RequestRecord field needs its ALTER TABLE migration: this catches a field
    without a column (or a column no field fills)."""
    with Store(tmp_path / "s.db") as store:
        columns = [r[1] for r in store._conn.execute("PRAGMA table_info(requests)")]
    assert len(REQUEST_COLUMNS) == len(fields(RequestRecord))
    assert set(columns) - {"id", "run_id"} == set(REQUEST_COLUMNS)


def test_a_record_with_every_field_set_round_trips(store):
    """Every field, set away from its default, comes back equal: the row mapping is
    generated from the record type, JSON for lists and dicts."""
    values = {  # by annotation (records.py postpones them: strings)
        "int": 7, "int | None": 11, "float": 0.5, "float | None": 2.5, "str": "x",
        "str | None": "y", "bool": True, "bool | None": True, "list[int]": [1, 2, 3],
        "list[int] | None": [4], "dict[str, Any] | None": {"total_s": 1.5, "nested": [1]},
    }
    rec = RequestRecord(request_id="r1", intended_ns=1, send_ns=2)
    for f in fields(RequestRecord):
        if f.name in ("request_id", "intended_ns", "send_ns"):
            continue
        value = values.get(f.type)
        assert value is not None, f"add a sample value for {f.name}: {f.type}"
        setattr(rec, f.name, value)
    run = store.create_run("r", "chat", {}, "http://127.0.0.1:1", {})
    assert store.add_requests(run, [rec]) == 1
    assert store.requests(run) == [rec]
