"""The simulated engine: vLLM v1's scheduler (or fixed slots) over paged KV blocks.

Speed: a step touches only what changes. Sequences in steady decode (one token per step,
every step) form a cohort kept lazily: each remembers the step it joined and its counters
then, and its current counters follow from the step number. Per step the cohort costs a
few additions: its KV grows by one token per sequence, its new blocks are the sequences
whose length reaches a block boundary now (counted by residue), and the ones finishing come
off a heap. Anything else (a preemption, a budget too small for every decode) first turns
the cohort back into explicit sequences and takes the full path. Stretches of steps in
which only the cohort advances (nothing admitted, nothing finishing, no arrival) run in
one tight loop (`advance_decode`), step for step the same as `step`.
"""

from __future__ import annotations

import heapq
import random
from bisect import bisect_left
from collections import deque

from servescope.capacity.sim_types import (
    ItlPool,
    NoisyStepModel,
    RequestTiming,
    SchedulerConfig,
    SimRequest,
    StepModel,
    StepResult,
)


class _Seq:
    """A request inside the engine: counters, never a list of tokens. In the cohort,
    `computed`/`out`/`tokens`/`own` are stale; base_* and the step number give them."""

    __slots__ = ("base_c", "base_out", "base_step", "cached", "computed", "first_sched",
                 "first_token", "itl_max", "last_token", "out", "own", "preemptions", "ref",
                 "req", "shared", "tokens")

    def __init__(self, req: SimRequest) -> None:
        self.req = req
        self.tokens = req.prompt_tokens  # prompt + outputs sampled so far
        self.out = 0  # outputs sampled
        self.computed = 0  # tokens whose KV is computed
        self.shared = 0  # prefix-cache blocks referenced
        self.own = 0  # blocks held alone
        self.ref: str | None = None  # the prefix entry referenced
        self.first_sched: float | None = None
        self.first_token: float | None = None
        self.last_token = 0.0
        self.preemptions = 0
        self.cached = 0
        self.itl_max = 0.0
        self.base_c = self.base_out = self.base_step = 0


class Engine:
    """The scheduler and its KV blocks; `add` requests, call `step` at the time the previous
    step ended (or when work arrived) until it returns None."""

    def __init__(self, config: SchedulerConfig, step_model: StepModel, seed: int = 0) -> None:
        self.config = config
        self.step_model = step_model
        self.rng = random.Random(seed)
        self._noisy = isinstance(step_model, NoisyStepModel)
        self._limited = config.policy == "vllm"
        self._bs = config.block_size
        self._cap = config.seq_cap  # the config and step model are fixed for a run
        self._budget = config.max_num_batched_tokens
        self._waiting: deque[_Seq] = deque()
        self._running: dict[str, _Seq] = {}  # admission order; the last is the newest
        self._explicit: dict[str, _Seq] = {}  # running, not in the cohort
        self._cohort: dict[str, _Seq] = {}
        self._residue = [0] * self._bs  # cohort sequences by (base_c - base_step) % bs
        self._cohort_kv = 0  # KV tokens the cohort holds before the current step
        self._ends: list[tuple[int, int, _Seq]] = []  # (last step, tiebreak, seq) of the cohort
        self._tiebreak = 0
        # The longest step from any step on to now, for a leaving sequence's longest gap:
        # the steps whose duration no later step reaches (suffix maxima, decreasing), by
        # number; the first at or after step k is the longest since k (O(log n), exact).
        self._max_idx: list[int] = []
        self._max_dur: list[float] = []
        self._prefix: dict[str, list[int]] = {}  # key -> [blocks, references], oldest first
        self._cached_blocks = 0
        self._own_blocks = 0
        self._last_end = 0.0
        self.done: list[RequestTiming] = []
        self.itl = ItlPool()
        self.steps = 0
        self.preemptions = 0
        self.busy_s = 0.0

    # -- state -------------------------------------------------------------------------
    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def kv_blocks_used(self) -> int:
        return self._own_blocks + self._cached_blocks

    @property
    def kv_usage(self) -> float:
        """Fraction of the KV blocks in use (cached prefixes included), like vLLM's gauge."""
        if not self._limited:
            return 0.0
        return min(1.0, self.kv_blocks_used / self.config.kv_blocks)

    def idle(self) -> bool:
        return not self._running and not self._waiting

    def add(self, req: SimRequest) -> None:
        """Queue a request (it waits until a step admits it)."""
        if req.prompt_tokens < 1 or req.output_tokens < 1:
            raise ValueError(f"request {req.id}: prompt_tokens and output_tokens must be >= 1")
        self._waiting.append(_Seq(req))

    def pop_done(self) -> list[RequestTiming]:
        """The requests finished since the last call (the live server drains them)."""
        done, self.done = self.done, []
        return done

    # -- the cohort ----------------------------------------------------------------------
    def _join(self, s: _Seq) -> None:
        """s decodes from the next step (number self.steps) on, one token a step."""
        g = self.steps
        s.base_step, s.base_c, s.base_out = g, s.computed, s.out
        self._residue[(s.base_c - g) % self._bs] += 1
        self._cohort_kv += s.computed
        del self._explicit[s.req.id]
        self._cohort[s.req.id] = s
        self._tiebreak += 1
        heapq.heappush(self._ends, (g + s.req.output_tokens - s.out - 1, self._tiebreak, s))

    def _leave(self, s: _Seq, steps_done: int) -> None:
        """Bring s's counters up to date after `steps_done` steps and take it out."""
        k = steps_done - s.base_step
        s.computed, s.out = s.base_c + k, s.base_out + k
        s.tokens = s.req.prompt_tokens + s.out
        if self._limited:
            s.own = -(-s.computed // self._bs) - s.shared
        if k > 0:
            s.last_token = self._last_end
            # steps_done is always the number of steps run so far (the stack's end)
            longest = self._max_dur[bisect_left(self._max_idx, s.base_step)]
            if longest > s.itl_max:
                s.itl_max = longest
        self._residue[(s.base_c - s.base_step) % self._bs] -= 1
        self._cohort_kv -= s.computed
        del self._cohort[s.req.id]

    def _dissolve(self) -> None:
        """Every cohort sequence explicit again, in admission order (for the full path)."""
        if not self._cohort:
            return
        for s in list(self._cohort.values()):
            self._leave(s, self.steps)
        self._explicit = {k: s for k, s in self._running.items()}
        self._ends.clear()
        self._cohort_kv = 0

    # -- KV blocks ---------------------------------------------------------------------
    def _free(self) -> int:
        return self.config.kv_blocks - self._own_blocks - self._cached_blocks

    def _ensure(self, need: int) -> bool:
        """Make `need` blocks free, evicting unreferenced cached prefixes oldest first."""
        if not self._limited or need <= self._free():
            return True
        for key in [k for k, v in self._prefix.items() if v[1] == 0]:
            self._cached_blocks -= self._prefix.pop(key)[0]
            if need <= self._free():
                return True
        return need <= self._free()

    def _blocks_for(self, s: _Seq, n: int) -> int:
        if not self._limited:
            return 0
        return max(0, -(-(s.computed + n) // self._bs) - s.shared - s.own)

    def _release(self, s: _Seq) -> None:
        self._own_blocks -= s.own
        s.own = 0
        if s.ref is not None:
            entry = self._prefix.get(s.ref)
            if entry is not None:
                entry[1] -= 1
            s.ref = None
        s.shared = 0

    def _lookup_prefix(self, s: _Seq) -> None:
        """On admission: reuse the cached full blocks of this request's prefix."""
        key = s.req.prefix_key
        if not self.config.prefix_caching or key is None or s.computed:
            return
        entry = self._prefix.pop(key, None)
        if entry is None:
            return
        self._prefix[key] = entry  # most recently used last
        blocks = min(entry[0], (s.tokens - 1) // self._bs)  # at least one token is computed
        if blocks <= 0:
            return
        entry[1] += 1
        s.ref, s.shared, s.computed = key, blocks, blocks * self._bs
        s.cached += blocks * self._bs

    def _register_prefix(self, s: _Seq) -> None:
        """Once a request's prefix is computed, its full blocks become shareable."""
        key = s.req.prefix_key
        if (not self.config.prefix_caching or key is None or s.ref is not None
                or key in self._prefix or s.computed < s.req.prefix_tokens):
            return
        blocks = s.req.prefix_tokens // self._bs
        if blocks <= 0:
            return
        self._prefix[key] = [blocks, 1]
        s.ref, s.shared = key, blocks
        if self._limited:
            s.own -= blocks
            self._own_blocks -= blocks
            self._cached_blocks += blocks

    def _preempt(self, s: _Seq) -> None:
        self._release(s)
        s.computed = 0
        s.tokens = s.req.prompt_tokens + s.out
        s.preemptions += 1
        self.preemptions += 1
        del self._running[s.req.id]
        self._explicit.pop(s.req.id, None)
        self._waiting.appendleft(s)

    # -- one step ----------------------------------------------------------------------
    def _fast_ok(self, budget: int) -> int | None:
        """Blocks the cohort needs this step if the step can run without touching it (no
        preemption, every decode in budget); None when the full path must run."""
        n = len(self._cohort)
        if n > budget:
            return None
        need_dec = self._residue[(-self.steps) % self._bs] if self._limited else 0
        if not self._explicit:
            return need_dec if self._ensure(need_dec) else None
        need, left = need_dec, budget - n
        for s in self._explicit.values():
            if left <= 0:
                break
            k = min(s.tokens - s.computed, left)
            need += self._blocks_for(s, k)
            left -= k
        return need_dec if self._ensure(need) else None

    def _schedule(self, now_s: float, budget: int) -> tuple[list[tuple[_Seq, int]], list[str]]:
        """vLLM v1's rules over the explicit sequences (see simulator.py)."""
        scheduled: list[tuple[_Seq, int]] = []
        preempted: list[str] = []
        running = list(self._explicit.values()) if self._explicit else []
        i = 0
        while i < len(running) and budget > 0:
            s = running[i]
            n = min(s.tokens - s.computed, budget)
            need = self._blocks_for(s, n)
            while not self._ensure(need):
                victim = running.pop()
                self._preempt(victim)
                preempted.append(victim.req.id)
                if victim is s:
                    break
            else:
                s.own += need
                self._own_blocks += need
                scheduled.append((s, n))
                budget -= n
                i += 1
                continue
            break
        if preempted:
            return scheduled, preempted
        cap = self._cap
        waiting = self._waiting
        if not waiting or budget <= 0 or len(self._running) >= cap:
            return scheduled, preempted
        while waiting and budget > 0 and len(self._running) < cap:
            s = self._waiting[0]
            self._lookup_prefix(s)
            n = min(s.tokens - s.computed, budget)
            need = self._blocks_for(s, n)
            if not self._ensure(need):
                if s.ref is not None:  # give the prefix back; it is looked up again later
                    s.cached -= s.computed
                    self._release(s)
                    s.computed = 0
                break
            self._waiting.popleft()
            s.own += need
            self._own_blocks += need
            if s.first_sched is None:
                s.first_sched = now_s
            self._running[s.req.id] = s
            self._explicit[s.req.id] = s
            scheduled.append((s, n))
            budget -= n
        return scheduled, preempted

    def step(self, now_s: float, detail: bool = True) -> StepResult | None:
        """Schedule and run one forward pass starting at now_s; None when there is nothing
        to run (idle). `detail=False` leaves the cohort's ids out of the result (speed)."""
        if not self._running and not self._waiting:
            return None
        budget = self._budget
        need_dec = self._fast_ok(budget)
        if need_dec is None:
            self._dissolve()
            need_dec = 0
        n_dec = len(self._cohort)
        self._own_blocks += need_dec
        scheduled, preempted = self._schedule(now_s, budget - n_dec)
        if not scheduled and not n_dec:
            if preempted or self._waiting:
                raise RuntimeError(
                    "simulator: a request does not fit in the KV cache even alone "
                    f"(kv_blocks={self.config.kv_blocks}, block_size={self._bs})")
            return None
        prefill_tokens, decodes, kv = 0, n_dec, self._cohort_kv + n_dec
        prefill: dict[str, int] = {}
        for s, n in scheduled:
            kv += s.computed + n
            if n == 1 and s.out and s.computed == s.tokens - 1:
                decodes += 1
            else:
                prefill_tokens += n
                prefill[s.req.id] = n
        if self._noisy:  # the step's duration, and into the longest-step stack
            dur = self.step_model.sample_seconds(prefill_tokens, decodes, kv, self.rng)  # type: ignore[attr-defined]
        else:
            dur = self.step_model.step_seconds(prefill_tokens, decodes, kv)
        end = now_s + dur
        m_idx, m_dur = self._max_idx, self._max_dur
        while m_dur and m_dur[-1] <= dur:
            m_dur.pop()
            m_idx.pop()
        m_idx.append(self.steps)
        m_dur.append(dur)
        tokens: list[str] = list(self._cohort) if detail else []
        finished: list[str] = []
        regular = n_dec
        g = self.steps
        self._cohort_kv += n_dec
        ends = self._ends
        while ends and ends[0][0] == g:  # cohort sequences emitting their last token now
            s = heapq.heappop(ends)[2]
            self._last_end = end
            self._leave(s, g + 1)
            finished.append(s.req.id)
            self._finish(s, end)
        for s, n in scheduled:
            s.computed += n
            if s.req.prefix_key is not None and s.ref is None:
                self._register_prefix(s)
            if s.computed < s.tokens:
                continue
            s.out += 1
            s.tokens += 1
            if detail:
                tokens.append(s.req.id)
            if s.first_token is None:
                s.first_token = end
            elif s.last_token == now_s:
                regular += 1
                if dur > s.itl_max:
                    s.itl_max = dur
            else:
                gap = end - s.last_token
                self.itl.other.append(gap)
                if gap > s.itl_max:
                    s.itl_max = gap
            s.last_token = end
            if s.out >= s.req.output_tokens:
                finished.append(s.req.id)
                del self._explicit[s.req.id]
                self._finish(s, end)
        if regular:
            self.itl.steps.append((dur, regular))
        self._last_end = end
        self.steps += 1
        self.busy_s += dur
        for s, _ in scheduled:  # decoding now: one token a step from here on
            if s.out and s.out < s.req.output_tokens and s.computed == s.tokens - 1 \
                    and s.req.id in self._explicit:
                self._join(s)
        return StepResult(now_s, dur, prefill, tokens, finished, preempted, len(self._running),
                          len(self._waiting), self.kv_blocks_used, decodes, kv)

    def advance_decode(self, now_s: float, until_s: float, max_steps: int | None = None
                       ) -> tuple[float, int]:
        """Run, in one tight loop, the steps that only advance the cohort: no explicit
        sequence, nobody admitted (the queue is empty, the sequence cap is reached or the
        budget is spent), no cohort sequence emitting its last token, its new KV blocks
        free, and each step starting before `until_s` (the next arrival). Each such step is
        exactly what `step` would do (same durations, same random draws, same ITL records);
        it stops where `step` would do anything else. Returns (time, steps run)."""
        cohort = self._cohort
        if self._explicit or not cohort:
            return now_s, 0
        n = len(cohort)
        budget = self.config.max_num_batched_tokens
        if n > budget or (self._waiting and budget > n
                          and len(self._running) < self.config.seq_cap):
            return now_s, 0
        ends, residue, bs, limited = self._ends, self._residue, self._bs, self._limited
        itl_append = self.itl.steps.append
        m_idx, m_dur = self._max_idx, self._max_dur
        if self._noisy:
            sample, rng = self.step_model.sample_seconds, self.rng  # type: ignore[attr-defined]
        else:
            sample, rng = None, None
        seconds = self.step_model.step_seconds
        g = self.steps
        stop = g + max_steps if max_steps is not None else -1
        t, kv, busy = now_s, self._cohort_kv, self.busy_s  # summed in step's order
        next_end = ends[0][0] if ends else -1
        while t < until_s and g != next_end and g != stop:
            if limited:
                need = residue[(-g) % bs]
                if need and not self._ensure(need):
                    break
                self._own_blocks += need
            kv += n
            dur = sample(0, n, kv, rng) if sample is not None else seconds(0, n, kv)
            while m_dur and m_dur[-1] <= dur:  # the longest-step stack, as in step
                m_dur.pop()
                m_idx.pop()
            m_idx.append(g)
            m_dur.append(dur)
            itl_append((dur, n))
            t += dur
            busy += dur
            g += 1
        done = g - self.steps
        if done:
            self._cohort_kv = kv
            self._last_end = t
            self.steps = g
            self.busy_s = busy
        return t, done

    def _finish(self, s: _Seq, end: float) -> None:
        self._release(s)
        del self._running[s.req.id]
        r = s.req
        first = s.first_token if s.first_token is not None else end
        tpot = (end - first) / (s.out - 1) if s.out > 1 else None
        self.done.append(RequestTiming(
            r.id, r.arrival_s, r.prompt_tokens, s.out, (s.first_sched or r.arrival_s) - r.arrival_s,
            first - r.arrival_s, end - r.arrival_s, tpot, s.preemptions, s.cached, s.itl_max))
