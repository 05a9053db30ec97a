"""`servescope advise` commands (being built)."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this module's subcommands on the CLI's subparsers."""
