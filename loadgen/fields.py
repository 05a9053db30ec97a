"""Validation helpers shared by a scenario file's sections (lengths, load shapes, the
scenario itself): strict models, durations and paths relative to the scenario's folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo

from servescope.core.durations import parse_duration


class Strict(BaseModel):
    """A model that refuses unknown fields, so a typo in a scenario is an error."""

    model_config = ConfigDict(extra="forbid")


def duration_or_zero(v: Any) -> float:
    return 0.0 if v in (0, "0", None) else parse_duration(v)


def resolve_path(path: str, info: ValidationInfo) -> Path:
    """A path as written in the scenario, relative to the scenario file's folder."""
    p = Path(path).expanduser()
    base = (info.context or {}).get("base_dir")
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    return p.resolve()
