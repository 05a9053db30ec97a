"""Run page block: how each prompt's length was obtained (the server's tokenizer before the
run, a local tokenizer, or an estimate) and how close the server's count came to the
scenario's target, per source."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import streamlit as st

from servescope.analysis.prompt_lengths import SOURCE_LABELS, prompt_length_summary
from servescope.core.records import RequestRecord


def prompt_length_table(section: Mapping[str, Any]) -> pd.DataFrame:
    """One row per source: requests, share exactly on target, mean and max abs error."""
    rows = []
    for source, n in section.get("sources", {}).items():
        c = section.get("by_source", {}).get(source, {})
        share = c.get("exact_share")
        rows.append({
            "length from": SOURCE_LABELS.get(source, source),
            "requests": n,
            "exactly the scenario's": None if share is None else f"{100 * share:.0f} %",
            "mean abs error (tokens)": c.get("mean_abs_error"),
            "max abs error (tokens)": c.get("max_abs_error"),
        })
    return pd.DataFrame(rows)


def render(records: Sequence[RequestRecord], stored: Mapping[str, Any] | None) -> None:
    """The block, from the run's records (so older runs show too)."""
    section = prompt_length_summary(list(records))
    if not section["sources"]:
        return
    st.subheader("Prompt lengths")
    st.dataframe(prompt_length_table(section), hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="%.1f") for c in
                                ("mean abs error (tokens)",)})
    prep = ((stored or {}).get("prompt_lengths") or {}).get("preparation")
    if isinstance(prep, Mapping) and "prompts" in prep:
        prep = {"": prep}
    notes = [f"{name + ': ' if name else ''}{p['prompts']:,} prompts prepared "
             f"{p['tokenizer']} in {p['seconds']:.1f} s"
             + (f", {p['server_tokenizer_requests']:,} tokenizer requests to the server, all "
                "before the run" if p.get("server_tokenizer_requests") else "")
             for name, p in (prep or {}).items() if isinstance(p, Mapping)]
    st.caption("The server's prompt_tokens against each request's target. "
               + ("; ".join(notes) + ". " if notes else "")
               + "During the run only the measured requests reach the server; a "
               "conversation's later turns (which carry the real answer) are sized without "
               "asking it, so they are estimates unless a local tokenizer counted them.")
