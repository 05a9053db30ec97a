"""The Docker image is built from the wheel and runs the wheel's command. No Docker engine runs
here, so the Dockerfile, .dockerignore and docker-compose.yml are read and checked against
pyproject.toml and the CLI: the last stage copies in only the wheel an earlier stage built
and installs it, its entry point is the wheel's console script, the build context keeps what
the wheel is built from, and every compose command parses as a servescope command."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from servescope.cli import build_parser
from servescope.collectors.loop import TargetSpec

REPO_ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, op: str) -> list[str]:
        return [a for o, a in self.instructions if o == op]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages of a Dockerfile: instruction names upper-cased, continuation lines joined,
    comment lines dropped (as Docker does, also inside a continued instruction)."""
    logical, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not current):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line.strip())
        current = ""
    assert not current, "the Dockerfile ends inside a continued instruction"
    stages: list[Stage] = []
    for line in logical:
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            assert m, f"FROM {rest}: not understood"
            stages.append(Stage(m[1], m[2]))
        else:
            assert stages, f"{op} before the first FROM"
            stages[-1].instructions.append((op, rest))
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"{args}: not the exec (JSON) form"
    return value


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile((REPO_ROOT / "Dockerfile").read_text())


def copy_from(stage: Stage) -> list[tuple[str, list[str]]]:
    """(stage copied from or "" for the build context, source paths) for each COPY/ADD."""
    out = []
    for op in ("COPY", "ADD"):
        for args in stage.args(op):
            words = shlex.split(args)
            flags = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            source = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), "")
            out.append((source, paths[:-1]))
    return out


def test_the_last_stage_installs_only_the_wheel_an_earlier_stage_built(stages):
    assert len(stages) >= 2, "expected a stage that builds the wheel and one that installs it"
    *builders, final = stages
    copies = copy_from(final)
    assert copies, "the last stage copies nothing in"
    wheel_dirs = set()
    for source, _ in copies:
        assert source in {s.name for s in builders}, (
            f"the last stage copies from {source or 'the build context'}: only the wheel "
            "built in an earlier stage may go in")
    for builder in builders:
        for run in builder.args("RUN"):
            if m := re.search(r"pip wheel\b(.*)", run):
                words = shlex.split(m[1])
                assert "--no-deps" in words, f"RUN {run}: the wheel alone, not its dependencies"
                wheel_dirs.add(words[words.index("--wheel-dir") + 1].rstrip("/"))
    assert wheel_dirs, "no stage builds a wheel (pip wheel --no-deps --wheel-dir DIR .)"
    copied = [p.rstrip("/") for _, paths in copies for p in paths]
    assert set(copied) <= wheel_dirs, f"copied {copied}; the wheel was built into {wheel_dirs}"
    installs = [run for run in final.args("RUN") if "pip install" in run]
    assert len(installs) == 1, installs
    words = shlex.split(installs[0].split("&&")[0])
    targets = [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
    assert targets and all(
        fnmatch.fnmatch(f"{PROJECT['name']}-{PROJECT['version']}-py3-none-any.whl", Path(t).name)
        for t in targets), f"the last stage installs {targets}, not the wheel"
    assert "-e" not in words and "--editable" not in words


def test_the_entry_point_is_the_wheels_console_script(stages):
    (script,) = PROJECT["scripts"]
    entrypoints = stages[-1].args("ENTRYPOINT")
    assert entrypoints, "the last stage has no ENTRYPOINT"
    assert exec_form(entrypoints[-1]) == [script]


def test_the_base_image_runs_the_python_the_project_requires(stages):
    for stage in stages:
        m = re.fullmatch(r"python:(\d+\.\d+)[\w.-]*", stage.image)
        assert m, f"FROM {stage.image}: expected an official python image"
        assert m[1] in SpecifierSet(PROJECT["requires-python"]), (stage.image,
                                                                  PROJECT["requires-python"])


def test_the_build_context_keeps_what_the_wheel_is_built_from():
    patterns = [line.strip().rstrip("/") for line in
                (REPO_ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(name: str) -> bool:
        return any(fnmatch.fnmatch(name, p) for p in patterns)

    assert ignored(".venv") and ignored(".git")  # gigabytes the build never reads
    needed = ["pyproject.toml", PROJECT["readme"], "servescope",
              *PYPROJECT["tool"]["setuptools"]["package-dir"].values()]
    assert not [n for n in needed if ignored(n)], "the wheel is built from these"


def test_compose_commands_parse_as_servescope_commands():
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    ours = {name: s for name, s in compose["services"].items() if s.get("build")}
    assert ours, "no service is built from this repository"
    for name, service in ours.items():
        assert service["build"] in (".", {"context": "."}), name
        assert "entrypoint" not in service, f"{name}: the image's entry point is servescope"
        try:
            args = build_parser().parse_args(service["command"])
        except SystemExit:  # argparse said why on stderr
            pytest.fail(f"{name}: {service['command']} is not a servescope command line")
        for target in getattr(args, "target", None) or []:
            TargetSpec.parse(target)
