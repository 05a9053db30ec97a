"""The simulated engine: vLLM v1's scheduler (or fixed slots) over paged KV blocks.

Speed: a step touches only what changes. Sequences in steady decode (one token per step,
every step) form a cohort kept lazily: each remembers the step it joined and its counters
then, and its current counters follow from the step number. Per step the cohort costs a
few additions: its KV grows by one token per sequence, its new blocks are the sequences
whose length reaches a block boundary now (counted by residue), and the ones finishing come
off a heap. Anything else (a preemption, a budget too small for every decode) first turns
the cohort back into explicit sequences and takes the full path. The common steps (the
cohort decoding, requests whose whole prompt fits admitted, cohort sequences finishing)
run in one tight loop (`advance_decode`), step for step the same as `step`: what a
closed-loop run spends is mostly there, a few microseconds a request.
"""

from __future__ import annotations

import heapq
import random
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from heapq import heappop, heappush

from servescope.capacity.sim_types import (
    ItlPool,
    NoisyStepModel,
    RequestTiming,
    SchedulerConfig,
    SimRequest,
    StepModel,
    StepResult,
    prefill_pairs,
)


class _Seq:
    """A request inside the engine: counters, never a list of tokens. In the cohort,
    `computed`/`out`/`tokens`/`own` are stale; base_* and the step number give them. The
    request's fields are copied in (id, arrival, prompt, output, key, ptoks): the hot loops
    read them often."""

    __slots__ = ("arrival", "base_c", "base_out", "base_step", "cached", "computed",
                 "first_sched", "first_token", "id", "itl_max", "key", "last_token", "out",
                 "output", "own", "preemptions", "prompt", "ptoks", "ref", "shared", "tokens")

    def __init__(self, rid: str, arrival: float, prompt: int, output: int, key: str | None,
                 ptoks: int) -> None:
        self.id = rid
        self.arrival = arrival
        self.prompt = self.tokens = prompt  # tokens: prompt + outputs sampled so far
        self.output = output  # outputs wanted
        self.key = key  # the shared prefix, its tokens
        self.ptoks = ptoks
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
        # base_c, base_out, base_step: set when it joins the cohort


class Engine:
    """The scheduler and its KV blocks; `add` requests, call `step` at the time the previous
    step ended (or when work arrived) until it returns None. `advance_decode` runs the
    common steps faster, with the same results; `fast_paths = False` (on a subclass or an
    instance) turns it off, for checking it against `step`."""

    fast_paths = True
    # A driver's callback for advance_decode: feed(time) adds the requests due by then
    # and returns when the next one is due (math.inf: none).
    feed: Callable[[float], float] | None = None

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

    @staticmethod
    def check(req: SimRequest) -> None:
        """A request the engine can run: at least one prompt and one output token."""
        if req.prompt_tokens < 1 or req.output_tokens < 1:
            raise ValueError(f"request {req.id}: prompt_tokens and output_tokens must be >= 1")

    def add(self, req: SimRequest) -> None:
        """Queue a request (it waits until a step admits it)."""
        self.check(req)
        self.add_as(req, req.id, req.arrival_s)

    def add_as(self, req: SimRequest, rid: str, arrival_s: float) -> None:
        """Queue `req`, already `check`ed, under another id and arrival time (a closed-loop
        user's next request drawn from a pool, checked the first time) without building a
        SimRequest for it."""
        self._waiting.append(_Seq(rid, arrival_s, req.prompt_tokens, req.output_tokens,
                                  req.prefix_key, req.prefix_tokens))

    def abort(self, request_id: str) -> bool:
        """Drop a request whose client went away, as vLLM aborts it: out of the queue, or
        out of the running batch with its KV blocks freed (its prefix-cache references
        given back; the cached blocks stay, evictable). It is never finished (not in
        `done`). False when no such request is queued or running (finished, unknown).
        Call it between steps (not from `feed`: advance_decode holds the cohort's counters
        in locals)."""
        s = self._running.get(request_id)
        if s is None:
            for i, w in enumerate(self._waiting):
                if w.id == request_id:  # a queued request holds no blocks
                    del self._waiting[i]
                    return True
            return False
        if request_id in self._cohort:
            self._leave(s, self.steps)  # its counters (own blocks, computed) up to date
            ends = self._ends
            for i, e in enumerate(ends):
                if e[2] is s:
                    last = ends.pop()
                    if i < len(ends):
                        ends[i] = last
                        heapq.heapify(ends)
                    break
        else:
            del self._explicit[request_id]
        self._release(s)
        del self._running[request_id]
        return True

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
        del self._explicit[s.id]
        self._cohort[s.id] = s
        self._tiebreak += 1
        heapq.heappush(self._ends, (g + s.output - s.out - 1, self._tiebreak, s))

    def _leave(self, s: _Seq, steps_done: int) -> None:
        """Bring s's counters up to date after `steps_done` steps and take it out."""
        k = steps_done - s.base_step
        s.computed, s.out = s.base_c + k, s.base_out + k
        s.tokens = s.prompt + s.out
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
        del self._cohort[s.id]

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
        key = s.key
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
        key = s.key
        if (not self.config.prefix_caching or key is None or s.ref is not None
                or key in self._prefix or s.computed < s.ptoks):
            return
        blocks = s.ptoks // self._bs
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
        s.tokens = s.prompt + s.out
        s.preemptions += 1
        self.preemptions += 1
        del self._running[s.id]
        self._explicit.pop(s.id, None)
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
                preempted.append(victim.id)
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
            self._running[s.id] = s
            self._explicit[s.id] = s
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
        prefill_tokens, decodes, kv, pairs = 0, n_dec, self._cohort_kv + n_dec, 0
        prefill: dict[str, int] = {}
        for s, n in scheduled:
            kv += s.computed + n
            if n == 1 and s.out and s.computed == s.tokens - 1:
                decodes += 1
            else:
                prefill_tokens += n
                pairs += prefill_pairs(n, s.computed)
                prefill[s.id] = n
        if self._noisy:  # the step's duration, and into the longest-step stack
            dur = self.step_model.sample_seconds(prefill_tokens, decodes, kv, self.rng, pairs)  # type: ignore[attr-defined]
        else:
            dur = self.step_model.step_seconds(prefill_tokens, decodes, kv, pairs)
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
            finished.append(s.id)
            self._finish(s, end)
        for s, n in scheduled:
            s.computed += n
            if s.key is not None and s.ref is None:
                self._register_prefix(s)
            if s.computed < s.tokens:
                continue
            regular += self._sampled(s, now_s, end, dur)
            if detail:
                tokens.append(s.id)
            if s.out >= s.output:
                finished.append(s.id)
                del self._explicit[s.id]
                self._finish(s, end)
        if regular:
            self.itl.steps.append((dur, regular))
        self._last_end = end
        self.steps += 1
        self.busy_s += dur
        for s, _ in scheduled:  # decoding now: one token a step from here on
            if s.out and s.out < s.output and s.computed == s.tokens - 1 \
                    and s.id in self._explicit:
                self._join(s)
        return StepResult(now_s, dur, prefill, tokens, finished, preempted, len(self._running),
                          len(self._waiting), self.kv_blocks_used, decodes, kv)

    def advance_decode(self, now_s: float, until_s: float, max_steps: int | None = None
                       ) -> tuple[float, int]:
        """Run, in one tight loop, the steps that begin with every running sequence in the
        cohort (no prefill chunk under way, no preemption pending): each is exactly the
        step `step` would run (same durations and random draws, same ITL records, finish
        order, block accounting and prefix-cache state), without a StepResult.

        A pure decode step (nobody admitted: the queue is empty, the sequence cap is
        reached or the budget is spent; no cohort sequence emitting its last token) costs
        a few additions, as `step`'s cohort does. An event step (waiting requests admitted,
        cohort sequences finishing) is `step` with the cohort kept, inlined: `_fast_ok`
        with no explicit sequence reduces to the cohort's new blocks, `_schedule` to its
        admission loop (nothing explicit to schedule or preempt), and the rest is
        `step`'s, `_leave`'s, `_join`'s and `_finish`'s code in their order. An admitted
        request whose prompt is done emits its token and joins the cohort in that step,
        as in `step`; one still chunking stays explicit.

        It stops before a step that needs the full path (the cohort's new blocks do not
        fit: a preemption; more sequences than the budget; nobody running or
        admissible), after `max_steps`, after a step that leaves an explicit sequence,
        and, unless `feed` is set, after a step that finished a request and before a step
        starting at or after `until_s` (the next arrival). With `feed` set (a driver's
        callback, see sim_run) it calls feed(time) there instead: the driver issues the
        next closed-loop requests and adds those due by then, and the loop goes on until
        the next arrival time feed returns. Returns (time, steps run)."""
        if not self.fast_paths or self._explicit or not (self._running or self._waiting):
            return now_s, 0
        budget, cap, bs, limited = self._budget, self._cap, self._bs, self._limited
        kv_blocks, caching = self.config.kv_blocks, self.config.prefix_caching
        cohort, running, waiting, explicit = (self._cohort, self._running, self._waiting,
                                              self._explicit)
        ends, residue, prefix = self._ends, self._residue, self._prefix
        itl_append = self.itl.steps.append
        m_idx, m_dur = self._max_idx, self._max_dur
        ensure, feed = self._ensure, self.feed
        if self._noisy:  # one draw a step, as in step
            sample, rng = self.step_model.sample_seconds, self.rng  # type: ignore[attr-defined]

            def step_time(prefill_tokens: int, decodes: int, kv_tokens: int,
                          pairs: int = 0) -> float:
                return sample(prefill_tokens, decodes, kv_tokens, rng, pairs)
        else:
            step_time = self.step_model.step_seconds
        g = g0 = self.steps
        stop = g + max_steps if max_steps is not None else -1
        t, kv, busy, tb = now_s, self._cohort_kv, self.busy_s, self._tiebreak
        n = len(cohort)
        next_end = ends[0][0] if ends else -1
        while g != stop and n <= budget:
            if t >= until_s:
                if feed is None:
                    break
                until_s = feed(t)
            admit = waiting and n < budget and len(running) < cap
            if not admit:
                if not n:  # nothing running, nobody admissible: idle
                    break
                # pure decode steps, up to the next event
                while g != next_end and t < until_s and g != stop:
                    if limited:  # the cohort's new blocks, allocated first as in step
                        need = residue[(-g) % bs]
                        if need:
                            if need > kv_blocks - self._own_blocks - self._cached_blocks \
                                    and not ensure(need):
                                break
                            self._own_blocks += need
                    kv += n
                    dur = step_time(0, n, kv)
                    while m_dur and m_dur[-1] <= dur:  # the longest-step stack, as in step
                        m_dur.pop()
                        m_idx.pop()
                    m_idx.append(g)
                    m_dur.append(dur)
                    itl_append((dur, n))
                    t += dur
                    busy += dur
                    g += 1
                else:
                    if t >= until_s or g == stop:
                        continue  # the next arrival or max_steps: the outer loop sees it
                if g != next_end:  # the cohort's new blocks do not fit: a preemption
                    break
            if limited and n:  # an event step: the cohort's new blocks first
                need = residue[(-g) % bs]
                if need:
                    if need > kv_blocks - self._own_blocks - self._cached_blocks \
                            and not ensure(need):
                        break
                    self._own_blocks += need
            g1 = g + 1
            prefill_tokens, decodes, kv_step, pairs = 0, n, kv + n, 0
            fresh: list[_Seq] = []  # admitted, whole prompt now, decoding on: joined at once
            rest: list[tuple[_Seq, int]] = []  # other admissions: step's per-sequence code
            if admit:  # _schedule's admission loop
                left = budget - n
                while waiting and left > 0 and len(running) < cap:
                    s = waiting[0]
                    key = s.key
                    if caching and key is not None and not s.computed:  # _lookup_prefix
                        entry = prefix.pop(key, None)
                        if entry is not None:
                            prefix[key] = entry  # most recently used last
                            blocks = (s.tokens - 1) // bs
                            if entry[0] < blocks:
                                blocks = entry[0]
                            if blocks > 0:
                                entry[1] += 1
                                s.ref, s.shared, s.computed = key, blocks, blocks * bs
                                s.cached += blocks * bs
                    c = s.computed
                    k = s.tokens - c
                    if k > left:
                        k = left
                    if limited:
                        need = -(-(c + k) // bs) - s.shared - s.own
                        if need > 0:
                            if need > kv_blocks - self._own_blocks - self._cached_blocks \
                                    and not ensure(need):
                                if s.ref is not None:  # as _schedule: the prefix goes back
                                    s.cached -= c
                                    self._release(s)
                                    s.computed = 0
                                break
                            s.own += need
                            self._own_blocks += need
                    waiting.popleft()
                    if s.first_sched is None:
                        s.first_sched = t
                    running[s.id] = s
                    left -= k
                    kv_step += c + k
                    if not s.out and c + k == s.tokens and s.output > 1 and not rest:
                        # Its prompt is done at the step's end: it emits its first token
                        # and decodes on, so step would join it after the step. Joining it
                        # now is the same (the cohort's sequences finishing now are not
                        # it; the join order is the admission order); its token's time
                        # and its prefix wait for the step's end, below.
                        prefill_tokens += k
                        pairs += prefill_pairs(k, c)
                        s.computed = c = s.tokens
                        s.out, s.tokens = 1, c + 1
                        s.base_step, s.base_c, s.base_out = g1, c, 1
                        residue[(c - g1) % bs] += 1
                        kv += c
                        cohort[s.id] = s
                        tb += 1
                        heappush(ends, (g1 + s.output - 2, tb, s))
                        fresh.append(s)
                    else:
                        if k == 1 and s.out and c == s.tokens - 1:
                            decodes += 1
                        else:
                            prefill_tokens += k
                            pairs += prefill_pairs(k, c)
                        rest.append((s, k))
                if not n and not fresh and not rest:  # nothing fits: step raises
                    break
            dur = step_time(prefill_tokens, decodes, kv_step, pairs)
            end = t + dur
            while m_dur and m_dur[-1] <= dur:
                m_dur.pop()
                m_idx.pop()
            m_idx.append(g)
            m_dur.append(dur)
            regular = n
            kv += n
            finished = g == next_end
            while ends and ends[0][0] == g:  # cohort sequences emitting their last token
                s = heappop(ends)[2]
                k = g1 - s.base_step  # _leave(s, g + 1); k >= 1: it decoded since joining
                out, computed = s.base_out + k, s.base_c + k
                longest = m_dur[bisect_left(m_idx, s.base_step)]
                if longest > s.itl_max:
                    s.itl_max = longest
                residue[(s.base_c - s.base_step) % bs] -= 1
                kv -= computed
                del cohort[s.id]
                s.out, s.computed = out, computed
                if limited:  # its own blocks, as _leave counts them
                    s.own = -(-computed // bs) - s.shared
                self._finish(s, end)
            for s in fresh:
                s.first_token = s.last_token = end
                if s.key is not None and s.ref is None:
                    self._register_prefix(s)
            for s, k in rest:  # step's code for each scheduled sequence
                s.computed += k
                if s.key is not None and s.ref is None:
                    self._register_prefix(s)
                if s.computed >= s.tokens:
                    regular += self._sampled(s, t, end, dur)
                    if s.out >= s.output:
                        self._finish(s, end)
                        finished = True
                        continue
                if s.out and s.out < s.output and s.computed == s.tokens - 1:  # _join
                    s.base_step, s.base_c, s.base_out = g1, s.computed, s.out
                    residue[(s.computed - g1) % bs] += 1
                    kv += s.computed
                    cohort[s.id] = s
                    tb += 1
                    heappush(ends, (g1 + s.output - s.out - 1, tb, s))
                else:  # a prefill still chunking: the full path from the next step
                    explicit[s.id] = s
            if regular:
                itl_append((dur, regular))
            t = end
            busy += dur
            g = g1
            n = len(cohort)
            next_end = ends[0][0] if ends else -1
            if finished:
                if feed is None or g == stop:  # the caller takes over after the last
                    break
                until_s = feed(t)
            if explicit:
                break
        if g != g0:
            self._cohort_kv = kv
            self._last_end = t
            self.steps = g
            self.busy_s = busy
            self._tiebreak = tb
        return t, g - g0

    def _sampled(self, s: _Seq, start: float, end: float, dur: float) -> int:
        """s's prompt is computed and the step [start, end] of `dur` seconds sampled its
        next token: count it and record the gap since its previous one. Returns 1 when
        that gap is a regular one (its previous token ended the step before: pooled as
        the step's duration by the caller), else 0 (the first token, or a gap after a wait,
        kept one by one)."""
        s.out += 1
        s.tokens += 1
        regular = 0
        if s.first_token is None:
            s.first_token = end
        elif s.last_token == start:
            regular = 1
            if dur > s.itl_max:
                s.itl_max = dur
        else:
            gap = end - s.last_token
            self.itl.other.append(gap)
            if gap > s.itl_max:
                s.itl_max = gap
        s.last_token = end
        return regular

    def _finish(self, s: _Seq, end: float) -> None:
        """s emitted its last token at `end`: its blocks go back and its record goes to
        `done`."""
        self._release(s)
        del self._running[s.id]
        arrival, out = s.arrival, s.out
        first = s.first_token
        if first is None:
            first = end
        self.done.append(RequestTiming(
            s.id, arrival, s.prompt, out, (s.first_sched or arrival) - arrival,
            first - arrival, end - arrival, (end - first) / (out - 1) if out > 1 else None,
            s.preemptions, s.cached, s.itl_max))
