"""What several commands share: the store from --db, the API key from the environment, a
local tokenizer from --tokenizer."""

from __future__ import annotations

import argparse
import os

from servescope.core.errors import EXIT_BAD_INPUT, CliError


def _store(args: argparse.Namespace):
    from servescope.core.store import Store, StoreError

    try:
        return Store(args.db)
    except StoreError as exc:  # e.g. from a newer servescope: one line, the file untouched
        raise CliError(str(exc)) from None


def _auth_headers(env_name: str | None) -> dict[str, str]:
    """Bearer token from an environment variable; the key itself is never printed or stored."""
    name = env_name or "SERVESCOPE_API_KEY"
    key = os.environ.get(name)
    if env_name and not key:
        raise CliError(f"--api-key-env {env_name}: that environment variable is not set",
                       EXIT_BAD_INPUT)
    if key and (key != key.strip() or any(c in key for c in "\r\n")):
        raise CliError(f"{name}: the API key has a line break or surrounding spaces (the key "
                       "itself is not shown)", EXIT_BAD_INPUT)
    return {"authorization": f"Bearer {key}"} if key else {}


def _tokenizer(spec: str | None):
    """--tokenizer loaded here (once, also for every level of a sweep), or a clear refusal
    naming the path or id; None without the flag."""
    if spec is None:
        return None
    from servescope.loadgen.tokenizer import TokenizerError, load_tokenizer

    try:
        return load_tokenizer(spec)
    except TokenizerError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
