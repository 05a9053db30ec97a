"""Calibrate the simulator's step time from a measured run, request by request.

What a run shows: every request's send time and the arrival of each of its tokens (the
client's stamps), and from vLLM's span per request its queue and prefill time. Steps are
not measured one by one, so they are reconstructed: a gap between two tokens of one request
is one decode step, and the state of the whole server at that moment follows from all the
requests' timelines at once (the requests then decoding, the KV they had, the prompts whose
first token closed the same step). A request's prefill is the step that ends with its first
token: the span says how long (or, without spans, the client's TTFT). One more column, an
indicator on the TTFT rows, takes up what happens outside the steps (HTTP, tokenization,
detokenization, the client): the overhead the simulator adds to each TTFT.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from servescope.capacity.steptime import LinearStepModel, nnls
from servescope.core.records import RequestRecord


@dataclass
class Observed:
    """One measured request, in seconds on one clock."""

    send_s: float
    token_s: list[float]
    end_s: float
    prompt_tokens: int
    output_tokens: int
    server_queue_s: float | None = None
    server_prefill_s: float | None = None


def observed(r: RequestRecord, queue_s: float | None = None, prefill_s: float | None = None
             ) -> Observed | None:
    """A finished request's stamps and, where the server traced it (vLLM's span, via
    analysis.phases), its queue and prefill seconds. None for a failed or token-less one."""
    if not r.ok or r.end_ns is None or not r.prompt_tokens or not r.output_tokens:
        return None
    offsets = sorted(r.event_offsets_ns + r.reasoning_event_offsets_ns)
    if not offsets:
        return None
    send = r.send_ns / 1e9
    return Observed(send, [send + o / 1e9 for o in offsets], r.end_ns / 1e9, r.prompt_tokens,
                    r.output_tokens, queue_s, prefill_s)


def observed_requests(records: Sequence[RequestRecord], phases: dict[str, Any]
                      ) -> list[Observed]:
    """`observed` for each of a run's records, with the server's queue and prefill from
    `phases` (request id -> the server side of analysis.phases' join: `queue_ms`,
    `prefill_ms`, either may be None) where a span joined."""
    out = []
    for r in records:
        sp = phases.get(r.request_id)
        q = sp.queue_ms / 1000 if sp is not None and sp.queue_ms is not None else None
        pf = sp.prefill_ms / 1000 if sp is not None and sp.prefill_ms is not None else None
        o = observed(r, q, pf)
        if o is not None:
            out.append(o)
    return out


class _Timeline:
    """The server's state at any moment, from all requests' stamps (vectorized sums)."""

    def __init__(self, obs: Sequence[Observed]) -> None:
        self.first = np.array([o.token_s[0] for o in obs])
        self.last = np.array([o.token_s[-1] for o in obs])
        prompt = np.array([o.prompt_tokens for o in obs], dtype=float)
        order_f, order_l = np.argsort(self.first), np.argsort(self.last)
        self.first_sorted = self.first[order_f]
        self.prompt_by_first = np.concatenate([[0.0], np.cumsum(prompt[order_f])])
        pairs = prompt * (prompt + 1) / 2  # each prompt's attention pairs, in one chunk
        self.pairs_by_first = np.concatenate([[0.0], np.cumsum(pairs[order_f])])
        self.last_sorted = self.last[order_l]
        self.prompt_by_last = np.concatenate([[0.0], np.cumsum(prompt[order_l])])
        events = np.array([len(o.token_s) for o in obs], dtype=float)
        self.events_by_last = np.concatenate([[0.0], np.cumsum(events[order_l])])
        self.all_events = np.sort(np.concatenate([o.token_s for o in obs]))

    def decoding(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sequences decoding at t, their KV tokens): begun (first token) and not ended."""
        nf = np.searchsorted(self.first_sorted, t, side="left")
        nl = np.searchsorted(self.last_sorted, t, side="left")
        seqs = nf - nl
        prompts = self.prompt_by_first[nf] - self.prompt_by_last[nl]
        tokens = np.searchsorted(self.all_events, t, side="left") - self.events_by_last[nl]
        return seqs, prompts + tokens

    def prefilled(self, lo: np.ndarray, hi: np.ndarray, pair_tokens: float = 0.0
                  ) -> np.ndarray:
        """Prompt tokens of the requests whose first token came in (lo, hi], plus
        `pair_tokens` for each of their attention pairs."""
        a = np.searchsorted(self.first_sorted, lo, side="right")
        b = np.searchsorted(self.first_sorted, hi, side="right")
        out = self.prompt_by_first[b] - self.prompt_by_first[a]
        if pair_tokens:
            out = out + pair_tokens * (self.pairs_by_first[b] - self.pairs_by_first[a])
        return out


def step_rows(obs: Sequence[Observed], use_spans: bool = True, pair_tokens: float = 0.0
              ) -> tuple[np.ndarray, np.ndarray]:
    """One run's measured steps: rows of (1, prefill work, decode sequences, KV tokens,
    TTFT indicator) and their seconds; prefill work is the prompt tokens plus
    `pair_tokens` for each of their attention pairs (LinearStepModel's term). Decode rows
    from every gap between two tokens of a request; prefill rows from each request's first
    token."""
    rows, y, _ = step_rows_timed(obs, use_spans, pair_tokens)
    return rows, y


def _spread(stamps: Sequence[float]) -> list[float]:
    """A request's token stamps with ties spread out. Tokens that reach the client in one
    read (two SSE events in one packet) share a stamp, though the server made them in
    separate steps during the gap before: each group of equal stamps after an earlier one
    is spread evenly over that gap (the last keeps its stamp). A group at the first token
    keeps its ties (nothing in the request says when its tokens were made); `_decode_gaps`
    leaves their zero gaps out."""
    t = list(stamps)
    i = 1
    while i < len(t):
        if t[i] != t[i - 1]:
            i += 1
            continue
        j, k = i - 1, i  # t[j..k] share one stamp
        while k + 1 < len(t) and t[k + 1] == t[j]:
            k += 1
        if j > 0:  # k - j + 1 tokens over (t[j - 1], t[k]]
            lo, step = t[j - 1], (t[k] - t[j - 1]) / (k - j + 1)
            for m in range(j, k):
                t[m] = lo + step * (m - j + 1)
        i = k + 1
    return t


def _spread_all(obs: Sequence[Observed]) -> list[Observed]:
    """The requests with tokens, their ties spread (`_spread`)."""
    return [dataclasses.replace(o, token_s=_spread(o.token_s)) for o in obs if o.token_s]


def _decode_gaps(obs: Sequence[Observed]) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) of every gap between two tokens of a request with a duration (the ties
    `_spread` left, at the first token, are no measurement), requests in order."""
    t1 = np.concatenate([o.token_s[:-1] for o in obs])
    t2 = np.concatenate([o.token_s[1:] for o in obs])
    keep = t2 > t1
    return t1[keep], t2[keep]


def step_rows_timed(obs: Sequence[Observed], use_spans: bool = True, pair_tokens: float = 0.0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """step_rows, and when each step happened (seconds, the run's clock)."""
    obs = _spread_all(obs)
    if not obs:
        return np.zeros((0, 5)), np.zeros(0), np.zeros(0)
    tl = _Timeline(obs)
    sends = np.sort([o.send_s for o in obs])
    ends = np.sort([o.end_s for o in obs])

    def busy(t: float) -> int:
        """Requests in flight at t, the one sent at t excluded."""
        return int(np.searchsorted(sends, t, side="left") - np.searchsorted(ends, t, "right"))

    t1, t2 = _decode_gaps(obs)
    gap = t2 - t1
    mid = (t1 + t2) / 2
    seqs, kv = tl.decoding(mid)
    pre = tl.prefilled(mid, t2 + gap / 2)
    work = tl.prefilled(mid, t2 + gap / 2, pair_tokens) if pair_tokens else pre
    rows = np.column_stack([np.ones(len(gap)), work, seqs, kv + pre, np.zeros(len(gap))])
    ttft_rows, ttft_y, ttft_t = [], [], []
    for o in obs:
        f = o.token_s[0]
        if use_spans and o.server_prefill_s is not None and o.server_queue_s is not None:
            step = o.server_prefill_s
            y = f - o.send_s - o.server_queue_s
        else:
            step = max(f - o.send_s, 1e-6)
            y = f - o.send_s
            # without the server's queue time only a request sent to an idle server tells
            # its prefill
            if busy(o.send_s) > 0:
                continue
        s, k = tl.decoding(np.array([f - step / 2]))
        lo, hi = np.array([f - step / 2]), np.array([f + step / 2])
        p = tl.prefilled(lo, hi, pair_tokens)
        own = o.prompt_tokens * (1 + pair_tokens * (o.prompt_tokens + 1) / 2)
        ttft_rows.append([1.0, max(p[0], own), s[0], k[0] + o.prompt_tokens, 1.0])
        ttft_y.append(y)
        ttft_t.append(f)
    times = mid
    if ttft_rows:
        rows = np.vstack([rows, np.array(ttft_rows)])
        gap = np.concatenate([gap, np.array(ttft_y)])
        times = np.concatenate([mid, np.array(ttft_t)])
    return rows, gap, times


@dataclass
class Calibration:
    """A fitted step model and what the steps don't hold: `ttft_overhead_s` (added to every
    TTFT and E2E: the way in and out of the server) and `tail_s` (last token to the end of
    the stream)."""

    step: LinearStepModel
    ttft_overhead_s: float
    tail_s: float
    rows: int
    spans_used: int
    run_sd: float = 0.0  # run-to-run spread of the server's speed (relative), see calibrate
    # KV tokens per decoding sequence seen in the fit (p10, p90): outside it, the split
    # between the per-sequence and the per-KV-token cost is an extrapolation
    context_range: tuple[float, float] | None = None
    # each calibration run's own speed (rows_speed; 1.0 for a run with too few steps to
    # tell), in the order of the runs
    run_speeds: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"step_model": self.step.to_dict(), "ttft_overhead_s": self.ttft_overhead_s,
                "tail_s": self.tail_s, "rows": self.rows, "spans_used": self.spans_used,
                "run_sd": self.run_sd, "context_range": self.context_range,
                "run_speeds": list(self.run_speeds)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        try:
            return cls(LinearStepModel.from_dict(d["step_model"]), float(d["ttft_overhead_s"]),
                       float(d["tail_s"]), int(d.get("rows", 0)), int(d.get("spans_used", 0)),
                       float(d.get("run_sd", 0.0)),
                       tuple(d["context_range"]) if d.get("context_range") else None,
                       tuple(float(v) for v in d.get("run_speeds") or ()))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"calibration profile: missing or bad field {exc}") from None


def run_order(levels: Sequence[int]) -> list[int]:
    """The order calibration runs its levels in: each twice, the second pass mirrored
    (1, 2, 4, 4, 2, 1), each run half the level's time. A server whose speed drifts
    steadily through the calibration then weighs on every level alike (each level's mean
    time is the same), where in one pass up a slow spell lands on a level or two and tilts
    the line: the per-sequence cost is a small difference between levels, smaller than a
    shared machine's swings from one minute to the next."""
    return [*levels, *reversed(levels)]


def all_rows(runs: Sequence[Sequence[Observed]], pair_tokens: float = 0.0
             ) -> tuple[np.ndarray, np.ndarray]:
    """Every run's measured steps together (each run's timeline apart)."""
    return _stacked(_run_rows(runs, pair_tokens))


def _run_rows(runs: Sequence[Sequence[Observed]], pair_tokens: float
              ) -> list[tuple[np.ndarray, np.ndarray]]:
    """step_rows of each run that has requests."""
    return [step_rows(run, pair_tokens=pair_tokens) for run in runs if run]


def _stacked(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        raise ValueError("calibration: no finished requests to learn from")
    return np.vstack([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def fit_rows(x: np.ndarray, y: np.ndarray, trim_mads: float = 6.0, max_ratios: int = 400
             ) -> tuple[np.ndarray, list[float]]:
    """(coefficients a, b, c, d, ttft overhead; the decode rows' measured/fitted ratios).
    Rows farther than `trim_mads` MADs above the first line (a host stall, two steps read as
    one) leave the line but stay in the noise."""
    if len(y) < 8:
        raise ValueError(f"calibration: {len(y)} measured steps; at least 8 are needed")
    coef = nnls(x, y)
    resid = y - x @ coef
    mad = float(np.median(np.abs(resid - np.median(resid)))) or 1e-12
    keep = resid <= np.median(resid) + trim_mads * 1.4826 * mad
    if keep.sum() >= 8 and not keep.all():
        coef = nnls(x[keep], y[keep])
    decode = x[:, 4] == 0
    ratios = np.sort(y[decode] / np.maximum(x[decode] @ coef, 1e-9))
    if len(ratios) > max_ratios:  # its quantiles, tails included
        ratios = np.quantile(ratios, np.linspace(0, 1, max_ratios))
    return coef, [float(r) for r in ratios]


def calibrate(runs: Sequence[Sequence[Observed]], trim_mads: float = 6.0,
              max_ratios: int = 400, pair_tokens: float = 0.0) -> Calibration:
    """Fit the step model and the overheads to the measured runs. `run_sd`: how much the
    runs' own mean speed differs around the one line (the relative standard deviation of
    each run's mean measured/fitted decode step): a server on a shared machine is not
    equally fast from one run to the next, and a prediction must allow for it."""
    parts = _run_rows(runs, pair_tokens)  # each run's rows once: the fit and its spread
    x, y = _stacked(parts)
    coef, ratios = fit_rows(x, y, trim_mads, max_ratios)
    step = LinearStepModel(float(coef[0]), float(coef[1]), float(coef[2]), float(coef[3]),
                           ratios, pair_tokens=pair_tokens)
    read: list[float | None] = []  # each run's speed; None: too few steps to tell
    with_requests = iter(parts)  # the runs with requests, in order
    for run in runs:
        read.append(rows_speed(*next(with_requests), step) if run else None)
    means = [v for v in read if v is not None]
    run_sd = float(np.std(means, ddof=1) / np.mean(means)) if len(means) >= 2 else 0.0
    # A few back-to-back runs understate how the speed of a server on a shared machine
    # wanders: take the larger of their spread and the drift seen inside them
    run_sd = max(run_sd, speed_drift(runs, coef, pair_tokens=pair_tokens))
    tails = [o.end_s - o.token_s[-1] for run in runs for o in run if o.token_s]
    spans = sum(1 for run in runs for o in run if o.server_prefill_s is not None)
    dec = (x[:, 4] == 0) & (x[:, 2] > 0)
    ctx = x[dec, 3] / x[dec, 2]
    context = (float(np.percentile(ctx, 10)), float(np.percentile(ctx, 90))) if len(ctx) else None
    return Calibration(step, float(coef[4]), statistics.median(tails) if tails else 0.0,
                       len(y), spans, run_sd, context,
                       tuple(1.0 if v is None else v for v in read))


# Fewer decode steps than this and a run's speed is not read (its mean is too noisy)
MIN_SPEED_ROWS = 20


def rows_speed(x: np.ndarray, y: np.ndarray, step: LinearStepModel) -> float | None:
    """A run's speed against a calibrated step model, from its step rows (step_rows): the
    mean measured/fitted time of its decode steps, over the mean of the model's own noise
    (the ratios it draws from), so that 1.0 is the calibration's average speed and the
    model scaled by it (LinearStepModel.scaled) takes the run's mean step time, its noise
    counted once. None with fewer than MIN_SPEED_ROWS decode steps."""
    dec = x[:, 4] == 0
    if dec.sum() < MIN_SPEED_ROWS:
        return None
    coef = np.array([step.a_s, step.prefill_s_per_token, step.decode_s_per_seq,
                     step.kv_s_per_token, 0.0])
    noise = float(np.mean(step.ratios)) if step.ratios else 1.0
    return float(np.mean(y[dec] / np.maximum(x[dec] @ coef, 1e-9))) / noise


def run_speed(obs: Sequence[Observed], step: LinearStepModel) -> float | None:
    """rows_speed of one measured run (any run: a calibration's or a later one)."""
    if not obs:
        return None
    return rows_speed(*step_rows(obs, pair_tokens=step.pair_tokens), step)


# Past this run-to-run spread of the server's own speed, a calibration's coefficients say
# more about the machine's neighbours than about the server
NOISY_RUN_SD = 0.10


def warnings_for(cal: Calibration) -> list[str]:
    """What a planner should know before trusting this calibration: a server whose speed
    wandered (NOISY_RUN_SD), and a fit in which more sequences cost nothing (on a real
    server they always do; a flat line is what a server slowing during the runs at low
    concurrency leaves)."""
    out = []
    if cal.run_sd > NOISY_RUN_SD:
        out.append(f"the server's speed varied by {cal.run_sd:.0%} (relative standard "
                   "deviation) between and within the calibration runs: another load on "
                   "the machine? The intervals carry it; calibrate again on a quiet machine "
                   "for tighter ones")
    sm = cal.step
    if sm.decode_s_per_seq == 0 and sm.kv_s_per_token == 0:
        out.append("the fit found no cost per decoding sequence or KV token (a step with 8 "
                   "sequences as fast as one): the runs' speeds disagree; predictions past "
                   "the calibrated users will be too fast")
    return out


def speeds_line(cal: Calibration, order: Sequence[int]) -> str | None:
    """Each calibration run's speed against the fit, for a person (None with one run)."""
    if len(cal.run_speeds) < 2:
        return None
    return (f"each run's step time against the fit (1.20: its steps took 20% longer), "
            f"concurrency {', '.join(map(str, order))}: "
            f"{' '.join(f'{v:.2f}' for v in cal.run_speeds)}; the intervals carry the "
            f"spread ({cal.run_sd:.0%})")


def _decode_mids(obs: Sequence[Observed]) -> np.ndarray:
    """The middle of every decode gap, in step_rows' order of its decode rows."""
    obs = _spread_all(obs)
    if not obs:
        return np.zeros(0)
    t1, t2 = _decode_gaps(obs)
    return (t1 + t2) / 2


def speed_drift(runs: Sequence[Sequence[Observed]], coef: np.ndarray, parts: int = 4,
                min_rows: int = 30, pair_tokens: float = 0.0) -> float:
    """How much the server's own speed drifts (relative standard deviation), from windows
    of the calibration runs: each run is cut into `parts` windows of equal time, each
    window's mean measured/fitted decode step is a speed reading, and the spread of those
    readings, less what their own sampling noise explains (the within-window variance over
    its rows), is the drift. Windows rather than whole runs: three runs back to back are
    three readings; the windows give a dozen, and a prediction's run is as long as one."""
    means, noise = [], []
    for run in runs:
        rx, ry = step_rows(run, pair_tokens=pair_tokens)
        dec = rx[:, 4] == 0
        mids = _decode_mids(run)
        if dec.sum() < min_rows or len(mids) != dec.sum():
            continue
        r = ry[dec] / np.maximum(rx[dec] @ coef, 1e-9)
        lo, hi = float(mids.min()), float(mids.max())
        edges = np.linspace(lo, hi, parts + 1)
        idx = np.clip(np.searchsorted(edges, mids, side="right") - 1, 0, parts - 1)
        for w in range(parts):
            sel = r[idx == w]
            if len(sel) >= min_rows:
                means.append(float(np.mean(sel)))
                noise.append(float(np.var(sel, ddof=1)) / len(sel))
    if len(means) < 3:
        return 0.0
    between = float(np.var(means, ddof=1)) - float(np.mean(noise))
    return float(np.sqrt(between) / np.mean(means)) if between > 0 else 0.0


def _time_blocks(runs: Sequence[Sequence[Observed]]) -> list[np.ndarray] | None:
    """all_rows' row indices cut into blocks of consecutive time, for a block bootstrap:
    steps close in time share the batch (its sequences, their context lengths) and the
    server's momentary speed, so resampling rows one by one treats thousands of correlated
    steps as independent and understates the fit's uncertainty (a term the data barely
    separate, such as the per-KV-token cost against the per-sequence one, came out the
    same in every refit). A block lasts one median request (send to last token): about as
    long as one batch's composition holds."""
    blocks: list[np.ndarray] = []
    offset = 0
    for run in runs:
        if not run:
            continue
        _, y, t = step_rows_timed(run)
        if not len(y):
            continue
        life = float(np.median([o.end_s - o.send_s for o in run if o.token_s])) or 1.0
        key = np.floor((t - t.min()) / max(life, 1e-3)).astype(int)
        for k in np.unique(key):
            blocks.append(offset + np.flatnonzero(key == k))
        offset += len(y)
    return blocks or None


def bootstrap(runs: Sequence[Sequence[Observed]], n: int = 20, seed: int = 0,
              pair_tokens: float = 0.0) -> list[dict[str, float]]:
    """`n` refits on rows drawn with replacement: the fit's own uncertainty, for the
    prediction intervals (coefficients and overhead only; the noise stays the main fit's)."""
    x, y = all_rows(runs, pair_tokens)
    blocks = _time_blocks(runs)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        if blocks is not None and len(blocks) >= 8:
            pick = np.concatenate([blocks[i] for i in rng.integers(0, len(blocks),
                                                                    len(blocks))])
        else:
            pick = rng.integers(0, len(y), len(y))
        coef, _ = fit_rows(x[pick], y[pick], max_ratios=0)
        out.append({"a_s": float(coef[0]), "prefill_s_per_token": float(coef[1]),
                    "decode_s_per_seq": float(coef[2]), "kv_s_per_token": float(coef[3]),
                    "ttft_overhead_s": float(coef[4])})
    return out
