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

from servescope.analysis.compare import fmt as _fmt
from servescope.analysis.compare import manifest_table
from servescope.analysis.host_use import HOST_HEAD, host_cells
from servescope.dashboard.figures_compare import MARK, all_figures


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
                         _kv(s.get("server_window")),
                         {True: "met", False: "MISS", None: "–"}[c.get("slos_met")]])
    return rows


def _kv(window: dict[str, Any] | None) -> str:
    """KV headroom and queueing as the collector saw them during the level."""
    if not window:
        return "–"
    kv = window.get("kv_usage_max")
    return (f"{kv:.0%}" if kv is not None else "–") + " / " + _fmt(window.get("waiting_max"), 0)


LEVEL_HEAD = ["target", "level", "ok", "out tok/s", "TTFT p50", "TTFT p95", "ITL p95",
              "E2E p95", "goodput/s", "KV used max / waiting max", "SLOs"]
TOKEN_HEAD = ["target", "intended prompt", "server prompt", "intended output",
              "server output", "short prompts", "long prompts", "short outputs", "counted from"]


def token_rows(result: dict[str, Any]) -> list[list[str]]:
    return [[t["name"], _fmt(k["prompt_intended_mean"]), _fmt(k["prompt_usage_mean"]),
             _fmt(k["output_intended_mean"]), _fmt(k["output_usage_mean"]),
             f"{k['short_prompts']}/{k['requests']}",
             f"{k.get('long_prompts', 0)}/{k['requests']}",
             f"{k['short_outputs']}/{k['requests']}",
             ", ".join(k["count_sources"])] for t in result["targets"]
            for k in [t["tokens"]]]


HOST_NOTE = ("Host use during each level's load window, from the host collector (psutil, "
             "NVML). The host's CPU and memory include the load generator's own when it runs "
             "on the same machine; the server columns count only the serving processes "
             "(found by the port of a local target).")


def host_rows(result: dict[str, Any]) -> list[list[str]]:
    """Per target: one row per level, then one over all its levels."""
    rows = []
    for t in result["targets"]:
        for s in t["summaries"]:
            rows.append([t["name"], f"{s['level']:g}", *host_cells(s.get("host_use"))])
        if t["summaries"]:
            rows.append([t["name"], "all", *host_cells(t.get("host_use"))])
    return rows


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
    failed = [t for t in result["targets"] if t.get("error")]
    lines += [f"**{t['name']} was not measured**: {t['error']}" for t in failed]
    lines += [""] if failed else []
    lines += ["## Verdict", ""]
    for case, label in (("interactive", "Interactive"), ("batch", "Batch"),
                        ("many_users", "Many users")):
        lines.append(f"- **{label}**: {result['verdicts'][case]['text']}")
    lines += ["", "Where each stops scaling:", ""]
    lines += [f"- {n}: {result['scaling'][n]['text']}" for n in names if n in result["scaling"]]
    lines += ["", "## Artifact manifests", ""]
    manifests = {t["name"]: t["manifest"] for t in result["targets"]}
    lines += _md_table(["field", *names, ""], manifest_table(manifests))
    lines += ["", f"## Results per {result['kind']}", ""]
    lines += _md_table(LEVEL_HEAD, level_rows(result))
    lines += ["", "## Host use: CPU, memory, GPU", "", HOST_NOTE, ""]
    lines += _md_table(["target", "level", *HOST_HEAD], host_rows(result))
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
    for t in result["targets"]:
        if t.get("error"):
            parts.append(f"<p class='warn'><b>{html.escape(t['name'])} was not measured</b>: "
                         f"{html.escape(t['error'])}</p>")
    verdict = "".join(f"<li><b>{label}</b>: {html.escape(result['verdicts'][c]['text'])}</li>"
                      for c, label in (("interactive", "Interactive"), ("batch", "Batch"),
                                       ("many_users", "Many users")))
    scaling = "".join(f"<li>{html.escape(n)}: {html.escape(result['scaling'][n]['text'])}</li>"
                      for n in names if n in result["scaling"])
    parts.append(f"<h2>Verdict</h2><ul>{verdict}</ul><p>Where each stops scaling:</p>"
                 f"<ul>{scaling}</ul>")
    manifests = {t["name"]: t["manifest"] for t in result["targets"]}
    parts.append("<h2>Artifact manifests</h2>"
                 + _html_table(["field", *names, ""], manifest_table(manifests), True))
    for i, fig in enumerate(all_figures(result["targets"], result["kind"], marked)):
        parts.append(pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0)))
    parts.append(f"<h2>Results per {html.escape(result['kind'])}</h2>"
                 + _html_table(LEVEL_HEAD, level_rows(result)))
    parts.append(f"<h2 id='host-use'>Host use: CPU, memory, GPU</h2><p>{html.escape(HOST_NOTE)}"
                 "</p>" + _html_table(["target", "level", *HOST_HEAD], host_rows(result)))
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
