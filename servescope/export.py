"""Per-request exports of a run: JSONL (raw stamps and derived metrics, one object per
line), CSV (for spreadsheets) and Parquet (for pandas/DuckDB/Spark)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from servescope.analysis.latency import request_table
from servescope.core.store import Store

FORMATS = ("jsonl", "csv", "parquet")


def request_rows(store: Store, run_id: int) -> list[dict[str, Any]]:
    """Every request of a run: its raw stamps next to the metrics derived from them."""
    records = store.requests(run_id)
    rows = []
    for rec, derived in zip(records, request_table(records), strict=True):
        row = {"run_id": run_id, **asdict(rec)}
        row.update({k: v for k, v in derived.items() if k not in row})
        rows.append(row)
    return rows


def export_run(store: Store, run_id: int, fmt: str, out: Path) -> int:
    """Write the run's requests to `out`; returns how many rows were written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    store.run(run_id)  # a clear error for a run that does not exist
    rows = request_rows(store, run_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        with out.open("w") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
        return len(rows)
    import pandas as pd

    df = pd.DataFrame(rows)
    if fmt == "csv":
        # Lists (event offsets) do not fit a spreadsheet cell well: keep them as JSON text.
        for col in ("event_offsets_ns", "reasoning_event_offsets_ns"):
            if col in df:
                df[col] = df[col].map(json.dumps)
        df.to_csv(out, index=False)
    else:
        df.to_parquet(out, index=False)
    return len(rows)
