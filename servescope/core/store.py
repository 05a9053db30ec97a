"""The embedded store: one SQLite file in WAL mode, shared by collectors, load generators
and the dashboard (possibly all at once, from several processes).

Writes are short ``BEGIN IMMEDIATE`` transactions with a generous busy timeout, so
concurrent writers queue instead of failing with "database is locked". The schema is
versioned with ``PRAGMA user_version``; `MIGRATIONS[i]` upgrades version i to i+1.
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

from servescope.core.records import RequestRecord, Sample

if TYPE_CHECKING:
    import pandas as pd

MIGRATIONS: list[str] = [
    # v0 -> v1: the first schema.
    """
    CREATE TABLE targets (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        runtime TEXT NOT NULL,
        url TEXT NOT NULL,
        info TEXT,                    -- JSON: served model, max_model_len, cache config ...
        status TEXT,                  -- 'up' | 'down' | NULL (never scraped)
        status_since REAL,
        last_error TEXT,
        created_at REAL NOT NULL
    );
    CREATE TABLE samples (
        target_id INTEGER NOT NULL REFERENCES targets(id),
        ts REAL NOT NULL,             -- Unix seconds of the scrape
        concept TEXT NOT NULL,        -- normalized concept, e.g. 'running', 'ttft_seconds'
        value REAL,                   -- the value; a histogram's count
        raw_name TEXT NOT NULL,       -- the series name as the server exposed it
        labels TEXT NOT NULL,         -- JSON object of the raw labels
        extra TEXT                    -- JSON; histograms: {"sum": s, "buckets": [[le, n]...]}
    );
    CREATE INDEX samples_by_target_concept_ts ON samples(target_id, concept, ts);
    CREATE TABLE target_events (
        id INTEGER PRIMARY KEY,
        target_id INTEGER NOT NULL REFERENCES targets(id),
        ts REAL NOT NULL,
        kind TEXT NOT NULL,           -- 'up' | 'down' | 'gap' | 'reset'
        message TEXT
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        scenario_name TEXT NOT NULL,
        scenario TEXT NOT NULL,       -- JSON: the scenario exactly as run (overrides applied)
        target_url TEXT NOT NULL,
        target TEXT NOT NULL,         -- JSON: model, runtime, server config seen at start
        started_at REAL NOT NULL,
        ended_at REAL,
        status TEXT NOT NULL,         -- 'running' | 'finished' | 'interrupted' | 'failed'
        summary TEXT                  -- JSON summary, written at the end
    );
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        request_id TEXT NOT NULL,
        worker TEXT,
        user_id INTEGER,
        intended_ns INTEGER NOT NULL,
        send_ns INTEGER NOT NULL,
        headers_ns INTEGER,
        first_token_ns INTEGER,
        last_token_ns INTEGER,
        end_ns INTEGER,
        event_offsets TEXT NOT NULL,  -- JSON list of ns offsets from send_ns, content events
        reasoning_event_offsets TEXT NOT NULL,
        prompt_tokens INTEGER,
        output_tokens INTEGER,
        reasoning_tokens INTEGER,
        token_count_source TEXT,
        target_prompt_tokens INTEGER,
        target_output_tokens INTEGER,
        status_code INTEGER,
        error_class TEXT,
        error TEXT,
        UNIQUE (run_id, request_id)
    );
    CREATE INDEX requests_by_run ON requests(run_id);
    """,
    # v1 -> v2: sweeps (a series of runs at increasing load) and each run's sweep.
    """
    CREATE TABLE sweeps (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        scenario_name TEXT NOT NULL,
        target_url TEXT NOT NULL,
        kind TEXT NOT NULL,           -- 'concurrency' | 'rate'
        levels TEXT NOT NULL,         -- JSON list of the levels asked for
        started_at REAL NOT NULL,
        ended_at REAL,
        status TEXT NOT NULL,
        result TEXT                   -- JSON: curve, saturation level, max level meeting SLOs
    );
    ALTER TABLE runs ADD COLUMN sweep_id INTEGER REFERENCES sweeps(id);
    """,
    # v2 -> v3: the server's own per-request phases (Ollama's native API), JSON.
    """
    ALTER TABLE requests ADD COLUMN server_timings TEXT;
    """,
    # v3 -> v4: time spent opening a new connection before the send (NULL: reused one).
    """
    ALTER TABLE requests ADD COLUMN connect_ns INTEGER;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def default_db_path() -> Path:
    """`SERVESCOPE_DB`, else ``$XDG_DATA_HOME/servescope/servescope.db``."""
    if env := os.environ.get("SERVESCOPE_DB"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "servescope" / "servescope.db"


class StoreError(RuntimeError):
    pass


class Store:
    """A handle on one store file. Thread-safe; open one per process."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=60.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self._lock = threading.RLock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._migrate()

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
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"store {self.path} has schema v{version}, newer than this servescope "
                    f"(v{SCHEMA_VERSION}); upgrade servescope"
                )
            for v in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[v]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {v + 1}")

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
            conn.executemany("INSERT INTO samples VALUES (?,?,?,?,?,?,?)", rows)
        return len(rows)

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
                (name, scenario_name, json.dumps(scenario), target_url, json.dumps(target),
                 time.time()),
            )
            return int(cur.lastrowid)

    def finish_run(self, run_id: int, status: str, summary: dict[str, Any] | None) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE runs SET ended_at=?, status=?, summary=? WHERE id=?",
                (time.time(), status, json.dumps(summary) if summary else None, run_id),
            )

    # -- sweeps -------------------------------------------------------------------
    def create_sweep(self, name: str, scenario_name: str, target_url: str, kind: str,
                     levels: list[float]) -> int:
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO sweeps(name, scenario_name, target_url, kind, levels, started_at, "
                "status) VALUES (?,?,?,?,?,?, 'running')",
                (name, scenario_name, target_url, kind, json.dumps(levels), time.time()),
            )
            return int(cur.lastrowid)

    def add_run_to_sweep(self, run_id: int, sweep_id: int) -> None:
        with self._write() as conn:
            conn.execute("UPDATE runs SET sweep_id=? WHERE id=?", (sweep_id, run_id))

    def finish_sweep(self, sweep_id: int, status: str, result: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute("UPDATE sweeps SET ended_at=?, status=?, result=? WHERE id=?",
                         (time.time(), status, json.dumps(result), sweep_id))

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
            conn.executemany(
                "INSERT OR IGNORE INTO requests(run_id, request_id, worker, user_id, "
                "intended_ns, send_ns, headers_ns, first_token_ns, last_token_ns, end_ns, "
                "event_offsets, reasoning_event_offsets, prompt_tokens, output_tokens, "
                "reasoning_tokens, token_count_source, target_prompt_tokens, "
                "target_output_tokens, status_code, error_class, error, server_timings, "
                "connect_ns) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            return conn.total_changes - before

    def requests(self, run_id: int) -> list[RequestRecord]:
        rows = self._query("SELECT * FROM requests WHERE run_id=? ORDER BY send_ns", (run_id,))
        out = []
        for r in rows:
            d = dict(r)
            out.append(
                RequestRecord(
                    request_id=d["request_id"], intended_ns=d["intended_ns"],
                    send_ns=d["send_ns"], headers_ns=d["headers_ns"],
                    first_token_ns=d["first_token_ns"], last_token_ns=d["last_token_ns"],
                    end_ns=d["end_ns"], event_offsets_ns=json.loads(d["event_offsets"]),
                    reasoning_event_offsets_ns=json.loads(d["reasoning_event_offsets"]),
                    prompt_tokens=d["prompt_tokens"], output_tokens=d["output_tokens"],
                    reasoning_tokens=d["reasoning_tokens"],
                    token_count_source=d["token_count_source"],
                    target_prompt_tokens=d["target_prompt_tokens"],
                    target_output_tokens=d["target_output_tokens"],
                    status_code=d["status_code"], error_class=d["error_class"],
                    error=d["error"], worker=d["worker"], user_id=d["user_id"],
                    server_timings=json.loads(d["server_timings"])
                    if d.get("server_timings") else None,
                    connect_ns=d.get("connect_ns"),
                )
            )
        return out

    def count_requests(self, run_id: int) -> int:
        return self._query("SELECT COUNT(*) FROM requests WHERE run_id=?", (run_id,))[0][0]


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


def _decode_run(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    for key in ("scenario", "target", "summary"):
        d[key] = json.loads(d[key]) if d[key] else None
    return d


def request_row(run_id: int, rec: RequestRecord) -> tuple[Any, ...]:
    """One record as a row of the requests table."""
    return (
        run_id, rec.request_id, rec.worker, rec.user_id, rec.intended_ns, rec.send_ns,
        rec.headers_ns, rec.first_token_ns, rec.last_token_ns, rec.end_ns,
        json.dumps(rec.event_offsets_ns), json.dumps(rec.reasoning_event_offsets_ns),
        rec.prompt_tokens, rec.output_tokens, rec.reasoning_tokens, rec.token_count_source,
        rec.target_prompt_tokens, rec.target_output_tokens, rec.status_code,
        rec.error_class, rec.error,
        json.dumps(rec.server_timings) if rec.server_timings is not None else None,
        rec.connect_ns,
    )
