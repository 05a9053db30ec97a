"""Confidence intervals for percentiles (README "summary JSON ... ci95").

A per-request metric (TTFT, TPOT, E2E) has one value per request: independent values, so a
bootstrap over them (or, above 10,000, order statistics) is right. ITL pools every gap of
every request, and the gaps of one request are not independent (they share its batch, its
length and its moment), so its intervals take the request as the unit: request_cis.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

PERCENTILES = (50, 90, 95, 99, 99.9)
# request_bootstrap_cis: at most this many (request, block) cells
_BLOCK_CELLS = 2_000_000


def key(p: float) -> str:
    """50 -> "p50", 99.9 -> "p99.9"."""
    return f"p{p:g}"


def percentile_ci(
    values: np.ndarray, p: float, level: float = 0.95, resamples: int = 200, seed: int = 0
) -> tuple[float, float]:
    """A confidence interval for the p-th percentile of independent values (one per
    request; for ITL's pooled gaps see request_bootstrap_cis).

    Bootstrap (resampling the requests) up to 10,000 values; above that, where resampling
    gets slow and the bootstrap and the exact method agree, the distribution-free interval
    from order statistics (ranks from the binomial distribution).
    """
    n = len(values)
    alpha = (1 - level) / 2
    if n <= 10_000:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(resamples, n))
        estimates = np.percentile(values[idx], p, axis=1)
        lo, hi = np.quantile(estimates, [alpha, 1 - alpha])
        return float(lo), float(hi)
    ordered = np.sort(values)
    q, z = p / 100, 1.959963984540054
    spread = z * np.sqrt(n * q * (1 - q))
    lo_rank = int(max(0, np.floor(n * q - spread)))
    hi_rank = int(min(n - 1, np.ceil(n * q + spread)))
    return float(ordered[lo_rank]), float(ordered[hi_rank])


def request_cis(groups: Sequence[Sequence[float]]) -> dict[str, tuple[float, float]]:
    """95 % confidence intervals for percentiles of values pooled over requests (ITL),
    with the request as the unit: the gaps of one request share its batch, its length and
    its moment, so they are not independent, and resampling them one by one gives
    intervals that are too narrow. Bootstrap by request up to 10,000 requests; above that,
    the Woodruff interval with the variance taken between requests. Needs two requests with
    values ({} otherwise)."""
    kept = sum(1 for g in groups if len(g))
    if kept <= 10_000:
        return request_bootstrap_cis(groups)
    return request_woodruff_cis(groups)


def _pooled(groups: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray, int]:
    """The values of every request with values, sorted, each with its request's index."""
    kept = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not kept:
        return np.empty(0), np.empty(0, dtype=int), 0
    values = np.concatenate(kept)
    owner = np.repeat(np.arange(len(kept)), [len(g) for g in kept])
    order = np.argsort(values)  # (which of equal values comes first changes nothing)
    return values[order], owner[order], len(kept)


def request_woodruff_cis(
    groups: Sequence[Sequence[float]],
    percentiles: Sequence[float] = PERCENTILES,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Woodruff's interval for a pooled percentile with requests as clusters: the share of
    values at or below the estimate has a between-request (ratio-estimator) variance; the
    interval is that share +- z standard errors, read back as percentiles. O(values); for
    runs with too many requests to bootstrap."""
    values, owner, n = _pooled(groups)
    if n < 2:
        return {}
    sizes = np.bincount(owner, minlength=n).astype(float)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    out: dict[str, tuple[float, float]] = {}
    for p in percentiles:
        q = p / 100
        at = float(np.percentile(values, p))
        below = np.bincount(owner[: np.searchsorted(values, at, side="right")],
                            minlength=n).astype(float)
        share = below.sum() / sizes.sum()
        var = n / (n - 1) * float(np.sum((below - share * sizes) ** 2)) / sizes.sum() ** 2
        spread = z * np.sqrt(var)
        lo, hi = max(0.0, q - spread), min(1.0, q + spread)
        out[key(p)] = (float(np.percentile(values, 100 * lo)),
                        float(np.percentile(values, 100 * hi)))
    return out


def request_bootstrap_cis(
    groups: Sequence[Sequence[float]],
    percentiles: Sequence[float] = PERCENTILES,
    level: float = 0.95,
    resamples: int = 200,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Confidence intervals for percentiles of values pooled over requests, by a bootstrap
    that resamples requests with all their values (request_cis says why).

    Each resample draws the requests with replacement, and its estimate is exactly numpy's
    linear-interpolation percentile of the resampled values pooled, found without copying
    them: the values are sorted once, in blocks; a matrix product gives every resample's
    weight below each block, and only the block holding the wanted rank is walked value by
    value, instead of one pass over every value per resample.
    """
    values, owner, n = _pooled(groups)
    if n < 2:
        return {}
    # Blocks: a product of resamples x requests x blocks against a walk of resamples x
    # ranks x block size, balanced; no more than _BLOCK_CELLS (request, block) cells.
    q = np.asarray(percentiles, dtype=float) / 100
    blocks = int(np.sqrt(2 * len(q) * len(values) / n))
    blocks = max(1, min(len(values), _BLOCK_CELLS // n, blocks))
    size = -(-len(values) // blocks)
    blocks = -(-len(values) // size)
    in_block = np.bincount(owner * blocks + np.arange(len(values)) // size,
                           minlength=n * blocks).reshape(n, blocks)
    before = np.zeros((n, blocks + 1))  # per request: its values before each block
    np.cumsum(in_block, axis=1, out=before[:, 1:])
    rng = np.random.default_rng(seed)
    counts = np.array([np.bincount(rng.integers(0, n, n), minlength=n)
                       for _ in range(resamples)], dtype=float)
    weight_before = counts @ before  # per resample: resampled values before each block
    estimates = np.empty((resamples, len(q)))
    for b in range(resamples):
        h = (weight_before[b, -1] - 1) * q
        below = np.floor(h)
        ranks = np.concatenate([below, np.minimum(below + 1, weight_before[b, -1] - 1)])
        at = np.empty(len(ranks))
        where = np.searchsorted(weight_before[b], ranks, side="right") - 1
        for block in np.unique(where):
            span = slice(block * size, min((block + 1) * size, len(values)))
            ends = weight_before[b, block] + np.cumsum(counts[b, owner[span]])
            mine = where == block
            at[mine] = values[span.start + np.searchsorted(ends, ranks[mine], side="right")]
        lo, hi = at[:len(q)], at[len(q):]
        estimates[b] = lo + (h - below) * (hi - lo)
    alpha = (1 - level) / 2
    bounds = np.quantile(estimates, [alpha, 1 - alpha], axis=0)
    return {key(p): (float(bounds[0, i]), float(bounds[1, i]))
            for i, p in enumerate(percentiles)}
