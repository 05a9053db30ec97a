"""Imports point down the layers ARCHITECTURE.md describes, and nothing imports the
application layer from below. Read from the source with ast, so a new sideways import fails
here before it tangles the house."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# folder in the repository -> the package it installs as
FOLDERS = {
    "servescope/core": "servescope.core",
    "analysis": "servescope.analysis",
    "capacity": "servescope.capacity",
    "collectors": "servescope.collectors",
    "loadgen": "servescope.loadgen",
    "servescope/engines": "servescope.engines",
    "dashboard": "servescope.dashboard",
}
# what each package may import of servescope (itself always)
ALLOWED = {
    "servescope.core": set(),
    "servescope.analysis": {"servescope.core"},
    "servescope.capacity": {"servescope.core"},
    "servescope.collectors": {"servescope.core", "servescope.analysis"},
    "servescope.loadgen": {"servescope.core", "servescope.analysis"},
    "servescope.engines": {"servescope.core", "servescope.capacity"},  # the simulated server
    "servescope.dashboard": {"servescope.core", "servescope.analysis", "servescope.capacity"},
}


def _package(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "servescope" or len(parts) < 2:
        return None
    return ".".join(parts[:2])


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_every_package_imports_only_the_layers_below_it():
    wrong = []
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).glob("*.py")):
            for name in _imports(path):
                target = _package(name)
                if target and target != package and target not in ALLOWED[package]:
                    wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_layout_checked_here_is_the_installed_one():
    text = (REPO / "pyproject.toml").read_text()
    for folder, package in FOLDERS.items():
        assert (REPO / folder / "__init__.py").is_file(), folder
        assert f'"{package}"' in text, package
