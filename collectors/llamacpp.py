"""llama.cpp server extras: KV use from /slots (llama.cpp removed its KV-usage gauges) and
the serving configuration from /props."""

from __future__ import annotations

from typing import Any

from servescope.core.records import Sample


def slots_samples(slots: list[dict[str, Any]]) -> list[Sample]:
    """Per-slot context capacity and use, plus the KV concepts summed over slots.

    A slot's context is in use while it processes a request: its prompt plus the tokens
    decoded so far. An idle slot keeps its last prompt cached for reuse, but that space is
    free for new work, so it counts as free.
    """
    samples: list[Sample] = []
    capacity = used = 0.0
    for slot in slots:
        labels = {"slot": str(slot.get("id"))}
        n_ctx = float(slot.get("n_ctx") or 0)
        in_use = 0.0
        if slot.get("is_processing"):
            decoded = sum(t.get("n_decoded", 0) for t in slot.get("next_token") or [])
            in_use = float(slot.get("n_prompt_tokens", 0) + decoded)
        capacity += n_ctx
        used += in_use
        samples.append(Sample("slot_context_tokens", n_ctx, "/slots:n_ctx", labels))
        samples.append(Sample("slot_used_tokens", in_use, "/slots:n_prompt_tokens+n_decoded",
                              labels))
        samples.append(Sample("slot_processing", float(bool(slot.get("is_processing"))),
                              "/slots:is_processing", labels))
    if capacity > 0:
        samples += [
            Sample("kv_capacity_tokens", capacity, "/slots:n_ctx", {}),
            Sample("kv_free_tokens", capacity - used, "/slots:n_ctx-used", {}),
            Sample("kv_usage", used / capacity, "/slots:used/n_ctx", {}),
        ]
    return samples


def props_info(props: dict[str, Any]) -> dict[str, Any]:
    """The parts of /props a capacity planner needs."""
    gen = props.get("default_generation_settings") or {}
    return {
        "model": props.get("model_alias") or props.get("model_path"),
        "total_slots": props.get("total_slots"),
        "n_ctx": gen.get("n_ctx"),
        "build_info": props.get("build_info"),
    }
