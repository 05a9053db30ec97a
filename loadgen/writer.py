"""Requests reach the store from a thread of the load generator's own, in batches.

A SQLite commit usually takes a fraction of a millisecond, but a WAL checkpoint now and then
takes several; made on the gevent hub, each one would stall every stream and late-stamp
their events. Here a record becomes a row on the hub when it completes (cheap Python), and
a real OS thread commits the rows every `interval` seconds (sqlite3 releases the GIL while
it works). A run stopped by Ctrl-C flushes what it holds; only a killed process can lose the
last `interval` of records.
"""

from __future__ import annotations

import logging
from typing import Any

import gevent
from gevent.threadpool import ThreadPool

from servescope.core.records import RequestRecord
from servescope.core.store import Store, request_row

FLUSH_INTERVAL_S = 0.1
log = logging.getLogger(__name__)


class RecordWriter:
    def __init__(self, store: Store, run_id: int, interval: float = FLUSH_INTERVAL_S) -> None:
        self.store, self.run_id, self.interval = store, run_id, interval
        self._rows: list[tuple[Any, ...]] = []
        self._thread = ThreadPool(1)
        self._loop = gevent.spawn(self._flush_every)

    def add(self, rec: RequestRecord) -> None:
        self._rows.append(request_row(self.run_id, rec))

    def flush(self) -> None:
        """Commit what is held (the calling greenlet waits; the others run on)."""
        if self._rows:
            rows, self._rows = self._rows, []
            try:
                self._thread.apply(self.store.add_request_rows, (rows,))
            except BaseException:
                self._rows[:0] = rows  # kept for the next try (close() raises if it fails)
                raise

    def close(self) -> None:
        """Stop the periodic flush and commit everything held."""
        self._loop.kill()
        self.flush()
        self._thread.kill()

    def _flush_every(self) -> None:
        while True:
            gevent.sleep(self.interval)
            try:
                self.flush()
            except Exception as exc:  # e.g. the store locked for longer than its timeout
                log.warning("could not store %d requests yet (%s); retrying", len(self._rows),
                            exc)
