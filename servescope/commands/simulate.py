"""`servescope simulate` commands (being built)."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this module's subcommands on the CLI's subparsers."""
    # -- sim-server (servescope/commands/simserver.py) --
    from servescope.commands.simserver import add_sim_server_parser

    add_sim_server_parser(sub)
    # -- simulate, calibrate (servescope/commands/simulate_cmd.py) --
    from servescope.commands.simulate_cmd import add_simulate_parsers

    add_simulate_parsers(sub)
