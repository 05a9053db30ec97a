"""How long one forward pass takes: calibrated on a real server, or from physics.

Calibrated: step = a + b x prefill tokens + c x decode sequences + d x KV tokens read,
fit by nonnegative least squares (each term costs time, none saves it) to the steps a
measured run reveals (`sim_calibrate.py` reconstructs them from token timestamps and the
server's spans). The residuals are kept as ratios to the line, so a simulated step can be
drawn with the spread the real server showed: that spread, and a bootstrap over the fit,
give the simulator's prediction intervals.

Physics (uncalibrated): the roofline of `perf.py`: a step takes the longer of the bytes it
reads over the bandwidth (every weight once, plus the KV it attends to) and the FLOPs it
does over the peak compute (the weights' per token, attention's per prefill pair), each at
a stated efficiency, plus a fixed launch overhead.

A step's prefill attention pairs (`sim_types.prefill_pairs`) grow with the square of a
prompt. A calibration on short prompts cannot tell them from the per-token cost (fitted
freely on chat, prompts of 64-512 tokens, a pair came out at about 330 ns where long
prompts measured directly give about 70, and the TTFT of a 400-token scenario was
predicted 44-85 % too high). So the calibrated model prices a pair from the architecture
instead: attention's FLOPs per pair over the weights' FLOPs per token (`pair_tokens`),
in prompt tokens at the fitted per-token cost. For this project's 4-layer CPU model that
is 0.00078 tokens, about 75 ns a pair; without it the 400-token scenario's TTFT p90 was
predicted 25 % too low, with it 12 % (the same runs refitted).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from servescope.capacity import perf
from servescope.capacity.catalog import Hardware, WeightFormat
from servescope.capacity.kv import kv_bytes_per_token
from servescope.capacity.model import FULL, MLA, SLIDING, ModelSpec

TERMS = ("a_s", "prefill_s_per_token", "decode_s_per_seq", "kv_s_per_token")


@dataclass
class LinearStepModel:
    """step = a + b x (prefill + pair_tokens x pairs) + c x decodes + d x kv (seconds).
    `ratios`: measured step / fitted step, sorted, to draw noise from (empty: no noise).
    `pair_tokens`: a prefill attention pair's cost in prompt tokens, from the architecture
    (`pair_tokens`, see the module's note); 0 leaves the pairs out."""

    a_s: float
    prefill_s_per_token: float
    decode_s_per_seq: float
    kv_s_per_token: float
    ratios: list[float] = field(default_factory=list)
    label: str = "calibrated"
    pair_tokens: float = 0.0

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int,
                     pairs: int = 0) -> float:
        return (self.a_s + self.prefill_s_per_token * (prefill_tokens + self.pair_tokens * pairs)
                + self.decode_s_per_seq * decode_seqs + self.kv_s_per_token * kv_tokens)

    def sample_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int,
                       rng: random.Random, pairs: int = 0) -> float:
        mean = self.step_seconds(prefill_tokens, decode_seqs, kv_tokens, pairs)
        if not self.ratios:
            return mean
        return mean * self.ratios[int(rng.random() * len(self.ratios))]

    def scaled(self, factor: float) -> LinearStepModel:
        """The same server `factor` times slower (a run-level speed draw)."""
        return LinearStepModel(self.a_s * factor, self.prefill_s_per_token * factor,
                               self.decode_s_per_seq * factor, self.kv_s_per_token * factor,
                               self.ratios, self.label, self.pair_tokens)

    def without_noise(self) -> LinearStepModel:
        return LinearStepModel(self.a_s, self.prefill_s_per_token, self.decode_s_per_seq,
                               self.kv_s_per_token, [], self.label, self.pair_tokens)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LinearStepModel:
        try:
            return cls(**{k: d[k] for k in (*TERMS, "ratios", "label", "pair_tokens") if k in d})
        except TypeError as exc:
            raise ValueError(f"step model: {exc}") from None


def nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Nonnegative least squares for a handful of columns: the best unconstrained fit over
    every subset of columns whose solution is nonnegative (exact, and 2^4 solves is
    nothing). Columns are scaled first so their magnitudes don't matter."""
    n_cols = x.shape[1]
    scale = np.maximum(np.abs(x).max(axis=0), 1e-300)
    xs = x / scale
    best, best_rss = np.zeros(n_cols), float(np.sum(y * y))
    for k in range(1, n_cols + 1):
        for cols in itertools.combinations(range(n_cols), k):
            sub = xs[:, cols]
            coef, *_ = np.linalg.lstsq(sub, y, rcond=None)
            if np.any(coef < 0):
                continue
            rss = float(np.sum((y - sub @ coef) ** 2))
            if rss < best_rss - 1e-18:
                best_rss = rss
                best = np.zeros(n_cols)
                best[list(cols)] = coef
    return best / scale


def fit_linear(rows: Sequence[tuple[int, int, int]], seconds: Sequence[float],
               weights: Sequence[float] | None = None, trim_mads: float = 6.0,
               max_ratios: int = 400, seed: int = 0) -> LinearStepModel:
    """Fit step = a + b x prefill + c x decodes + d x kv to measured steps, rows of
    (prefill_tokens, decode_seqs, kv_tokens). Steps farther than `trim_mads` median absolute
    deviations above the first fit (a stall of the host, two steps read as one) are left out
    of the line but kept in the noise."""
    if len(rows) < 4:
        raise ValueError(f"calibration: {len(rows)} measured steps; at least 4 are needed")
    x = np.column_stack([np.ones(len(rows)), np.asarray(rows, dtype=float)])
    y = np.asarray(seconds, dtype=float)
    w = np.sqrt(np.asarray(weights, dtype=float)) if weights is not None else np.ones(len(y))
    coef = nnls(x * w[:, None], y * w)
    resid = y - x @ coef
    mad = float(np.median(np.abs(resid - np.median(resid)))) or 1e-12
    keep = resid <= np.median(resid) + trim_mads * 1.4826 * mad
    if keep.sum() >= 4 and not keep.all():
        coef = nnls(x[keep] * w[keep, None], y[keep] * w[keep])
    fitted = np.maximum(x @ coef, 1e-9)
    ratios = np.sort(y / fitted)
    if len(ratios) > max_ratios:  # keep its quantiles, tails included
        ratios = np.quantile(ratios, np.linspace(0, 1, max_ratios))
    return LinearStepModel(*map(float, coef), ratios=[float(r) for r in ratios])


@dataclass
class PhysicsStepModel:
    """Roofline step time, uncalibrated: max(bytes / (bandwidth x bw_efficiency),
    FLOPs / (peak x flops_efficiency)) + overhead_s. The efficiencies are assumptions
    (real kernels reach about 50-80 % of peak bandwidth and 40-70 % of peak FLOPS). FLOPs:
    the weights' per token, and attention's per (query, key) pair of a prefill."""

    weight_bytes: float
    kv_bytes_per_token: float
    flops_per_token: float
    bandwidth_bytes_s: float
    peak_flops: float
    bw_efficiency: float = 0.7
    flops_efficiency: float = 0.5
    overhead_s: float = 0.002
    label: str = "uncalibrated (physics)"
    flops_per_pair: float = 0.0

    def __post_init__(self) -> None:
        # seconds per byte and per FLOP at the stated efficiencies, once (the simulator
        # calls step_seconds for every step); the fields are not changed after this
        # (dataclasses.replace makes a new model)
        bw = self.bandwidth_bytes_s * self.bw_efficiency
        self._weights_s = self.weight_bytes / bw
        self._kv_s = self.kv_bytes_per_token / bw
        self._token_s = self.flops_per_token / (self.peak_flops * self.flops_efficiency)
        self._pair_s = self.flops_per_pair / (self.peak_flops * self.flops_efficiency)

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int,
                     pairs: int = 0) -> float:
        memory = self._weights_s + self._kv_s * kv_tokens
        compute = self._token_s * (prefill_tokens + decode_seqs) + self._pair_s * pairs
        return (memory if memory > compute else compute) + self.overhead_s

    def assumptions(self) -> list[str]:
        return [f"step time from physics, uncalibrated: {self.bw_efficiency:.0%} of peak "
                f"memory bandwidth, {self.flops_efficiency:.0%} of peak FLOPS, "
                f"{self.overhead_s * 1000:g} ms fixed per step"]


def attention_flops_per_pair(model: ModelSpec) -> float:
    """Attention's FLOPs for one (query, key) pair of a prefill: 4 x head_dim per head and
    layer (the scores and the weighted sum), over the layers that attend (a sliding
    window's counted as full: an upper bound)."""
    attending = sum(1 for k in model.layer_kinds if k in (FULL, SLIDING, MLA))
    return 4.0 * model.head_dim * model.num_heads * attending


def pair_tokens(model: ModelSpec) -> float:
    """A prefill pair's cost in prompt tokens: attention's FLOPs per pair over the
    weights' per token (2 per active parameter), both run at the rate a calibration
    measures for a prompt token."""
    return attention_flops_per_pair(model) / (2.0 * model.params.compute)


def physics_step_model(model: ModelSpec, fmt: WeightFormat, hw: Hardware, gpus: int,
                       kv_bytes: int, dtype_bytes: int = 2, bw_efficiency: float = 0.7,
                       flops_efficiency: float = 0.5, overhead_s: float = 0.002
                       ) -> PhysicsStepModel:
    """The roofline for one setup, from perf.py's bounds (its batch-1 decode read of the
    weights; 2 FLOPs per active parameter per token; KV bytes per token from kv.py), and
    attention's FLOPs per prefill pair (`attention_flops_per_pair`). In decode the KV reads
    carry the context's cost."""
    weights = perf.decode_bound(model, fmt, hw, gpus, 1, 0, kv_bytes, 0,
                                dtype_bytes).weight_bytes_read
    tflops = hw.fp8_tflops if fmt.compute == "fp8" and hw.fp8_tflops else hw.bf16_tflops
    return PhysicsStepModel(
        weight_bytes=float(weights),
        kv_bytes_per_token=float(kv_bytes_per_token(model, kv_bytes, tp=gpus)),
        flops_per_token=2.0 * model.params.compute,
        bandwidth_bytes_s=hw.bandwidth_gbs * 1e9 * gpus,
        peak_flops=tflops * 1e12 * gpus,
        bw_efficiency=bw_efficiency, flops_efficiency=flops_efficiency, overhead_s=overhead_s,
        flops_per_pair=attention_flops_per_pair(model))
