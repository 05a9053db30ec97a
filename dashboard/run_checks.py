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


# -- physics: decode's memory-bandwidth use (capacity/physics.py) -------------------------
def physics_check(summary: Mapping[str, Any], manifest: Mapping[str, Any] | None,
                  gpu_names: Sequence[str], bandwidth_gbs: float | None = None
                  ) -> dict[str, Any] | None:
    """capacity.physics.summary_check of the run where the model (the served folder, when
    it is on this machine) and the hardware (the GPU NVML named, or a CPU's given
    bandwidth) are known; None otherwise."""
    from servescope.capacity.physics import resolve, summary_check

    info, hw, _ = resolve(None, (manifest or {}).get("model_path"), None, bandwidth_gbs,
                          list(gpu_names))
    if info is None or hw is None:
        return None
    try:
        return summary_check(dict(summary), info, hw)
    except (ValueError, KeyError):
        return None


def decode_physics(store: Any, run: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
    """One line on the memory bandwidth decode achieved; a warning when the run beats the
    physical bound (prefix caching, speculative decoding, or a measurement error)."""
    from servescope.analysis.sweep_evidence import host_gpu_names

    end = run.get("ended_at") or run["started_at"]
    check = physics_check(summary, store.run_manifest(run["id"]),
                          host_gpu_names(store, run["started_at"] - 60, end + 60))
    if check is None:
        return
    text = f"Physics: {check['line']}."
    if check["beats_bound"]:
        st.warning(text)
    else:
        st.caption(text)
