"""Prometheus exposition text -> normalized samples and a snapshot.

Parsing is prometheus-client's own parser; this module only maps families onto concepts
(the concept table, servescope/core/concepts.py, through collectors/mappings.py) and
aggregates series (engines, models) into one snapshot per target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from servescope.analysis.promql import merge_buckets
from servescope.collectors.mappings import RuntimeMapping
from servescope.core.concepts import BY_NAME, SCALAR_CONCEPTS, capacity_tokens
from servescope.core.records import Sample


class ParseError(ValueError):
    """The page is not valid Prometheus text exposition format."""


@dataclass
class Snapshot:
    runtime: str
    source: str
    ts: float
    samples: list[Sample] = field(default_factory=list)
    raw: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def scalar(self, concept: str) -> float | None:
        values = [s.value for s in self.samples if s.concept == concept]
        return sum(values) if values else None

    def to_json(self, include_raw: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"runtime": self.runtime, "source": self.source, "ts": self.ts}
        for concept in SCALAR_CONCEPTS:
            out[concept] = self.scalar(concept)
        # Several engines: usage is the used share of the summed capacity.
        out["kv_usage"] = self.kv_usage()
        hits, queries = out["prefix_cache_hits_total"], out["prefix_cache_queries_total"]
        out["prefix_cache_hit_ratio"] = hits / queries if hits is not None and queries else None
        by = BY_NAME["waiting_by_reason"].by_label or ""
        out["waiting_by_reason"] = {
            s.labels.get(by, ""): s.value for s in self.samples if s.concept == "waiting_by_reason"
        } or None
        histograms: dict[str, Any] = {}
        for s in self.samples:
            if s.extra is None:
                continue
            h = histograms.setdefault(s.concept, {"count": 0.0, "sum": 0.0, "_parts": []})
            h["count"] += s.value
            h["sum"] += s.extra["sum"]
            h["_parts"].append(s.extra["buckets"])
        for h in histograms.values():
            h["buckets"] = [[_json_le(le), n] for le, n in merge_buckets(h.pop("_parts"))]
        out["histograms"] = histograms
        out["info"] = self.info
        out["series"] = [
            {"concept": s.concept, "raw_name": s.raw_name, "labels": s.labels, "value": s.value}
            for s in self.samples
            if s.extra is None
        ]
        if include_raw:
            out["raw"] = self.raw
        return out

    def kv_usage(self) -> float | None:
        usage = [s for s in self.samples if s.concept == "kv_usage"]
        if not usage:
            return None
        free, cap = self.scalar("kv_free_tokens"), self.scalar("kv_capacity_tokens")
        if free is not None and cap:
            return 1.0 - free / cap
        return sum(s.value for s in usage) / len(usage)


def _json_le(le: float) -> float | str:
    return "+Inf" if math.isinf(le) else le


def parse_families(text: str) -> list[Any]:
    try:
        return list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise ParseError(f"not Prometheus text format: {exc}") from exc


_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_info")  # not _created: unused


def _family_of(line: str) -> str:
    if line.startswith("#"):
        parts = line.split(None, 3)
        return parts[2] if len(parts) > 2 else ""
    end = len(line)
    for stop in ("{", " "):
        i = line.find(stop)
        if 0 <= i < end:
            end = i
    return line[:end]


def mapped_lines(text: str, mapping: RuntimeMapping) -> str:
    """Only the lines of families the mapping knows (a cheap string pass), so the collect
    loop parses a few KB instead of the whole page. `scrape --json` keeps everything."""
    wanted = set(mapping.aliases) | {mapping.info_family or ""}
    for kind in (mapping.gauges, mapping.counters, mapping.histograms):
        wanted.update(kind.values())
    wanted |= {name + suffix for name in list(wanted) for suffix in _SUFFIXES}
    return "\n".join(line for line in text.splitlines() if _family_of(line) in wanted) + "\n"


def normalize(
    text: str, mapping: RuntimeMapping, source: str, ts: float, keep_raw: bool = True
) -> Snapshot:
    """Map a page onto concepts. With keep_raw=False unmapped families are skipped before
    parsing (the collect loop's fast path); the normalized samples are the same."""
    if not keep_raw:
        if not text.strip():
            raise ParseError("empty page")
        filtered = mapped_lines(text, mapping)
        # A page with none of the runtime's metrics is parsed whole, for a precise error.
        text = filtered if filtered.strip() else text
    families = parse_families(text)
    if not families:
        raise ParseError("no metrics in page")
    concept_of: dict[str, tuple[str, str]] = {}
    for kind in ("gauges", "counters", "histograms"):
        for concept, family in getattr(mapping, kind).items():
            concept_of[family] = (concept, kind)
    snap = Snapshot(runtime=mapping.runtime, source=source, ts=ts)
    kv_caps: dict[str, float] = {}  # engine -> capacity in tokens
    for fam in families:
        name = mapping.aliases.get(fam.name, fam.name)
        if name == mapping.info_family:
            kv_caps.update(_kv_capacity(fam, snap))
            continue
        hit = concept_of.get(name)
        if hit is None:
            for s in fam.samples:
                snap.raw.setdefault(s.name, []).append({"labels": s.labels, "value": s.value})
            continue
        concept, kind = hit
        if kind == "histograms":
            snap.samples.extend(_histogram_samples(concept, fam))
        elif kind == "counters":
            # A counter's _created twin is not the counter (some servers also expose
            # counters without the _total suffix).
            snap.samples.extend(
                Sample(concept, s.value, s.name, dict(s.labels))
                for s in fam.samples
                if not s.name.endswith("_created")
            )
        else:
            snap.samples.extend(
                Sample(concept, s.value, s.name, dict(s.labels)) for s in fam.samples
            )
    for s in snap.samples:
        if s.concept == "kv_capacity_tokens" and s.raw_name != mapping.info_family:
            kv_caps.setdefault(s.labels.get("engine", ""), s.value)
    # Free KV tokens per engine = capacity x (1 - usage).
    for s in [s for s in snap.samples if s.concept == "kv_usage"]:
        cap = kv_caps.get(s.labels.get("engine", ""))
        if cap is not None:
            labels = dict(s.labels)
            snap.samples.append(Sample("kv_free_tokens", cap * (1.0 - s.value), s.raw_name, labels))
    return snap


def _kv_capacity(fam: Any, snap: Snapshot) -> dict[str, float]:
    caps = {}
    for s in fam.samples:
        labels = dict(s.labels)
        engine = labels.get("engine", "")
        snap.info.setdefault("cache_config", {})[engine or "0"] = labels
        tokens = capacity_tokens(labels)
        if tokens is None:
            continue
        caps[engine] = tokens
        keep = {k: labels[k] for k in ("engine", "num_gpu_blocks", "block_size") if k in labels}
        snap.samples.append(Sample("kv_capacity_tokens", tokens, s.name, keep))
    return caps


def _histogram_samples(concept: str, fam: Any) -> list[Sample]:
    series: dict[tuple, dict[str, Any]] = {}
    for s in fam.samples:
        labels = {k: v for k, v in s.labels.items() if k != "le"}
        key = tuple(sorted(labels.items()))
        h = series.setdefault(key, {"labels": labels, "buckets": [], "sum": 0.0, "count": 0.0})
        if s.name.endswith("_bucket"):
            h["buckets"].append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_sum"):
            h["sum"] = s.value
        elif s.name.endswith("_count"):
            h["count"] = s.value
    return [
        Sample(
            concept,
            h["count"],
            fam.name,
            h["labels"],
            extra={"sum": h["sum"], "buckets": sorted(h["buckets"])},
        )
        for h in series.values()
    ]
