"""Against the REAL vLLM CPU server (tiny random-weights model built by the suite):
collector, load generator and store agree with what the server itself reports."""

from __future__ import annotations

import json
import math

import pytest

from helpers import servescope
from servescope.analysis.latency import ttft_ms
from servescope.analysis.promql import histogram_delta
from servescope.collectors.loop import Collector, TargetSpec
from servescope.collectors.scrape import scrape
from servescope.core.store import Store
from servescope.engines.vllm_cpu import VLLMServer, split_cpus

MAX_NUM_SEQS = 8  # the fixture's server
USERS = 16  # more than max-num-seqs: the server must queue
REQUESTS = 32
OUTPUT_TOKENS = 48

SCENARIO = f"""\
name: saturate
seed: 3
prompt_tokens: {{dist: uniform, min: 64, max: 160}}
output_tokens: {OUTPUT_TOKENS}
shared_prefix_tokens: 16
stages: [{{concurrency: {USERS}, duration: 120s}}]
max_requests: {REQUESTS}
request_timeout: 60s
slos: {{ttft_ms: {{p95: 60000}}}}
"""


def _hist(snapshot, concept):
    return [(float(le), n) for le, n in snapshot.to_json()["histograms"][concept]["buckets"]]


@pytest.fixture(scope="module")
def saturated(vllm_server, tmp_path_factory):
    """One saturating load run, watched by a live collector, shared by the checks below."""
    tmp = tmp_path_factory.mktemp("live")
    db, scenario, out = tmp / "s.db", tmp / "saturate.yaml", tmp / "summary.json"
    scenario.write_text(SCENARIO)
    store = Store(db)
    before = scrape(vllm_server.url)
    with Collector([TargetSpec("vllm", "vllm", vllm_server.url)], store, interval=0.25):
        res = servescope("load", str(scenario), "--target", vllm_server.url, "--out", str(out),
                         db=db, timeout=600)
    after = scrape(vllm_server.url)
    assert res.returncode == 0, res.stderr[-3000:]
    run = store.runs()[0]
    yield {"store": store, "run": run, "before": before, "after": after,
           "summary": json.loads(out.read_text()), "stdout": res.stdout}
    store.close()


def _by_scrape(store, concept):
    target = store.targets()[0]
    df = store.samples(target["id"], [concept])
    return df.groupby("ts")["value"].sum()


def test_collector_sees_requests_running_and_waiting(saturated):
    store = saturated["store"]
    running, waiting = _by_scrape(store, "running"), _by_scrape(store, "waiting")
    assert (running + waiting).max() > 0
    assert waiting.max() > 0, "16 users on max-num-seqs 8 must leave some waiting"
    assert running.max() <= MAX_NUM_SEQS
    kv = _by_scrape(store, "kv_usage")
    assert kv.max() > 0
    capacity = _by_scrape(store, "kv_capacity_tokens")
    assert capacity.iloc[0] > 0
    target = store.targets()[0]
    assert target["status"] == "up"
    assert target["info"]["model"] == "tiny-qwen2"
    assert target["info"]["max_model_len"] == 2048


def test_output_tokens_equal_the_servers_usage(saturated):
    store, run = saturated["store"], saturated["run"]
    records = store.requests(run["id"])
    assert all(r.token_count_source == "usage" for r in records)
    assert [r.output_tokens for r in records] == [OUTPUT_TOKENS] * REQUESTS  # ignore_eos
    # ... and the server's own counters moved by exactly what the client counted.
    before, after = saturated["before"].to_json(), saturated["after"].to_json()
    gen = after["generation_tokens_total"] - before["generation_tokens_total"]
    prompt = after["prompt_tokens_total"] - before["prompt_tokens_total"]
    assert gen == sum(r.output_tokens for r in records)
    assert prompt == sum(r.prompt_tokens for r in records)
    # Prompts were built to their exact target lengths with the server's tokenizer.
    assert [r.prompt_tokens for r in records] == [r.target_prompt_tokens for r in records]


def test_client_ttft_is_never_below_what_the_servers_histogram_allows(saturated):
    """The client's clock starts before the server's and stops after it, so at every bucket
    bound the client can have no more requests under the bound than the server has."""
    store, run = saturated["store"], saturated["run"]
    delta = histogram_delta(_hist(saturated["before"], "ttft_seconds"),
                            _hist(saturated["after"], "ttft_seconds"))
    assert delta[-1][1] == REQUESTS  # the server saw exactly our requests
    client = [ttft_ms(r) / 1000 for r in store.requests(run["id"])]
    for le, server_count in delta:
        if math.isinf(le):
            continue
        client_count = sum(1 for t in client if t <= le)
        assert client_count <= server_count, (le, client_count, server_count)
    first_bucket = next(i for i, (_, n) in enumerate(delta) if n > 0)
    lower_bound = delta[first_bucket - 1][0] if first_bucket else 0.0
    assert min(client) >= lower_bound


def test_every_request_is_in_the_store_and_summarized(saturated):
    store, run, summary = saturated["store"], saturated["run"], saturated["summary"]
    assert run["status"] == "finished"
    assert store.count_requests(run["id"]) == REQUESTS
    assert summary["requests_ok"] == REQUESTS and summary["requests_failed"] == 0
    assert summary["output_tokens_total"] == REQUESTS * OUTPUT_TOKENS
    assert run["summary"] == summary
    # The collector watched the run: the summary carries the server's own account of it.
    server = summary["server"]
    assert server["target"] == "vllm"
    assert server["requests_finished"] == REQUESTS
    assert server["queue_ms_mean"] > 0 and server["decode_ms_mean"] > 0
    assert server["waiting_max"] > 0
    for metric in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "e2e_from_intended_ms"):
        d = summary[metric]
        assert {"p50", "p90", "p95", "p99", "mean"} <= d.keys()
        assert 0 <= d["p50"] <= d["p90"] <= d["p95"] <= d["p99"], metric
        assert d["p99"] > 0 and d["mean"] > 0, metric
    # Not ITL: with vLLM, its API server, the collector and the client on 2 cores, events
    # often arrive several to a read, and such gaps are 0 (0-41 % of them in runs here).
    for metric in ("ttft_ms", "tpot_ms", "e2e_ms"):
        assert summary[metric]["p50"] > 0, metric
    assert summary["output_tokens_per_s"] > 0 and summary["requests_per_s"] > 0
    # E2E from the intended send can only be longer than from the actual send.
    assert summary["e2e_from_intended_ms"]["mean"] >= summary["e2e_ms"]["mean"]
    assert run["target"]["model"] == "tiny-qwen2"
    assert run["scenario"]["stages"][0]["concurrency"] == USERS
    assert "ttft_ms" in saturated["stdout"]


def test_scrape_cli_on_the_live_server(vllm_server):
    res = servescope("scrape", vllm_server.url, "--json", "--no-raw")
    assert res.returncode == 0, res.stderr
    snap = json.loads(res.stdout)
    assert snap["kv_capacity_tokens"] > 0
    assert snap["kv_free_tokens"] <= snap["kv_capacity_tokens"]
    assert set(snap["histograms"]) >= {"ttft_seconds", "queue_seconds", "prefill_seconds",
                                       "decode_seconds"}


def test_dashboard_renders_the_real_run(saturated, monkeypatch):
    """Both pages on the store of the real run: no exception, and the Run page puts the
    server's queue / prefill / decode split next to what the client measured."""
    from streamlit.testing.v1 import AppTest
    from test_dashboard import chart_specs, live_page, run_page, trace_names

    monkeypatch.setenv("SERVESCOPE_DB", str(saturated["store"].path))
    live = AppTest.from_function(live_page, default_timeout=60).run()
    assert not live.exception
    assert len(chart_specs(live)) >= 6
    run = AppTest.from_function(run_page, default_timeout=60).run()
    assert not run.exception
    assert {m.label: m.value for m in run.metric}["Requests ok"] == str(REQUESTS)
    split = chart_specs(run)[-1]
    assert trace_names(split) == ["queue", "prefill", "decode", "TTFT", "after first token"]
    server = {t["name"]: t["x"][0] for t in split["data"] if t["y"][0].startswith("server")}
    assert server["queue"] > 0 and server["decode"] > 0  # 16 users on 8 seats: real queueing


def test_sweep_records_a_curve_of_runs(vllm_server, tmp_path):
    db, out = tmp_path / "s.db", tmp_path / "sweep.json"
    res = servescope("sweep", "chat", "--target", vllm_server.url, "--concurrency", "1,4",
                     "--requests", "8", "--duration", "60s", "--out", str(out), "--quiet",
                     db=db, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [row["level"] for row in result["curve"]] == [1, 4]
    assert all(row["requests_ok"] == 8 for row in result["curve"])
    # Four users share the server: more throughput than one. This once failed (200 vs 211
    # tok/s) when vLLM shared both CPUs with the load generator and kept it off the CPU for
    # 0.4 s at a time; vLLM now keeps off the last CPU (split_cpus), and a level where the
    # client is still limited is marked in the curve and the table.
    assert result["curve"][1]["output_tokens_per_s"] > result["curve"][0]["output_tokens_per_s"]
    assert all(isinstance(row["client_limited"], bool) for row in result["curve"])
    assert result["client_limited_levels"] == [
        row["level"] for row in result["curve"] if row["client_limited"]]
    assert "client" in res.stdout.splitlines()[0]
    with Store(db) as store:
        (sweep,) = store.sweeps()
        assert sweep["status"] == "finished" and sweep["result"]["curve"] == result["curve"]
        assert sorted(r["sweep_id"] for r in store.runs()) == [sweep["id"], sweep["id"]]
    assert "highest level meeting the SLOs" in res.stdout


def test_split_cpus_leaves_the_last_cpu_to_the_measuring_side():
    assert split_cpus({0, 1}) == ([0], [1])
    assert split_cpus({4, 2, 3, 5}) == ([2, 3, 4], [5])
    assert split_cpus({3}) == (None, [3])  # one CPU: nothing to split


def test_one_compute_cpu_runs_the_model_in_the_engine_core_process(tmp_path):
    """With one CPU to compute on, the model runs in vLLM's engine core (the uni executor),
    which vLLM's CPU platform allows only with V1 multiprocessing off; with several, vLLM's
    own multiprocess executor stays; an explicit choice is passed as given."""
    def launch(**kw):
        cmd, env = VLLMServer(model_dir=tmp_path, python=tmp_path / "python", **kw).launch()
        flag = cmd.index("--distributed-executor-backend") + 1 if \
            "--distributed-executor-backend" in cmd else None
        return (cmd[flag] if flag else None), env.get("VLLM_ENABLE_V1_MULTIPROCESSING")

    assert launch(cpus=[0, 1]) == ("uni", "0")  # the model on CPU 0, the API server beside it
    assert launch(cpus=[0]) == ("uni", "0")
    assert launch(cpus=[0, 1, 2, 3]) == (None, None)  # three compute CPUs: vLLM's default
    assert launch(cpus=[0, 1], executor="mp") == ("mp", None)
