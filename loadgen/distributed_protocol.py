"""What the master and its workers say to each other: the message kinds, the timings of
resends and give-ups, and the scenario as it travels in the setup message.

Shared by both sides (loadgen/distributed_master.py, loadgen/distributed_worker.py), so
neither imports the other. Everything servescope adds to a distributed run travels as Locust
custom messages:

    master -> worker  setup    resolved scenario (and the files it names), model, target,
                               the worker's index k of n; resent until the worker answers
    worker -> master  preparing  progress of its prompts, built before the run (keeps the
                                 master waiting for it while it prepares)
    worker -> master  ready | error
    worker -> master  records  a numbered batch of request records plus the worker's
                               counters, every FLUSH_INTERVAL_S; kept until acked, resent
                               after RESEND_AFTER_S
    master -> worker  ack      the batch is in the store (add_requests ignores re-delivery)
    master -> worker  stage    the closed-loop stage changed (its think time applies)
    master -> worker  stop     the run is over: finish requests in flight, flush, report
    worker -> master  final    the client health summary and the number of records sent
    master -> worker  done     the worker may exit (or: it was turned away, with a reason)

The end of the run is this protocol, not Locust's stop message: a Locust worker handling
"stop" sleeps through stop_timeout and could not answer acks meanwhile.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from servescope.loadgen.scenario import Scenario

SETUP, READY, ERROR = "servescope_setup", "servescope_ready", "servescope_error"
PREPARING = "servescope_preparing"
RECORDS, ACK, STAGE = "servescope_records", "servescope_ack", "servescope_stage"
STOP, FINAL, DONE = "servescope_stop", "servescope_final", "servescope_done"

DEFAULT_MASTER_PORT = 5557
FLUSH_INTERVAL_S = 0.5
FLUSH_MAX_RECORDS = 200
RESEND_AFTER_S = 5.0
RESEND_SETUP_S = 2.0
MASTER_LOST_S = 20.0  # no heartbeat from the master this long: it is gone
FINAL_GRACE_S = 30.0  # beyond stop_timeout, for the workers' last batches and reports
PARENT_ENV = "SERVESCOPE_MASTER_PID"  # set for the workers a local master starts
# A worker's API key comes from its own environment; it must not follow whatever target a
# master names (anyone who can reach the master port could collect it).
WORKER_KEY_NEEDS_TARGET = ("this worker holds an API key, which it sends only to a target "
                           "named on its own command line: add --target URL (the server as "
                           "this machine reaches it)")


# -- the scenario on the wire ----------------------------------------------------------------
def _file_fields(obj: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in a dumped scenario that names a file (traces, length tables)."""
    if isinstance(obj, dict):
        if isinstance(obj.get("file"), str):
            yield obj
        for value in obj.values():
            yield from _file_fields(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _file_fields(value)


def scenario_payload(scenario: Scenario) -> dict[str, Any]:
    """The resolved scenario (overrides applied) plus the text of every file it names, so a
    worker on another machine needs no copy of them."""
    data = scenario.model_dump(mode="json")
    files = {h["file"]: Path(h["file"]).read_text(encoding="utf-8") for h in _file_fields(data)}
    return {"scenario": data, "files": files}


def scenario_from_payload(payload: dict[str, Any], folder: Path) -> Scenario:
    """The master's scenario, its files written under `folder`."""
    data = copy.deepcopy(payload["scenario"])
    local: dict[str, str] = {}
    for i, (path, text) in enumerate(sorted(payload["files"].items())):
        dest = folder / f"{i}-{Path(path).name}"
        dest.write_text(text, encoding="utf-8")
        local[path] = str(dest)
    for holder in _file_fields(data):
        holder["file"] = local[holder["file"]]
    return Scenario.model_validate(data)

