"""Durations as people write them: ``500ms``, ``30s``, ``5m``, ``1h30m``, ``30d`` or plain
seconds."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | int | float) -> float:
    """Seconds in `value`; raises ValueError with an example of the accepted forms."""
    if isinstance(value, bool):
        raise ValueError(f"bad duration {value!r} (use e.g. 30s, 5m, 1h30m)")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = _PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"bad duration {value!r} (use e.g. 30s, 5m, 1h30m)") from None
            seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"bad duration {value!r}: must be positive")
    return seconds
