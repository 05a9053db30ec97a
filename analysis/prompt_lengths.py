"""How each request's prompt length was obtained and how close it came to the scenario's:
the summary's `prompt_lengths` section, its CLI line and the Run page's table. Pure: the
dashboard imports it without the load generator."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from servescope.core.records import RequestRecord

SOURCE_LABELS = {
    "server_tokenizer": "the server's tokenizer, before the run",
    "local_tokenizer": "the local tokenizer (--tokenizer)",
    "estimate": "estimated from lengths calibrated before the run",
    "unknown": "not recorded (an older run)",
}


def prompt_length_summary(records: list[RequestRecord]) -> dict[str, Any]:
    """How each request's prompt length was obtained, and how close the server's count
    (usage prompt_tokens) came to the scenario's target: over all requests with both, and
    per source."""
    sources = Counter(r.prompt_length_source or "unknown" for r in records)
    compared = [r for r in records
                if r.prompt_tokens is not None and r.target_prompt_tokens is not None]
    out: dict[str, Any] = {"sources": dict(sources), **_closeness(compared)}
    out["by_source"] = {
        source: _closeness([r for r in compared if (r.prompt_length_source or "unknown")
                            == source])
        for source in sorted(sources)}
    return out


def _closeness(records: list[RequestRecord]) -> dict[str, Any]:
    errors = [r.prompt_tokens - r.target_prompt_tokens  # type: ignore[operator]
              for r in records]
    if not errors:
        return {"compared": 0, "exact": 0, "exact_share": None, "mean_abs_error": None,
                "max_abs_error": None, "mean_error": None}
    absolute = [abs(e) for e in errors]
    return {
        "compared": len(errors),
        "exact": absolute.count(0),
        "exact_share": absolute.count(0) / len(errors),
        "mean_abs_error": statistics.fmean(absolute),
        "max_abs_error": max(absolute),
        "mean_error": statistics.fmean(errors),  # > 0: prompts came out longer
    }


def prompt_length_line(section: dict[str, Any] | None) -> str | None:
    """One line for the CLI: which sources, and how close the lengths came."""
    if not section or not section.get("compared"):
        return None
    sources = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in section["sources"].items())
    return (f"prompt lengths ({sources}): {100 * section['exact_share']:.0f}% exactly the "
            f"scenario's, mean abs error {section['mean_abs_error']:.1f} tokens, max "
            f"{section['max_abs_error']}")

