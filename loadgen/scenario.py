"""Scenario files (scenarios/*.yaml): validated with pydantic, errors name file and field."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from servescope.durations import parse_duration

# A run bounded by request count alone still stops after this long.
REQUESTS_ONLY_TIME_CAP = 3600.0


class ScenarioError(ValueError):
    """A scenario file is unreadable or invalid; str() names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Fixed(_Strict):
    dist: Literal["fixed"]
    value: int = Field(ge=1)

    def sample(self, rng: random.Random) -> int:
        return self.value


class Uniform(_Strict):
    dist: Literal["uniform"]
    min: int = Field(ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _order(self) -> Uniform:
        if self.max < self.min:
            raise ValueError("max must be >= min")
        return self

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.min, self.max)


class Normal(_Strict):
    """Normal, clipped to [min, max]."""

    dist: Literal["normal"]
    mean: float = Field(gt=0)
    stddev: float = Field(ge=0)
    min: int = Field(default=1, ge=1)
    max: int | None = Field(default=None, ge=1)

    def sample(self, rng: random.Random) -> int:
        v = round(rng.gauss(self.mean, self.stddev))
        return max(self.min, min(v, self.max or v))


class LogNormal(_Strict):
    """Lognormal given its median and sigma (of the log), clipped to [min, max]; the
    usual shape of real prompt and answer lengths: most short, a long tail."""

    dist: Literal["lognormal"]
    median: float = Field(gt=0)
    sigma: float = Field(ge=0)
    min: int = Field(default=1, ge=1)
    max: int | None = Field(default=None, ge=1)

    def sample(self, rng: random.Random) -> int:
        import math

        v = round(rng.lognormvariate(math.log(self.median), self.sigma))
        return max(self.min, min(v, self.max or v))


Distribution = Annotated[Fixed | Uniform | Normal | LogNormal, Field(discriminator="dist")]


def _lengths(value: Any) -> Any:
    """A bare integer means a fixed length."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"token count must be a positive integer, got {value}")
        return {"dist": "fixed", "value": value}
    return value


class Stage(_Strict):
    """A closed-loop stage: `concurrency` users, each sending its next request as soon as
    the previous one finished (plus `think_time`), for `duration`."""

    concurrency: int = Field(ge=1, le=10_000)
    duration: float
    think_time: float = 0.0

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("think_time", mode="before")
    @classmethod
    def _think(cls, v: Any) -> float:
        return 0.0 if v in (0, "0", None) else parse_duration(v)


class Slo(_Strict):
    """Targets in milliseconds for the run's percentiles, e.g. ``ttft_ms: {p95: 2000}``."""

    ttft_ms: dict[str, float] = Field(default_factory=dict)
    itl_ms: dict[str, float] = Field(default_factory=dict)
    tpot_ms: dict[str, float] = Field(default_factory=dict)
    e2e_ms: dict[str, float] = Field(default_factory=dict)

    @field_validator("*")
    @classmethod
    def _percentiles(cls, v: dict[str, float]) -> dict[str, float]:
        for key, target in v.items():
            if key not in {"p50", "p90", "p95", "p99", "mean"}:
                raise ValueError(f"unknown percentile {key!r} (use p50, p90, p95, p99, mean)")
            if target <= 0:
                raise ValueError(f"{key} target must be positive")
        return v


class Scenario(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    seed: int = 0
    prompt_tokens: Distribution
    output_tokens: Distribution
    shared_prefix_tokens: int = Field(default=0, ge=0)
    system_prompt: str | None = None
    stages: list[Stage] = Field(min_length=1)
    max_requests: int | None = Field(default=None, ge=1)
    request_timeout: float = 120.0
    warmup_requests: int = Field(default=0, ge=0)
    slos: Slo = Field(default_factory=Slo)

    @field_validator("prompt_tokens", "output_tokens", mode="before")
    @classmethod
    def _bare_int(cls, v: Any) -> Any:
        return _lengths(v)

    @field_validator("request_timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> float:
        return parse_duration(v)

    @property
    def duration_s(self) -> float:
        return sum(s.duration for s in self.stages)

    def with_overrides(
        self,
        concurrency: int | None = None,
        duration: float | None = None,
        requests: int | None = None,
    ) -> Scenario:
        """Replace the load shape with one closed-loop stage (CLI overrides)."""
        data = self.model_dump()
        if concurrency is not None or duration is not None:
            data["stages"] = [
                {
                    "concurrency": concurrency or max(s.concurrency for s in self.stages),
                    "duration": duration
                    or (self.duration_s if requests is None else REQUESTS_ONLY_TIME_CAP),
                }
            ]
        if requests is not None:
            data["max_requests"] = requests
            if duration is None and concurrency is not None:
                data["stages"][0]["duration"] = REQUESTS_ONLY_TIME_CAP
        return Scenario.model_validate(data)


def _field_path(loc: tuple[Any, ...]) -> str:
    # Drop pydantic's union-member tags (e.g. 'fixed') so the path is what the user wrote.
    parts = [str(p) for p in loc if p not in ("fixed", "uniform", "normal", "lognormal")]
    return ".".join(parts) or "(top level)"


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario must be a mapping of fields")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = _field_path(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            lines.append(f"{path}: field {field}: {msg}")
        raise ScenarioError("\n".join(lines)) from None
