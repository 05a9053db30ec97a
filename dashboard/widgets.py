"""Small Streamlit building blocks the pages share."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from servescope.dashboard import figures
from servescope.dashboard.figures import ago, local_clock

Chart = tuple[go.Figure, str | None]  # a figure and an optional caption under it


def chart_grid(key: str, charts: list[Chart], per_row: int = 3) -> None:
    """Three charts to a row (or `per_row`), each with its caption under it."""
    for start in range(0, len(charts), per_row):
        row = charts[start : start + per_row]
        columns = st.columns(per_row)
        for offset, (column, (fig, caption)) in enumerate(zip(columns, row, strict=False)):
            column.plotly_chart(fig, key=f"{key}-{start + offset}", config=figures.PLOTLY_CONFIG)
            if caption:
                column.caption(caption)


def last_sample_caption(df: pd.DataFrame, noun: str = "scrapes", count: int | None = None) -> None:
    """When the newest sample came and how many scrapes (polls, responses) the range holds."""
    last = float(df["ts"].max())
    count = df["ts"].nunique() if count is None else count
    st.caption(f"Last sample {local_clock(last)} ({ago(last)}), {count:,} {noun} in this range.")


def header_caption(parts: list[str], row: Mapping[str, Any], noun: str, newer: str) -> None:
    """One caption line for a run or a sweep (`row` from the store): `parts`, then when it
    started, how long it took (so far) and its status; a note while it is still going."""
    ended = row.get("ended_at")
    st.caption(" · ".join([
        *parts,
        f"started {local_clock(row['started_at'])}",
        f"{(ended or time.time()) - row['started_at']:,.0f} s",
        f"status {row['status']}",
    ]))
    if row["status"] == "running":
        st.info(f"This {noun} is still going; rerun the page for newer {newer}.")
