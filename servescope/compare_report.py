"""`servescope compare --out DIR`: compare.json, report.md and a self-contained report.html
(plotly.js inline: the file opens anywhere, offline, and can be attached to a decision).

Mismatch warnings come first, plainly; every number of a target they affect carries "†".
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import plotly.io as pio

from servescope.dashboard.figures_compare import MARK, all_figures

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


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x, 2)}" for k, x in v.items()) or "–"
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
        rows.append([label, *[_fmt(m.get(key)) for m in manifests.values()],
                     "≠" if key in diff else ""])
    host = [m.get("host") or {} for m in manifests.values()]
    rows.append(["host", *[f"{h.get('cores_logical')} cores, "
                           f"{(h.get('memory_bytes') or 0) / 2**30:.0f} GiB, "
                           f"{len(h.get('gpus') or [])} GPU" for h in host], ""])
    return rows


def level_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per target and level; a marked target's numbers carry the mark."""
    marked = result.get("marked") or {}
    rows = []
    for t in result["targets"]:
        mark = MARK.strip() if t["name"] in marked else ""
        for s, c in zip(t["summaries"], t["curve"], strict=False):
            def p(metric: str, q: str, s: dict[str, Any] = s, mark: str = mark) -> str:
                return _fmt((s.get(metric) or {}).get(q), 0) + mark
            rows.append([t["name"], f"{s['level']:g}", f"{s.get('requests_ok')}",
                         _fmt(s.get("output_tokens_per_s")) + mark,
                         p("ttft_ms", "p50"), p("ttft_ms", "p95"), p("itl_ms", "p95"),
                         p("e2e_ms", "p95"), _fmt(c.get("goodput_per_s"), 2) + mark,
                         {True: "met", False: "MISS", None: "–"}[c.get("slos_met")]])
    return rows


LEVEL_HEAD = ["target", "level", "ok", "out tok/s", "TTFT p50", "TTFT p95", "ITL p95",
              "E2E p95", "goodput/s", "SLOs"]
TOKEN_HEAD = ["target", "intended prompt", "server prompt", "intended output",
              "server output", "short prompts", "short outputs", "counted from"]


def token_rows(result: dict[str, Any]) -> list[list[str]]:
    return [[t["name"], _fmt(k["prompt_intended_mean"]), _fmt(k["prompt_usage_mean"]),
             _fmt(k["output_intended_mean"]), _fmt(k["output_usage_mean"]),
             f"{k['short_prompts']}/{k['requests']}", f"{k['short_outputs']}/{k['requests']}",
             ", ".join(k["count_sources"])] for t in result["targets"]
            for k in [t["tokens"]]]


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def render_markdown(result: dict[str, Any]) -> str:
    names = [t["name"] for t in result["targets"]]
    lines = [f"# Runtime comparison: {result['scenario']}", ""]
    warnings = result.get("warnings") or []
    if warnings:
        lines += ["## ⚠ Not like for like", ""]
        lines += [f"- **{w['kind']}**: {w['message']}" for w in warnings]
        lines += ["", f"Numbers marked {MARK.strip()} belong to a target these warnings "
                  "affect.", ""]
    else:
        lines += ["No manifest difference that changes the result was found.", ""]
    lines += ["## Verdict", ""]
    for case, label in (("interactive", "Interactive"), ("batch", "Batch"),
                        ("many_users", "Many users")):
        lines.append(f"- **{label}**: {result['verdicts'][case]['text']}")
    lines += ["", "Where each stops scaling:", ""]
    lines += [f"- {n}: {result['scaling'][n]['text']}" for n in names]
    lines += ["", "## Artifact manifests", ""]
    manifests = {t["name"]: t["manifest"] for t in result["targets"]}
    lines += _md_table(["field", *names, ""], manifest_table(manifests))
    lines += ["", f"## Results per {result['kind']}", ""]
    lines += _md_table(LEVEL_HEAD, level_rows(result))
    lines += ["", "## Tokens: the server's usage against the scenario's intent", ""]
    lines += _md_table(TOKEN_HEAD, token_rows(result))
    lines += ["", "## Request settings (the same for every target)", "",
              "```json", json.dumps(result["request_settings"], indent=2), "```", ""]
    return "\n".join(lines)


def _html_table(head: list[str], rows: list[list[str]], diff_col: bool = False) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        cls = ' class="diff"' if diff_col and r[-1] == "≠" else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
    return "\n".join([*out, "</table>"])


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
font-size:13px;text-align:left}tr.diff td{background:#fde2e1}.warn{background:#fff4e5;
border-left:4px solid #e15759;padding:.5em 1em}"""


def render_html(result: dict[str, Any]) -> str:
    """The report with its plots; plotly.js is included once, inline."""
    names = [t["name"] for t in result["targets"]]
    marked = set(result.get("marked") or {})
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>servescope compare "
             f"{html.escape(result['scenario'])}</title><style>{CSS}</style></head><body>",
             f"<h1>Runtime comparison: {html.escape(result['scenario'])}</h1>"]
    warnings = result.get("warnings") or []
    if warnings:
        items = "".join(f"<li><b>{html.escape(w['kind'])}</b>: {html.escape(w['message'])}"
                        "</li>" for w in warnings)
        parts.append(f"<div class='warn' id='warnings'><h2>Not like for like</h2><ul>{items}"
                     f"</ul><p>Numbers marked {MARK.strip()} belong to a target these "
                     "warnings affect.</p></div>")
    verdict = "".join(f"<li><b>{label}</b>: {html.escape(result['verdicts'][c]['text'])}</li>"
                      for c, label in (("interactive", "Interactive"), ("batch", "Batch"),
                                       ("many_users", "Many users")))
    scaling = "".join(f"<li>{html.escape(n)}: {html.escape(result['scaling'][n]['text'])}</li>"
                      for n in names)
    parts.append(f"<h2>Verdict</h2><ul>{verdict}</ul><p>Where each stops scaling:</p>"
                 f"<ul>{scaling}</ul>")
    manifests = {t["name"]: t["manifest"] for t in result["targets"]}
    parts.append("<h2>Artifact manifests</h2>"
                 + _html_table(["field", *names, ""], manifest_table(manifests), True))
    for i, fig in enumerate(all_figures(result["targets"], result["kind"], marked)):
        parts.append(pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0)))
    parts.append(f"<h2>Results per {html.escape(result['kind'])}</h2>"
                 + _html_table(LEVEL_HEAD, level_rows(result)))
    parts.append("<h2>Tokens: the server's usage against the scenario's intent</h2>"
                 + _html_table(TOKEN_HEAD, token_rows(result)))
    parts.append("<h2>Request settings (the same for every target)</h2><pre>"
                 + html.escape(json.dumps(result["request_settings"], indent=2)) + "</pre>")
    return "\n".join([*parts, "</body></html>"])


def write_report(result: dict[str, Any], out: Path) -> list[Path]:
    """compare.json, report.md and report.html in `out` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"compare.json": json.dumps(result, indent=2, default=str),
             "report.md": render_markdown(result), "report.html": render_html(result)}
    paths = []
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
        paths.append(out / name)
    return paths
