"""What counts a prompt's tokens while the prompts are prepared: the server's own tokenizer
(asked only before the measured window) or a local one (`--tokenizer PATH_OR_HF_ID`, which
asks the server nothing at all).

Both count a chat request's prompt as vLLM does: the chat template applied with the
generation prompt, then tokenized without adding special tokens (the template holds them).
A completions request's prompt is the plain text, with the special tokens (BOS) added.

The local tokenizer is a `tokenizers` tokenizer.json with the chat template found beside it
(tokenizer_config.json's `chat_template` or chat_template.jinja), rendered with Jinja2 the
way transformers renders it; a model folder is loaded with transformers' AutoTokenizer
instead where transformers is installed (as the servers load it). A Hugging Face id is
resolved to its files in the local Hugging Face cache, downloaded only where the Hub can be
reached and HF_HUB_OFFLINE is not set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from servescope.loadgen.openai_chat import flatten_messages

Message = dict[str, str]

SERVER = "server_tokenizer"  # counted by the server's tokenizer before the run
LOCAL = "local_tokenizer"  # counted by --tokenizer, on this machine
ESTIMATE = "estimate"  # sized from lengths calibrated before the run (or chars per token)
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "config.json", "chat_template.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt"]


class TokenizerError(ValueError):
    """A --tokenizer that cannot be loaded or used; the message names it."""


class ServerTokenizer:
    """The measured server's tokenizer, for the preparation only: `seal()` ends its use, and
    after that `count` answers None without a request, so nothing but measured requests
    reaches the server during the run.

    vLLM: /tokenize takes the chat messages, applies the template and says `count`.
    llama.cpp: /tokenize takes text only (it answers chat messages with no tokens), so the
    messages go through /apply-template first, then the prompt is tokenized as the server
    will (special tokens added and parsed). The dialect is found on first use."""

    source = SERVER

    def __init__(self, base_url: str, model: str, client: httpx.Client,
                 headers: dict[str, str] | None = None, text_prompt: bool = False) -> None:
        self.base_url, self.model, self.client = base_url, model, client
        self.headers = dict(headers or {})
        self.text_prompt = text_prompt  # /v1/completions: the flattened text is the prompt
        self.works: bool | None = None  # None until the first count
        self.dialect: str | None = None  # "vllm" or "llamacpp" once a count worked
        self.sealed = False
        self.requests = 0  # requests sent to the server (all before the run)

    def seal(self) -> None:
        self.sealed = True

    def count(self, messages: Sequence[Message]) -> int | None:
        """Exact prompt tokens, or None when the server cannot count them (or is sealed)."""
        if self.sealed or self.works is False:
            return None
        try:
            got = self._count(list(messages))
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            got = None
        if got is None:
            if self.works is None:
                self.works = False
            return None
        self.works = True
        return got

    def _count(self, messages: list[Message]) -> int | None:
        text = flatten_messages(list(messages)) if self.text_prompt else None
        if self.dialect != "llamacpp":
            body: dict[str, Any] = ({"model": self.model, "prompt": text} if text is not None
                                    else {"model": self.model, "messages": messages})
            got = self._post("/tokenize", body)
            if got is not None and "count" in got:
                self.dialect = "vllm"
                return int(got["count"])
            if self.dialect == "vllm":
                return None
        if text is None:
            templated = self._post("/apply-template", {"messages": messages})
            if templated is None:
                return None
            text = templated["prompt"]
        tokens = self._post("/tokenize", {"content": text, "add_special": True,
                                          "parse_special": True})
        if tokens is None or not isinstance(tokens.get("tokens"), list):
            return None
        self.dialect = "llamacpp"
        return len(tokens["tokens"])

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """The server's JSON answer, or None when the path is not there (not a 200)."""
        self.requests += 1
        resp = self.client.post(f"{self.base_url}{path}", json=body, headers=self.headers,
                                timeout=30)
        return resp.json() if resp.status_code == 200 else None


class LocalTokenizer:
    """A tokenizer on this machine: counts every prompt, before and during the run, without
    asking the server. `name` is what the user gave (a path or a Hugging Face id)."""

    source = LOCAL

    def __init__(self, name: str, encode: Any, template: str | None,
                 specials: dict[str, str], text_prompt: bool = False,
                 renderer: Any = None) -> None:
        self.name, self._encode, self.template_text = name, encode, template
        self.specials, self.text_prompt = specials, text_prompt
        self._renderer = renderer  # transformers' apply_chat_template, where it loaded it
        self._template: Any = None

    def for_text_prompts(self, text_prompt: bool) -> LocalTokenizer:
        """The same tokenizer counting flattened text prompts (/v1/completions) or not."""
        return LocalTokenizer(self.name, self._encode, self.template_text, self.specials,
                              text_prompt, self._renderer)

    def render(self, messages: Sequence[Message]) -> str:
        """The chat template applied to `messages`, with the generation prompt."""
        if self._renderer is not None and self.template_text is not None:
            return str(self._renderer(list(messages)))
        if self.template_text is None:
            raise TokenizerError(f"--tokenizer {self.name}: it has no chat template (no "
                                 "chat_template in tokenizer_config.json, no "
                                 "chat_template.jinja), so a chat prompt cannot be counted")
        if self._template is None:
            self._template = _compile(self.template_text)
        return self._template.render(messages=list(messages), add_generation_prompt=True,
                                     tools=None, **self.specials)

    def count(self, messages: Sequence[Message]) -> int:
        if self.text_prompt:
            return len(self._encode(flatten_messages(list(messages)), True))
        return len(self._encode(self.render(messages), False))


def _compile(source: str) -> Any:
    """A chat template compiled as transformers compiles it (sandboxed, trim_blocks,
    lstrip_blocks, loop controls, its tojson and helper functions)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise TokenizerError(f"the chat template does not compile: {exc}") from None


def load_tokenizer(spec: str) -> LocalTokenizer:
    """A tokenizer.json file, a model folder, or a Hugging Face id found in the local cache.
    A folder is loaded with transformers' AutoTokenizer where transformers is installed, as
    vLLM and SGLang load it (transformers 5 rebuilds some models' pipelines, e.g. Qwen2's
    pre-tokenizer, whatever tokenizer.json says), else its tokenizer.json with `tokenizers`.
    Raises TokenizerError naming `spec`."""
    path = Path(spec).expanduser()
    if path.is_file():
        return _from_tokenizer_json(spec, path, path.parent)
    folder = path if path.exists() else _from_hub(spec)
    file = folder / "tokenizer.json"
    if _has_transformers():
        try:
            return _from_transformers(spec, folder)
        except TokenizerError:
            if not file.is_file():
                raise
    if file.is_file():
        return _from_tokenizer_json(spec, file, folder)
    return _from_transformers(spec, folder)


def _has_transformers() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformers") is not None


def _from_tokenizer_json(spec: str, file: Path, folder: Path) -> LocalTokenizer:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as exc:  # the library raises plain Exceptions for bad files
        raise TokenizerError(f"--tokenizer {spec}: {file} is not a tokenizers file "
                             f"({exc})") from None
    tok.no_truncation()
    tok.no_padding()
    config = _read_json(folder / "tokenizer_config.json", spec)
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"),
                        None)
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    elif template is None and (folder / "chat_template.json").is_file():
        template = _read_json(folder / "chat_template.json", spec).get("chat_template")
    specials = {key: _token_text(config.get(key)) for key in
                ("bos_token", "eos_token", "pad_token", "unk_token")}

    def encode(text: str, add_special: bool) -> list[int]:
        return tok.encode(text, add_special_tokens=add_special).ids

    return LocalTokenizer(spec, encode, template, specials)


def _from_transformers(spec: str, folder: Path) -> LocalTokenizer:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise TokenizerError(f"--tokenizer {spec}: no tokenizer.json in {folder}; such a "
                             "tokenizer needs the transformers package (pip install "
                             "transformers)") from None
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises many kinds for a bad folder
        raise TokenizerError(f"--tokenizer {spec}: transformers cannot load a tokenizer "
                             f"from {folder} ({type(exc).__name__}: {exc})") from None
    specials = {key: _token_text(getattr(tok, key, None)) for key in
                ("bos_token", "eos_token", "pad_token", "unk_token")}

    def encode(text: str, add_special: bool) -> list[int]:
        return tok.encode(text, add_special_tokens=add_special)

    def render(messages: list[Message]) -> str:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    return LocalTokenizer(spec, encode, getattr(tok, "chat_template", None), specials,
                          renderer=render)


def _from_hub(spec: str) -> Path:
    """The local folder of Hugging Face repo `spec`'s tokenizer files (the cache; the Hub
    only where it can be reached and HF_HUB_OFFLINE is not set)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError
    except ImportError:
        raise TokenizerError(f"--tokenizer {spec}: no such file or folder") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        return Path(snapshot_download(spec, allow_patterns=TOKENIZER_FILES,
                                      local_files_only=True))
    except HFValidationError:
        raise TokenizerError(f"--tokenizer {spec}: no such file or folder, and not a "
                             "Hugging Face model id") from None
    except Exception as cached_miss:
        if offline:
            raise TokenizerError(f"--tokenizer {spec}: no such file or folder, and not in "
                                 "the Hugging Face cache (HF_HUB_OFFLINE is set: "
                                 f"{type(cached_miss).__name__})") from None
    try:
        return Path(snapshot_download(spec, allow_patterns=TOKENIZER_FILES))
    except Exception as exc:
        raise TokenizerError(f"--tokenizer {spec}: no such file or folder, not in the Hugging "
                             f"Face cache, and not downloadable ({type(exc).__name__}: "
                             f"{str(exc)[:200]})") from None


def _read_json(path: Path, spec: str) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"--tokenizer {spec}: cannot read {path} ({exc})") from None
    return data if isinstance(data, dict) else {}


def _token_text(token: Any) -> str:
    """A special token as the template sees it: tokenizer_config.json holds a string or an
    AddedToken mapping ({"content": ...})."""
    if isinstance(token, dict):
        return str(token.get("content") or "")
    return "" if token is None else str(token)
