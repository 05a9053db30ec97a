"""The store's schema: the append-only migrations (`MIGRATIONS[i]` upgrades version i to
i+1, kept in ``PRAGMA user_version``) and the requests table's row mapping, generated from
`RequestRecord` so a new field needs only its one `ALTER TABLE` migration."""

from __future__ import annotations

import json
from dataclasses import fields
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from servescope.core.records import RequestRecord

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
    # v4 -> v5: the server's own trace of each request (OTLP spans: vLLM's llm_request).
    """
    CREATE TABLE server_spans (
        id INTEGER PRIMARY KEY,
        received_at REAL NOT NULL,    -- Unix seconds when the collector received it
        service TEXT,                 -- the sender's service.name
        trace_id TEXT NOT NULL,
        span_id TEXT NOT NULL,
        name TEXT NOT NULL,           -- e.g. 'llm_request'
        request_id TEXT,              -- as the server formed it: 'chatcmpl-' + X-Request-Id
        start_ns INTEGER NOT NULL,    -- the span's own stamps (server clock, Unix ns)
        end_ns INTEGER NOT NULL,
        queue_s REAL,
        prefill_s REAL,
        decode_s REAL,
        inference_s REAL,
        ttft_s REAL,
        e2e_s REAL,
        prompt_tokens INTEGER,
        output_tokens INTEGER,
        attributes TEXT NOT NULL,     -- JSON: every attribute, raw
        UNIQUE (trace_id, span_id)
    );
    CREATE INDEX server_spans_by_request ON server_spans(request_id, end_ns);
    CREATE INDEX server_spans_by_received ON server_spans(received_at);
    """,
    # v5 -> v6: how each request's prompt length was obtained (RequestRecord field).
    """
    ALTER TABLE requests ADD COLUMN prompt_length_source TEXT;
    """,
    # v6 -> v7: the run's artifact manifest (collectors/manifest.py), JSON.
    """
    ALTER TABLE runs ADD COLUMN manifest TEXT;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


# -- the requests table, generated from RequestRecord ----------------------------------
# A new RequestRecord field needs only its column: one `ALTER TABLE requests ADD COLUMN`
# migration named like the field. Lists and dicts are stored as JSON text.
_COLUMN_OF_FIELD = {  # fields whose column predates this mapping under another name
    "event_offsets_ns": "event_offsets",
    "reasoning_event_offsets_ns": "reasoning_event_offsets",
}


def _is_json(tp: Any) -> bool:
    if tp in (list, dict) or get_origin(tp) in (list, dict):
        return True
    return get_origin(tp) in (Union, UnionType) and any(_is_json(a) for a in get_args(tp))


_HINTS = get_type_hints(RequestRecord)
REQUEST_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(RequestRecord))
REQUEST_COLUMNS: tuple[str, ...] = tuple(_COLUMN_OF_FIELD.get(f, f) for f in REQUEST_FIELDS)
_JSON_FIELDS = frozenset(f for f in REQUEST_FIELDS if _is_json(_HINTS[f]))
_INSERT_REQUEST = (
    f"INSERT OR IGNORE INTO requests(run_id, {', '.join(REQUEST_COLUMNS)}) "
    f"VALUES ({', '.join('?' * (len(REQUEST_COLUMNS) + 1))})"
)


def request_row(run_id: int, rec: RequestRecord) -> tuple[Any, ...]:
    """One record as a row of the requests table (in `_INSERT_REQUEST`'s column order)."""
    values = []
    for name in REQUEST_FIELDS:
        value = getattr(rec, name)
        if name in _JSON_FIELDS and value is not None:
            value = json.dumps(value)
        values.append(value)
    return (run_id, *values)


def record_from_row(row: dict[str, Any]) -> RequestRecord:
    """A row of the requests table (`SELECT *`, as a dict) as the record it was made from."""
    kwargs = {}
    for name, column in zip(REQUEST_FIELDS, REQUEST_COLUMNS, strict=True):
        value = row[column]
        if name in _JSON_FIELDS and value is not None:
            value = json.loads(value)
        kwargs[name] = value
    return RequestRecord(**kwargs)
