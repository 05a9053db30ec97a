"""Ask a running server what model it serves, for `servescope plan --model URL`.

Fetches the raw answers only (capacity/live_model.py reads them): vLLM's /v1/models and the
`vllm:cache_config_info` labels of /metrics, plus the config.json of the folder it serves
when that folder is on this machine; Ollama's /api/show; llama.cpp's /props and /v1/models,
plus the GGUF file's metadata when that file is on this machine (PyPI `gguf`, llama.cpp's
own reader). A server that answers none of them is an error naming the URL.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from servescope.collectors.manifest import detect_runtime
from servescope.collectors.scrape import ScrapeError, describe_http_error, scrape

RUNTIMES = ("auto", "vllm", "ollama", "llamacpp")


class ModelInfoError(RuntimeError):
    """The server did not say what it serves; str() names the URL and what failed."""


@dataclass
class ServerAnswers:
    """What one server answered (None where an endpoint did not)."""

    runtime: str
    url: str
    model: str | None = None
    models: dict[str, Any] | None = None          # /v1/models
    cache_config: dict[str, str] | None = None    # vLLM: cache_config_info labels (engine 0)
    engines: int = 0                              # vLLM: engines reporting a cache config
    config: dict[str, Any] | None = None          # vLLM: the served folder's config.json
    config_source: str | None = None
    show: dict[str, Any] | None = None            # Ollama: /api/show
    props: dict[str, Any] | None = None           # llama.cpp: /props
    gguf_meta: dict[str, Any] | None = None       # llama.cpp: the GGUF file's key/values
    tensor_names: list[str] | None = None
    errors: list[str] = field(default_factory=list)


def _get(client: httpx.Client, url: str, errors: list[str], **kw: Any) -> Any:
    try:
        resp = client.request("POST" if "json" in kw else "GET", url, **kw)
        resp.raise_for_status()
        return resp.json()
    except httpx.HTTPError as exc:
        errors.append(describe_http_error(url, exc))
    except ValueError:
        errors.append(f"{url}: not JSON")
    return None


def read_config(root: str) -> tuple[dict[str, Any] | None, str | None]:
    """The config.json of a served model folder, when it is on this machine."""
    path = Path(root).expanduser() / "config.json"
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text("utf-8"))
        if isinstance(data, dict):
            return data, str(path)
    return None, None


def read_gguf(path: str) -> tuple[dict[str, Any] | None, list[str] | None]:
    """A GGUF file's metadata (tokenizer arrays reduced to their length, for the vocabulary
    size) and tensor names; (None, None) when the file is not here or not a GGUF."""
    file = Path(path).expanduser()
    if not path or not file.is_file():
        return None, None
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(file))
        meta: dict[str, Any] = {}
        for key, fld in reader.fields.items():
            if key.startswith("tokenizer.ggml."):
                if key == "tokenizer.ggml.tokens":
                    meta[key] = [None] * len(fld.data)
                continue
            meta[key] = fld.contents()
        return meta, [t.name for t in reader.tensors]
    except Exception:  # a truncated or foreign file: the architecture stays unknown
        return None, None


def fetch_answers(url: str, runtime: str = "auto", model: str | None = None,
                  client: httpx.Client | None = None, timeout: float = 10.0) -> ServerAnswers:
    """Ask the server at `url` (its base URL) what it serves."""
    if runtime not in RUNTIMES:
        raise ModelInfoError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    base = url.rstrip("/").removesuffix("/metrics").removesuffix("/v1")
    own = client is None
    client = client or httpx.Client(timeout=timeout)
    try:
        if runtime == "auto":
            runtime = detect_runtime(base, client)
        answers = ServerAnswers(runtime, base, model)
        if runtime == "ollama":
            _ollama(answers, client)
        elif runtime == "llamacpp":
            _llamacpp(answers, client)
        else:
            _vllm(answers, client)
    finally:
        if own:
            client.close()
    return answers


def _fail(answers: ServerAnswers, what: str) -> None:
    why = "; ".join(answers.errors) or "no answer"
    raise ModelInfoError(f"{answers.url}: {what} ({why})")


def _vllm(a: ServerAnswers, client: httpx.Client) -> None:
    a.models = _get(client, f"{a.url}/v1/models", a.errors)
    if not isinstance(a.models, dict) or not a.models.get("data"):
        _fail(a, "no model listed at /v1/models (is this a vLLM server? try --runtime)")
    try:
        info = scrape(a.url, "vllm", client=client).info.get("cache_config") or {}
    except ScrapeError as exc:
        a.errors.append(str(exc))
        info = {}
    engines = [labels for labels in info.values() if isinstance(labels, dict)]
    a.engines = len(engines)
    a.cache_config = engines[0] if engines else None
    data = a.models["data"]
    entry = next((d for d in data if d.get("id") == a.model), data[0])
    a.model = entry.get("id")
    a.config, a.config_source = read_config(str(entry.get("root") or ""))


def _ollama(a: ServerAnswers, client: httpx.Client) -> None:
    if a.model is None:
        tags = _get(client, f"{a.url}/api/tags", a.errors) or {}
        loaded = _get(client, f"{a.url}/api/ps", a.errors) or {}
        names = [m.get("name") for m in (loaded.get("models") or tags.get("models") or [])]
        if not names:
            _fail(a, "Ollama lists no model at /api/ps or /api/tags; name one")
        a.model = names[0]
    a.show = _get(client, f"{a.url}/api/show", a.errors, json={"model": a.model})
    if not isinstance(a.show, dict):
        _fail(a, f"/api/show did not describe model {a.model!r}")


def _llamacpp(a: ServerAnswers, client: httpx.Client) -> None:
    a.props = _get(client, f"{a.url}/props", a.errors)
    if not isinstance(a.props, dict):
        _fail(a, "no /props (is this a llama.cpp server?)")
    a.models = _get(client, f"{a.url}/v1/models", a.errors)
    a.model = a.model or a.props.get("model_alias") or a.props.get("model_path")
    a.gguf_meta, a.tensor_names = read_gguf(str(a.props.get("model_path") or ""))
