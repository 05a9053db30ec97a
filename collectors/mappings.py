"""Runtime metric names mapped onto servescope's concepts: one table per runtime.

A new runtime (or a renamed metric) is a new entry here, not a new code path. Family names
are as prometheus-client's parser reports them: a counter's family drops the ``_total``
suffix that its samples carry.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RuntimeMapping:
    runtime: str
    gauges: dict[str, str]  # concept -> metric family
    counters: dict[str, str]  # concept -> counter family (without _total)
    histograms: dict[str, str]  # concept -> histogram family
    # Old family name -> current one. vLLM renames on a deprecate/hide/remove cycle over
    # three minor versions; a server of any version in that window normalizes the same.
    aliases: dict[str, str] = field(default_factory=dict)
    info_family: str | None = None  # an *_info gauge holding config in its labels


VLLM = RuntimeMapping(
    runtime="vllm",
    gauges={
        "running": "vllm:num_requests_running",
        "waiting": "vllm:num_requests_waiting",
        "kv_usage": "vllm:kv_cache_usage_perc",
        "waiting_by_reason": "vllm:num_requests_waiting_by_reason",
    },
    counters={
        "prompt_tokens_total": "vllm:prompt_tokens",
        "generation_tokens_total": "vllm:generation_tokens",
        "preemptions_total": "vllm:num_preemptions",
        "requests_finished_total": "vllm:request_success",
        "prefix_cache_queries_total": "vllm:prefix_cache_queries",
        "prefix_cache_hits_total": "vllm:prefix_cache_hits",
    },
    histograms={
        "ttft_seconds": "vllm:time_to_first_token_seconds",
        "itl_seconds": "vllm:inter_token_latency_seconds",
        "tpot_seconds": "vllm:request_time_per_output_token_seconds",
        "e2e_seconds": "vllm:e2e_request_latency_seconds",
        "queue_seconds": "vllm:request_queue_time_seconds",
        "prefill_seconds": "vllm:request_prefill_time_seconds",
        "decode_seconds": "vllm:request_decode_time_seconds",
        "inference_seconds": "vllm:request_inference_time_seconds",
        "request_prompt_tokens": "vllm:request_prompt_tokens",
        "request_generation_tokens": "vllm:request_generation_tokens",
    },
    aliases={
        "vllm:gpu_cache_usage_perc": "vllm:kv_cache_usage_perc",
        "vllm:time_per_output_token_seconds": "vllm:inter_token_latency_seconds",
    },
    info_family="vllm:cache_config_info",
)

# llama.cpp server (--metrics). It dropped its KV-usage gauges; KV use comes from /slots.
LLAMACPP = RuntimeMapping(
    runtime="llamacpp",
    gauges={
        "running": "llamacpp:requests_processing",
        "waiting": "llamacpp:requests_deferred",
    },
    counters={
        "prompt_tokens_total": "llamacpp:prompt_tokens",
        "generation_tokens_total": "llamacpp:tokens_predicted",
        "prompt_tokens_cached_total": "llamacpp:prompt_tokens_cached",
        "prefill_seconds_total": "llamacpp:prompt_seconds",
        "decode_seconds_total": "llamacpp:tokens_predicted_seconds",
    },
    histograms={},
)

# SGLang: names from its documented production metrics; latency histograms as vLLM's.
SGLANG = RuntimeMapping(
    runtime="sglang",
    gauges={
        "running": "sglang:num_running_reqs",
        "waiting": "sglang:num_queue_reqs",
        "kv_usage": "sglang:token_usage",
        "kv_capacity_tokens": "sglang:max_total_num_tokens",
        "preemptions_total": "sglang:num_retracted_reqs",
    },
    counters={
        "prompt_tokens_total": "sglang:prompt_tokens",
        "generation_tokens_total": "sglang:generation_tokens",
        "prompt_tokens_cached_total": "sglang:cached_tokens",
    },
    histograms={
        "ttft_seconds": "sglang:time_to_first_token_seconds",
        "itl_seconds": "sglang:inter_token_latency_seconds",
        "e2e_seconds": "sglang:e2e_request_latency_seconds",
        "queue_seconds": "sglang:queue_time_seconds",
    },
    aliases={"sglang:time_per_output_token_seconds": "sglang:inter_token_latency_seconds"},
)

# Hugging Face TGI: names from its documented metrics.
TGI = RuntimeMapping(
    runtime="tgi",
    gauges={"running": "tgi_batch_current_size", "waiting": "tgi_queue_size"},
    counters={"requests_finished_total": "tgi_request_success"},
    histograms={
        "queue_seconds": "tgi_request_queue_duration",
        "inference_seconds": "tgi_request_inference_duration",
        "e2e_seconds": "tgi_request_duration",
        "tpot_seconds": "tgi_request_mean_time_per_token_duration",
        "request_prompt_tokens": "tgi_request_input_length",
        "request_generation_tokens": "tgi_request_generated_tokens",
    },
)

MAPPINGS: dict[str, RuntimeMapping] = {m.runtime: m for m in (VLLM, LLAMACPP, SGLANG, TGI)}

# Runtime auto-detection: the metric-name prefix each runtime's /metrics page carries.
PREFIXES: dict[str, str] = {
    "vllm:": "vllm",
    "sglang:": "sglang",
    "llamacpp:": "llamacpp",
    "tgi_": "tgi",
}

# The concepts every snapshot reports (null where the runtime does not say).
SCALAR_CONCEPTS = (
    "running",
    "waiting",
    "kv_usage",
    "kv_capacity_tokens",
    "kv_free_tokens",
    "prompt_tokens_total",
    "generation_tokens_total",
    "preemptions_total",
    "requests_finished_total",
    "prefix_cache_queries_total",
    "prefix_cache_hits_total",
    "prompt_tokens_cached_total",
    "prefill_seconds_total",
    "decode_seconds_total",
)
