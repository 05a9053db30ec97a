"""A plan as a readable table (the JSON form is the plan dict itself)."""

from __future__ import annotations

from typing import Any

GIB = 2**30


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if abs(n) >= GIB:
        return f"{n / GIB:,.2f} GiB"
    if abs(n) >= 2**20:
        return f"{n / 2**20:,.1f} MiB"
    return f"{n:,} B"


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def format_plan(r: dict[str, Any]) -> str:
    m, hw, w, b = r["model"], r["hardware"], r["workload"], r["kv_budget"]
    kinds = ", ".join(f"{n} {k}" for k, n in m["layer_kinds"].items())
    if m["sliding_window"]:
        kinds += f" (window {m['sliding_window']})"
    experts = (f", {m['experts']} experts, {m['experts_per_token']} per token"
               if m["experts"] else "")
    rows: list[tuple[str, str]] = [
        ("model", f"{m['name']} ({m['model_type']}; {m['layers']} layers: {kinds}{experts})"),
        ("parameters", f"{m['parameters_total'] / 1e9:,.2f} B total, "
                       f"{m['parameters_active'] / 1e9:,.2f} B active per token"),
        ("hardware", f"{r['gpus']} x {hw['name']} ({_bytes(hw['memory_bytes'])}, "
                     f"{hw['bandwidth_gbs']:,.0f} GB/s), tensor parallel {r['tensor_parallel']}"
                     + (f", {r['replicas']} replicas" if r["replicas"] > 1 else "")),
        ("weights", f"{_bytes(r['weights_bytes'])} in {r['quantization']} "
                    f"({_bytes(r['weights_bytes_per_gpu'])} per GPU)"),
        ("KV per token", f"{_count(r['kv_bytes_per_token'])} B in {r['kv_cache_dtype']} "
                         f"({_count(r['kv_bytes_per_token_per_gpu'])} B per GPU)"),
    ]
    if r["linear_state_bytes_per_sequence"]:
        rows.append(("state per sequence", _bytes(r["linear_state_bytes_per_sequence"])))
    if "requested" in b:
        rows.append(("KV budget per GPU",
                     f"{_bytes(b['kv'])} = {_bytes(b['requested'])} requested - "
                     f"{_bytes(b['weights'])} weights - {_bytes(b['activation_peak'])} "
                     f"activations - {_bytes(b['non_torch'])} non-torch - "
                     f"{_bytes(b['cuda_graphs'])} CUDA graphs"))
    else:
        rows.append(("KV budget", f"{_bytes(b['kv'])} (VLLM_CPU_KVCACHE_SPACE)"))
    rows += [
        ("blocks", f"{_count(r['num_blocks'])} of {r['block_size']} tokens "
                   f"({_bytes(r['bytes_per_block'])} each)"),
        ("vLLM will log", r["vllm_log_line"]),
        ("release rules", r["vllm_accounting"]),
        ("workload", f"{w['source']}: prompt mean {w['prompt_mean']:,} / p95 "
                     f"{w['prompt_p95']:,}, output mean {w['output_mean']:,} / p95 "
                     f"{w['output_p95']:,} tokens"),
        ("sequences that fit", f"{_count(r['max_concurrent_sequences'])} at p95 length "
                               f"({w['total_p95']:,} tokens), "
                               f"{_count(r['max_concurrent_sequences_at_mean_length'])} at "
                               "mean length"),
    ]
    if r["needed_concurrency"] is not None:
        rows.append(("traffic needs", f"{r['needed_concurrency']:,} concurrent sequences"))
    sizing = r["sizing"]
    rows += [
        ("set on this setup", f"--max-num-seqs {r['recommended_max_num_seqs']} "
                f"--max-num-batched-tokens {r['recommended_max_num_batched_tokens']}"),
        ("GPUs needed", "-" if r["gpus_needed"] is None else
         f"{r['gpus_needed']} (tensor parallel {sizing['tensor_parallel']} x "
         f"{sizing['replicas']} replica(s), {sizing['sequences_per_replica']} sequences each)"),
        ("decode bound", f">= {r['decode']['time_per_output_token_ms_min']} ms per token at "
                         f"batch {r['decode']['batch']} (<= "
                         f"{r['decode']['tokens_per_second_max']:,} tokens/s); >= "
                         f"{r['decode']['single_stream_time_per_token_ms_min']} ms alone"),
        ("prefill bound", f">= {r['prefill']['time_to_first_token_ms_min']} ms for a "
                          f"{r['prefill']['prompt_tokens']:,}-token prompt at "
                          f"{r['prefill']['tflops']:,} TFLOPS"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append("")
    lines.append("assumptions:")
    lines += [f"  - {a}" for a in r["assumptions"]]
    return "\n".join(lines)
