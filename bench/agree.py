"""Agreement with the peers on the real vLLM CPU server (issue 8, section 2).

One vLLM CPU server (servescope.engines.vllm_cpu, on every CPU but the last) serves the same
fixed workload to servescope, `vllm bench serve` and GuideLLM in turn, each pinned to the CPU
left over: chat completions, a fixed prompt length (server-counted, chat template included),
a fixed output length with ignore_eos, closed loop at a fixed concurrency, a fixed request
count. The tools take turns (the order rotates every round) so a drift of the server or of
the machine falls on all of them alike. Every run uses its own seed, drawn afresh for each
invocation (--seed repeats one): with vLLM's prefix cache on, a prompt the server has seen
before, in this invocation or an earlier one against the same --target, would skip its
prefill.

Each tool's own reported figures are compared: TTFT, TPOT and ITL p50/p99, output tokens/s.
Per metric: servescope's median over its runs, the peer's, their ratio, and each tool's own
run-to-run spread (SPREAD_DEFINITION). A ratio agrees when it lies inside the larger spread.

The server's /metrics counters, read before and after every run, say what reached it:
requests, prompt tokens per request (the check that both tools sent the same prompt length),
generation tokens per request and prefix-cache hits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.agree_report import (
    GUIDE,
    METRICS,
    OURS,
    SPREAD_DEFINITION,
    VLLM,
    Config,
    Run,
    report,
    verdict,
)
from bench.peers import (
    TINY_MODEL,
    ensure_guidellm,
    failure,
    guidellm,
    pin,
    vllm_bench,
    vllm_missing,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
COUNTERS = {  # /metrics sample -> key (summed over labels)
    "vllm:request_success_total": "requests",
    "vllm:prompt_tokens_total": "prompt_tokens",
    "vllm:generation_tokens_total": "generation_tokens",
    "vllm:prefix_cache_hits_total": "prefix_cache_hit_tokens",
}


# -- the server's own count ------------------------------------------------------------
def counters(url: str) -> dict[str, float]:
    """The /metrics counters in COUNTERS, summed over their labels."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = dict.fromkeys(COUNTERS.values(), 0.0)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in COUNTERS:
                out[COUNTERS[s.name]] += s.value
    return out


def template_tokens(url: str, model: str) -> int:
    """Tokens the chat template adds around an empty user message (the server's /tokenize,
    asked once before any run): the peers size the user's text, servescope the whole prompt."""
    r = httpx.post(f"{url}/tokenize", json={"model": model, "messages": [
        {"role": "user", "content": ""}]}, timeout=30)
    r.raise_for_status()
    return int(r.json()["count"])


def warm_up(url: str, model: str, n: int = 2) -> None:
    """A few unmeasured requests, so that no tool's first run pays the server's first ones."""
    for i in range(n):
        httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": model, "max_tokens": 8, "messages": [
                {"role": "user", "content": f"warm up {i} " * 40}]}).raise_for_status()


# -- the tools ---------------------------------------------------------------------------
def run_ours(url: str, model: str, cfg: Config, run: Run, tmp: Path, cpus: list[int]) -> None:
    """servescope sizes its prompts with the server's own tokenizer before the measured
    window (loadgen/prepare.py), so nothing but the measured requests reach it during the run.
    Not --tokenizer: the tiny model's raw tokenizer.json counts digits differently from the
    tokenizer vLLM builds from it (transformers' Qwen2 pre-tokenizer)."""
    from servescope.core.store import Store

    scenario = tmp / f"ours-{run.index}.yaml"
    scenario.write_text(
        f"name: agree\nseed: {run.seed}\nprompt_tokens: {cfg.prompt_tokens}\n"
        f"output_tokens: {cfg.output_tokens}\n"
        f"stages:\n  - {{concurrency: {cfg.concurrency}, duration: 3600s}}\n"
        f"max_requests: {cfg.requests}\nrequest_timeout: 300s\n"
    )
    db, out = tmp / f"ours-{run.index}.db", tmp / f"ours-{run.index}.json"
    cmd = [sys.executable, "-m", "servescope.cli", "load", str(scenario), "--target", url,
           "--model", model, "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, env={**os.environ, "SERVESCOPE_DB": str(db)}, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=3600, preexec_fn=pin(cpus))
    if proc.returncode != 0 or not out.exists():
        run.note = failure(proc)
        return
    s = json.loads(out.read_text())
    for m in ("ttft", "tpot", "itl"):
        run.values[f"{m}_p50"], run.values[f"{m}_p99"] = s[f"{m}_ms"]["p50"], s[f"{m}_ms"]["p99"]
        run.samples[m] = s[f"{m}_ms"]["count"]
    run.values["output_tps"] = s["output_tokens_per_s"]
    if s["requests_failed"]:
        run.note = f"{s['requests_failed']} failed"
    with Store(db) as store:
        lens = [r.prompt_tokens for r in store.requests(s["run_id"])
                if r.ok and r.prompt_tokens is not None]
    run.usage_prompt_tokens = [min(lens), max(lens)] if lens else []


def run_vllm(url: str, model: str, cfg: Config, run: Run, tmp: Path, cpus: list[int]) -> None:
    if why := vllm_missing():
        run.note = f"not run: {why}"
        return
    name = f"vllm-{run.index}.json"
    proc = vllm_bench(
        ["--backend", "openai-chat", "--base-url", url, "--endpoint", "/v1/chat/completions",
         "--model", model, "--tokenizer", str(TINY_MODEL), "--dataset-name", "random",
         "--random-input-len", str(cfg.prompt_tokens - cfg.template_tokens),
         "--random-output-len", str(cfg.output_tokens), "--random-range-ratio", "0",
         "--num-prompts", str(cfg.requests), "--max-concurrency", str(cfg.concurrency),
         "--request-rate", "inf", "--ignore-eos", "--seed", str(run.seed),
         "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
         "--save-result", "--save-detailed", "--result-dir", str(tmp),
         "--result-filename", name, "--disable-tqdm"],
        tmp, cpus, timeout=3600,
    )
    if proc.returncode != 0 or not (tmp / name).exists():
        run.note = failure(proc)
        return
    d = json.loads((tmp / name).read_text())
    for m in ("ttft", "tpot", "itl"):
        run.values[f"{m}_p50"], run.values[f"{m}_p99"] = d[f"p50_{m}_ms"], d[f"p99_{m}_ms"]
    run.values["output_tps"] = d["output_throughput"]
    ok = [not e for e in d["errors"]]
    run.samples = {"ttft": sum(ok), "tpot": sum(o and n > 1 for o, n in zip(
        ok, d["output_lens"], strict=True)), "itl": sum(len(x) for x in d["itls"])}
    lens = [n for o, n in zip(ok, d["input_lens"], strict=True) if o]
    run.usage_prompt_tokens = [min(lens), max(lens)] if lens else []
    if d.get("failed"):
        run.note = f"{d['failed']} failed"


def run_guidellm(url: str, model: str, cfg: Config, run: Run, tmp: Path,
                 cpus: list[int]) -> None:
    if not TINY_MODEL.exists():
        run.note = f"not run: no tokenizer at {TINY_MODEL} (servescope engine install)"
        return
    if why := ensure_guidellm():
        run.note = f"not run: {why}"
        return
    out = tmp / f"guidellm-{run.index}.json"
    proc = guidellm(
        ["--backend", f"kind=openai_http,target={url},model={model},"
                      "request_format=/v1/chat/completions",
         "--profile", f"kind=concurrent,streams={cfg.concurrency}",
         "--data", f"kind=synthetic_text,prompt_tokens="
                   f"{cfg.prompt_tokens - cfg.template_tokens},output_tokens={cfg.output_tokens}",
         "--tokenizer", f"kind=hf_auto,model={TINY_MODEL}",
         "--constraint", f"kind=max_requests,count={cfg.requests}",
         "--seed", f"kind=static,value={run.seed}",
         "--output", f"kind=json,path={out}", "--disable-console"],
        cpus, timeout=3600,
    )
    if proc.returncode != 0 or not out.exists():
        run.note = failure(proc)
        return
    read_guidellm(json.loads(out.read_text())["benchmarks"][0], run)


def read_guidellm(bench: dict[str, Any], run: Run) -> None:
    """GuideLLM's own figures. Its `inter_token_latency_ms` is per request (last token -
    first token) / (output tokens - 1): our TPOT (its percentiles weight each request by its
    tokens, all equal here). It keeps no per-token times, so it has no ITL over every gap.
    Output tokens/s: its requests' output tokens / (last end - first start)."""
    metrics = bench["metrics"]
    for ours, theirs in (("ttft", "time_to_first_token_ms"), ("tpot", "inter_token_latency_ms")):
        dist = metrics[theirs]["successful"]
        run.values[f"{ours}_p50"] = dist["percentiles"]["p50"]
        run.values[f"{ours}_p99"] = dist["percentiles"]["p99"]
    ok = bench["requests"]["successful"]
    run.samples = {"ttft": metrics["time_to_first_token_ms"]["successful"]["count"],
                   "tpot": sum((r.get("output_tokens") or 0) > 1 for r in ok), "itl": 0}
    run.values["itl_p50"] = run.values["itl_p99"] = None
    out_tokens = sum(r.get("output_tokens") or 0 for r in ok)
    starts = [r["info"]["timings"]["request_start"] for r in ok]
    ends = [r["info"]["timings"]["request_end"] for r in ok]
    run.values["output_tps"] = out_tokens / (max(ends) - min(starts)) if ok else None
    lens = [r["prompt_tokens"] for r in ok if r.get("prompt_tokens") is not None]
    run.usage_prompt_tokens = [min(lens), max(lens)] if lens else []
    if failed := len(bench["requests"].get("errored") or []):
        run.note = f"{failed} failed"


# -- the rounds --------------------------------------------------------------------------
def measured(url: str, fn: Callable[[Run], None], run: Run) -> Run:
    """Run one tool, with the server's counters read around it."""
    before, t0 = counters(url), time.monotonic()
    fn(run)
    run.wall_s = time.monotonic() - t0
    after = counters(url)
    run.server = {k: after[k] - before[k] for k in before}
    n = run.server["requests"] or math.nan
    run.server["prompt_tokens_per_request"] = run.server["prompt_tokens"] / n
    run.server["generation_tokens_per_request"] = run.server["generation_tokens"] / n
    return run


def rounds(url: str, model: str, cfg: Config, cpus: list[int]) -> list[Run]:
    """cfg.runs rounds; each tool once per round, the order rotating, a fresh seed per run."""
    tools: list[tuple[str, Callable[[Run, Path], None]]] = [
        (OURS, lambda r, t: run_ours(url, model, cfg, r, t, cpus)),
        (VLLM, lambda r, t: run_vllm(url, model, cfg, r, t, cpus)),
    ]
    if cfg.guidellm:
        tools.append((GUIDE, lambda r, t: run_guidellm(url, model, cfg, r, t, cpus)))
    print("servescope sizes prompts with the server's tokenizer before the measured window")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="servescope-agree-") as tmpdir:
        tmp = Path(tmpdir)
        for i in range(cfg.runs):
            order = tools[i % len(tools):] + tools[:i % len(tools)]
            for name, fn in order:
                seed = cfg.seed + 10 * i + [n for n, _ in tools].index(name)  # never twice
                run = measured(url, lambda r, fn=fn: fn(r, tmp), Run(name, i, seed))
                runs.append(run)
                print(progress_line(run), flush=True)
    return runs


def progress_line(run: Run) -> str:
    v = run.values
    figures = ", ".join(f"{' '.join(METRICS[k])} {v[k]:.2f}" for k in METRICS
                        if v.get(k) is not None)
    srv = run.server
    return (f"  round {run.index + 1} {run.tool:17} {run.wall_s:6.1f}s  {figures or '-'}; "
            f"server: {srv['requests']:.0f} requests, {srv['prompt_tokens_per_request']:.1f} "
            f"prompt / {srv['generation_tokens_per_request']:.1f} output tokens each, "
            f"{srv['prefix_cache_hit_tokens']:.0f} prefix-cache hit tokens"
            f"{'; ' + run.note if run.note else ''}")


# -- the command -------------------------------------------------------------------------
def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench agree", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs per tool (default 3)")
    p.add_argument("--requests", type=int, default=48, help="requests per run (default 48)")
    p.add_argument("--prompt-tokens", type=int, default=256,
                   help="prompt length as the server counts it, template included (256)")
    p.add_argument("--output-tokens", type=int, default=64, help="output length (64)")
    p.add_argument("--concurrency", type=int, default=4, help="closed-loop users (4)")
    p.add_argument("--no-guidellm", action="store_true", help="leave GuideLLM out")
    p.add_argument("--seed", type=int, help="the first run's seed (default: random; "
                   "every run adds to it)")
    p.add_argument("--target", help="an already running vLLM server (default: start the "
                   "local vLLM CPU engine; with --target the tools are not pinned)")
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    args = p.parse_args(argv)
    for name in ("runs", "requests", "prompt_tokens", "output_tokens", "concurrency"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[2:] if argv is None else argv)
    cfg = Config(args.prompt_tokens, args.output_tokens, args.concurrency, args.requests,
                 args.runs, not args.no_guidellm,
                 seed=args.seed if args.seed is not None else random.randrange(1, 10**6))
    started, server = time.monotonic(), None
    load_before = os.getloadavg()
    try:
        if args.target:
            url, cpus = args.target.rstrip("/"), sorted(os.sched_getaffinity(0))
            model = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
        else:
            from servescope.engines.vllm_cpu import start_local_vllm

            server = start_local_vllm(progress=lambda m: print(m, flush=True))
            url, model = server.url, server.served_model_name
            cpus = sorted(os.sched_getaffinity(0) - set(server.cpus or [])) or \
                sorted(os.sched_getaffinity(0))
        cfg.template_tokens = template_tokens(url, model)
        if cfg.template_tokens >= cfg.prompt_tokens:
            raise SystemExit(f"--prompt-tokens {cfg.prompt_tokens} leaves no user text: the "
                             f"chat template alone is {cfg.template_tokens} tokens")
        warm_up(url, model)
        print(f"agreement on {url} (model {model}): prompt {cfg.prompt_tokens} tokens, output "
              f"{cfg.output_tokens} (ignore_eos), closed loop at {cfg.concurrency}, "
              f"{cfg.requests} requests, {cfg.runs} run(s) per tool in rotating order; tools "
              f"pinned to CPU {','.join(map(str, cpus))}; load average "
              f"{load_before[0]:.2f}", flush=True)
        runs = rounds(url, model, cfg, cpus)
    finally:
        if server is not None:
            server.stop()
    result = report(runs, cfg)
    line = verdict(result)
    elapsed = time.monotonic() - started
    print(f"\n{line}\n(took {elapsed:.0f} s; load average before {load_before[0]:.2f}, after "
          f"{os.getloadavg()[0]:.2f})")
    if args.out:
        args.out.write_text(json.dumps({
            "schema": "servescope.bench.agree/1", "config": asdict(cfg), "target": url,
            "model": model, "client_cpus": cpus, "spread_definition": SPREAD_DEFINITION,
            "runs": [asdict(r) for r in runs], **result, "verdict": line,
            "elapsed_s": elapsed, "load_average": [load_before[0], os.getloadavg()[0]],
        }, indent=2))
        print(f"wrote {args.out}")
