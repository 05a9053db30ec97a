"""/metrics pages of SGLang and TGI, written from their source because neither runs here.

Each page has the families, types, label names, buckets and value rendering the runtime's
own code gives them (the versions and files are named below and in tests/fixtures/README.md);
the values are made up. `python -m testsupport.pages_from_source tests/fixtures` rewrites
tests/fixtures/sglang-0.5.23-metrics-from-source.txt and tgi-3.3.7-metrics-from-source.txt.

- SGLang 0.5.23 (PyPI wheel): sglang/srt/observability/metrics_collector.py. SGLang serves
  /metrics from prometheus-client's multiprocess collector (PROMETHEUS_MULTIPROC_DIR), so the
  page is rendered by that collector here too: no _created series, and a gauge without a
  multiprocess mode (sglang:num_retracted_reqs) keeps a pid label.
- TGI v3.3.7 (text-generation-inference commit db931fc): router/src/server.rs and
  backends/v3/src/{backend,queue,lib}.rs, rendered as metrics-exporter-prometheus 0.15.3
  (its Cargo.lock version) writes them: counters without a _total suffix, every histogram
  whose name ends in "duration" with 35 buckets 0.0001 x 1.5^k, input and generated token
  histograms with 100 buckets up to max_input_tokens and max_total_tokens.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

SGLANG_FILE = "sglang-0.5.23-metrics-from-source.txt"
TGI_FILE = "tgi-3.3.7-metrics-from-source.txt"
SGLANG_HEADER = """\
# Written from source, not captured: SGLang does not run on this machine. Families, types,
# labels, buckets and multiprocess modes as sglang 0.5.23 (PyPI wheel) defines them in
# sglang/srt/observability/metrics_collector.py, rendered by prometheus-client's
# multiprocess collector as SGLang serves them; made-up values (10 requests finished, 3
# retracted). Re-create: python -m testsupport.pages_from_source tests/fixtures
"""
TGI_HEADER = """\
# Written from source, not captured: TGI does not run on this machine. Families, types and
# buckets as text-generation-inference v3.3.7 (commit db931fc) records them in
# router/src/server.rs and backends/v3/src/{backend,queue,lib}.rs, rendered the way
# metrics-exporter-prometheus 0.15.3 writes them (counters without _total); made-up values
# (42 requests succeeded). Re-create: python -m testsupport.pages_from_source tests/fixtures
"""

# -- SGLang: run in a child process, so the multiprocess directory is set before
# prometheus_client is imported (as SGLang does) --------------------------------------------
_SGLANG_PROGRAM = r'''
import sys
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

S = {"model_name": "tiny", "engine_type": "unified", "tp_rank": "0", "pp_rank": "0",
     "moe_ep_rank": "0"}  # SchedulerMetricsCollector's labels
T = {"model_name": "tiny", "engine_type": "unified"}  # TokenizerMetricsCollector's labels
made = {}

def metric(cls, name, doc, labels, **kw):
    if name not in made:
        made[name] = cls(name, doc, labelnames=list(labels), registry=None, **kw)
    return made[name].labels(**labels)

def gauge(name, doc, value, mode="mostrecent"):
    metric(Gauge, name, doc, S, **({} if mode is None else {"multiprocess_mode": mode})).set(value)

def counter(name, doc, labels, value):
    metric(Counter, name, doc, labels).inc(value)

def hist(name, doc, labels, buckets, values):
    h = metric(Histogram, name, doc, labels, buckets=buckets)
    for v in values:
        h.observe(v)

gauge("sglang:num_running_reqs", "The number of running requests.", 5)
gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.", 2)
gauge("sglang:gen_throughput", "The generation throughput (token/s).", 812.5)
gauge("sglang:cache_hit_rate", "The prefix cache hit rate.", 0.12)
gauge("sglang:token_usage", "The token usage.", 0.25)
gauge("sglang:num_used_tokens", "The number of used tokens.", 1000)
gauge("sglang:kv_available_tokens", "Number of free token slots in the KV cache pool.", 2500)
gauge("sglang:kv_evictable_tokens",
      "Number of evictable (radix-cached) token slots in the KV cache pool.", 500)
gauge("sglang:kv_used_tokens", "Number of actively used token slots in the KV cache pool.",
      1000)
gauge("sglang:max_total_num_tokens", "Maximum total number of tokens in the KV cache pool.",
      4000)
# The retractions of the last stats interval (reset to 0 after each): a gauge, not a counter.
gauge("sglang:num_retracted_reqs", "The number of retracted requests.", 1, mode=None)
counter("sglang:num_retracted_requests", "Total number of retracted requests.", S, 3)
counter("sglang:num_retracted_input_tokens", "Total number of retracted input tokens.", S, 410)
counter("sglang:num_retracted_output_tokens", "Total number of retracted output tokens.", S,
        57)
hist("sglang:queue_time_seconds", "Histogram of queueing time in seconds.", S,
     [0.0, 0.1, 0.2, 0.5, 1, 2, 3, 4, 5, 10, 15, 20, 30],
     [0.0, 0.0, 0.01, 0.02, 0.05, 0.08, 0.15, 0.3, 0.6, 1.4])
TTFT_B = [0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400]
E2E_B = TTFT_B + [600, 1200, 1800, 2400]
ITL_B = [0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040, 0.060,
         0.080, 0.100, 0.200, 0.400, 0.600, 0.800, 1.000, 2.000, 4.000, 6.000, 8.000]
TOKENS_B = [100, 300, 500, 700, 1000, 1500, 2000, 3000, 4000, 5000]
TTFT = {"true": [0.05, 0.06, 0.09, 0.15, 0.3, 0.45], "false": [0.5, 0.7, 0.9, 1.3]}
for stream, ttfts in TTFT.items():
    L = {**T, "is_streaming": stream}
    n = len(ttfts)
    counter("sglang:prompt_tokens", "Number of prefill tokens processed.", L, 90 * n)
    counter("sglang:generation_tokens", "Number of generation tokens processed.", L, 30 * n)
    counter("sglang:num_requests", "Number of requests processed.", L, n)
    hist("sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
         L, TTFT_B, ttfts)
    hist("sglang:request_time_per_output_token_seconds",
         "Per-request TPOT in seconds: (finished_time - first_token_time) / "
         "(completion_tokens - 1).", L, ITL_B, [0.012] * n)
    hist("sglang:e2e_request_latency_seconds",
         "Histogram of End-to-end request latency in seconds", L, E2E_B,
         [t + 0.35 for t in ttfts])
counter("sglang:cached_tokens",
        "Number of cached prompt tokens by source (device/host/storage).",
        {**T, "cache_source": "device"}, 120)
counter("sglang:num_aborted_requests", "Number of requests aborted.", T, 1)
hist("sglang:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", T,
     ITL_B, [0.011] * 150 + [0.013] * 140)
hist("sglang:prompt_tokens_histogram", "Histogram of prompt token length.", T, TOKENS_B,
     [90] * 10)
hist("sglang:generation_tokens_histogram", "Histogram of generation token length.", T,
     TOKENS_B, [30] * 10)

class ByName:  # the multiprocess files come in any order: sort, for a stable file
    def collect(self):
        return sorted(multiprocess.MultiProcessCollector(None).collect(), key=lambda m: m.name)

registry = CollectorRegistry()
registry.register(ByName())
sys.stdout.write(generate_latest(registry).decode())
'''


def sglang_page() -> str:
    with tempfile.TemporaryDirectory() as mp_dir:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": mp_dir}
        out = subprocess.run([sys.executable, "-c", _SGLANG_PROGRAM], env=env, check=True,
                             capture_output=True, text=True).stdout
    # The pid of the process that set the gauge: any number; fixed so the file is stable.
    lines = [_fixed_pid(line) for line in out.splitlines()]
    return SGLANG_HEADER + "\n".join(lines) + "\n"


def _fixed_pid(line: str) -> str:
    start = line.find('pid="')
    if start < 0:
        return line
    end = line.index('"', start + 5)
    return line[:start] + 'pid="4242' + line[end:]


# -- TGI -------------------------------------------------------------------------------------
def _num(value: float) -> str:
    """A value as Rust's Display writes an f64 (4.0 -> "4")."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _histogram(name: str, help_: str, bounds: list[float], values: list[float]) -> list[str]:
    lines = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
    for le in bounds:
        lines.append(f'{name}_bucket{{le="{_num(le)}"}} {sum(v <= le for v in values)}')
    lines += [f'{name}_bucket{{le="+Inf"}} {len(values)}', f"{name}_sum {_num(sum(values))}",
              f"{name}_count {len(values)}", ""]
    return lines


def tgi_page() -> str:
    max_input_tokens, max_total_tokens = 1024, 2048
    duration_b, value = [], 0.0001  # router/src/server.rs: a geometric sequence, as it builds it
    for _ in range(35):
        value *= 1.5
        duration_b.append(value)
    input_b = [max_input_tokens / 100 * (x + 1) for x in range(100)]
    generated_b = [max_total_tokens / 100 * (x + 1) for x in range(100)]
    n = 42
    queue = [0.05 * (i % 10) for i in range(n)]
    inference = [0.4 + 0.01 * i for i in range(n)]
    lines = [
        "# HELP tgi_request_success Number of successful requests",
        "# TYPE tgi_request_success counter", f"tgi_request_success {n}", "",
        "# HELP tgi_request_count Total number of requests",
        "# TYPE tgi_request_count counter", f"tgi_request_count {n + 3}", "",
        "# TYPE tgi_request_failure counter",
        'tgi_request_failure{err="validation"} 2', 'tgi_request_failure{err="generation"} 1', "",
        "# HELP tgi_batch_current_size Current batch size",
        "# TYPE tgi_batch_current_size gauge", "tgi_batch_current_size 4", "",
        "# HELP tgi_queue_size Current queue size",
        "# TYPE tgi_queue_size gauge", "tgi_queue_size 7", "",
        "# HELP tgi_batch_current_max_tokens Maximum tokens for the current batch",
        "# TYPE tgi_batch_current_max_tokens gauge", "tgi_batch_current_max_tokens 1536", "",
        # Recorded once after the warm-up: num_blocks x BLOCK_SIZE, the KV cache in tokens.
        "# TYPE tgi_batch_max_total_tokens gauge", "tgi_batch_max_total_tokens 16000", "",
    ]
    lines += _histogram("tgi_request_duration", "Request duration", duration_b,
                        [q + i + 0.002 for q, i in zip(queue, inference, strict=True)])
    lines += _histogram("tgi_request_queue_duration", "Request queue duration", duration_b,
                        queue)
    lines += _histogram("tgi_request_inference_duration", "Request inference duration",
                        duration_b, inference)
    lines += _histogram("tgi_request_mean_time_per_token_duration",
                        "Mean time per token per request", duration_b, [i / 30 for i in inference])
    lines += _histogram("tgi_request_input_length", "Input token length per request", input_b,
                        [90.0] * n)
    lines += _histogram("tgi_request_generated_tokens", "Generated tokens per request",
                        generated_b, [30.0] * n)
    return TGI_HEADER + "\n".join(lines)


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "tests/fixtures")
    (out / SGLANG_FILE).write_text(sglang_page())
    (out / TGI_FILE).write_text(tgi_page())
    print(f"wrote {out / SGLANG_FILE} and {out / TGI_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
