"""Run page: one load run as the client measured it, joined with what the server's
histograms say about the same window."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import streamlit as st

from servescope.analysis.join import joined_phases, run_window, server_split
from servescope.analysis.latency import (
    metric_values,
    reasoning_lines,
    request_table,
    summarize,
    trim_warmup,
)
from servescope.analysis.phases import RequestPhases
from servescope.analysis.slo import evaluate_slos
from servescope.core.records import RequestRecord
from servescope.core.store import Store
from servescope.dashboard import figures, run_checks, run_phases, run_prompts
from servescope.dashboard.figures import local_clock, redact_urls
from servescope.dashboard.widgets import header_caption

EMPTY_STATE = (
    "No load runs in the store yet. Run one with "
    "`servescope load scenarios/chat.yaml --target http://127.0.0.1:8000`, or `make run` "
    "to start a local server, the collector and a load run together."
)
NO_SERVER_DATA = (
    "No collector data covers this run's window, so the server's queue / prefill / decode "
    "split is missing. Run `servescope collect --target local=vllm:{url}` while the load "
    "run is going to get it next time."
)
METRIC_LABELS = {
    "ttft_ms": "TTFT",
    "ttfo_ms": "TTFO (first answer token)",
    "itl_ms": "ITL",
    "tpot_ms": "TPOT",
    "e2e_ms": "E2E",
    "ttft_from_intended_ms": "TTFT from intended send",
    "e2e_from_intended_ms": "E2E from intended send",
    "send_lag_ms": "send lag (client)",
    "connect_ms": "new connection",
}
PERCENTILES = ("p50", "p95", "p99")
# Scrapes are seconds apart: widen the run's window so the scrapes just before its start
# and just after its end are the ones compared.


def render(store: Store) -> None:
    st.title("Run")
    runs = store.runs()
    if not runs:
        st.info(EMPTY_STATE)
        return
    by_id = {r["id"]: r for r in runs}
    ids = list(by_id)
    wanted = _run_in_query(ids)
    run_id = st.selectbox(
        "Run", ids, index=ids.index(wanted), format_func=lambda i: run_label(by_id[i])
    )
    st.query_params["run"] = str(run_id)  # a link to this page shows this run
    run = by_id[run_id]
    _run_header(run)
    stored = run.get("summary") or {}
    run_checks.client_health(stored.get("client"))
    all_records = store.requests(run_id)
    warmup = int((run.get("scenario") or {}).get("warmup_requests") or 0)
    records = trim_warmup(all_records, warmup) if warmup else all_records
    if not records:
        st.warning("This run recorded no requests" + (" after its warm-up." if warmup else "."))
        return
    slos = _slos(run)
    summary = summarize(records, slos=slos)
    _summary_metrics(summary)
    if warmup:
        st.caption(f"The first {warmup:,} requests (the warm-up) are left out of every figure.")
    run_checks.show_warnings(run_checks.merged_warnings(summary, stored))
    run_checks.decode_physics(store, run, {**summary, "server": stored.get("server")})
    _slo_section(run, summary)
    st.subheader("Latency (client)")
    st.dataframe(latency_table(summary), hide_index=True, column_config=_ms_columns())
    table = pd.DataFrame(request_table(records))
    _distributions(records, table, summary, slos)
    phases = joined_phases(store, records)  # the server's account of each request
    _time_split(store, run, summary, phases)
    run_phases.render(phases, summary)
    run_prompts.render(all_records, stored)  # how each prompt's length was obtained
    st.download_button(
        "Download per-request CSV",
        pd.DataFrame(request_table(all_records)).to_csv(index=False).encode(),
        file_name=f"servescope-run-{run_id}-requests.csv",
        mime="text/csv",
    )


def _run_in_query(ids: list[int]) -> int:
    """The run named by ``?run=ID`` (the Sweep page links so), else the newest."""
    try:
        wanted = int(st.query_params.get("run", ""))
    except ValueError:
        return ids[0]
    return wanted if wanted in ids else ids[0]


def run_label(run: Mapping[str, Any]) -> str:
    return (
        f"#{run['id']} {run['name']} {run['scenario_name']} {run['status']} "
        f"{local_clock(run['started_at'])}"
    )


def latency_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """One row per latency metric: p50/p95/p99 each with its 95 % confidence interval,
    mean and count, in ms (TTFO only when some request reasoned). Summaries from before
    CIs were kept show no interval."""
    rows = []
    for metric, label in METRIC_LABELS.items():
        if metric == "ttfo_ms" and not summary.get("requests_with_reasoning"):
            continue  # without reasoning it is the TTFT again
        dist = summary.get(metric) or {}
        ci95 = dist.get("ci95") or {}
        row: dict[str, Any] = {"metric": label}
        for p in PERCENTILES:
            row[f"{p} (ms)"] = dist.get(p)
            row[f"{p} 95% CI (ms)"] = ci_text(ci95.get(p))
        row.update({"mean (ms)": dist.get("mean"), "samples": dist.get("count", 0)})
        rows.append(row)
    return pd.DataFrame(rows)


def ci_text(interval: Sequence[float] | None) -> str | None:
    """[lo, hi] as "85.0 – 95.0"; None when there is no interval (fewer than 2 values)."""
    if not interval or len(interval) != 2 or None in interval:
        return None
    return f"{interval[0]:,.1f} – {interval[1]:,.1f}"


def _slos(run: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    slos = (run.get("scenario") or {}).get("slos") or {}
    return {metric: dict(targets) for metric, targets in slos.items() if targets}


def _run_header(run: Mapping[str, Any]) -> None:
    target = run.get("target") or {}
    header_caption([f"target {redact_urls(run['target_url'])}",
                    f"model {target.get('model') or 'unknown'}"], run, "run", "requests")


def _summary_metrics(summary: Mapping[str, Any]) -> None:
    cols = st.columns(5)
    cols[0].metric("Requests ok", f"{summary['requests_ok']:,}")
    cols[1].metric("Requests failed", f"{summary['requests_failed']:,}")
    cols[2].metric("Output tokens/s", _number(summary["output_tokens_per_s"]))
    cols[3].metric("Requests/s", _number(summary["requests_per_s"], digits=2))
    cols[4].metric("Active span", f"{summary['duration_s']:,.1f} s")
    if summary["errors_by_class"]:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(summary["errors_by_class"].items()))
        st.warning(f"Failed requests by class: {errors}")
    _reasoning_caption(summary)
    if "events" in summary["token_count_sources"]:
        st.caption(
            "Some output token counts were counted from stream events because the server "
            "sent no usage; they may differ from the tokenizer's count."
        )


def _reasoning_caption(summary: Mapping[str, Any]) -> None:
    """A reasoning model's output split, and what its TTFT and TTFO count."""
    for line in reasoning_lines(dict(summary)):
        st.caption(line[0].upper() + line[1:] + ".")


def slo_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """analysis.slo.evaluate_slos rows as displayed: readable metric names, ms columns and
    a verdict that tells "no data" (nothing measured) apart from a miss."""
    return pd.DataFrame(
        [
            {
                "metric": METRIC_LABELS.get(r["metric"], r["metric"]),
                "statistic": r["stat"],
                "target (ms)": float(r["target_ms"]),
                "measured (ms)": r["observed_ms"],
                "passed": {True: "pass", False: "FAIL", None: "no data"}[r["met"]],
            }
            for r in rows
        ],
        columns=["metric", "statistic", "target (ms)", "measured (ms)", "passed"],
    )


def _slo_section(run: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
    # The same check the CLI prints, on the summary recomputed from the stored requests
    # (so a run still going is judged on what it has so far).
    rows = evaluate_slos(_slos(run), dict(summary))
    if not rows:
        return
    st.subheader("SLOs")
    verdicts = [r["met"] for r in rows]
    if all(v is True for v in verdicts):
        st.success(f"All {len(rows)} SLO targets met.")
    elif any(v is False for v in verdicts):
        failed = sum(v is False for v in verdicts)
        st.error(f"{failed} of {len(rows)} SLO targets missed.")
    else:
        st.warning("SLOs could not be checked: no successful requests.")
    st.dataframe(slo_table(rows), hide_index=True, column_config=_ms_columns())
    _goodput(summary.get("goodput") or {})


def attainment_table(attainment: list[dict[str, Any]]) -> pd.DataFrame:
    """Per SLO the share of requests that met it on their own values, beside the share a
    percentile target needs (95 % for a p95)."""
    return pd.DataFrame(
        [
            {
                "metric": METRIC_LABELS.get(a["metric"], a["metric"]),
                "statistic": a["stat"],
                "target (ms)": float(a["target_ms"]),
                "requests meeting it (%)": 100.0 * a["ratio"],
                "needed (%)": float(a["stat"][1:]) if a["stat"].startswith("p") else None,
            }
            for a in attainment
        ],
        columns=["metric", "statistic", "target (ms)", "requests meeting it (%)", "needed (%)"],
    )


def _goodput(goodput: Mapping[str, Any]) -> None:
    """Goodput: the requests that met every SLO, each judged on its own latencies."""
    if not goodput.get("attainment"):
        return
    cols = st.columns(3)
    cols[0].metric("Goodput (req/s)", _number(goodput.get("requests_per_s"), digits=2))
    cols[1].metric("Requests meeting every SLO", f"{goodput.get('requests', 0):,}")
    ratio = goodput.get("ratio")
    cols[2].metric("Goodput ratio", "n/a" if ratio is None else f"{ratio:.1%}")
    st.dataframe(
        attainment_table(goodput["attainment"]),
        hide_index=True,
        column_config={
            **_ms_columns(),
            "requests meeting it (%)": st.column_config.NumberColumn(format="%.1f"),
            "needed (%)": st.column_config.NumberColumn(format="%g"),
        },
    )
    st.caption(
        "Goodput counts each request against every SLO on its own TTFT, TPOT or E2E (ITL: "
        "the statistic over its own gaps); failed requests meet none. A percentile SLO "
        "holds when at least the needed share of requests meets its target."
    )


def _ms_columns() -> dict[str, Any]:
    """Milliseconds to one decimal: finer than that is noise at these scales."""
    names = ("p50", "p95", "p99", "mean", "target", "measured")
    return {f"{n} (ms)": st.column_config.NumberColumn(format="%.1f") for n in names}


def _distributions(
    records: list[RequestRecord],
    table: pd.DataFrame,
    summary: Mapping[str, Any],
    slos: Mapping[str, Any],
) -> None:
    values = {m: metric_values(records, m) for m in ("ttft_ms", "e2e_ms", "itl_ms")}
    cols = st.columns(3)
    for col, metric in zip(cols, values, strict=True):
        label = METRIC_LABELS[metric]
        col.plotly_chart(
            figures.latency_histogram(
                values[metric],
                f"{label} distribution",
                f"{label} (ms)",
                marks=_marks(summary.get(metric) or {}, slos.get(metric) or {}),
            ),
            key=f"hist-{metric}",
            config=figures.PLOTLY_CONFIG,
        )
    left, right = st.columns(2)
    left.plotly_chart(
        figures.ecdf_figure(
            {"TTFT": values["ttft_ms"], "E2E": values["e2e_ms"]}, "TTFT and E2E, cumulative"
        ),
        key="ecdf",
        config=figures.PLOTLY_CONFIG,
    )
    right.plotly_chart(
        figures.latency_scatter(table, float(table["send_s"].min())),
        key="scatter",
        config=figures.PLOTLY_CONFIG,
    )


def _marks(dist: Mapping[str, Any], slo: Mapping[str, float]) -> dict[str, float | None]:
    marks: dict[str, float | None] = {p: dist.get(p) for p in ("p50", "p95", "p99")}
    marks.update({f"SLO {stat}": float(target) for stat, target in slo.items()})
    return marks


def _time_split(store: Store, run: Mapping[str, Any], summary: Mapping[str, Any],
                per_request: Sequence[RequestPhases] = ()) -> None:
    st.subheader("Where the time went")
    win = run_window(store, dict(run))  # never into a neighbouring run on the same server
    ttft = (summary.get("ttft_ms") or {}).get("mean")
    e2e = (summary.get("e2e_ms") or {}).get("mean")
    client = {"TTFT": ttft, "after first token": None if e2e is None else e2e - (ttft or 0.0)}
    found = server_split(store, run["target_url"], win.since, win.until)
    phases = found[1] if found else {}
    server_ms = {p: (w.mean * 1000.0 if w.mean is not None else None) for p, w in phases.items()}
    if per_request:  # the same requests the client timed, each with its own phases
        server_ms = {p: _mean([v for r in per_request if (v := r.value(f"{p}_ms")) is not None])
                     for p in ("queue", "prefill", "decode")}
    st.plotly_chart(
        figures.time_split_figure(server_ms, client), key="time-split", config=figures.PLOTLY_CONFIG
    )
    if per_request:
        st.caption(f"Server means over the {len(per_request):,} requests joined to the "
                   "server's account of each (see Server phases per request below).")
        return
    if found is None:
        st.info(NO_SERVER_DATA.format(url=redact_urls(run["target_url"])))
        return
    name, phases, e2e_window = found
    window = e2e_window or next(iter(phases.values()))
    made = store.count_requests(run["id"])
    st.caption(
        f"Server means per request from the histograms of target `{name}` between "
        f"{local_clock(window.first_ts)} and {local_clock(window.last_ts)} (not into another "
        f"run on this server): {window.count:,.0f} requests finished on the server, the client "
        f"made {made:,} ({summary['requests_ok']:,} succeeded). Queue + prefill is the "
        "server's share of TTFT and decode its share of the rest; what is left is HTTP, "
        "tokenization, network and the client."
    )
    if window.count > made + 0.5:
        st.caption(
            "The server finished more requests than the client made: other traffic reached "
            "it, so the server means are not this run's alone."
        )
    elif window.count < 0.9 * made:
        st.caption("The server finished fewer requests than the client made: the collector "
                   "did not cover the whole run, so the server means are approximate.")
    for note in win.notes:
        st.caption(f"Note: {note}.")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"
