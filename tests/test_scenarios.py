"""The scenario library validates; new fields validate, bad values name file and field;
a seed reproduces lengths, prompts and arrival times."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import httpx
import numpy as np
import pytest

from servescope.loadgen.arrivals import schedule
from servescope.loadgen.prompts import Conversation, PromptBuilder
from servescope.loadgen.scenario import (
    Empirical,
    LogNormal,
    Scenario,
    ScenarioError,
    correlated_lengths,
    load_scenario,
    parse_rate,
)

LIBRARY = Path(__file__).resolve().parents[1] / "scenarios"
SCENARIO_FILES = sorted(LIBRARY.glob("*.yaml"))

BASE = """\
name: t
prompt_tokens: 64
output_tokens: {dist: uniform, min: 8, max: 16}
"""
CLOSED = BASE + "stages: [{concurrency: 2, duration: 10s}]\n"
OPEN = BASE + "arrivals: {rate: 5/s, duration: 10s}\n"


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- the library --------------------------------------------------------------------------
def test_the_library_has_the_workloads_the_issue_asks_for():
    names = {p.stem for p in SCENARIO_FILES}
    assert {"chat", "rag_legal", "code_completion", "summarization", "agent_loop", "soak",
            "spike", "mixed_priority"} <= names
    assert (LIBRARY / "README.md").exists()


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: p.stem)
def test_every_library_scenario_validates_and_says_where_its_numbers_come_from(path):
    scenario = load_scenario(path)
    assert scenario.name == path.stem
    assert scenario.description
    comment = "".join(line for line in path.read_text().splitlines(keepends=True)
                      if line.startswith("#"))
    assert "Whose workload" in comment and "numbers come from" in comment, path.name
    assert "CPU demo" in comment, path.name
    assert scenario.duration_s > 0
    assert scenario.describe()
    # What a run stores round-trips (paths are stored resolved).
    again = Scenario.model_validate(scenario.model_dump(mode="json"))
    assert again.model_dump() == scenario.model_dump()
    rng = random.Random(0)
    for w in scenario.workloads():
        p, o = w.lengths(rng)
        assert p >= 1 and o >= 1


def test_library_scenarios_are_listed_in_the_readme():
    readme = (LIBRARY / "README.md").read_text()
    for path in SCENARIO_FILES:
        assert f"`{path.name}`" in readme, path.name


# -- new fields ---------------------------------------------------------------------------
def test_empirical_lengths_inline_and_from_files(tmp_path):
    (tmp_path / "lengths").mkdir()
    (tmp_path / "lengths" / "list.json").write_text("[100, 200, 200, 300]")
    (tmp_path / "lengths" / "hist.json").write_text('{"values": [10, 20], "weights": [3, 1]}')
    (tmp_path / "lengths" / "plain.txt").write_text("# measured\n5\n6\n7\n")
    path = write(tmp_path, """\
name: emp
prompt_tokens: {dist: empirical, file: lengths/list.json}
output_tokens: {dist: empirical, file: lengths/hist.json}
turns: {dist: empirical, file: lengths/plain.txt}
stages: [{concurrency: 1, duration: 1s}]
""")
    s = load_scenario(path)
    assert s.prompt_tokens.file == str((tmp_path / "lengths" / "list.json").resolve())
    rng = random.Random(3)
    prompts = [s.prompt_tokens.sample(rng) for _ in range(4000)]
    outputs = [s.output_tokens.sample(rng) for _ in range(4000)]
    assert set(prompts) == {100, 200, 300}
    assert prompts.count(200) / 4000 == pytest.approx(0.5, abs=0.03)
    assert outputs.count(10) / 4000 == pytest.approx(0.75, abs=0.03)
    assert {s.turns.sample(rng) for _ in range(200)} == {5, 6, 7}
    inline = Empirical(dist="empirical", values=[2508, 3532], weights=[0.4, 0.6])
    assert {inline.quantile(0.1), inline.quantile(0.9)} == {2508, 3532}


def test_correlated_lengths_keep_their_marginals():
    prompt = LogNormal(dist="lognormal", median=500, sigma=0.8)
    output = LogNormal(dist="lognormal", median=200, sigma=0.6)
    rng = random.Random(5)
    pairs = np.array([correlated_lengths(prompt, output, 0.6, rng) for _ in range(8000)])
    ranks = np.argsort(np.argsort(pairs, axis=0), axis=0)
    spearman = np.corrcoef(ranks[:, 0], ranks[:, 1])[0, 1]
    assert spearman == pytest.approx(6 / np.pi * np.arcsin(0.3), abs=0.03)  # 0.58
    assert np.median(pairs[:, 0]) == pytest.approx(500, rel=0.05)
    assert np.median(pairs[:, 1]) == pytest.approx(200, rel=0.05)
    independent = np.array([correlated_lengths(prompt, output, 0.0, rng) for _ in range(8000)])
    assert abs(np.corrcoef(independent[:, 0], independent[:, 1])[0, 1]) < 0.05


def test_open_loop_and_trace_scenarios(tmp_path):
    s = load_scenario(write(tmp_path, BASE + """\
arrivals:
  process: gamma
  cv: 2
  stages:
    - {rate: 1/s, duration: 30s}
    - {rate: 600/m, duration: 1m, ramp: 10s}
  think_time: 500ms
max_in_flight: 64
"""))
    assert s.mode == "open" and s.duration_s == 90
    assert [st.rate for st in s.arrivals.rate_stages()] == [1.0, 10.0]
    (tmp_path / "t.jsonl").write_text('{"t": 5, "prompt_tokens": 10, "output_tokens": 3}\n'
                                      '{"t": 7, "prompt_tokens": 20, "output_tokens": 4}\n')
    t = load_scenario(write(tmp_path, "name: tr\ntrace: {file: t.jsonl, time_scale: 0.5}\n"))
    assert t.mode == "trace" and t.duration_s == 1.0
    assert [(off, e.prompt_tokens) for off, e in t.trace.schedule()] == [(0.0, 10), (1.0, 20)]


@pytest.mark.parametrize(
    ("rate", "per_s"), [(5, 5.0), ("5/s", 5.0), ("300/m", 5.0), ("18000/h", 5.0), ("0.5", 0.5)]
)
def test_rates(rate, per_s):
    assert parse_rate(rate) == per_s


@pytest.mark.parametrize(
    ("text", "field", "why"),
    [
        (BASE.replace("prompt_tokens: 64", "prompt_tokens: {dist: empirical, values: [1, 2], "
                      "weights: [1]}") + "stages: [{concurrency: 1, duration: 1s}]\n",
         "prompt_tokens", "1 weights for 2 values"),
        (BASE.replace("prompt_tokens: 64", "prompt_tokens: {dist: empirical, file: no.json}")
         + "stages: [{concurrency: 1, duration: 1s}]\n",
         "prompt_tokens.file", "cannot read lengths file"),
        (BASE.replace("prompt_tokens: 64", "prompt_tokens: {dist: empirical, values: [0]}")
         + "stages: [{concurrency: 1, duration: 1s}]\n",
         "prompt_tokens.values.0", "greater than or equal to 1"),
        (CLOSED + "correlation: 1.5\n", "correlation", "less than or equal to 1"),
        (CLOSED + "turns: 0\n", "turns", "positive integer"),
        (CLOSED + "prefix_groups: 4\n", "(top level)", "prefix_groups needs"),
        (CLOSED + "max_in_flight: 0\n", "max_in_flight", "greater than or equal to 1"),
        (CLOSED.replace("duration: 10s}", "duration: 10s, ramp: 20s}"), "stages.0",
         "ramp must not be longer"),
        (OPEN.replace("rate: 5/s", "rate: fast"), "arrivals.rate", "bad rate"),
        (OPEN.replace("rate: 5/s", "rate: 5/s, process: bursty"), "arrivals.process",
         "'poisson'"),
        (OPEN.replace("rate: 5/s", "rate: 5/s, process: gamma"), "arrivals", "needs cv"),
        (OPEN.replace("rate: 5/s", "rate: 5/s, cv: 2"), "arrivals", "gamma only"),
        (OPEN.replace("rate: 5/s, duration: 10s", "stages: [{rate: 0, duration: 5s}]"),
         "arrivals", "above zero"),
        (OPEN + "stages: [{concurrency: 1, duration: 1s}]\n", "(top level)",
         "exactly one load shape"),
        (BASE, "(top level)", "exactly one load shape"),
        ("name: tr\ntrace: {file: missing.jsonl}\n", "trace.file", "cannot read trace"),
        ("name: tr\ntrace: {file: bad.jsonl}\n", "trace.file", "line 2"),
        ("name: tr\nturns: 2\ntrace: {file: good.jsonl}\n", "(top level)", "turns and mix"),
        (CLOSED.replace("prompt_tokens: 64\n", ""), "(top level)", "prompt_tokens is required"),
        (CLOSED + "mix: [{name: a, output_tokens: 5}, {name: a}]\n", "(top level)",
         "names must be unique"),
        (CLOSED + "mix: [{name: a, weight: -1}]\n", "mix.0.weight", "greater than 0"),
        (CLOSED + "mix: [{name: a, colour: red}]\n", "mix.0.colour", "unknown field"),
    ],
)
def test_bad_values_name_the_file_and_field(tmp_path, text, field, why):
    (tmp_path / "bad.jsonl").write_text('{"t": 1, "prompt_tokens": 5, "output_tokens": 2}\n'
                                        '{"t": 2, "prompt_tokens": 5}\n')
    (tmp_path / "good.jsonl").write_text('{"t": 1, "prompt_tokens": 5, "output_tokens": 2}\n')
    path = write(tmp_path, text, "bad.yaml")
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert f"{path}: field {field}: " in str(err.value)
    assert why in str(err.value)


def test_mix_classes_inherit_the_top_level(tmp_path):
    s = load_scenario(write(tmp_path, CLOSED + """\
correlation: 0.4
mix:
  - {name: interactive, weight: 3, priority: 0}
  - {name: batch, weight: 1, prompt_tokens: 3000, correlation: 0.1, priority: 10}
"""))
    interactive, batch = s.workloads()
    assert interactive.prompt_tokens.value == 64 and interactive.correlation == 0.4
    assert batch.prompt_tokens.value == 3000 and batch.correlation == 0.1
    assert batch.output_tokens == s.output_tokens and batch.priority == 10
    names = [Conversation(s, i).workload.name for i in range(2000)]
    assert names.count("interactive") / 2000 == pytest.approx(0.75, abs=0.03)
    assert "-batch-" in next(Conversation(s, i).id for i in range(50)
                            if Conversation(s, i).workload.name == "batch")


# -- overrides ----------------------------------------------------------------------------
def test_overrides_replace_or_cut_the_load_shape(tmp_path):
    closed = load_scenario(write(tmp_path, CLOSED))
    assert closed.with_overrides(concurrency=3, duration=5).stages[0].concurrency == 3
    opened = closed.with_overrides(rate="2/s", duration=30)
    assert opened.mode == "open" and opened.arrivals.rate == 2 and opened.duration_s == 30
    assert opened.with_overrides(concurrency=4).mode == "closed"
    staged = load_scenario(write(tmp_path, BASE + """\
arrivals: {stages: [{rate: 1, duration: 10s}, {rate: 5, duration: 10s, ramp: 5s}]}
"""))
    cut = staged.with_overrides(duration=12)
    assert [(s.rate, s.duration, s.ramp) for s in cut.arrivals.rate_stages()] == [
        (1, 10, 0), (5, 2, 2)]
    longer = staged.with_overrides(duration=60)
    assert longer.duration_s == 60 and longer.arrivals.rate_stages()[-1].rate == 5
    assert staged.with_overrides(max_in_flight=3, seed=9, process="constant").seed == 9
    with pytest.raises(ScenarioError, match="exclude each other"):
        closed.with_overrides(concurrency=2, rate=3)
    with pytest.raises(ScenarioError, match="trace replays only"):
        closed.with_overrides(time_scale=2)
    with pytest.raises(ScenarioError, match=r"overrides: field stages\.0\.concurrency"):
        closed.with_overrides(concurrency=0, duration=5)
    with pytest.raises(ScenarioError, match=r"overrides: field arrivals\.rate: bad rate"):
        closed.with_overrides(rate="lots")


# -- seeds --------------------------------------------------------------------------------
def no_tokenizer() -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(lambda req: httpx.Response(404)))


def conversation_requests(scenario: Scenario, n: int) -> list[tuple]:
    """What n conversations would send (first turn each), built without a server."""
    prompts = PromptBuilder("http://127.0.0.1:9", "m", no_tokenizer(),
                            scenario.shared_prefix_tokens, seed=scenario.seed)
    out = []
    for i in range(n):
        conv = Conversation(scenario, i)
        turn = conv.next_turn(prompts)
        out.append((conv.group, conv.turns, turn.request_id, turn.target_prompt_tokens,
                    turn.output_tokens, json.dumps(turn.messages)))
    return out


def test_a_seed_reproduces_lengths_prompts_and_arrivals(tmp_path):
    text = OPEN.replace("prompt_tokens: 64", "prompt_tokens: {dist: lognormal, median: 80, "
                        "sigma: 0.7}") + "seed: 11\nshared_prefix_tokens: 32\nprefix_groups: 3\n"
    text += "turns: {dist: uniform, min: 1, max: 4}\ncorrelation: 0.5\n"
    s = load_scenario(write(tmp_path, text))
    first = conversation_requests(s, 40)
    assert first == conversation_requests(s, 40)
    other = conversation_requests(s.with_overrides(seed=12), 40)
    assert [r[3:5] for r in first] != [r[3:5] for r in other]
    assert len({r[0] for r in first}) == 3  # all prefix groups in use
    assert len({r[1] for r in first}) > 1  # turn counts vary
    # System prompts differ by group, are fixed by the seed.
    systems = {json.loads(r[5])[0]["content"] for r in first}
    assert len(systems) == 3
    stages = s.arrivals.rate_stages()
    assert schedule(stages, seed=s.seed) == schedule(stages, seed=s.seed)


def test_lengths_do_not_depend_on_which_user_draws_them(tmp_path):
    s = load_scenario(write(tmp_path, CLOSED + "seed: 4\n"))
    forward = [Conversation(s, i).workload.lengths(random.Random(f"4:{i}:0")) for i in range(30)]
    backward = [Conversation(s, i).workload.lengths(random.Random(f"4:{i}:0"))
                for i in reversed(range(30))]
    assert forward == backward[::-1]
    assert statistics.pstdev([o for _, o in forward]) > 0
