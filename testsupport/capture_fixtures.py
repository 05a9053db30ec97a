"""Re-capture tests/fixtures from the real local engines.

    python -m testsupport.capture_fixtures [vllm] [llamacpp] [ollama] [--out DIR] [--compare]

Starts each engine as the tests do (servescope/engines/vllm_cpu.py and testsupport/engines/,
installing it the first time), sends the same requests in the same order as the captured
files record, and writes the same files: raw response bodies, with this machine's paths
replaced by neutral ones, and for llama.cpp and Ollama a manifest of every request. Without
--out it writes to tests/fixtures (then review `git diff`: generated text, ids and timings
change on every capture; tests that pin counts may need their numbers updated). --compare
checks that each new file has the shape of the one in tests/fixtures (the same JSON keys,
the same metric families, the same kind of stream) and exits 1 if not.

SGLang's and TGI's pages are not captured (neither runs here): testsupport/pages_from_source.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
SYSTEM_AND_HELLO = [{"role": "system", "content": "you are a tiny model"},
                    {"role": "user", "content": "hello world"}]
SKY = {"prompt": "why is the sky blue", "seed": 42, "temperature": 0.8}


def _progress(msg: str) -> None:
    print(f"[capture] {msg}", file=sys.stderr, flush=True)


@dataclass
class Capture:
    """Writes each answer of one server under `prefix` and keeps a manifest of them."""

    out: Path
    prefix: str
    base: str
    rewrites: list[tuple[str, str]] = field(default_factory=list)  # (local path, neutral)
    manifest: list[dict[str, Any]] = field(default_factory=list)
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=300))

    def neutral(self, text: str) -> str:
        for local, neutral in self.rewrites:
            text = text.replace(local, neutral)
        return text

    def call(self, name: str | None, method: str, path: str, body: Any = None,
             note: str | None = None) -> httpx.Response:
        """One request; its body goes to `prefix + name` (None: not kept)."""
        t0 = time.perf_counter()
        resp = self.client.request(method, self.base + path, json=body)
        wall = round(time.perf_counter() - t0, 3)
        if name is not None:
            self.write(name, resp.text, method=method, path=path, request=body,
                       status=resp.status_code,
                       content_type=resp.headers.get("content-type"), wall_s=wall, note=note)
        return resp

    def write(self, name: str, text: str, **entry: Any) -> None:
        file = self.prefix + name
        (self.out / file).write_text(self.neutral(text), encoding="utf-8")
        self.manifest.append({"file": file, **{k: v for k, v in entry.items()
                                              if v is not None or k == "request"}})
        _progress(f"wrote {file}")

    def concurrent(self, name: str, path: str, bodies: list[dict[str, Any]],
                   while_running: Callable[[], None], note: str) -> None:
        """POST the bodies at once, call `while_running` while they run, then keep their
        answers one per line (re-serialised)."""
        with ThreadPoolExecutor(len(bodies)) as pool:
            futures = [pool.submit(self.client.post, self.base + path, json=b) for b in bodies]
            while_running()
            answers = [f.result().json() for f in futures]
        text = "".join(json.dumps(a) + "\n" for a in answers)
        self.write(name, text, note=note, request=None)

    def save_manifest(self) -> None:
        self.write("manifest.json", json.dumps(self.manifest, indent=2) + "\n", request=None)


def poll_until(get: Callable[[], httpx.Response], done: Callable[[httpx.Response], bool],
               timeout: float = 60.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        resp = get()
        if done(resp) or time.monotonic() > deadline:
            return resp
        time.sleep(0.005)


@contextmanager
def _running(server: Any) -> Iterator[Any]:
    try:
        yield server
    finally:
        server.stop()


# -- vLLM 0.32.0 CPU ------------------------------------------------------------------------
def capture_vllm(out: Path) -> None:
    """69 chat requests (68 at 16 at a time on 8 sequences, so some queue; then one stream),
    /v1/models, and /metrics once idle."""
    from servescope.engines.vllm_cpu import MODEL_NAME, VLLM_CPU_VERSION, start_local_vllm

    with _running(start_local_vllm(progress=_progress, max_num_seqs=8)) as server:
        model_dir = str(getattr(server, "model_dir", ""))
        cap = Capture(out, f"vllm-cpu-{VLLM_CPU_VERSION}-", server.url,
                      rewrites=[(model_dir, MODEL_NAME)] if model_dir else [])
        system = "You are a helpful assistant. Answer briefly and plainly. " * 8
        bodies = [{"model": MODEL_NAME, "max_tokens": 96 + (i * 37) % 160, "ignore_eos": True,
                   "messages": [{"role": "system", "content": system},
                                {"role": "user", "content": f"question {i}: why is the sky blue"}]}
                  for i in range(68)]
        with ThreadPoolExecutor(16) as pool:
            for resp in pool.map(lambda b: cap.client.post(cap.base + "/v1/chat/completions",
                                                           json=b), bodies):
                resp.raise_for_status()
        cap.call("chat-stream.txt", "POST", "/v1/chat/completions", {
            "model": MODEL_NAME, "messages": SYSTEM_AND_HELLO, "max_tokens": 12,
            "stream": True, "stream_options": {"include_usage": True}})
        cap.call("models.json", "GET", "/v1/models")
        poll_until(lambda: cap.client.get(cap.base + "/metrics"),
                   lambda r: "vllm:num_requests_running{" in r.text
                   and _gauge(r.text, "vllm:num_requests_running") == 0)
        cap.call("metrics.txt", "GET", "/metrics", note="after 69 requests, server idle")


def _gauge(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


# -- llama.cpp b11434 -----------------------------------------------------------------------
def capture_llamacpp(out: Path) -> None:
    """The llama-server flags the files were captured with; idle pages, single and streamed
    completions, then 6 concurrent completions on 2 slots (pages while they run), then idle."""
    from testsupport.engines.llamacpp_cpu import (
        LLAMACPP_TAG,
        LlamaCppServer,
        ensure_env,
        model_path,
    )

    server = LlamaCppServer(ensure_env(_progress), slots=2, ctx=1024, threads=2,
                            extra_args=["--no-webui"])
    server.start_and_wait(_progress)
    with _running(server):
        cap = Capture(out, f"llamacpp-{LLAMACPP_TAG}-", server.url,
                      rewrites=[(str(model_path()), "models/tiny.gguf")])
        cap.call("health.json", "GET", "/health")
        cap.call("props.json", "GET", "/props")
        cap.call("v1-models.json", "GET", "/v1/models")
        cap.call("metrics-idle.txt", "GET", "/metrics", note="before any completion request")
        cap.call("slots-idle.json", "GET", "/slots")
        cap.call("completion.json", "POST", "/completion", {**SKY, "n_predict": 24})
        cap.call("completion-stream.txt", "POST", "/completion",
                 {**SKY, "n_predict": 24, "stream": True})
        chat = {"messages": SYSTEM_AND_HELLO, "max_tokens": 24, "seed": 42}
        cap.call("chat-completions.json", "POST", "/v1/chat/completions", chat)
        cap.call("chat-completions-stream.txt", "POST", "/v1/chat/completions",
                 {**chat, "stream": True, "stream_options": {"include_usage": True}})

        def busy_pages() -> None:
            metrics = poll_until(lambda: cap.client.get(cap.base + "/metrics"),
                                 lambda r: _gauge(r.text, "llamacpp:requests_deferred") > 0)
            cap.call("slots-busy.json", "GET", "/slots",
                     note="sampled while 6 concurrent /completion run on 2 slots")
            cap.write("metrics-busy.txt", metrics.text, method="GET", path="/metrics",
                      status=metrics.status_code, note="first /metrics poll showing "
                      "requests_deferred > 0 while 6 concurrent /completion run on 2 slots")

        bodies = [{"prompt": f"concurrent request {i}", "n_predict": 480, "ignore_eos": True,
                   "seed": i} for i in range(6)]
        cap.concurrent("completion-concurrent.ndjson", "/completion", bodies, busy_pages,
                       "6 concurrent POST /completion bodies (re-serialised one per line)")
        cap.call("metrics.txt", "GET", "/metrics",
                 note="after 2 single + 2 stream + 6 concurrent requests")
        cap.call("slots.json", "GET", "/slots", note="after all requests finished")
        cap.save_manifest()


# -- Ollama 0.5.4 (Intel's ipex-llm build) --------------------------------------------------
def capture_ollama(out: Path) -> None:
    """OLLAMA_NUM_PARALLEL=2: the model loads, answers each API, serves two requests at
    once (/api/ps meanwhile), then unloads."""
    from testsupport.engines.ollama_cpu import models_dir, start_local_ollama

    server = start_local_ollama(num_parallel=2, progress=_progress)
    with _running(server):
        cap = Capture(out, "ollama-0.5.4-ipexllm-", server.url,
                      rewrites=[(str(models_dir()), "/root/.ollama/models")])
        options = {"seed": 42, "temperature": 0.8, "num_predict": 24}
        generate = {"model": "tiny", "prompt": SKY["prompt"], "options": options}
        chat = {"model": "tiny", "messages": SYSTEM_AND_HELLO, "options": options}
        openai = {"model": "tiny", "messages": SYSTEM_AND_HELLO, "max_tokens": 16, "seed": 42}
        cap.call("version.json", "GET", "/api/version")
        cap.call("ps-empty.json", "GET", "/api/ps")
        cap.call("tags.json", "GET", "/api/tags")
        cap.call("show.json", "POST", "/api/show", {"model": "tiny"})
        cap.call("generate-load.json", "POST", "/api/generate", {"model": "tiny"})
        cap.call("ps.json", "GET", "/api/ps")
        cap.call("generate.json", "POST", "/api/generate", {**generate, "stream": False})
        cap.call("generate-stream.ndjson", "POST", "/api/generate", {**generate, "stream": True})
        cap.call("chat.json", "POST", "/api/chat", {**chat, "stream": False})
        cap.call("chat-stream.ndjson", "POST", "/api/chat", {**chat, "stream": True})
        cap.call("generate-notfound.json", "POST", "/api/generate",
                 {"model": "no-such-model", "prompt": "x", "stream": False})
        cap.call("openai-chat-completions.json", "POST", "/v1/chat/completions", openai)
        cap.call("openai-chat-completions-stream.txt", "POST", "/v1/chat/completions",
                 {**openai, "stream": True, "stream_options": {"include_usage": True}})
        long = {**generate, "stream": False, "options": {**options, "num_predict": 400}}
        cap.concurrent("generate-concurrent.ndjson", "/api/generate", [long, long],
                       lambda: cap.call("ps-during-generate.json", "GET", "/api/ps"),
                       "two concurrent POST /api/generate (stream:false) bodies, one per line")
        cap.call("generate-unload.json", "POST", "/api/generate",
                 {"model": "tiny", "keep_alive": 0})
        poll_until(lambda: cap.client.get(cap.base + "/api/ps"),
                   lambda r: not r.json().get("models"), timeout=30)
        cap.call("ps-after-unload.json", "GET", "/api/ps")
        cap.save_manifest()


ENGINES: dict[str, Callable[[Path], None]] = {
    "vllm": capture_vllm, "llamacpp": capture_llamacpp, "ollama": capture_ollama,
}
PREFIXES = {"vllm": "vllm-cpu-", "llamacpp": "llamacpp-", "ollama": "ollama-"}


# -- shape comparison -----------------------------------------------------------------------
def shape(path: Path) -> Any:
    """What must stay the same between two captures of a file: JSON keys and types
    (not values), a metrics page's families and types, a stream's event kinds."""
    text = path.read_text(encoding="utf-8")
    if path.name.endswith("manifest.json"):
        return [e.get("file", "").split("-", 2)[-1] for e in json.loads(text)]
    if path.suffix == ".json":
        return _json_shape(json.loads(text))
    if path.suffix == ".ndjson":
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        return {"last": _json_shape(lines[-1]), "keys": sorted({k for x in lines for k in x})}
    if "metrics" in path.name:
        return sorted({tuple(line.split()[2:4]) for line in text.splitlines()
                       if line.startswith("# TYPE")})
    events = [e for e in text.split("\n\n") if e.strip()]  # SSE
    data = [e.removeprefix("data: ") for e in events]
    return {"done": data[-1] == "[DONE]", "first": _json_shape(json.loads(data[0])),
            "keys": sorted({k for d in data if d.startswith("{") for k in json.loads(d)})}


def _json_shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_json_shape(value[0])] if value else []
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    return "number" if isinstance(value, int | float) else type(value).__name__


def compare(new_dir: Path, prefix: str) -> list[str]:
    """Files whose shape differs from tests/fixtures' (or that one side lacks)."""
    old = {p.name for p in FIXTURES.glob(prefix + "*")}
    new = {p.name for p in new_dir.glob(prefix + "*")}
    problems = [f"{name}: only in {where}" for names, where in
                ((old - new, "tests/fixtures"), (new - old, str(new_dir))) for name in names]
    for name in sorted(old & new):
        a, b = shape(FIXTURES / name), shape(new_dir / name)
        if a != b:
            problems.append(f"{name}: shape differs\n  was {a}\n  now {b}")
    return problems


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m testsupport.capture_fixtures",
                                description=__doc__.splitlines()[0])
    p.add_argument("engines", nargs="*", metavar="ENGINE",
                   help=f"any of {', '.join(ENGINES)} (default: all)")
    p.add_argument("--out", type=Path, default=FIXTURES, help="folder (default: tests/fixtures)")
    p.add_argument("--compare", action="store_true",
                   help="check each new file's shape against tests/fixtures")
    args = p.parse_args(argv)
    unknown = [e for e in args.engines if e not in ENGINES]
    if unknown:
        p.error(f"unknown engine {unknown[0]!r}; known: {', '.join(ENGINES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    problems = []
    for engine in args.engines or ENGINES:
        ENGINES[engine](args.out)
        if args.compare:
            problems += compare(args.out, PREFIXES[engine])
    for line in problems:
        print(line)
    if args.compare:
        print("shapes match" if not problems else f"{len(problems)} files differ in shape")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
