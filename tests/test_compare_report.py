"""The comparison's reading (analysis/compare.py) and its rendering (compare_report.py) on
hand-made inputs: mismatch warnings, token checks, scaling, verdicts, the three files."""

from __future__ import annotations

import json

from servescope.analysis.compare import (
    comparison,
    differing_fields,
    manifest_mismatches,
    normalize_quantization,
    stops_scaling,
    token_stats,
    token_warnings,
    verdicts,
)
from servescope.compare_report import render_markdown, write_report


def manifest(**kw):
    base = {"runtime": "vllm", "weights_format": "safetensors", "quantization": "float32",
            "context_effective": 2048, "chat_template_sha256": "aa", "tokenizer": None,
            "parameters": None, "model": "m", "host": {"cores_logical": 2, "gpus": []}}
    return base | kw


def row(level, tps, ttft, e2e=None, met=True, failed=0, goodput=None):
    return {"level": level, "output_tokens_per_s": tps, "ttft_p95_ms": ttft,
            "e2e_p95_ms": e2e if e2e is not None else ttft * 2, "slos_met": met,
            "requests_failed": failed, "requests_ok": 6, "goodput_per_s": goodput,
            "itl_p95_ms": 5.0, "requests_per_s": 1.0, "client_limited": False}


def test_same_artifacts_no_warning_and_f32_equals_float32():
    assert normalize_quantization("F32") == normalize_quantization("float32") == "f32"
    ms = {"a": manifest(), "b": manifest(quantization="F32")}
    assert manifest_mismatches(ms) == []


def test_format_quantization_context_template_differences_fire():
    ms = {"v": manifest(),
          "o": manifest(weights_format="gguf", quantization="Q4_K_M", context_effective=512,
                        chat_template_sha256="bb")}
    fields = {w["field"]: w for w in manifest_mismatches(ms)}
    assert set(fields) == {"weights_format", "quantization", "context_effective",
                           "chat_template_sha256"}
    assert "safetensors" in fields["weights_format"]["message"]
    assert "gguf" in fields["weights_format"]["message"]
    assert fields["context_effective"]["kind"] == "differs"


def test_a_differing_quantization_is_shown_as_each_server_spells_it():
    ms = {"f32": manifest(quantization="F32"), "q8": manifest(quantization="Q8_0")}
    (w,) = manifest_mismatches(ms)
    assert w["field"] == "quantization" and w["values"] == {"f32": "f32", "q8": "q8_0"}
    assert w["message"].startswith("quantization differs (f32: F32, q8: Q8_0)")


def test_unknown_on_one_side_is_unverified_not_equal():
    ms = {"v": manifest(quantization=None), "o": manifest(quantization="F32")}
    (w,) = manifest_mismatches(ms)
    assert w["kind"] == "unverified" and w["targets"] == ["v"]


def test_token_checks_find_truncated_prompts_and_short_answers():
    rows = [{"prompt_tokens": 512, "target_prompt_tokens": 900, "output_tokens": 10,
             "target_output_tokens": 16, "token_count_source": "usage"},
            {"prompt_tokens": 100, "target_prompt_tokens": 100, "output_tokens": 16,
             "target_output_tokens": 16, "token_count_source": "usage"}]
    s = token_stats(rows)
    assert s["short_prompts"] == 1 and s["short_outputs"] == 1 and s["requests"] == 2
    assert s["prompt_usage_total"] == 612 and s["output_usage_total"] == 26
    ws = token_warnings({"o": s}, {"o": {"context_effective": 512}})
    kinds = {w["kind"] for w in ws}
    assert kinds == {"truncated", "short"}
    assert "truncated by the server" in next(w for w in ws if w["kind"] == "truncated")[
        "message"]
    exact = token_stats(rows[1:])
    assert token_warnings({"v": exact}, {"v": {}}) == []


def test_serial_server_is_named_and_scaling_one_is_not():
    serial = [row(1, 100.0, 50.0), row(2, 104.0, 110.0), row(4, 103.0, 230.0)]
    scaling = [row(1, 100.0, 50.0), row(2, 190.0, 55.0), row(4, 350.0, 60.0)]
    assert stops_scaling(serial)["serial"] is True
    assert "one at a time" in stops_scaling(serial)["text"]
    s = stops_scaling(scaling)
    assert s["serial"] is False and s["saturation_level"] is None


def test_verdicts_per_use_case():
    curves = {"fast": [row(1, 100.0, 20.0), row(2, 150.0, 40.0, met=False)],
              "wide": [row(1, 80.0, 30.0), row(2, 160.0, 35.0), row(4, 300.0, 45.0)]}
    v = verdicts(curves)
    assert v["interactive"]["target"] == "fast" and v["interactive"]["level"] == 1
    assert v["batch"]["target"] == "wide" and v["batch"]["level"] == 4
    assert v["many_users"]["target"] == "wide" and v["many_users"]["level"] == 4
    none = verdicts({"a": [row(1, 10.0, 9.0, met=False)]})
    assert none["interactive"]["target"] is None


def result():
    ms = {"v": manifest(), "o": manifest(runtime="ollama", weights_format="gguf",
                                         context_effective=512)}
    curves = {"v": [row(1, 100.0, 20.0), row(2, 180.0, 25.0)],
              "o": [row(1, 50.0, 30.0), row(2, 51.0, 65.0)]}
    stats = {n: token_stats([{"prompt_tokens": 64, "target_prompt_tokens": 64,
                              "output_tokens": 16, "target_output_tokens": 16,
                              "token_count_source": "usage"}]) for n in ms}
    lat = {"p50": 10.0, "p95": 20.0, "p99": 30.0}
    targets = [{"name": n, "manifest": ms[n], "curve": curves[n], "tokens": stats[n],
                "status": "finished",
                "summaries": [{"level": r["level"], "requests_ok": 6,
                               "output_tokens_per_s": r["output_tokens_per_s"],
                               "ttft_ms": lat, "itl_ms": lat, "e2e_ms": lat,
                               "server_split": {"queue_ms": {"mean": 1.0},
                                                "prefill_ms": {"mean": 2.0},
                                                "decode_ms": {"mean": 3.0}}}
                              for r in curves[n]]} for n in ms]
    return {"schema": "servescope.compare/1", "scenario": "chat", "kind": "concurrency",
            "levels": [1, 2], "request_settings": {"api": "openai-chat"},
            "targets": targets, **comparison(ms, curves, stats)}


def test_report_files_warn_first_and_mark_numbers(tmp_path):
    r = result()
    assert differing_fields({t["name"]: t["manifest"] for t in r["targets"]}) >= {
        "runtime", "weights_format", "context_effective"}
    md = render_markdown(r)
    warn_at, verdict_at = md.index("Not like for like"), md.index("## Verdict")
    assert warn_at < verdict_at  # the warnings come first
    assert "weights format differs" in md and "†" in md
    assert "o: no gain from concurrency" in md
    paths = write_report(r, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["compare.json", "report.html", "report.md"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "plotly" in html.lower() and "<script src=" not in html  # plotly.js inline
    assert "Throughput" in html and "Server-side split" in html and 'class="diff"' in html
    assert json.loads((tmp_path / "out" / "compare.json").read_text())["warnings"]


def test_without_slos_verdicts_read_failures_and_say_so():
    curves = {"a": [row(1, 50.0, 10.0, met=None), row(2, 90.0, 12.0, met=None)],
              "b": [row(1, 40.0, 20.0, met=None), row(2, 60.0, 25.0, met=None, failed=1)]}
    v = verdicts(curves)
    assert v["interactive"]["target"] == "a" and "sets no SLOs" in v["interactive"]["text"]
    assert v["many_users"] == {"target": "a", "level": 2,
                               "text": v["many_users"]["text"]}


def test_prompts_longer_than_intended_are_flagged():
    s = token_stats([{"prompt_tokens": 279, "target_prompt_tokens": 64, "output_tokens": 16,
                      "target_output_tokens": 16, "token_count_source": "usage"}])
    assert s["long_prompts"] == 1 and s["short_prompts"] == 0
    (w,) = token_warnings({"o": s}, {"o": {}})
    assert w["kind"] == "long" and "--tokenizer" in w["message"] and "279 vs 64" in w["message"]


def test_templates_in_different_languages_are_unverified_not_different():
    go = manifest(chat_template_sha256="g1", chat_template_format="go")
    jinja = manifest(chat_template_sha256="j1", chat_template_format="jinja")
    (w,) = manifest_mismatches({"o": go, "l": jinja})
    assert w["kind"] == "unverified" and "different languages" in w["message"]
    other = manifest(chat_template_sha256="j2", chat_template_format="jinja")
    (w,) = manifest_mismatches({"o": go, "l": jinja, "v": other})
    assert w["kind"] == "differs"  # two Jinja templates that are not the same text
