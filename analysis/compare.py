"""Reading a runtime comparison: which differences between the targets' artifact manifests
change the result, whether each server's own token counts match what the scenario asked
for, where each target stops scaling, and a verdict per use case. Pure functions over
manifests (collectors/manifest.py), per-level sweep rows (analysis/sweep.py) and per-request
token counts; no I/O.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from servescope.analysis.sweep import saturation_level

# A prompt the server counted shorter than this share of the intended length was cut
# (by the server's context limit) or sized wrongly: either way the runs differ.
PROMPT_SHORT_RATIO = 0.9
# ... and longer than this share: sized without the server's tokenizer (an estimate).
PROMPT_LONG_RATIO = 1.1
# Serial service: throughput grows less than this much over the sweep ...
SERIAL_MAX_THROUGHPUT_GAIN = 0.25
# ... while TTFT p95 grows by at least this share of the concurrency's growth.
SERIAL_MIN_TTFT_GROWTH = 0.5

# The numbers each kind of difference makes incomparable.
AFFECTS = {
    "weights_format": ["throughput", "latency"],
    "quantization": ["throughput", "latency", "quality"],
    "context_effective": ["prompt tokens", "throughput", "latency"],
    "chat_template_sha256": ["prompt tokens", "output"],
    "tokenizer": ["prompt tokens", "output tokens", "tokens/s"],
    "parameters": ["throughput", "latency", "quality"],
}
LABELS = {
    "weights_format": "weights format",
    "quantization": "quantization",
    "context_effective": "context length per request",
    "chat_template_sha256": "chat template",
    "tokenizer": "tokenizer",
    "parameters": "parameter count",
}
_DTYPES = {"float32": "f32", "fp32": "f32", "f32": "f32", "float16": "f16", "fp16": "f16",
           "f16": "f16", "half": "f16", "bfloat16": "bf16", "bf16": "bf16"}


def normalize_quantization(value: Any) -> str | None:
    """F32 (GGUF), float32 (a checkpoint's torch_dtype) and fp32 name the same thing."""
    if value in (None, "", "unknown"):
        return None
    text = str(value).strip().lower()
    return _DTYPES.get(text, text)


def _field_value(manifest: dict[str, Any], field: str) -> Any:
    value = manifest.get(field)
    if field == "quantization":
        return normalize_quantization(value)
    if field == "parameters" and isinstance(value, str):
        return None  # "134K" from Ollama's details: too coarse to compare
    return value


def manifest_mismatches(manifests: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Differences between the targets' manifests that change the result. A field known on
    some targets and not exposed by others is reported too (kind "unverified"): the
    comparison can't prove those equal."""
    out: list[dict[str, Any]] = []
    for field, label in LABELS.items():
        values = {name: _field_value(m, field) for name, m in manifests.items()}
        if field == "chat_template_sha256" and _template_formats(manifests, values) > 1:
            out.append(_templates_apart(manifests, values))
            continue
        known = {n: v for n, v in values.items() if v is not None}
        if len(set(map(str, known.values()))) > 1:
            # compared normalized (F32 = float32), shown as each server spelled it
            shown = ", ".join(f"{n}: {_short(field, manifests[n].get(field))}"
                              for n in values)
            out.append({"field": field, "kind": "differs", "targets": sorted(known),
                        "values": values, "affects": AFFECTS[field],
                        "message": f"{label} differs ({shown}): {', '.join(AFFECTS[field])} "
                                   "are not like for like"})
        elif known and len(known) < len(values) and field in (
                "quantization", "chat_template_sha256", "context_effective"):
            unknown = sorted(set(values) - set(known))
            out.append({"field": field, "kind": "unverified", "targets": unknown,
                        "values": values, "affects": AFFECTS[field],
                        "message": f"{label}: not exposed by {', '.join(unknown)}; cannot be "
                                   "shown equal to the others'"})
    return out


def _template_formats(manifests: dict[str, dict[str, Any]], values: dict[str, Any]) -> int:
    return len({manifests[n].get("chat_template_format") for n, v in values.items() if v})


def _templates_apart(manifests: dict[str, dict[str, Any]], values: dict[str, Any]
                     ) -> dict[str, Any]:
    """Templates in different languages (Ollama's Go template, a Jinja one) can't be shown
    equal by their hashes; within one language they still must match."""
    groups: dict[str, set[str]] = {}
    for n, v in values.items():
        if v:
            groups.setdefault(str(manifests[n].get("chat_template_format")), set()).add(v)
    differs = [f for f, hashes in groups.items() if len(hashes) > 1]
    shown = ", ".join(f"{n}: {manifests[n].get('chat_template_format')} "
                      f"{_short('chat_template_sha256', v)}" for n, v in values.items())
    if differs:
        return {"field": "chat_template_sha256", "kind": "differs",
                "targets": sorted(n for n, v in values.items() if v), "values": values,
                "affects": AFFECTS["chat_template_sha256"],
                "message": f"chat template differs ({shown}): "
                           f"{', '.join(AFFECTS['chat_template_sha256'])} are not like for like"}
    return {"field": "chat_template_sha256", "kind": "unverified",
            "targets": sorted(n for n, v in values.items() if v), "values": values,
            "affects": AFFECTS["chat_template_sha256"],
            "message": f"chat templates in different languages ({shown}): their hashes "
                       "can't show them equal; compare the prompt tokens below"}


def _short(field: str, value: Any) -> str:
    if value is None:
        return "unknown"
    if field == "chat_template_sha256":
        return str(value)[:12]
    return str(value)


def token_stats(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per target: the server's usage against the scenario's intended lengths. `rows` are
    successful requests' {prompt_tokens, target_prompt_tokens, output_tokens,
    target_output_tokens, token_count_source}."""
    rows = list(rows)

    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return statistics.fmean(vals) if vals else None

    short_prompts = sum(1 for r in rows if r.get("prompt_tokens") is not None
                        and r.get("target_prompt_tokens")
                        and r["prompt_tokens"] < PROMPT_SHORT_RATIO * r["target_prompt_tokens"])
    long_prompts = sum(1 for r in rows if r.get("prompt_tokens") is not None
                       and r.get("target_prompt_tokens")
                       and r["prompt_tokens"] > PROMPT_LONG_RATIO * r["target_prompt_tokens"])
    short_outputs = sum(1 for r in rows if r.get("output_tokens") is not None
                        and r.get("target_output_tokens")
                        and r["output_tokens"] < r["target_output_tokens"])
    long_outputs = sum(1 for r in rows if r.get("output_tokens") is not None
                       and r.get("target_output_tokens")
                       and r["output_tokens"] > r["target_output_tokens"])
    return {
        "requests": len(rows),
        "prompt_intended_mean": mean("target_prompt_tokens"),
        "prompt_usage_mean": mean("prompt_tokens"),
        "output_intended_mean": mean("target_output_tokens"),
        "output_usage_mean": mean("output_tokens"),
        "prompt_usage_total": sum(r.get("prompt_tokens") or 0 for r in rows),
        "output_usage_total": sum(r.get("output_tokens") or 0 for r in rows),
        "short_prompts": short_prompts,
        "long_prompts": long_prompts,
        "short_outputs": short_outputs,
        "long_outputs": long_outputs,
        "count_sources": sorted({str(r.get("token_count_source")) for r in rows}),
    }


def token_warnings(stats: dict[str, dict[str, Any]],
                   manifests: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """A prompt cut by the server, or answers shorter than asked (EOS not ignored), make
    that target's tokens/s mean something else than the others'."""
    out = []
    for name, s in stats.items():
        ctx = (manifests.get(name) or {}).get("context_effective")
        if s["short_prompts"]:
            why = (f" (intended prompts reach the server's context of {ctx} tokens: "
                   "truncated by the server)" if ctx and s["prompt_intended_mean"]
                   and s["prompt_intended_mean"] >= 0.5 * ctx else "")
            out.append({"field": "prompt_tokens", "kind": "truncated", "targets": [name],
                        "affects": ["prompt tokens", "TTFT", "throughput"],
                        "message": f"{name}: {s['short_prompts']} of {s['requests']} prompts "
                                   f"counted by the server below {PROMPT_SHORT_RATIO:.0%} of "
                                   f"the intended length{why}"})
        if s.get("long_prompts"):
            out.append({"field": "prompt_tokens", "kind": "long", "targets": [name],
                        "affects": ["prompt tokens", "TTFT", "throughput"],
                        "message": f"{name}: {s['long_prompts']} of {s['requests']} prompts "
                                   f"counted by the server above {PROMPT_LONG_RATIO:.0%} of the "
                                   f"intended length (mean {s['prompt_usage_mean']:.0f} vs "
                                   f"{s['prompt_intended_mean']:.0f}): sized without this "
                                   "server's tokenizer; give --tokenizer, or compare TTFT "
                                   "knowing its prompts are longer"})
        if s["short_outputs"]:
            out.append({"field": "output_tokens", "kind": "short", "targets": [name],
                        "affects": ["output tokens", "tokens/s", "E2E"],
                        "message": f"{name}: {s['short_outputs']} of {s['requests']} answers "
                                   "shorter than the intended output length (the server "
                                   "stopped at EOS or a limit)"})
        if "usage" not in s["count_sources"] and s["requests"]:
            out.append({"field": "token_count_source", "kind": "counted", "targets": [name],
                        "affects": ["tokens/s"],
                        "message": f"{name}: no usage from the server; tokens counted as "
                                   f"{', '.join(s['count_sources'])}"})
    return out


def stops_scaling(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Where a target stops scaling: the saturation level (analysis/sweep.py) and whether
    it serves one request at a time (flat throughput, TTFT growing with concurrency)."""
    usable = [r for r in rows if r.get("output_tokens_per_s") and r.get("ttft_p95_ms")]
    serial = False
    if len(usable) >= 2:
        first, last = usable[0], usable[-1]
        level_growth = last["level"] / first["level"] - 1
        gain = last["output_tokens_per_s"] / first["output_tokens_per_s"] - 1
        ttft_growth = last["ttft_p95_ms"] / first["ttft_p95_ms"] - 1
        serial = (level_growth > 0 and gain < SERIAL_MAX_THROUGHPUT_GAIN
                  and ttft_growth >= SERIAL_MIN_TTFT_GROWTH * level_growth)
    sat = saturation_level(list(rows))
    if serial:
        text = ("no gain from concurrency: throughput flat while TTFT grows with it, as when "
                "requests are served one at a time (or the host's CPU is saturated)")
    elif sat is not None:
        text = f"stops scaling after level {sat:g}"
    else:
        text = "still scaling at the highest level tried"
    return {"saturation_level": sat, "serial": serial, "text": text}


def verdicts(curves: dict[str, list[dict[str, Any]]], kind: str = "concurrency"
             ) -> dict[str, dict[str, Any]]:
    """One line per use case. Interactive: the lowest TTFT p95 among levels meeting the
    SLOs. Batch: the highest output tokens/s at any level without failures. Many users:
    the highest level meeting the SLOs. A scenario without SLOs reads "meeting the SLOs"
    as "without failed requests", and the text says so."""
    all_rows = [r for rows in curves.values() for r in rows]
    no_slos = all(r.get("slos_met") is None for r in all_rows)
    within = "without failures (the scenario sets no SLOs)" if no_slos else "within the SLOs"

    def ok(r: dict[str, Any]) -> bool:
        return not r.get("requests_failed") and (no_slos or bool(r.get("slos_met")))

    interactive: tuple[float, str, float] | None = None
    batch: tuple[float, str, float] | None = None
    many: tuple[float, str] | None = None
    for name, rows in curves.items():
        for r in rows:
            if ok(r) and r.get("ttft_p95_ms") is not None and (
                    interactive is None or r["ttft_p95_ms"] < interactive[0]):
                interactive = (r["ttft_p95_ms"], name, r["level"])
            if not r.get("requests_failed") and r.get("output_tokens_per_s") and (
                    batch is None or r["output_tokens_per_s"] > batch[0]):
                batch = (r["output_tokens_per_s"], name, r["level"])
        best = None
        for r in rows:  # levels above the first miss are not trusted
            if not ok(r):
                break
            best = r["level"]
        if best is not None and (many is None or best > many[0]):
            many = (best, name)
        elif best is not None and best == many[0]:  # a tie: name every target that reached it
            many = (best, f"{many[1]}, {name}")
    none = {"target": None, "level": None, "text": f"no target served any level {within}"}
    return {
        "interactive": {"target": interactive[1], "level": interactive[2],
                        "text": f"{interactive[1]} at {kind} {interactive[2]:g}: TTFT p95 "
                                f"{interactive[0]:.0f} ms, {within}"}
        if interactive else none,
        "batch": {"target": batch[1], "level": batch[2],
                  "text": f"{batch[1]} at {kind} {batch[2]:g}: {batch[0]:.1f} output tokens/s"}
        if batch else {"target": None, "level": None, "text": "no level finished cleanly"},
        "many_users": {"target": many[1], "level": many[0],
                       "text": f"{many[1]}: up to {kind} {many[0]:g} {within}"}
        if many else none,
    }


def affected_targets(warnings: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Target -> the warning messages that mark its numbers."""
    marks: dict[str, list[str]] = {}
    for w in warnings:
        if w["kind"] == "unverified":
            continue
        for t in w["targets"]:
            marks.setdefault(t, []).append(w["message"])
    return marks


def comparison(manifests: dict[str, dict[str, Any]], curves: dict[str, list[dict[str, Any]]],
               stats: dict[str, dict[str, Any]], kind: str = "concurrency") -> dict[str, Any]:
    """Everything the report shows that is computed, not measured."""
    warnings = manifest_mismatches(manifests) + token_warnings(stats, manifests)
    return {
        "warnings": warnings,
        "marked": affected_targets(warnings),
        "scaling": {name: stops_scaling(rows) for name, rows in curves.items()},
        "verdicts": verdicts(curves, kind),
    }


# -- manifests side by side (report.md, report.html, the dashboard's Compare page) ------
MANIFEST_ROWS = (
    ("runtime", "runtime"), ("runtime_version", "version"), ("model", "model id"),
    ("weights_format", "weights format"), ("weights_digest", "weights digest"),
    ("quantization", "quantization"), ("parameters", "parameters"),
    ("context_configured", "context (configured)"),
    ("context_effective", "context per request (effective)"),
    ("context_train", "context (trained)"), ("kv_capacity_tokens", "KV capacity (tokens)"),
    ("chat_template_sha256", "chat template sha256"), ("tokenizer", "tokenizer"),
    ("sampling_defaults", "sampling defaults"), ("concurrency_knob", "concurrency knob"),
    ("concurrency_value", "concurrency (as reported)"),
)


def fmt(v: Any, digits: int = 1) -> str:
    """A manifest or table value as shown: None as a dash, floats rounded."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={fmt(x, 2)}" for k, x in v.items()) or "–"
    return str(v)


def differing_fields(manifests: dict[str, dict[str, Any]]) -> set[str]:
    """Manifest rows whose values are not all the same (highlighted in both reports)."""
    out = set()
    for key, _ in MANIFEST_ROWS:
        values = {json.dumps(m.get(key), sort_keys=True, default=str) for m in manifests.values()}
        if len(values) > 1:
            out.add(key)
    return out


def manifest_table(manifests: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Rows [field, value per target, "≠" when they differ]."""
    diff = differing_fields(manifests)
    rows = []
    for key, label in MANIFEST_ROWS:
        rows.append([label, *[fmt(m.get(key)) for m in manifests.values()],
                     "≠" if key in diff else ""])
    host = [m.get("host") or {} for m in manifests.values()]
    rows.append(["host", *[f"{h.get('cores_logical')} cores, "
                           f"{(h.get('memory_bytes') or 0) / 2**30:.0f} GiB, "
                           f"{len(h.get('gpus') or [])} GPU" for h in host], ""])
    return rows
