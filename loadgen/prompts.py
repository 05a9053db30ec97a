"""What each request sends: prompts that hit their target token counts, and conversations
whose turns carry their history.

Prompts are built before the measured window (loadgen/prepare.py), counted by a tokenizer:
a local one (`--tokenizer`) or the server's own (vLLM's /tokenize, llama.cpp's
/apply-template + /tokenize; loadgen/tokenizer.py), which is sealed once the preparation
ends, so during the run nothing but measured requests reaches the server.

A prompt is the group's system prompt, any history, then a user turn: the request's id, then
filler words, then one-token pads. Before the first prompt, `calibrate` measures what each
filler word costs in tokens, a pad that counts as exactly one token, and the template tokens
one more turn adds. A prompt is then planned from that table (the most words that fit, pads
for the rest) and counted once; if the id's tokens made it miss, it is planned again from
the count (rarely a second count). What is built during the run without a local tokenizer
(a conversation's later turns, which carry the real answer, and prompts past the prepared
ones) is planned from the same table and recorded as an estimate. With no tokenizer at all,
lengths come from a chars-per-token ratio, calibrated from the usage the server reports.

Everything random is drawn from generators seeded by the scenario's seed and the
conversation's (and turn's) number, so a seed gives the same lengths and prompts whichever
user or greenlet happens to send them.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

from servescope.core.records import RequestRecord
from servescope.loadgen.scenario import Scenario, Workload
from servescope.loadgen.tokenizer import ESTIMATE, LocalTokenizer, ServerTokenizer

_WORDS = (
    "the contract shall remain in force until either party gives written notice of "
    "termination service level latency throughput capacity replica cluster request queue "
    "token cache memory bandwidth schedule batch prefill decode model weights context window "
    "summary clause liability warranty invoice customer support ticket escalation database "
    "function return value parameter exception handler module interface deployment rollout"
).split()
_PAD_UNITS = (" x", " a", ".", " 0", "!")  # candidates for a one-token pad
_REFERENCE_TAG = "[local-0000000-00000000] "  # an id of the usual shape, for calibration
_FIT_ROUNDS = 5

Message = dict[str, str]
Render = Callable[[int, int], list[Message]]  # (words, pads) -> messages


@dataclass
class PromptBuilder:
    base_url: str
    model: str
    client: httpx.Client
    shared_prefix_tokens: int = 0
    system_prompt: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    tokenizer: LocalTokenizer | None = None  # --tokenizer: the server is never asked
    text_prompt: bool = False  # /v1/completions: the prompt is the flattened text
    # request id -> (messages, how their length was obtained), built before the run
    prepared: dict[str, tuple[list[Message], str]] = field(default_factory=dict)
    server: ServerTokenizer | None = None
    _systems: dict[int, str] = field(default_factory=dict)
    _chars_per_token: float = 4.0
    _word_tokens: dict[str, int] | None = None  # tokens of " word", once calibrated
    _pad_unit: str = ""  # a filler this tokenizer counts as one token ("": none)
    _tag_tokens: int = 0  # tokens of an id, its brackets and space
    _turn_tokens: int = 0  # template tokens of one more assistant answer and user message
    _system_tokens: int = 0  # template tokens of a system message
    _empty_tokens: int = 0  # a lone empty user message
    _fixed: dict[int, int] = field(default_factory=dict)  # group -> first turn's non-filler

    def __post_init__(self) -> None:
        if self.tokenizer is not None:
            self.tokenizer = self.tokenizer.for_text_prompts(self.text_prompt)
        elif self.server is None:
            self.server = ServerTokenizer(self.base_url, self.model, self.client, self.headers,
                                          self.text_prompt)

    # -- counting ---------------------------------------------------------------------------
    @property
    def source(self) -> str:
        """How the lengths of prompts built now are obtained."""
        if self.tokenizer is not None:
            return self.tokenizer.source
        if self.server is not None and not self.server.sealed and self.server.works:
            return self.server.source
        return ESTIMATE

    def count(self, messages: list[Message]) -> int | None:
        """Exact prompt tokens, or None when nothing here can count them (no tokenizer, or
        the server's, sealed for the run)."""
        if self.tokenizer is not None:
            return self.tokenizer.count(messages)
        return self.server.count(messages) if self.server is not None else None

    def seal(self) -> None:
        """The preparation is over: the server's tokenizer is not asked again."""
        if self.server is not None:
            self.server.seal()

    def calibrate(self) -> None:
        """Measure, once, what sizes prompts without a count: each filler word's tokens, a
        one-token pad, and the template tokens of a system message, of an id and of one more
        turn. Without a tokenizer, nothing (lengths then come from chars per token)."""
        if self._word_tokens is not None:
            return
        def user(text: str) -> list[Message]:
            return [{"role": "user", "content": text}]

        empty, one = self.count(user("")), self.count(user(_REFERENCE_TAG + "the"))
        if empty is None or one is None:
            return
        table = {}
        for word in dict.fromkeys(_WORDS):
            got = self.count(user(f"{_REFERENCE_TAG}the {word}"))
            if got is None:
                return
            table[word] = max(0, got - one)
        self._empty_tokens, self._tag_tokens = empty, max(0, one - empty - table["the"])
        for unit in _PAD_UNITS:
            if self.count(user(_REFERENCE_TAG + "the" + unit * 4)) == one + 4:
                self._pad_unit = unit
                break
        turn = self.count([*user(_REFERENCE_TAG + "the"), {"role": "assistant", "content": "the"},
                           *user(_REFERENCE_TAG + "the")])
        system = self.count([{"role": "system", "content": "the"}, *user("")])
        self._turn_tokens = max(0, (turn or one) - 2 * one + empty - table["the"])
        self._system_tokens = max(0, (system or empty) - empty - table["the"])
        self._word_tokens = table

    def _plan(self, words: Sequence[str], need: float) -> tuple[int, int]:
        """(words, pads) of `need` tokens: the most words that fit, one-token pads for the
        rest (without a pad, the word count that comes closest)."""
        table = self._word_tokens or {}
        total, n = 0, 0
        while n < len(words) and total + table[words[n]] <= need:
            total += table[words[n]]
            n += 1
        rest = max(0, round(need - total))
        if self._pad_unit:
            return n, rest
        if n < len(words) and rest > table[words[n]] / 2:
            n += 1
        return n, 0

    def _filler_tokens(self, words: Sequence[str], n: int, pads: int) -> int:
        table = self._word_tokens or {}
        return sum(table[w] for w in words[:n]) + pads

    def _fit(self, render: Render, words: Sequence[str], target: int,
             fixed: int) -> tuple[list[Message], int | None, int]:
        """(messages, their count, the tokens besides the filler) nearest `target`: planned
        from the table with `fixed` tokens besides the filler, counted, and planned again
        from what the count says the rest costs. The plan depends only on the counted rest,
        so the same prompt comes out whatever the first guess was."""
        best: tuple[list[Message], int | None, int] | None = None
        for _ in range(_FIT_ROUNDS):
            n, pads = self._plan(words, target - fixed)
            messages = render(n, pads)
            got = self.count(messages)
            if got is None:
                return messages, None, fixed
            if best is None or abs(got - target) < abs((best[1] or 0) - target):
                best = (messages, got, fixed)
            actual = got - self._filler_tokens(words, n, pads)
            if got == target or actual == fixed:
                break
            fixed = actual
        assert best is not None
        return best[0], best[1], fixed

    # -- what is sent -----------------------------------------------------------------------
    def system_message(self, group: int = 0) -> str | None:
        """The shared prefix of prefix group `group`: the same text for every request of the
        group, built once to be `shared_prefix_tokens` long (the template tokens around it
        not counted). Groups differ in their words, so each is its own prefix."""
        if group not in self._systems:
            system = self.system_prompt or ""
            if not system and self.shared_prefix_tokens > 0:
                rng = random.Random(self.seed if group == 0 else f"{self.seed}:prefix:{group}")
                words = rng.choices(_WORDS, k=2 * self.shared_prefix_tokens + 8)
                self.calibrate()
                system = self._system_text(words)
            self._systems[group] = system
        return self._systems[group] or None

    def _system_text(self, words: list[str]) -> str:
        empty = [{"role": "user", "content": ""}]
        unit = self._pad_unit

        def render(n: int, pads: int) -> list[Message]:
            return [{"role": "system", "content": " ".join(words[:n]) + unit * pads}, *empty]

        base = self.count(empty) if self._word_tokens is not None else None
        if base is not None:
            messages, _, _ = self._fit(render, words, base + self.shared_prefix_tokens,
                                       base + self._system_tokens)
            return messages[0]["content"]
        if self._word_tokens is not None:  # sealed: planned from the table
            n, pads = self._plan(words, self.shared_prefix_tokens - self._system_tokens)
            return render(n, pads)[0]["content"]
        n_chars = round(self.shared_prefix_tokens * self._chars_per_token)
        return " ".join(words)[:n_chars]

    def messages(
        self, user_text: str, group: int = 0, history: Sequence[Message] = ()
    ) -> list[Message]:
        msgs = []
        if system := self.system_message(group):
            msgs.append({"role": "system", "content": system})
        msgs.extend(history)
        msgs.append({"role": "user", "content": user_text})
        return msgs

    def build(
        self,
        target_tokens: int,
        tag: str,
        rng: random.Random,
        group: int = 0,
        history: Sequence[Message] = (),
        new_tokens: int | None = None,
        context_tokens: int = 0,
    ) -> tuple[list[Message], str]:
        """(messages, how their length was obtained): the group's system prompt, the
        `history`, then a new user turn of about `new_tokens` (default: all of the target),
        `target_tokens` long in all as near as the tokenizer allows. `context_tokens` is
        what the history counted last time (its prompt plus answer), for sizing a turn
        without a count. `tag` starts the user turn, so a prefix cache can only reuse the
        system prompt and the history."""
        head = f"[{tag}] "
        # Every word is at least one token, so twice the tokens in words is plenty.
        words = rng.choices(_WORDS, k=2 * (new_tokens or target_tokens) + 8)
        self.calibrate()  # once; no request when there is no tokenizer (or it is sealed)
        self.system_message(group)
        unit = self._pad_unit

        def render(n: int, pads: int) -> list[Message]:
            return self.messages(head + " ".join(words[:n]) + unit * pads, group, history)

        source = self.source
        if source != ESTIMATE and self._word_tokens is not None:
            if history or group not in self._fixed:
                guess = self.count(render(0, 0)) if self.tokenizer else None
                fixed = guess if guess is not None else self._guess(group, history,
                                                                    context_tokens)
            else:
                fixed = self._fixed[group]
            messages, got, fixed = self._fit(render, words, target_tokens, fixed)
            if got is not None:
                if not history:
                    self._fixed[group] = fixed
                return messages, source
        if self._word_tokens is not None:  # calibrated before the run, not counted now
            fixed = self._guess(group, history, context_tokens)
            return render(*self._plan(words, target_tokens - fixed)), ESTIMATE
        before = sum(len(m["content"]) for m in self.messages("", group, history))
        n_chars = max(0, round(target_tokens * self._chars_per_token) - before - len(head))
        return self.messages(head + " ".join(words)[:n_chars], group, history), ESTIMATE

    def _guess(self, group: int, history: Sequence[Message], context_tokens: int) -> int:
        """Tokens of a prompt besides its filler, from the calibration: for a later turn, the
        last prompt and answer plus one more turn's template and an id; for a first turn,
        what the group's (or any group's) first turns measured."""
        if history:
            return context_tokens + self._turn_tokens + self._tag_tokens
        if group in self._fixed:
            return self._fixed[group]
        if self._fixed:
            return round(statistics.median(self._fixed.values()))
        return self._empty_tokens + self.shared_prefix_tokens + self._tag_tokens

    def observe(self, prompt_chars: int, prompt_tokens: int | None) -> None:
        """Calibrate chars/token from server usage (used when there is no tokenizer)."""
        if prompt_tokens and prompt_tokens > 0:
            self._chars_per_token = 0.8 * self._chars_per_token + 0.2 * (
                prompt_chars / prompt_tokens
            )


@dataclass
class Turn:
    """One request of a conversation, ready to send."""

    request_id: str
    messages: list[Message]
    target_prompt_tokens: int
    output_tokens: int
    priority: int | None
    conversation: int
    turn: int
    length_source: str = ESTIMATE  # how the prompt's length was obtained (tokenizer.py)


class Conversation:
    """A user's conversation: turn k's prompt is turn k-1's prompt, its answer and a new user
    message of the sampled length, so the context grows by every answer and question.

    A single-turn scenario is a conversation of one turn. Conversation `index` draws its
    request class, turn count and prefix group from the seed; turn k draws its lengths and
    words from (seed, index, k). `lengths` fixes (prompt, output) instead, for trace replay.
    """

    def __init__(self, scenario: Scenario, index: int, worker: str = "local",
                 lengths: tuple[int, int] | None = None) -> None:
        self.scenario, self.index, self.lengths = scenario, index, lengths
        rng = random.Random(f"{scenario.seed}:{index}")
        workloads = scenario.workloads()
        self.workload: Workload | None = None
        if workloads:
            self.workload = (rng.choices(workloads, [c.weight for c in scenario.mix or []])[0]
                             if len(workloads) > 1 else workloads[0])
        turns = self.workload.turns if self.workload else None
        self.multi_turn = turns is not None
        self.turns = turns.sample(rng) if turns is not None else 1
        self.group = rng.randrange(scenario.prefix_groups)
        name = f"{self.workload.name}-" if scenario.mix and self.workload else ""
        self.id = f"{worker}-{name}{index:07d}-{rng.getrandbits(32):08x}"
        self.turn = 0
        self.history: list[Message] = []
        self._context_tokens = 0  # the last prompt plus its answer, as the server counted

    @property
    def done(self) -> bool:
        return self.turn >= self.turns

    def next_turn(self, prompts: PromptBuilder) -> Turn:
        """The next turn: a first turn as prepared before the run where it was, anything
        else built now (from the local tokenizer or the calibration: no server asked)."""
        rng = random.Random(f"{self.scenario.seed}:{self.index}:{self.turn}")
        if self.lengths is not None:
            new, output = self.lengths
        else:
            assert self.workload is not None
            new, output = self.workload.lengths(rng)
        request_id = f"{self.id}-t{self.turn}" if self.multi_turn else self.id
        target = new if self.turn == 0 else self._context_tokens + new
        prepared = prompts.prepared.pop(request_id, None) if self.turn == 0 else None
        if prepared is not None:
            messages, source = prepared
        else:
            messages, source = prompts.build(target, request_id, rng, self.group, self.history,
                                             new, self._context_tokens)
        priority = self.workload.priority if self.workload else None
        return Turn(request_id, messages, target, output, priority, self.index, self.turn,
                    source)

    def prepare(self, prompts: PromptBuilder) -> str:
        """Build this conversation's first turn now, before the run; its length source."""
        turn = self.next_turn(prompts)
        prompts.prepared[turn.request_id] = (turn.messages, turn.length_source)
        return turn.length_source

    def answered(self, turn: Turn, rec: RequestRecord, answer: str | None) -> None:
        """Carry the answer into the next turn's history; a failed turn ends the
        conversation (there is no answer to continue from)."""
        self.turn += 1
        if not rec.ok or answer is None:
            self.turns = self.turn
            return
        self.history = [m for m in turn.messages if m["role"] != "system"]
        self.history.append({"role": "assistant", "content": answer})
        self._context_tokens = ((rec.prompt_tokens or turn.target_prompt_tokens)
                                + (rec.output_tokens or turn.output_tokens))
