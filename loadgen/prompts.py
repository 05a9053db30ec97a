"""What each request sends: prompts that hit their target token counts, and conversations
whose turns carry their history.

With a server that tokenizes (vLLM's /tokenize accepts chat messages and applies the chat
template; llama.cpp's /apply-template then /tokenize do the same in two steps, so the count
is exactly the prompt_tokens the server will report), the filler is sized by a few tokenize
round trips. Without one, the chars-per-token ratio is calibrated
from the usage the server reports, so counts converge after the first responses.

Everything random is drawn from generators seeded by the scenario's seed and the
conversation's (and turn's) number, so a seed gives the same lengths and prompts whichever
user or greenlet happens to send them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from servescope.loadgen.scenario import Scenario, Workload

from servescope.core.records import RequestRecord

_WORDS = (
    "the contract shall remain in force until either party gives written notice of "
    "termination service level latency throughput capacity replica cluster request queue "
    "token cache memory bandwidth schedule batch prefill decode model weights context window "
    "summary clause liability warranty invoice customer support ticket escalation database "
    "function return value parameter exception handler module interface deployment rollout"
).split()

Message = dict[str, str]


def filler(n_words: int, rng: random.Random) -> str:
    return " ".join(rng.choices(_WORDS, k=n_words))


@dataclass
class PromptBuilder:
    base_url: str
    model: str
    client: httpx.Client
    shared_prefix_tokens: int = 0
    system_prompt: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    _tokenize_ok: bool | None = None
    _dialect: str | None = None  # "vllm" or "llamacpp" once a count worked
    _tokens_per_word: float = 1.5
    _systems: dict[int, str] = field(default_factory=dict)
    _chars_per_token: float = 4.0
    _pad_unit: str | None = None  # a filler the server's tokenizer counts as one token

    def system_message(self, group: int = 0) -> str | None:
        """The shared prefix of prefix group `group`: the same text for every request of the
        group, built once to be `shared_prefix_tokens` long (the template tokens around it
        not counted). Groups differ in their words, so each is its own prefix."""
        if group not in self._systems:
            system = self.system_prompt or ""
            if not system and self.shared_prefix_tokens > 0:
                rng = random.Random(self.seed if group == 0 else f"{self.seed}:prefix:{group}")
                words = rng.choices(_WORDS, k=2 * self.shared_prefix_tokens + 8)
                empty = [{"role": "user", "content": ""}]
                base = self.count(empty)
                if base is None:
                    n_chars = round(self.shared_prefix_tokens * self._chars_per_token)
                    system = " ".join(words)[:n_chars]
                else:
                    n = self._fit(
                        lambda n: [{"role": "system", "content": " ".join(words[:n])}, *empty],
                        base + self.shared_prefix_tokens, len(words),
                    )
                    system = " ".join(words[:n])
            self._systems[group] = system
        return self._systems[group] or None

    def messages(
        self, user_text: str, group: int = 0, history: Sequence[Message] = ()
    ) -> list[Message]:
        msgs = []
        if system := self.system_message(group):
            msgs.append({"role": "system", "content": system})
        msgs.extend(history)
        msgs.append({"role": "user", "content": user_text})
        return msgs

    def count(self, messages: list[Message]) -> int | None:
        """Exact prompt tokens from the server, or None when it cannot count them.

        vLLM: /tokenize takes the chat messages, applies the template and says `count`.
        llama.cpp: /tokenize takes text only (it answers chat messages with no tokens), so
        the messages go through /apply-template first, then the prompt is tokenized as the
        server will (special tokens added and parsed). The dialect is found on first use."""
        if self._tokenize_ok is False:
            return None
        try:
            if self._dialect != "llamacpp":
                got = self._post("/tokenize", {"model": self.model, "messages": messages})
                if got is not None and "count" in got:
                    self._dialect, self._tokenize_ok = "vllm", True
                    return int(got["count"])
                if self._dialect == "vllm":
                    raise ValueError("no count")
            templated = self._post("/apply-template", {"messages": messages})
            tokens = None if templated is None else self._post(
                "/tokenize", {"content": templated["prompt"], "add_special": True,
                              "parse_special": True})
            if tokens is None:
                raise ValueError("no tokens")
            self._dialect, self._tokenize_ok = "llamacpp", True
            return len(tokens["tokens"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            self._tokenize_ok = False
            return None

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """The server's JSON answer, or None when the path is not there (not a 200)."""
        resp = self.client.post(f"{self.base_url}{path}", json=body, headers=self.headers,
                                timeout=30)
        return resp.json() if resp.status_code == 200 else None

    def _fit(self, render: Callable[[int], list[Message]], target: int, limit: int) -> int:
        """The word count n whose rendered messages come closest to `target` tokens: secant
        steps on tokens per word, then single-word steps once the step would revisit a
        count already tried (a word is 1-3 tokens, so big steps can oscillate)."""
        base = self.count(render(0))
        if base is None or base >= target:
            return 0
        tried: dict[int, int] = {0: target - base}  # words -> error in tokens
        per_word = self._tokens_per_word  # local: other greenlets fit concurrently
        n = min(limit, max(1, round((target - base) / per_word)))
        for _ in range(12):
            got = self.count(render(n))
            if got is None:
                break
            tried[n] = err = target - got
            if err == 0:
                break
            if got > base:
                per_word = (got - base) / n
            step = round(err / per_word) or (1 if err > 0 else -1)
            nxt = min(limit, max(0, n + step))
            if nxt in tried:  # would revisit: walk one word from the best so far
                best = min(tried, key=lambda k: abs(tried[k]))
                nxt = best + (1 if tried[best] > 0 else -1)
                if nxt in tried or not 0 <= nxt <= limit:
                    break
            n = nxt
        self._tokens_per_word = per_word
        return min(tried, key=lambda k: abs(tried[k]))

    def build(
        self,
        target_tokens: int,
        tag: str,
        rng: random.Random,
        group: int = 0,
        history: Sequence[Message] = (),
        new_tokens: int | None = None,
    ) -> list[Message]:
        """Messages whose chat-formatted prompt is `target_tokens` long in all (as near as
        the tokenizer allows): the group's system prompt, the `history`, then a new user turn
        of about `new_tokens` (default: all of the target). `tag` starts the user turn, so a
        prefix cache can only reuse the system prompt and the history."""
        head = f"[{tag}] "
        # Every word is at least one token, so twice the tokens in words is plenty.
        words = rng.choices(_WORDS, k=2 * (new_tokens or target_tokens) + 8)
        self.system_message(group)
        if self._tokenize_ok is None:  # find out once whether the server tokenizes
            self.count(self.messages(head, group, history))
        if self._tokenize_ok is False:
            before = sum(len(m["content"]) for m in self.messages("", group, history))
            n_chars = max(0, round(target_tokens * self._chars_per_token) - before - len(head))
            return self.messages(head + " ".join(words)[:n_chars], group, history)
        def render(n: int, pad: str = "") -> list[Message]:
            return self.messages(head + " ".join(words[:n]) + pad, group, history)

        n = self._fit(render, target_tokens, len(words))
        return self._pad(render, n, target_tokens)

    def _pad(self, render: Callable[..., list[Message]], n: int, target: int) -> list[Message]:
        """Close the last few tokens that whole words can't (a word is 1-3 tokens): back
        off to a count at or under the target, then pad with a filler that this tokenizer
        counts as exactly one token."""
        got = self.count(render(n))
        while got is not None and got > target and n > 0:
            n -= 1
            got = self.count(render(n))
        if got is None or got >= target:
            return render(n)
        unit = self._one_token_unit(render, n, got)
        if unit is None:
            return render(n)
        return render(n, unit * (target - got))

    def _one_token_unit(self, render: Callable[..., list[Message]], n: int, got: int) -> str | None:
        if self._pad_unit is None:  # found once; concurrent callers may both look
            found = ""
            for unit in (" x", " a", ".", " 0", "!"):
                if self.count(render(n, unit * 4)) == got + 4:
                    found = unit
                    break
            self._pad_unit = found
        return self._pad_unit or None

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
        rng = random.Random(f"{self.scenario.seed}:{self.index}:{self.turn}")
        if self.lengths is not None:
            new, output = self.lengths
        else:
            assert self.workload is not None
            new, output = self.workload.lengths(rng)
        request_id = f"{self.id}-t{self.turn}" if self.multi_turn else self.id
        target = new if self.turn == 0 else self._context_tokens + new
        messages = prompts.build(target, request_id, rng, self.group, self.history, new)
        priority = self.workload.priority if self.workload else None
        return Turn(request_id, messages, target, output, priority, self.index, self.turn)

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
