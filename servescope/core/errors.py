"""The one user-facing error type: every command prints it as one line and exits with its
code (2 for bad input, as argparse does)."""

from __future__ import annotations

EXIT_BAD_INPUT = 2


class CliError(Exception):
    """A user-facing error: printed as one line, exit status `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
