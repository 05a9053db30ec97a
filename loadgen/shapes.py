"""How load arrives, as a scenario says: closed-loop concurrency `stages`, open-loop
`arrivals` at a request rate, or the replay of a timestamped `trace`."""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from servescope.core.durations import parse_duration
from servescope.loadgen.arrivals import RateStage, TraceEntry, parse_trace, replay_times
from servescope.loadgen.fields import Strict, duration_or_zero, resolve_path

# A run bounded by request count alone still stops after this long.
REQUESTS_ONLY_TIME_CAP = 3600.0


def parse_rate(value: Any) -> float:
    """Requests per second from ``5``, ``5/s``, ``300/m``, ``300/min`` or ``18000/h``."""
    if isinstance(value, bool):
        raise ValueError(f"bad rate {value!r} (use e.g. 5/s, 300/m)")
    if isinstance(value, int | float):
        rate = float(value)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*(s|sec|m|min|h))?\s*", str(value))
        if not m:
            raise ValueError(f"bad rate {value!r} (use e.g. 5/s, 300/m)")
        per = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
        rate = float(m.group(1)) / per[m.group(2)]
    if not math.isfinite(rate) or rate < 0:
        raise ValueError(f"bad rate {value!r}: must be zero or positive")
    return rate


class Stage(Strict):
    """A closed-loop stage: `concurrency` users, each sending its next request as soon as
    the previous one finished (plus `think_time`), for `duration`; over its first `ramp`
    the users move linearly from the previous stage's count."""

    concurrency: int = Field(ge=1, le=10_000)
    duration: float
    think_time: float = 0.0
    ramp: float = 0.0

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("think_time", "ramp", mode="before")
    @classmethod
    def _optional_duration(cls, v: Any) -> float:
        return duration_or_zero(v)

    @model_validator(mode="after")
    def _ramp_fits(self) -> Stage:
        if self.ramp > self.duration:
            raise ValueError("ramp must not be longer than the stage's duration")
        return self


class RateStageSpec(Strict):
    """An open-loop stage: `rate` requests per second for `duration`, reached linearly from
    the previous stage's rate over its first `ramp`."""

    rate: float
    duration: float
    ramp: float = 0.0

    @field_validator("rate", mode="before")
    @classmethod
    def _rate(cls, v: Any) -> float:
        return parse_rate(v)

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("ramp", mode="before")
    @classmethod
    def _ramp(cls, v: Any) -> float:
        return duration_or_zero(v)

    @model_validator(mode="after")
    def _ramp_fits(self) -> RateStageSpec:
        if self.ramp > self.duration:
            raise ValueError("ramp must not be longer than the stage's duration")
        return self


class Arrivals(Strict):
    """Open loop: requests arrive at a rate whatever the server does, one greenlet each.

    `rate` (with `duration`, or bounded by max_requests) or `stages` of rates. `process`:
    poisson (independent arrivals), gamma (`cv` > 1 burstier, < 1 more regular than
    poisson) or constant (evenly spaced). With `turns`, an arrival starts a conversation whose
    later turns follow each answer after `think_time`.
    """

    process: Literal["poisson", "gamma", "constant"] = "poisson"
    cv: float | None = Field(default=None, gt=0, le=100)
    rate: float | None = None
    duration: float | None = None
    stages: list[RateStageSpec] | None = None
    think_time: float = 0.0

    @field_validator("rate", mode="before")
    @classmethod
    def _rate(cls, v: Any) -> float | None:
        return None if v is None else parse_rate(v)

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        return None if v is None else parse_duration(v)

    @field_validator("think_time", mode="before")
    @classmethod
    def _think(cls, v: Any) -> float:
        return duration_or_zero(v)

    @model_validator(mode="after")
    def _one_shape(self) -> Arrivals:
        if (self.rate is None) == (self.stages is None):
            raise ValueError("give either rate (with duration) or stages of rates")
        if self.stages is not None and self.duration is not None:
            raise ValueError("duration goes in each stage when stages are given")
        if self.stages is not None and not self.stages:
            raise ValueError("stages must not be empty")
        if max(s.rate for s in self.rate_stages(1.0)) <= 0:
            raise ValueError("at least one rate must be above zero")
        if self.cv is not None and self.process != "gamma":
            raise ValueError("cv applies to process: gamma only")
        if self.process == "gamma" and self.cv is None:
            raise ValueError("process gamma needs cv (1 behaves like poisson, 2 is bursty)")
        return self

    def rate_stages(self, cap: float = REQUESTS_ONLY_TIME_CAP) -> list[RateStage]:
        if self.stages is not None:
            return [RateStage(s.rate, s.duration, s.ramp) for s in self.stages]
        return [RateStage(self.rate or 0.0, self.duration or cap)]


class Trace(Strict):
    """Replay of a JSONL trace: one ``{"t": seconds, "prompt_tokens": n, "output_tokens":
    m}`` per line. Each request is sent at (t - first t) x `time_scale` (2.0: half speed,
    0.5: twice as fast); `duration` cuts the replay short."""

    file: str
    time_scale: float = Field(default=1.0, gt=0)
    duration: float | None = None
    _entries: list[TraceEntry] = PrivateAttr(default_factory=list)

    @field_validator("file")
    @classmethod
    def _readable(cls, v: str, info: ValidationInfo) -> str:
        path = resolve_path(v, info)
        _read_trace(str(path))
        return str(path)

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        return None if v is None else parse_duration(v)

    @model_validator(mode="after")
    def _load(self) -> Trace:
        self._entries = _read_trace(self.file)
        return self

    @property
    def entries(self) -> list[TraceEntry]:
        return self._entries

    def schedule(self, limit: int | None = None) -> list[tuple[float, TraceEntry]]:
        return replay_times(self._entries, self.time_scale, self.duration, limit)


@functools.lru_cache(maxsize=16)
def _read_trace(path: str) -> list[TraceEntry]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read trace {path} ({exc.strerror})") from None
    try:
        return parse_trace(text)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def fit_stages(stages: list[dict[str, float]], duration: float) -> list[dict[str, float]]:
    """Stages cut to `duration` in total, or the last one lengthened to reach it."""
    out, left = [], duration
    for s in stages:
        if left <= 0:
            break
        d = min(s["duration"], left)
        out.append({**s, "duration": d, "ramp": min(s["ramp"], d)})
        left -= d
    if left > 0:
        out[-1]["duration"] += left
    return out

