"""Every prompt of the run, built before its measured window, and how close the lengths came.

`prepare_prompts` builds the first turn of every conversation this process can start (its
share of the run): the arrivals of an open-loop schedule or a trace, or as many closed-loop
conversations as its request bound needs (PREPARE_UNBOUNDED requests' worth without one),
with a progress line of its own. Then it seals the server's tokenizer: after the first
measured request nothing but measured requests reaches the server. What the run still
builds (a conversation's later turns, which carry the real answer, and closed-loop prompts
past the prepared ones) is counted by the local tokenizer, or planned from lengths
calibrated here (loadgen/prompts.py) and recorded as an estimate.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import gevent
from gevent.pool import Pool

from servescope.loadgen.prompts import Conversation
from servescope.loadgen.tokenizer import LOCAL, SERVER
from servescope.loadgen.users import LoadContext, schedule_for

PREPARE_UNBOUNDED = 2000  # closed loop without a request bound: requests' worth prepared
PREPARE_MAX = 50_000  # first turns prepared per process at most
PREPARE_CONCURRENCY = 8  # server tokenizer calls in flight while preparing

Show = Callable[[str, bool], None]  # (line, force)


def conversations_to_prepare(ctx: LoadContext) -> list[Conversation]:
    """The conversations whose first turns this process may send, in the order it starts
    them: closed loop, indices k, k + n ... until their turns cover its share of the
    request bound, plus one per user (each may start one more); open loop and trace replay,
    its arrivals (each a conversation of its own)."""
    scenario, limit = ctx.scenario, ctx.limit
    k, n = ctx.share
    out: list[Conversation] = []
    if scenario.mode == "closed":
        users = -(-max(s.concurrency for s in scenario.stages) // n)
        requests, extra = (PREPARE_UNBOUNDED if limit is None else limit), users
        turns = 0
        while len(out) < PREPARE_MAX and (turns < requests or extra > 0):
            if turns >= requests:
                extra -= 1
            conv = Conversation(scenario, len(out) * n + k, ctx.worker)
            turns += conv.turns
            out.append(conv)
        return out
    for index, (_, lengths) in enumerate(schedule_for(scenario)):
        if len(out) >= min(PREPARE_MAX, limit or PREPARE_MAX):
            break
        if ctx.mine(index):
            out.append(Conversation(scenario, index, ctx.worker, lengths))
    return out


def prepare_prompts(ctx: LoadContext, show: Show | None = None) -> dict[str, Any]:
    """Build this process's prompts (see the module doc), then seal the server's tokenizer.
    Returns what was done: prompts, seconds, how lengths were obtained, and how many requests
    went to the server's tokenizer (all of them now, before the run)."""
    prompts = ctx.prompts
    started = time.monotonic()
    convs = conversations_to_prepare(ctx)
    prompts.calibrate()
    how = _how(prompts.source, prompts.tokenizer.name if prompts.tokenizer else None)
    total, done = len(convs), 0
    last = 0.0

    def tell(force: bool = False) -> None:
        nonlocal last
        if show is not None and (force or time.monotonic() - last >= 0.25):
            last = time.monotonic()
            show(f"preparing {total} prompts {how}: {done}/{total}", force)

    def one(conv: Conversation) -> None:
        nonlocal done
        conv.prepare(prompts)
        done += 1
        tell()

    groups = sorted({c.group for c in convs})
    tell(force=True)
    if prompts.source == SERVER:  # round trips: overlap a few
        pool = Pool(PREPARE_CONCURRENCY)
        pool.map(prompts.system_message, groups)  # the shared prefixes first
        for conv in convs:
            pool.spawn(one, conv)
        pool.join(raise_error=True)
    else:
        for group in groups:
            prompts.system_message(group)
        for conv in convs:
            conv.prepare(prompts)
            done += 1
            if done % 64 == 0:
                tell()
                gevent.sleep(0)  # heartbeats and the like (a worker's) may run
    tell(force=True)
    prompts.seal()
    server_requests = prompts.server.requests if prompts.server is not None else 0
    return {
        "prompts": total,
        "seconds": round(time.monotonic() - started, 3),
        "tokenizer": how,
        "sources": dict(Counter(source for _, source in prompts.prepared.values())),
        "server_tokenizer_requests": server_requests,
    }


def _how(source: str, name: str | None) -> str:
    if source == LOCAL:
        return f"with the local tokenizer {name}"
    if source == SERVER:
        return "with the server's tokenizer"
    return "without a tokenizer (lengths estimated from characters per token)"


def prepared_line(info: dict[str, Any]) -> str:
    """One line on a finished preparation."""
    asked = info["server_tokenizer_requests"]
    note = f", {asked} tokenizer requests to the server, all before the run" if asked else ""
    return (f"prepared {info['prompts']} prompts {info['tokenizer']} in "
            f"{info['seconds']:.1f}s{note}")
