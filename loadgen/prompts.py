"""Prompts that hit their target token counts.

With a server that tokenizes (vLLM's /tokenize accepts chat messages and applies the chat
template, so the count is exactly the prompt_tokens the server will report), the filler is
sized by a few tokenize round trips. Without one, the chars-per-token ratio is calibrated
from the usage the server reports, so counts converge after the first responses.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

_WORDS = (
    "the contract shall remain in force until either party gives written notice of "
    "termination service level latency throughput capacity replica cluster request queue "
    "token cache memory bandwidth schedule batch prefill decode model weights context window "
    "summary clause liability warranty invoice customer support ticket escalation database "
    "function return value parameter exception handler module interface deployment rollout"
).split()


def filler(n_words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n_words))


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
    _tokens_per_word: float = 1.5
    _system: str | None = None
    _chars_per_token: float = 4.0

    def system_message(self) -> str | None:
        """The shared prefix: the same text for every request, built once to be
        `shared_prefix_tokens` long (the template tokens around it not counted)."""
        if self._system is None:
            system = self.system_prompt or ""
            if not system and self.shared_prefix_tokens > 0:
                rng = random.Random(self.seed)
                words = [rng.choice(_WORDS) for _ in range(4 * self.shared_prefix_tokens)]
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
            self._system = system
        return self._system or None

    def messages(self, user_text: str) -> list[dict[str, str]]:
        msgs = []
        if system := self.system_message():
            msgs.append({"role": "system", "content": system})
        msgs.append({"role": "user", "content": user_text})
        return msgs

    def count(self, messages: list[dict[str, str]]) -> int | None:
        """Exact prompt tokens from the server's /tokenize, or None when it has none."""
        if self._tokenize_ok is False:
            return None
        try:
            resp = self.client.post(
                f"{self.base_url}/tokenize",
                json={"model": self.model, "messages": messages},
                headers=self.headers,
                timeout=30,
            )
            if resp.status_code != 200:
                self._tokenize_ok = False
                return None
            self._tokenize_ok = True
            return int(resp.json()["count"])
        except (httpx.HTTPError, ValueError, KeyError):
            self._tokenize_ok = False
            return None

    def _fit(self, render: Callable[[int], list[dict[str, str]]], target: int, limit: int) -> int:
        """The word count n whose rendered messages come closest to `target` tokens
        (a few tokenize round trips: a secant step on tokens per word)."""
        base = self.count(render(0))
        if base is None or base >= target:
            return 0
        best_n, best_err = 0, target - base
        n = min(limit, max(1, round((target - base) / self._tokens_per_word)))
        for _ in range(8):
            got = self.count(render(n))
            if got is None:
                break
            err = target - got
            if abs(err) < abs(best_err):
                best_n, best_err = n, err
            if err == 0:
                break
            if got > base:
                self._tokens_per_word = (got - base) / n
            step = round(err / self._tokens_per_word) or (1 if err > 0 else -1)
            n = min(limit, max(0, n + step))
        return best_n

    def build(self, target_tokens: int, tag: str, rng: random.Random) -> list[dict[str, str]]:
        """Messages whose chat-formatted prompt is `target_tokens` long (as near as the
        tokenizer allows). `tag` makes the user turn unique, so a prefix cache can only
        reuse the shared system prompt."""
        head = f"[{tag}] "
        words = [rng.choice(_WORDS) for _ in range(4 * target_tokens + 8)]
        self.system_message()
        if self._tokenize_ok is False:
            n_chars = max(0, round(target_tokens * self._chars_per_token) - len(head))
            return self.messages(head + " ".join(words)[:n_chars])
        n = self._fit(lambda n: self.messages(head + " ".join(words[:n])), target_tokens,
                      len(words))
        return self.messages(head + " ".join(words[:n]))

    def observe(self, prompt_chars: int, prompt_tokens: int | None) -> None:
        """Calibrate chars/token from server usage (used when there is no tokenizer)."""
        if prompt_tokens and prompt_tokens > 0:
            self._chars_per_token = 0.8 * self._chars_per_token + 0.2 * (
                prompt_chars / prompt_tokens
            )
