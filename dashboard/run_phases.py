"""The Run page's "Server phases per request" section: the server's own account of each
request (vLLM spans, llama.cpp timings, Ollama durations) beside what the client measured,
and the remainder neither holds (HTTP, tokenization, detokenization, network, client)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import streamlit as st

from servescope.analysis.latency import distribution
from servescope.analysis.phases import PHASE_METRICS, SOURCE_LABELS, RequestPhases
from servescope.dashboard import figures, figures_phases

NO_PHASES = (
    "No per-request server account for this run. vLLM gives one when started with "
    "`--otlp-traces-endpoint http://127.0.0.1:4318/v1/traces` (and "
    "`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf`) while `servescope collect --otlp "
    "127.0.0.1:4318` runs on this store; llama.cpp and Ollama's native API give theirs in "
    "every response. `make run` does all of this."
)


def phases_table(rows: Sequence[RequestPhases]) -> pd.DataFrame:
    """One row per phase and remainder: p50 / p95 / p99 / mean / count, in ms."""
    table = []
    for metric, label in PHASE_METRICS.items():
        d = distribution([v for r in rows if (v := r.value(metric)) is not None], ci=False)
        if d["count"]:
            table.append({"phase": label, "p50 (ms)": d["p50"], "p95 (ms)": d["p95"],
                          "p99 (ms)": d["p99"], "mean (ms)": d["mean"], "requests": d["count"]})
    return pd.DataFrame(table, columns=["phase", "p50 (ms)", "p95 (ms)", "p99 (ms)",
                                        "mean (ms)", "requests"])


def render(rows: Sequence[RequestPhases], summary: dict[str, Any]) -> None:
    st.subheader("Server phases per request")
    if not rows:
        st.info(NO_PHASES)
        return
    sources = sorted({r.server.source for r in rows})
    st.caption(
        f"{len(rows):,} of {summary['requests_ok']:,} successful requests joined to the "
        f"server's own account ({', '.join(SOURCE_LABELS.get(s, s) for s in sources)}). "
        "The remainder is the client's TTFT or E2E minus the server's: HTTP, request "
        "parsing and tokenization, detokenization, the network and the client."
    )
    ms = {c: st.column_config.NumberColumn(format="%.1f")
          for c in ("p50 (ms)", "p95 (ms)", "p99 (ms)", "mean (ms)")}
    st.dataframe(phases_table(rows), hide_index=True, column_config=ms)
    st.plotly_chart(figures_phases.request_timeline(rows), key="phases-timeline",
                    config=figures.PLOTLY_CONFIG)
    if len(rows) > figures_phases.TIMELINE_MAX_REQUESTS:
        st.caption(f"The timeline shows the first {figures_phases.TIMELINE_MAX_REQUESTS} "
                   f"of {len(rows):,} requests; the table and charts hold them all.")
    left, right = st.columns(2)
    left.plotly_chart(figures_phases.ttft_against_queue(rows), key="phases-ttft-queue",
                      config=figures.PLOTLY_CONFIG)
    right.plotly_chart(figures_phases.phase_boxes(rows), key="phases-boxes",
                       config=figures.PLOTLY_CONFIG)
