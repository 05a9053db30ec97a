"""Load-generator capacity on one core: concurrent streams, SSE events/s, added TTFT.

The server is testsupport/streaming_server.py (its own process, pinned to CPU 1) with no delays:
every event goes out as soon as the loop gets to it, so the client on CPU 0 is the
bottleneck. It stamps events after their write returns here (--no-tx-stamps): the kernel's
transmit stamps about double its cost per event and would make it the bottleneck instead.
The paced run keeps them. Each client runs closed-loop at 32..512 streams for STEP_S
seconds, pinned to CPU 0 (a peer's worker processes inherit the pin), asking for TOKENS
tokens per request: EVENTS = TOKENS content events + usage + [DONE] per request.

- events/s: completed requests x EVENTS / s, over the middle of the run (ramp-up and drain
  cut off).
- added TTFT: the client's own TTFT minus the server's (first content event written -
  the request's arrival, stamped by the server's kernel, so a server slow to read it does
  not count against the client), joined per request by x-request-id (GuideLLM sends none:
  joined by the response id, which the server derives from it). At zero delay a saturated
  client queues, so this column is the cost of saturation; the goal's "added p99" is
  measured in the paced run below it, where 256 streams ask for just over 5,000 events/s.
- floor: a minimal asyncio raw-socket client reading the same streams (finds the first
  content event and the end, counts events; no JSON, no HTTP library).
- peers: `vllm bench serve` (the vLLM CPU engine's env, openai-chat backend, random
  dataset) and GuideLLM (its own venv under ~/.cache/servescope/bench-envs/, installed on
  first use). Either one that cannot run is reported with the reason, and the bench goes on.

Goal: >= 256 concurrent streams and >= 5,000 events/s per core, < 5 ms added TTFT p99 at
that load, and a ratio >= 1.0 against the better peer (events/s at 256 streams).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.peers import (
    TINY_MODEL,
    ensure_guidellm,
    failure,
    guidellm,
    pin,
    vllm_bench,
    vllm_missing,
)
from testsupport.streaming_server import StreamingServer

REPO_ROOT = Path(__file__).resolve().parents[1]

TOKENS = 16
EVENTS = TOKENS + 2
PROMPT_TOKENS = 48
STEPS = (32, 64, 128, 256, 512)
STEP_S = 8.0
PACED_GAP_MS = 50.0  # 256 streams x (18 events / 17 gaps of 50 ms) ~ 5,400 events/s
CLIENT_CPU, SERVER_CPU = 0, 1


@dataclass
class Req:
    """One request as a client reported it: its id and its own clock's seconds."""

    rid: str
    start: float
    end: float
    ttft: float | None


@dataclass
class Result:
    client: str
    concurrency: int
    reqs: list[Req] = field(default_factory=list)
    failed: int = 0
    server_cpu: float = 0.0  # share of the server's core used during the run
    note: str = ""

    def events_per_s(self) -> float:
        ok = [r for r in self.reqs if r.ttft is not None]
        if len(ok) < 10:
            return 0.0
        t0, t1 = min(r.start for r in ok), max(r.end for r in ok)
        lo, hi = t0 + 0.25 * (t1 - t0), t1 - 0.1 * (t1 - t0)
        done = sum(lo <= r.end < hi for r in ok)
        return done * EVENTS / (hi - lo)

    def added_ms(self, schedule: dict[str, list[int | None]]) -> np.ndarray:
        out = []
        for r in self.reqs:
            s = schedule.get(r.rid)
            if r.ttft is not None and s and s[1] is not None:
                out.append(r.ttft * 1e3 - (s[1] - s[0]) / 1e6)
        return np.asarray(out)


def run_ours(url: str, concurrency: int, tmp: Path) -> Result:
    from servescope.core.store import Store

    scenario = tmp / f"ours-{concurrency}.yaml"
    scenario.write_text(
        f"name: bench\nseed: 1\nprompt_tokens: {PROMPT_TOKENS}\noutput_tokens: {TOKENS}\n"
        f"stages:\n  - {{concurrency: {concurrency}, duration: {STEP_S}s}}\n"
        "request_timeout: 60s\n"
    )
    db, out = tmp / f"ours-{concurrency}.db", tmp / f"ours-{concurrency}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "servescope.cli", "load", str(scenario), "--target", url,
         "--out", str(out), "--quiet"],
        env={**os.environ, "SERVESCOPE_DB": str(db)}, cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=STEP_S + 120, preexec_fn=pin(CLIENT_CPU),
    )
    res = Result("servescope (Locust)", concurrency)
    if proc.returncode != 0:
        res.note = f"failed: {(proc.stderr or proc.stdout).strip()[-200:]}"
        return res
    with Store(db) as store:
        for r in store.requests(json.loads(out.read_text())["run_id"]):
            if not r.ok or r.end_ns is None:
                res.failed += 1
                continue
            ttft = None if r.first_token_ns is None else (r.first_token_ns - r.send_ns) / 1e9
            res.reqs.append(Req(r.request_id, r.send_ns / 1e9, r.end_ns / 1e9, ttft))
    return res


# -- the floor: a minimal raw-socket asyncio client ------------------------------------
def raw_client(url: str, concurrency: int, duration: float, out: str) -> None:
    """Closed loop over `concurrency` keep-alive connections; writes [rid, start, end,
    ttft] rows (perf-counter seconds) to `out` as JSON."""
    host, port = url.removeprefix("http://").split(":")
    rows: list[list[object]] = []

    async def user(i: int, deadline: float) -> None:
        import socket

        reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 20)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        n = 0
        while time.perf_counter() < deadline:
            rid = f"raw-{i}-{n}"
            n += 1
            body = json.dumps({
                "model": "stream-test", "max_tokens": TOKENS, "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "x " * PROMPT_TOKENS}],
            }).encode()
            head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\n"
                    f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
                    f"x-request-id: {rid}\r\n\r\n").encode()
            start = time.perf_counter()
            writer.write(head + body)
            await reader.readuntil(b"\r\n\r\n")
            first, tail = None, b""
            while True:
                data = await reader.read(1 << 16)
                now = time.perf_counter()
                if not data:
                    return
                seen = tail + data
                if first is None and b'"content":"t' in seen:
                    first = now
                if b"\r\n0\r\n\r\n" in seen:  # the last chunk of the response
                    break
                tail = seen[-64:]
            rows.append([rid, start, now, None if first is None else first - start])

    async def main() -> None:
        deadline = time.perf_counter() + duration
        await asyncio.gather(*(user(i, deadline) for i in range(concurrency)))

    asyncio.run(main())
    Path(out).write_text(json.dumps(rows))


def run_raw(url: str, concurrency: int, tmp: Path) -> Result:
    out = tmp / f"raw-{concurrency}.json"
    code = ("import sys; from bench.loadgen import raw_client; "
            "raw_client(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])")
    proc = subprocess.run(
        [sys.executable, "-c", code, url, str(concurrency), str(STEP_S), str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=STEP_S + 60,
        preexec_fn=pin(CLIENT_CPU),
    )
    res = Result("raw asyncio socket (floor)", concurrency)
    if proc.returncode != 0:
        res.note = f"failed: {proc.stderr.strip()[-200:]}"
        return res
    res.reqs = [Req(*row) for row in json.loads(out.read_text())]
    return res


# -- peers -------------------------------------------------------------------------------
def run_vllm(url: str, concurrency: int, tmp: Path, prompts: int) -> Result:
    """`vllm bench serve` (bench/peers.py), openai-chat backend, random dataset."""
    res = Result("vllm bench serve", concurrency)
    if why := vllm_missing():
        res.note = f"not run: {why}"
        return res
    name = f"vllm-{concurrency}.json"
    prefix = f"vb{concurrency}-"
    proc = vllm_bench(
        ["--backend", "openai-chat", "--base-url", url,
         "--endpoint", "/v1/chat/completions", "--model", "stream-test", "--tokenizer",
         str(TINY_MODEL), "--dataset-name", "random", "--random-input-len",
         str(PROMPT_TOKENS), "--random-output-len", str(TOKENS), "--num-prompts",
         str(prompts), "--max-concurrency", str(concurrency), "--request-rate", "inf",
         "--ignore-eos", "--save-result", "--save-detailed", "--result-dir", str(tmp),
         "--result-filename", name, "--request-id-prefix", prefix, "--disable-tqdm"],
        tmp, CLIENT_CPU,
    )
    if proc.returncode != 0 or not (tmp / name).exists():
        res.note = failure(proc)
        return res
    d = json.loads((tmp / name).read_text())
    for i, (start, lat, ttft, err) in enumerate(
        zip(d["start_times"], d["latencies"], d["ttfts"], d["errors"], strict=True)
    ):
        if err:
            res.failed += 1
        else:
            res.reqs.append(Req(f"{prefix}{i}", start, start + lat, ttft))
    return res


def run_guidellm(url: str, concurrency: int, tmp: Path) -> Result:
    res = Result("GuideLLM", concurrency)
    if not TINY_MODEL.exists():
        res.note = f"not run: no tokenizer at {TINY_MODEL} (servescope engine install)"
        return res
    if why := ensure_guidellm():
        res.note = f"not run: {why}"
        return res
    out = tmp / f"guidellm-{concurrency}.json"
    proc = guidellm(
        ["--backend", f"kind=openai_http,target={url},model=stream-test,"
                      "request_format=/v1/chat/completions",
         "--profile", f"kind=concurrent,streams={concurrency}",
         "--data", f"kind=synthetic_text,prompt_tokens={PROMPT_TOKENS},output_tokens={TOKENS}",
         "--tokenizer", f"kind=hf_auto,model={TINY_MODEL}",
         "--constraint", f"kind=max_duration,seconds={STEP_S:g}",
         "--output", f"kind=json,path={out}", "--disable-console"],
        CLIENT_CPU,
    )
    if proc.returncode != 0 or not out.exists():
        res.note = failure(proc)
        return res
    bench = json.loads(out.read_text())["benchmarks"][0]["requests"]
    res.failed = len(bench.get("errored") or [])
    for r in bench["successful"]:
        t = r["info"]["timings"]
        first = t.get("first_output_token_iteration") or t.get("first_token_iteration")
        res.reqs.append(Req(str(r.get("response_id") or "").removeprefix("chatcmpl-"),
                            t["request_start"], t["request_end"],
                            None if first is None else first - t["request_start"]))
    return res


# -- the run -----------------------------------------------------------------------------
def measured(server: StreamingServer, fn: Callable[[], Result]) -> tuple[Result, dict]:
    server.reset()
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    res = fn()
    res.server_cpu = (server.cpu_seconds() - cpu0) / max(time.monotonic() - t0, 1e-9)
    return res, server.compact_schedule()


def row(res: Result, schedule: dict, floor: float | None) -> str:
    if not res.reqs:
        return f"{res.client:28}{res.concurrency:>6}  {res.note}"
    eps = res.events_per_s()
    added = res.added_ms(schedule)
    p50, p99 = (np.percentile(added, [50, 99]) if len(added) else (float("nan"),) * 2)
    ratio = f"{eps / floor:9.2f}" if floor else f"{'-':>9}"
    note = res.note or ("" if res.failed == 0 else f"{res.failed} failed")
    joined = f"{len(added)}/{len(res.reqs)}"
    return (f"{res.client:28}{res.concurrency:>6}{eps:>10.0f}{eps / EVENTS:>8.0f}"
            f"{p50:>9.2f}{p99:>9.2f}{ratio}{res.server_cpu:>8.0%}{joined:>12}  {note}")


def main() -> None:
    if len(os.sched_getaffinity(0)) < 2:
        print("needs 2 CPUs (client on one, server on the other)")
        return
    load = os.getloadavg()[0]
    print(f"load generator capacity: client pinned to CPU {CLIENT_CPU}, zero-delay server on "
          f"CPU {SERVER_CPU}; {TOKENS} tokens = {EVENTS} events per request, {STEP_S:g} s "
          f"per step; load average before the run {load:.2f}")
    print(f"{'client':28}{'users':>6}{'events/s':>10}{'req/s':>8}{'add p50':>9}{'add p99':>9}"
          f"{'x floor':>9}{'srv cpu':>8}{'joined':>12}")
    results: dict[tuple[str, int], float] = {}
    server = StreamingServer(0, 0, cpu=SERVER_CPU, tx_stamps=False)
    with tempfile.TemporaryDirectory() as tmpdir, server as srv:
        tmp = Path(tmpdir)
        for c in STEPS:
            raw, sched = measured(srv, lambda c=c: run_raw(srv.url, c, tmp))
            floor = raw.events_per_s() or None
            print(row(raw, sched, None), flush=True)
            prompts = max(10 * c, int((floor or 5000) / EVENTS * STEP_S * 0.5))
            runs = [lambda c=c: run_ours(srv.url, c, tmp),
                    lambda c=c, p=prompts: run_vllm(srv.url, c, tmp, p),
                    lambda c=c: run_guidellm(srv.url, c, tmp)]
            for fn in runs:
                res, sched = measured(srv, fn)
                results[(res.client, c)] = res.events_per_s() if not res.failed else 0.0
                print(row(res, sched, floor), flush=True)
    paced = paced_run()
    verdict(results, paced)


def paced_run() -> tuple[float, np.ndarray, int]:
    """Ours at 256 streams against a server pacing tokens PACED_GAP_MS apart: the delay the
    load generator adds when it carries 5,000+ events/s without being saturated."""
    with tempfile.TemporaryDirectory() as tmpdir, \
            StreamingServer(0, PACED_GAP_MS, cpu=SERVER_CPU) as srv:
        res, sched = measured(srv, lambda: run_ours(srv.url, 256, Path(tmpdir)))
    eps, added = res.events_per_s(), res.added_ms(sched)
    print(f"\npaced: 256 streams, server gap {PACED_GAP_MS:g} ms: {eps:.0f} events/s, "
          f"added TTFT p50 {np.percentile(added, 50):.2f} ms, p99 "
          f"{np.percentile(added, 99):.2f} ms, max {added.max():.2f} ms "
          f"({len(added)} requests, {res.failed} failed) {res.note}")
    return eps, added, res.failed


def verdict(results: dict[tuple[str, int], float], paced: tuple[float, np.ndarray, int]
            ) -> None:
    ours = "servescope (Locust)"
    eps_256 = results.get((ours, 256), 0.0)
    streams = max((c for (name, c), eps in results.items() if name == ours and eps > 0),
                  default=0)
    peers = {name: eps for (name, c), eps in results.items()
             if c == 256 and name in ("vllm bench serve", "GuideLLM") and eps > 0}
    paced_eps, added, failed = paced
    p99 = float(np.percentile(added, 99)) if len(added) else float("inf")
    checks = [
        (f"streams without errors >= 256 ({streams})", streams >= 256),
        (f"events/s per core at 256 streams >= 5,000 ({eps_256:.0f})", eps_256 >= 5000),
        (f"added TTFT p99 < 5 ms at {paced_eps:.0f} events/s, 256 streams ({p99:.2f} ms)",
         p99 < 5 and paced_eps >= 5000 and failed == 0),
    ]
    if peers:
        best = max(peers, key=lambda k: peers[k])
        ratio = eps_256 / peers[best]
        checks.append((f"ratio vs the better peer ({best}) at 256 streams >= 1.0 "
                       f"({ratio:.2f})", ratio >= 1.0))
    else:
        checks.append(("ratio vs the better peer: no peer ran", False))
    for text, ok in checks:
        print(f"goal {text}: {'met' if ok else 'NOT met'}")
    print(f"goal overall: {'met' if all(ok for _, ok in checks) else 'NOT met'}")


if __name__ == "__main__":
    main()
