"""What the Run page says before its numbers: whether the load generator limited the run
(then its numbers describe the client, not the server) and which figures rest on too few
samples to trust."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import streamlit as st

CLIENT_LIMITED = "These results were limited by the load generator, not the server:"


def client_health(client: Mapping[str, Any] | None) -> None:
    """A prominent error when the load generator limited the run; otherwise one line on its
    health. Runs from before servescope watched its own load generator carry nothing."""
    if not client:
        return
    numbers = client_numbers(client)
    if client.get("limited_by_client"):
        reasons = client.get("reasons") or ["(no reason recorded)"]
        st.error("\n".join([CLIENT_LIMITED, *(f"- {r}" for r in reasons)]))
        if numbers:
            advice = client.get("advice") or (
                "Rerun with fewer users per process, or spread the load over more processes "
                "or machines.")
            st.caption(f"Load generator: {numbers}. {advice}")
    elif numbers:
        st.caption(f"Load generator: {numbers}; it did not limit this run.")


def client_numbers(client: Mapping[str, Any]) -> str:
    """The load generator's own figures, e.g. "event-loop lag p99 1.2 ms, CPU max 35%"."""
    parts = []
    for key, stat, label, unit in (
        ("loop_lag_ms", "p99", "event-loop lag p99", " ms"),
        ("cpu_percent", "p90", "CPU p90", "% of a core"),
        ("send_lag_ms", "p99", "send lag p99", " ms"),
    ):
        value = (client.get(key) or {}).get(stat)
        if value is not None:
            parts.append(f"{label} {value:,.1f}{unit}")
    conns, peak = client.get("connections") or {}, client.get("peak_concurrency")
    if conns.get("peak_in_use") is not None and peak is not None:
        parts.append(f"{conns['peak_in_use']} connections in use at most, for {peak} "
                     "concurrent requests")
    return ", ".join(parts)


def merged_warnings(*sources: Mapping[str, Any] | None) -> list[str]:
    """The summaries' warnings, each once, in order (the recomputed summary and the one
    stored at the end of the run mostly say the same)."""
    seen: dict[str, None] = {}
    for source in sources:
        for text in (source or {}).get("warnings") or []:
            seen[str(text)] = None
    return list(seen)


def show_warnings(texts: Sequence[str]) -> None:
    if texts:
        st.warning("\n".join(f"- {t}" for t in texts))
