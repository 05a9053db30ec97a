"""`servescope compare` input checks, and a target that cannot be measured (nothing
listening) next to one that can (the scheduled streaming server)."""

from __future__ import annotations

import json

import pytest

from browser import free_port
from helpers import servescope
from testsupport.streaming_server import StreamingServer


@pytest.mark.parametrize(("args", "message"), [
    (["--target", "a=http://127.0.0.1:9"], "two or more"),
    (["--target", "a=http://127.0.0.1:9", "--target", "a=http://127.0.0.1:8"], "unique"),
    (["--target", "a=http://127.0.0.1:9", "--target", "b=http://127.0.0.1:8",
      "--model", "c=m"], "no target named 'c'"),
    (["--target", "a=http://127.0.0.1:9", "--target", "b=http://127.0.0.1:8",
      "--num-parallel", "a=x"], "--num-parallel"),
])
def test_bad_input_exits_2(tmp_path, args, message):
    res = servescope("compare", "chat", *args, "--concurrency", "1", db=tmp_path / "x.db")
    assert res.returncode == 2, res.stderr
    assert message in res.stderr


def test_an_unreachable_target_is_reported_and_the_other_measured(tmp_path):
    scenario, out = tmp_path / "s.yaml", tmp_path / "out"
    scenario.write_text("name: s\nseed: 1\nprompt_tokens: 16\noutput_tokens: 4\n"
                        "stages:\n  - {concurrency: 1, duration: 60s}\n")
    dead = f"http://127.0.0.1:{free_port()}"
    with StreamingServer(first_token_ms=1, gap_ms=1) as srv:
        res = servescope("compare", str(scenario), "--target", f"up={srv.url}",
                         "--target", f"down={dead}", "--concurrency", "1", "--requests", "3",
                         "--out", str(out), "--quiet", db=tmp_path / "c.db")
    assert res.returncode == 1, res.stdout + res.stderr
    result = json.loads((out / "compare.json").read_text())
    up, down = result["targets"]
    assert up["status"] == "finished" and up["tokens"]["requests"] == 3
    assert down["status"] == "failed" and "cannot list models" in down["error"]
    assert "down was not measured" in (out / "report.md").read_text()
