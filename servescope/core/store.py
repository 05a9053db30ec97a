"""The embedded store: one SQLite file in WAL mode, shared by collectors, load generators
and the dashboard (possibly all at once, from several processes).

Writes are short ``BEGIN IMMEDIATE`` transactions with a generous busy timeout, so
concurrent writers queue instead of failing with "database is locked". The schema is
versioned with ``PRAGMA user_version`` and upgraded by the migrations in schema.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from servescope.core.records import RequestRecord, Sample, ServerSpan
from servescope.core.schema import (  # noqa: F401 - re-exported for the store's users
    _INSERT_REQUEST,
    MIGRATIONS,
    REQUEST_COLUMNS,
    REQUEST_FIELDS,
    SCHEMA_VERSION,
    record_from_row,
    request_row,
)
from servescope.core.urls import redact_credentials

if TYPE_CHECKING:
    import pandas as pd



def default_db_path() -> Path:
    """`SERVESCOPE_DB`, else ``$XDG_DATA_HOME/servescope/servescope.db``."""
    if env := os.environ.get("SERVESCOPE_DB"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "servescope" / "servescope.db"


class StoreError(RuntimeError):
    pass


class Store:
    """A handle on one store file. Thread-safe; open one per process.

    `Store(path)` creates and migrates the store (every writing command);
    `Store.open_readonly(path)` only reads one that exists at the current schema (the
    dashboard: it must never create, migrate or lock out the writers)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 busy_timeout: float = 60.0, readonly: bool = False) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        self.readonly = readonly
        if readonly and not self.path.is_file():
            raise StoreError(f"no store at {self.path}: start `servescope collect` or "
                             "`servescope load` to create one (or pass --db PATH)")
        # Read the header before SQLite touches the file: a store from a newer servescope
        # must be left exactly as it is (no journal-mode change, no -wal/-shm files).
        _check_header(self.path)
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if readonly:
                self._conn = sqlite3.connect(
                    f"{self.path.absolute().as_uri()}?mode=ro", uri=True, timeout=busy_timeout,
                    isolation_level=None, check_same_thread=False)
            else:
                self._conn = sqlite3.connect(self.path, timeout=busy_timeout,
                                             isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self._lock = threading.RLock()
        try:
            if readonly:
                self._check_readable()
            else:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.execute("PRAGMA foreign_keys=ON")
                self._migrate()
        except BaseException:
            self._conn.close()
            raise

    @classmethod
    def open_readonly(cls, path: str | os.PathLike[str] | None = None) -> Store:
        """An existing store, read-only: never created, migrated or written."""
        return cls(path, readonly=True)

    # -- plumbing -------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # never leave one open (a failed COMMIT too)
                    self._conn.execute("ROLLBACK")
                raise

    def _migrate(self) -> None:
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:  # the header said older: a newer one is writing it
                raise StoreError(_newer_schema(self.path, version))
            for v in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[v]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {v + 1}")

    def _check_readable(self) -> None:
        try:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read store {self.path}: {exc}") from exc
        if version > SCHEMA_VERSION:
            raise StoreError(_newer_schema(self.path, version))
        if version < SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path} has schema v{version}, older than this servescope "
                f"(v{SCHEMA_VERSION}); it is only read here: run `servescope collect` or "
                "`servescope load` on it once to upgrade it")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._conn.execute("PRAGMA user_version").fetchone()[0]

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cur = self._conn.execute(sql, tuple(params))
            cur.row_factory = sqlite3.Row
            return cur.fetchall()

    # -- targets --------------------------------------------------------------------
    def upsert_target(
        self, name: str, runtime: str, url: str, info: dict[str, Any] | None = None
    ) -> int:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO targets(name, runtime, url, created_at) VALUES (?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET runtime=excluded.runtime, url=excluded.url",
                (name, runtime, url, time.time()),
            )
            if info is not None:
                conn.execute(
                    "UPDATE targets SET info=? WHERE name=?", (json.dumps(info), name)
                )
            return conn.execute("SELECT id FROM targets WHERE name=?", (name,)).fetchone()[0]

    def set_target_info(self, target_id: int, info: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute("UPDATE targets SET info=? WHERE id=?", (json.dumps(info), target_id))

    def set_target_status(
        self, target_id: int, up: bool, error: str | None = None, ts: float | None = None
    ) -> None:
        """Record an up/down transition (callers only call this on a change)."""
        ts = time.time() if ts is None else ts
        status = "up" if up else "down"
        with self._write() as conn:
            conn.execute(
                "UPDATE targets SET status=?, status_since=?, last_error=? WHERE id=?",
                (status, ts, error, target_id),
            )
            conn.execute(
                "INSERT INTO target_events(target_id, ts, kind, message) VALUES (?,?,?,?)",
                (target_id, ts, status, error),
            )

    def add_target_event(self, target_id: int, kind: str, message: str, ts: float) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO target_events(target_id, ts, kind, message) VALUES (?,?,?,?)",
                (target_id, ts, kind, message),
            )

    def targets(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM targets ORDER BY name")
        out = []
        for r in rows:
            d = dict(r)
            d["info"] = json.loads(d["info"]) if d["info"] else {}
            out.append(d)
        return out

    def target_events(self, target_id: int) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT ts, kind, message FROM target_events WHERE target_id=? ORDER BY ts",
            (target_id,),
        )
        return [dict(r) for r in rows]

    # -- samples --------------------------------------------------------------------
    def add_samples(self, target_id: int, ts: float, samples: Iterable[Sample]) -> int:
        rows = [
            (
                target_id,
                ts,
                s.concept,
                s.value,
                s.raw_name,
                json.dumps(s.labels, sort_keys=True),
                json.dumps(s.extra) if s.extra is not None else None,
            )
            for s in samples
        ]
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO samples(target_id, ts, concept, value, raw_name, labels, extra) "
                "VALUES (?,?,?,?,?,?,?)", rows)
        return len(rows)

    def delete_samples_before(self, cutoff: float, batch: int = 5000) -> int:
        """Delete samples older than `cutoff` (Unix seconds); returns how many. Works through
        the (target, concept, ts) index in short transactions, so writers never wait long."""
        deleted = 0
        for (target_id,) in self._query("SELECT id FROM targets"):
            for concept in self._concepts(target_id):
                while True:
                    with self._write() as conn:
                        n = conn.execute(
                            "DELETE FROM samples WHERE rowid IN (SELECT rowid FROM samples "
                            "WHERE target_id=? AND concept=? AND ts<? LIMIT ?)",
                            (target_id, concept, cutoff, batch),
                        ).rowcount
                    deleted += n
                    if n < batch:
                        break
        return deleted

    def _concepts(self, target_id: int) -> list[str]:
        """The concepts a target has samples of: a skip scan of the index, not the table."""
        rows = self._query(
            "WITH RECURSIVE c(concept) AS ("
            " SELECT min(concept) FROM samples WHERE target_id=?1"
            " UNION ALL SELECT (SELECT min(concept) FROM samples"
            "  WHERE target_id=?1 AND concept>c.concept) FROM c WHERE c.concept IS NOT NULL)"
            " SELECT concept FROM c WHERE concept IS NOT NULL",
            (target_id,),
        )
        return [r[0] for r in rows]

    def samples(
        self,
        target_id: int,
        concepts: Iterable[str] | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> pd.DataFrame:
        """Samples of one target as a DataFrame (ts, concept, value, raw_name, labels, extra)."""
        import pandas as pd

        sql = "SELECT ts, concept, value, raw_name, labels, extra FROM samples WHERE target_id=?"
        params: list[Any] = [target_id]
        if concepts is not None:
            concepts = list(concepts)
            sql += f" AND concept IN ({','.join('?' * len(concepts))})"
            params += concepts
        if since is not None:
            sql += " AND ts >= ?"
            params.append(since)
        if until is not None:
            sql += " AND ts <= ?"
            params.append(until)
        sql += " ORDER BY ts"
        rows = self._query(sql, params)
        return pd.DataFrame(
            [
                (r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5]) if r[5] else None)
                for r in rows
            ],
            columns=["ts", "concept", "value", "raw_name", "labels", "extra"],
        )

    # -- runs -----------------------------------------------------------------------
    def create_run(
        self,
        name: str,
        scenario_name: str,
        scenario: dict[str, Any],
        target_url: str,
        target: dict[str, Any],
    ) -> int:
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO runs(name, scenario_name, scenario, target_url, target, "
                "started_at, status) VALUES (?,?,?,?,?,?, 'running')",
                (name, scenario_name, redact_credentials(json.dumps(scenario)),
                 redact_credentials(target_url), redact_credentials(json.dumps(target)),
                 time.time()),
            )
            return int(cur.lastrowid)

    def finish_run(self, run_id: int, status: str, summary: dict[str, Any] | None) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE runs SET ended_at=?, status=?, summary=? WHERE id=?",
                (time.time(), status,
                 redact_credentials(json.dumps(summary)) if summary else None, run_id),
            )

    # -- sweeps -------------------------------------------------------------------
    def create_sweep(self, name: str, scenario_name: str, target_url: str, kind: str,
                     levels: list[float]) -> int:
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO sweeps(name, scenario_name, target_url, kind, levels, started_at, "
                "status) VALUES (?,?,?,?,?,?, 'running')",
                (name, scenario_name, redact_credentials(target_url), kind, json.dumps(levels),
                 time.time()),
            )
            return int(cur.lastrowid)

    def add_run_to_sweep(self, run_id: int, sweep_id: int) -> None:
        with self._write() as conn:
            conn.execute("UPDATE runs SET sweep_id=? WHERE id=?", (sweep_id, run_id))

    def finish_sweep(self, sweep_id: int, status: str, result: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute("UPDATE sweeps SET ended_at=?, status=?, result=? WHERE id=?",
                         (time.time(), status, redact_credentials(json.dumps(result)),
                          sweep_id))

    def sweeps(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM sweeps ORDER BY id DESC")
        out = []
        for r in rows:
            d = dict(r)
            d["levels"] = json.loads(d["levels"])
            d["result"] = json.loads(d["result"]) if d["result"] else None
            out.append(d)
        return out

    def runs(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM runs ORDER BY id DESC")
        return [_decode_run(r) for r in rows]

    def run(self, run_id: int) -> dict[str, Any]:
        rows = self._query("SELECT * FROM runs WHERE id=?", (run_id,))
        if not rows:
            raise StoreError(f"no run {run_id} in store {self.path}")
        return _decode_run(rows[0])

    # -- run manifests (collectors/manifest.py) ----------------------------------------
    def set_run_manifest(self, run_id: int, manifest: dict[str, Any]) -> None:
        """Store what the target served during the run (its artifact manifest)."""
        with self._write() as conn:
            conn.execute("UPDATE runs SET manifest=? WHERE id=?",
                         (redact_credentials(json.dumps(manifest)), run_id))

    def run_manifest(self, run_id: int) -> dict[str, Any] | None:
        rows = self._query("SELECT manifest FROM runs WHERE id=?", (run_id,))
        return json.loads(rows[0]["manifest"]) if rows and rows[0]["manifest"] else None

    # -- requests -------------------------------------------------------------------
    def add_requests(self, run_id: int, records: Iterable[RequestRecord]) -> int:
        """Insert records; a record already stored (same run and request id) is ignored,
        so re-delivery from a distributed worker never double counts."""
        return self.add_request_rows([request_row(run_id, rec) for rec in records])

    def add_request_rows(self, rows: list[tuple[Any, ...]]) -> int:
        """Insert rows made by `request_row` (made where the records are, written here: the
        load generator writes from a thread of its own). Returns the rows new to the store."""
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany(_INSERT_REQUEST, rows)
            return conn.total_changes - before

    def requests(self, run_id: int) -> list[RequestRecord]:
        rows = self._query("SELECT * FROM requests WHERE run_id=? ORDER BY send_ns", (run_id,))
        return [record_from_row(dict(r)) for r in rows]

    def count_requests(self, run_id: int) -> int:
        return self._query("SELECT COUNT(*) FROM requests WHERE run_id=?", (run_id,))[0][0]

    # -- server spans (OTLP; collectors/otlp.py writes, analysis/join.py reads) -------
    def add_server_spans(self, spans: Iterable[ServerSpan]) -> int:
        """Insert spans; one already stored (same trace and span id: a retried export) is
        ignored. Returns the spans new to the store."""
        rows = [
            (s.received_at, s.service, s.trace_id, s.span_id, s.name, s.request_id,
             s.start_ns, s.end_ns, s.queue_s, s.prefill_s, s.decode_s, s.inference_s,
             s.ttft_s, s.e2e_s, s.prompt_tokens, s.output_tokens, json.dumps(s.attributes))
            for s in spans
        ]
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO server_spans(received_at, service, trace_id, span_id, "
                "name, request_id, start_ns, end_ns, queue_s, prefill_s, decode_s, "
                "inference_s, ttft_s, e2e_s, prompt_tokens, output_tokens, attributes) "
                f"VALUES ({','.join('?' * 17)})",
                rows,
            )
            return conn.total_changes - before

    def server_spans(self, request_ids: Iterable[str]) -> list[ServerSpan]:
        """The stored spans whose request id is one of `request_ids` (in batches: SQLite
        caps the parameters of one statement)."""
        ids = list(dict.fromkeys(request_ids))
        out: list[ServerSpan] = []
        for i in range(0, len(ids), 500):
            batch = ids[i:i + 500]
            rows = self._query(
                f"SELECT * FROM server_spans WHERE request_id IN ({','.join('?' * len(batch))})"
                " ORDER BY end_ns", batch)
            out += [_span_from_row(dict(r)) for r in rows]
        return out

    def count_server_spans(self, since: float | None = None) -> int:
        """Spans received (at or after `since`, Unix seconds): whether a receiver feeds
        this store."""
        sql, params = "SELECT COUNT(*) FROM server_spans", []
        if since is not None:
            sql += " WHERE received_at >= ?"
            params.append(since)
        return self._query(sql, params)[0][0]

    def request_bounds(self, run_id: int) -> tuple[int | None, int | None]:
        """(first send, last end) of a run's requests, Unix ns: where its load began and
        ended on the wire (the window fallback keeps neighbouring runs out by these)."""
        row = self._query("SELECT MIN(send_ns), MAX(COALESCE(end_ns, send_ns)) FROM requests "
                          "WHERE run_id=?", (run_id,))[0]
        return row[0], row[1]


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _check_header(path: Path) -> None:
    """Refuse a file that is not a SQLite database, or one whose schema is newer than this
    servescope's, by reading its 100-byte header only (the user version is at byte 60)."""
    try:
        with path.open("rb") as fh:
            header = fh.read(100)
    except FileNotFoundError:
        return  # a new store
    except OSError as exc:
        raise StoreError(f"cannot read store {path}: {exc.strerror}") from exc
    if not header:
        return  # an empty file is an empty database to SQLite
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise StoreError(f"{path} is not a servescope store (not a SQLite database)")
    version = int.from_bytes(header[60:64], "big")
    if version > SCHEMA_VERSION:
        raise StoreError(_newer_schema(path, version))


def _newer_schema(path: Path, version: int) -> str:
    return (f"store {path} has schema v{version}, newer than this servescope "
            f"(v{SCHEMA_VERSION}); upgrade servescope (the store was left untouched)")


def _statements(script: str) -> Iterator[str]:
    """Split a script into statements with SQLite's own tokenizer (comments may hold ';')."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            yield buf
            buf = ""
    if buf.strip():
        raise StoreError(f"incomplete SQL statement in migration: {buf.strip()[:80]}")


def _span_from_row(row: dict[str, Any]) -> ServerSpan:
    row.pop("id")
    row["attributes"] = json.loads(row["attributes"])
    return ServerSpan(**row)


def _decode_run(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    for key in ("scenario", "target", "summary"):
        d[key] = json.loads(d[key]) if d[key] else None
    return d
