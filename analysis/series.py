"""Stored samples -> plot-ready time series.

Pure pandas over the DataFrame that `Store.samples` returns (ts, concept, value, raw_name,
labels, extra). One scrape may hold several series of a concept (one per engine, per
finished_reason ...). Gauges are summed per scrape. Counters and histograms are
differenced per series first and summed afterwards, like PromQL's ``sum(rate(x))``, so
one engine restarting never shows up as a negative or inflated rate for the server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from servescope.analysis.promql import (
    Buckets,
    histogram_delta,
    histogram_quantile,
    merge_buckets,
    rates,
)

DEFAULT_QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True)
class HistogramIncrease:
    """What a histogram gained between two scrapes of one series (or over a window)."""

    ts: float  # the later scrape (for a window: the last scrape used)
    count: float
    sum: float
    buckets: Buckets


@dataclass(frozen=True)
class HistogramWindow:
    """A histogram's increase over a time window, summed over its series."""

    count: float
    sum: float
    buckets: Buckets
    first_ts: float  # the scrapes the increase is measured between
    last_ts: float

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=float) for c in columns})


def _rows_of(df: pd.DataFrame, concept: str) -> pd.DataFrame:
    if df.empty:
        return df
    return df[df["concept"] == concept].sort_values("ts", kind="stable")


def _series_keys(rows: pd.DataFrame) -> pd.Series:
    """One key per raw series: its name plus its labels."""
    return rows["raw_name"] + rows["labels"].map(lambda d: json.dumps(d or {}, sort_keys=True))


def gauge_series(
    df: pd.DataFrame, concept: str, how: Literal["sum", "mean"] = "sum"
) -> pd.DataFrame:
    """A gauge per scrape, summed over its series (or their mean, e.g. CPU use over cores):
    DataFrame(ts, value)."""
    rows = _rows_of(df, concept)
    if rows.empty:
        return _empty(["ts", "value"])
    return rows.groupby("ts", as_index=False)["value"].agg(how)


def label_is(df: pd.DataFrame, label: str, values: Collection[str]) -> pd.Series:
    """Per row: whether its `label` is one of `values` (False where it has no such label),
    so ``df[~label_is(df, "interface", ["lo"])]`` drops the loopback interface."""
    if df.empty:
        return pd.Series(False, index=df.index, dtype=bool)
    return df["labels"].map(lambda d: (d or {}).get(label) in values).astype(bool)


def _natural(value: str) -> tuple[int, int, str]:
    """Sort key putting "cpu 2" before "cpu 10": numbers by value, then text."""
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def split_by_label(df: pd.DataFrame, concept: str, label: str) -> dict[str, pd.DataFrame]:
    """The rows of `concept` per value of one label (one per CPU, GPU, pid ...), in natural
    order; rows without the label are left out. Each part feeds gauge_series or
    counter_rate_series like the whole frame would."""
    rows = _rows_of(df, concept)
    if rows.empty:
        return {}
    keys = rows["labels"].map(lambda d: (d or {}).get(label))
    parts = {str(k): part for k, part in rows[keys.notna()].groupby(keys[keys.notna()])}
    return {k: parts[k] for k in sorted(parts, key=_natural)}


def latest_labels(df: pd.DataFrame, concept: str, label: str) -> dict[str, dict[str, Any]]:
    """The newest full label set of each series of `concept`, by the value of `label`,
    e.g. a pid's process name or a GPU index's model name."""
    return {
        key: dict(part["labels"].iloc[-1] or {})
        for key, part in split_by_label(df, concept, label).items()
    }


def latest_value(
    df: pd.DataFrame, concept: str, how: Literal["sum", "mean"] = "sum"
) -> float | None:
    """The gauge at the newest scrape that has it; None when it was never sampled."""
    series = gauge_series(df, concept, how)
    return None if series.empty else float(series["value"].iloc[-1])


def kv_usage_series(df: pd.DataFrame) -> pd.DataFrame:
    """KV cache use (0-1) per scrape.

    With several engines the share is of the summed capacity (1 - free / capacity), which
    a plain sum or mean of per-engine percentages would get wrong; where capacity is
    unknown, the mean of the engines' own percentages.
    """
    usage = _rows_of(df, "kv_usage")
    if usage.empty:
        return _empty(["ts", "value"])
    out = usage.groupby("ts", as_index=False)["value"].mean()
    free = gauge_series(df, "kv_free_tokens").rename(columns={"value": "free"})
    cap = gauge_series(df, "kv_capacity_tokens").rename(columns={"value": "cap"})
    out = out.merge(free, on="ts", how="left").merge(cap, on="ts", how="left")
    known = out["free"].notna() & (out["cap"] > 0)
    out.loc[known, "value"] = 1.0 - out.loc[known, "free"] / out.loc[known, "cap"]
    return out[["ts", "value"]].reset_index(drop=True)


def counter_rate_series(df: pd.DataFrame, concept: str) -> pd.DataFrame:
    """Per-second rate of a counter between consecutive scrapes: DataFrame(ts, value).

    Stamped at the later scrape. A decrease is a restart from zero (PromQL), so a rate is
    never negative.
    """
    rows = _rows_of(df, concept)
    if rows.empty:
        return _empty(["ts", "value"])
    points: list[tuple[float, float]] = []
    for _, series in rows.groupby(_series_keys(rows), sort=False):
        points.extend(rates(list(zip(series["ts"], series["value"], strict=True))))
    if not points:
        return _empty(["ts", "value"])
    out = pd.DataFrame(points, columns=["ts", "value"])
    return out.groupby("ts", as_index=False)["value"].sum()


def _buckets(extra: dict | None) -> Buckets | None:
    if not extra or not extra.get("buckets"):
        return None
    return sorted((float(le), float(n)) for le, n in extra["buckets"])


def _is_reset(older: Buckets, newer: Buckets) -> bool:
    if [le for le, _ in older] != [le for le, _ in newer]:
        return True
    return any(n < o for (_, o), (_, n) in zip(older, newer, strict=True))


def histogram_increases(df: pd.DataFrame, concept: str) -> list[HistogramIncrease]:
    """Every scrape-to-scrape increase of every series of a histogram, oldest first.

    A reset (any bucket going down, or changed bounds) means the newer histogram counted
    from zero, so the whole newer histogram is the increase.
    """
    rows = _rows_of(df, concept)
    out: list[HistogramIncrease] = []
    if rows.empty:
        return out
    for _, series in rows.groupby(_series_keys(rows), sort=False):
        prev: HistogramIncrease | None = None
        for ts, count, extra in zip(series["ts"], series["value"], series["extra"], strict=True):
            buckets = _buckets(extra)
            if buckets is None:
                continue
            now = HistogramIncrease(float(ts), float(count), float(extra.get("sum", 0.0)), buckets)
            if prev is not None and now.ts > prev.ts:
                if _is_reset(prev.buckets, now.buckets) or now.count < prev.count:
                    out.append(now)
                else:
                    out.append(
                        HistogramIncrease(
                            now.ts,
                            now.count - prev.count,
                            now.sum - prev.sum,
                            histogram_delta(prev.buckets, now.buckets),
                        )
                    )
            prev = now
    out.sort(key=lambda inc: inc.ts)
    return out


def _bucket_matrix(increases: Sequence[HistogramIncrease]) -> tuple[list[float], np.ndarray]:
    """Increases as rows over the union of bucket bounds.

    A series lacking a bound gets the count of its next lower bound, which keeps every row
    cumulative (non-decreasing) even when engines disagree on bounds.
    """
    bounds = sorted({le for inc in increases for le, _ in inc.buckets})
    matrix = np.zeros((len(increases), len(bounds)))
    for i, inc in enumerate(increases):
        les = np.array([le for le, _ in inc.buckets])
        counts = np.array([n for _, n in inc.buckets])
        idx = np.searchsorted(les, bounds, side="right") - 1
        matrix[i] = np.where(idx >= 0, counts[np.clip(idx, 0, None)], 0.0)
    return bounds, matrix


def histogram_quantile_series(
    df: pd.DataFrame,
    concept: str,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    window_s: float = 30.0,
) -> pd.DataFrame:
    """Quantiles of a histogram over a trailing window, at each scrape: DataFrame(ts, q, value).

    Like ``histogram_quantile(q, sum(rate(x_bucket[30s])))``: the bucket increases of all
    series in ``(ts - window_s, ts]`` are summed and the quantile taken from them. The
    value is NaN where the window saw no new observations (nothing finished), so an idle
    server shows a gap, not a stale latency. Values are in the histogram's unit.
    """
    increases = histogram_increases(df, concept)
    if not increases:
        return _empty(["ts", "q", "value"])
    times = np.array([inc.ts for inc in increases])
    bounds, matrix = _bucket_matrix(increases)
    cumulative = np.vstack([np.zeros(len(bounds)), matrix.cumsum(axis=0)])
    rows = []
    for ts in np.unique(times):
        hi = np.searchsorted(times, ts, side="right")
        lo = np.searchsorted(times, ts - window_s, side="right")
        window = cumulative[hi] - cumulative[lo]
        buckets = list(zip(bounds, window.tolist(), strict=True))
        for q in quantiles:
            value = histogram_quantile(q, buckets)
            rows.append((float(ts), q, math.nan if value is None else value))
    return pd.DataFrame(rows, columns=["ts", "q", "value"])


def histogram_window(
    df: pd.DataFrame, concept: str, since: float, until: float
) -> HistogramWindow | None:
    """A histogram's increase between the first scrape at/after `since` and the last
    at/before `until`, summed over series (resets in between handled).

    None when no series was scraped twice in the window, i.e. the collector did not
    cover it; a window with no observations gives a count of 0 instead.
    """
    if df.empty:
        return None
    inside = df[(df["ts"] >= since) & (df["ts"] <= until)]
    increases = histogram_increases(inside, concept)
    if not increases:
        return None
    scraped = _rows_of(inside, concept)["ts"]
    return HistogramWindow(
        count=sum(inc.count for inc in increases),
        sum=sum(inc.sum for inc in increases),
        buckets=merge_buckets([inc.buckets for inc in increases]),
        first_ts=float(scraped.min()),
        last_ts=float(scraped.max()),
    )


def samples_table(
    df: pd.DataFrame, concepts: Sequence[str], labels: Sequence[str] = ()
) -> pd.DataFrame:
    """Samples written together as one row each: ts, the given labels, one column per
    concept (NaN where a row lacks one), oldest first.

    A row is one scrape's series of a label set (e.g. one loaded model), or one response
    the Ollama proxy observed: it stores all of a response's figures at one ts. Rows that
    share ts and labels (two responses in the same instant) stay apart, in stored order.
    """
    columns = ["ts", *labels, *concepts]
    rows = df[df["concept"].isin(concepts)] if not df.empty else df
    if rows.empty:
        return _empty(columns)
    keys = {
        label: rows["labels"].map(lambda d, label=label: str((d or {}).get(label) or ""))
        for label in labels
    }
    keyed = rows.assign(**keys)
    keyed["_n"] = keyed.groupby(["ts", *labels, "concept"], sort=False).cumcount()
    wide = keyed.pivot_table(
        index=["ts", *labels, "_n"], columns="concept", values="value", aggfunc="first"
    )
    wide = wide.reindex(columns=list(concepts)).reset_index().drop(columns="_n")
    wide.columns.name = None
    return wide[columns].sort_values("ts", kind="stable").reset_index(drop=True)
