"""Scenario files (scenarios/*.yaml): validated with pydantic, errors name file and field.

A scenario says what each request asks for (token lengths, shared prefixes, conversations,
a mix of request classes) and how load arrives: closed-loop concurrency `stages`, open-loop
`arrivals` at a request rate, or the replay of a timestamped `trace`. scenarios/README.md
documents every field.
"""

from __future__ import annotations

import bisect
import functools
import json
import math
import random
import re
from importlib.resources import files
from pathlib import Path
from statistics import NormalDist
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from servescope.loadgen.arrivals import RateStage, TraceEntry, UserStage, parse_trace, replay_times

from servescope.core.durations import parse_duration

# A run bounded by request count alone still stops after this long.
REQUESTS_ONLY_TIME_CAP = 3600.0
_STD_NORMAL = NormalDist()
_U_EDGE = 1e-12  # keeps inverse CDFs finite


class ScenarioError(ValueError):
    """A scenario file is unreadable or invalid; str() names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _duration_or_zero(v: Any) -> float:
    return 0.0 if v in (0, "0", None) else parse_duration(v)


def _resolve(path: str, info: ValidationInfo) -> Path:
    """A path as written in the scenario, relative to the scenario file's folder."""
    p = Path(path).expanduser()
    base = (info.context or {}).get("base_dir")
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    return p.resolve()


# -- token-length distributions ------------------------------------------------------------
# Each maps a probability u in (0, 1) to a length (its quantile function), so two lengths can
# be drawn with a chosen correlation from one pair of correlated normals (a Gaussian copula).
class _Dist(_Strict):
    def quantile(self, u: float) -> int:
        raise NotImplementedError

    def sample(self, rng: random.Random) -> int:
        return self.quantile(rng.random())


class Fixed(_Dist):
    dist: Literal["fixed"]
    value: int = Field(ge=1)

    def quantile(self, u: float) -> int:
        return self.value


class Uniform(_Dist):
    dist: Literal["uniform"]
    min: int = Field(ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _order(self) -> Uniform:
        if self.max < self.min:
            raise ValueError("max must be >= min")
        return self

    def quantile(self, u: float) -> int:
        span = self.max - self.min + 1
        return self.min + min(int(u * span), span - 1)


class Normal(_Dist):
    """Normal, clipped to [min, max]."""

    dist: Literal["normal"]
    mean: float = Field(gt=0)
    stddev: float = Field(ge=0)
    min: int = Field(default=1, ge=1)
    max: int | None = Field(default=None, ge=1)

    def quantile(self, u: float) -> int:
        v = self.mean
        if self.stddev > 0:
            v = NormalDist(self.mean, self.stddev).inv_cdf(min(max(u, _U_EDGE), 1 - _U_EDGE))
        return _clip(round(v), self.min, self.max)


class LogNormal(_Dist):
    """Lognormal given its median and sigma (of the log), clipped to [min, max]; the
    usual shape of real prompt and answer lengths: most short, a long tail."""

    dist: Literal["lognormal"]
    median: float = Field(gt=0)
    sigma: float = Field(ge=0)
    min: int = Field(default=1, ge=1)
    max: int | None = Field(default=None, ge=1)

    def quantile(self, u: float) -> int:
        z = _STD_NORMAL.inv_cdf(min(max(u, _U_EDGE), 1 - _U_EDGE))
        return _clip(round(self.median * math.exp(self.sigma * z)), self.min, self.max)


class Empirical(_Dist):
    """Lengths as observed: `values` alone (each equally likely, e.g. lengths measured from
    a log), `values` with `weights` (a histogram), or `file`: a JSON list of lengths, a JSON
    ``{"values": [...], "weights": [...]}``, or text with one length per line; a relative
    path is taken from the scenario file's folder."""

    dist: Literal["empirical"]
    values: list[Annotated[int, Field(ge=1)]] | None = None
    weights: list[Annotated[float, Field(ge=0)]] | None = None
    file: str | None = None
    _lengths: list[int] = PrivateAttr(default_factory=list)
    _cumulative: list[float] = PrivateAttr(default_factory=list)

    @field_validator("file")
    @classmethod
    def _readable(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return None
        path = _resolve(v, info)
        _read_lengths(str(path))  # fails here, so the error names the `file` field
        return str(path)

    @model_validator(mode="after")
    def _table(self) -> Empirical:
        if (self.values is None) == (self.file is None):
            raise ValueError("give either values (with optional weights) or file")
        if self.file is not None:
            if self.weights is not None:
                raise ValueError("weights go in the file, next to its values")
            values, weights = _read_lengths(self.file)
        else:
            values, weights = list(self.values or []), self.weights
        if not values:
            raise ValueError("values must not be empty")
        if weights is not None and len(weights) != len(values):
            raise ValueError(f"{len(weights)} weights for {len(values)} values")
        totals: dict[int, float] = {}
        for v, w in zip(values, weights or [1.0] * len(values), strict=True):
            totals[v] = totals.get(v, 0.0) + w
        lengths = sorted(v for v, w in totals.items() if w > 0)
        if not lengths:
            raise ValueError("weights must not all be zero")
        cumulative, acc = [], 0.0
        for v in lengths:
            acc += totals[v]
            cumulative.append(acc)
        self._lengths, self._cumulative = lengths, cumulative
        return self

    def quantile(self, u: float) -> int:
        i = bisect.bisect_left(self._cumulative, u * self._cumulative[-1])
        return self._lengths[min(i, len(self._lengths) - 1)]


def _clip(v: int, lo: int, hi: int | None) -> int:
    return max(lo, min(v, hi if hi is not None else v))


@functools.lru_cache(maxsize=64)
def _read_lengths(path: str) -> tuple[list[int], list[float] | None]:
    """(values, weights or None) from a lengths file; ValueError says what is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read lengths file {path} ({exc.strerror})") from None
    return parse_lengths(text, path)


def parse_lengths(text: str, name: str = "lengths") -> tuple[list[int], list[float] | None]:
    """A JSON list of lengths, a JSON {values, weights}, or numbers separated by whitespace,
    commas or newlines (``#`` starts a comment)."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
        words = re.sub(r"#[^\n]*", "", text).replace(",", " ").split()
        try:
            values = [int(w) for w in words]
        except ValueError:
            raise ValueError(f"{name}: expected whole numbers, one length each") from None
        weights = None
    else:
        if isinstance(data, list):
            values, weights = data, None
        elif isinstance(data, dict) and set(data) <= {"values", "weights"} and "values" in data:
            values, weights = data["values"], data.get("weights")
        else:
            raise ValueError(f"{name}: expected a JSON list of lengths or {{values, weights}}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ValueError(f"{name}: lengths must be positive integers")
    if weights is not None and not all(
        isinstance(w, int | float) and not isinstance(w, bool) and w >= 0 for w in weights
    ):
        raise ValueError(f"{name}: weights must be non-negative numbers")
    if not values:
        raise ValueError(f"{name}: holds no lengths")
    return values, weights


Distribution = Annotated[
    Fixed | Uniform | Normal | LogNormal | Empirical, Field(discriminator="dist")
]
_DIST_TAGS = ("fixed", "uniform", "normal", "lognormal", "empirical")


def _lengths(value: Any) -> Any:
    """A bare integer means a fixed length."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"token count must be a positive integer, got {value}")
        return {"dist": "fixed", "value": value}
    return value


def correlated_lengths(
    prompt: _Dist, output: _Dist, correlation: float, rng: random.Random
) -> tuple[int, int]:
    """A (prompt, output) pair with each length from its own distribution, tied by a
    Gaussian copula: two standard normals with correlation rho are mapped through the normal
    CDF and each distribution's quantile function. rho = 0 draws them independently; the
    rank (Spearman) correlation of the lengths is (6/pi) asin(rho/2), just under rho."""
    z1 = rng.gauss(0.0, 1.0)
    z2 = correlation * z1 + math.sqrt(max(0.0, 1 - correlation**2)) * rng.gauss(0.0, 1.0)
    return prompt.quantile(_STD_NORMAL.cdf(z1)), output.quantile(_STD_NORMAL.cdf(z2))


# -- load shapes ---------------------------------------------------------------------------
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


class Stage(_Strict):
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
        return _duration_or_zero(v)

    @model_validator(mode="after")
    def _ramp_fits(self) -> Stage:
        if self.ramp > self.duration:
            raise ValueError("ramp must not be longer than the stage's duration")
        return self


class RateStageSpec(_Strict):
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
        return _duration_or_zero(v)

    @model_validator(mode="after")
    def _ramp_fits(self) -> RateStageSpec:
        if self.ramp > self.duration:
            raise ValueError("ramp must not be longer than the stage's duration")
        return self


class Arrivals(_Strict):
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
        return _duration_or_zero(v)

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


class Trace(_Strict):
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
        path = _resolve(v, info)
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


def bundled_scenarios() -> list[str]:
    """Names of the scenarios shipped with servescope (``servescope load chat``)."""
    return sorted(p.name[:-5] for p in files("servescope.scenarios").iterdir()
                  if p.name.endswith(".yaml"))


def scenario_path(text: str) -> Path:
    """A scenario file by path, or by the name of a bundled one (``chat``, ``chat.yaml``).
    Bundled files are package data, so this works from a wheel in any directory."""
    path = Path(text)
    if path.exists() or path.parent != Path("."):
        return path
    name = text if text.endswith(".yaml") else f"{text}.yaml"
    bundled = files("servescope.scenarios") / name
    return Path(str(bundled)) if bundled.is_file() else path


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


# -- what requests ask for -----------------------------------------------------------------
class RequestClass(_Strict):
    """One kind of request in a `mix`, chosen with probability weight / sum of weights.
    Fields left out are taken from the scenario's top level."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    weight: float = Field(default=1.0, gt=0)
    prompt_tokens: Distribution | None = None
    output_tokens: Distribution | None = None
    correlation: float | None = Field(default=None, ge=-1, le=1)
    turns: Distribution | None = None
    priority: int | None = None

    @field_validator("prompt_tokens", "output_tokens", "turns", mode="before")
    @classmethod
    def _bare_int(cls, v: Any) -> Any:
        return _lengths(v)


class Workload(BaseModel):
    """A request class with the scenario's defaults filled in: everything one conversation
    needs to draw its turns."""

    name: str
    prompt_tokens: Distribution
    output_tokens: Distribution
    correlation: float = 0.0
    turns: Distribution | None = None
    priority: int | None = None

    def lengths(self, rng: random.Random) -> tuple[int, int]:
        return correlated_lengths(self.prompt_tokens, self.output_tokens, self.correlation, rng)


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


Mode = Literal["closed", "open", "trace"]
# How requests are sent: OpenAI-compatible chat or completions, or Ollama's native API.
Api = Literal["openai-chat", "openai-completions", "ollama-generate", "ollama-chat"]


class Scenario(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    api: Api = "openai-chat"
    seed: int = 0
    prompt_tokens: Distribution | None = None
    output_tokens: Distribution | None = None
    correlation: float = Field(default=0.0, ge=-1, le=1)
    turns: Distribution | None = None
    mix: list[RequestClass] | None = None
    shared_prefix_tokens: int = Field(default=0, ge=0)
    prefix_groups: int = Field(default=1, ge=1, le=10_000)
    system_prompt: str | None = None
    stages: list[Stage] = Field(default_factory=list)
    arrivals: Arrivals | None = None
    trace: Trace | None = None
    max_requests: int | None = Field(default=None, ge=1)
    max_in_flight: int = Field(default=512, ge=1, le=100_000)
    request_timeout: float = 120.0
    warmup_requests: int = Field(default=0, ge=0)
    slos: Slo = Field(default_factory=Slo)
    _workloads: list[Workload] | None = PrivateAttr(default=None)

    @field_validator("prompt_tokens", "output_tokens", "turns", mode="before")
    @classmethod
    def _bare_int(cls, v: Any) -> Any:
        return _lengths(v)

    @field_validator("request_timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> float:
        return parse_duration(v)

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        shapes = [n for n in ("stages", "arrivals", "trace") if getattr(self, n)]
        if len(shapes) != 1:
            raise ValueError(
                "give exactly one load shape: stages (closed loop), arrivals (open loop) or "
                f"trace (replay); got {', '.join(shapes) or 'none'}"
            )
        if self.prefix_groups > 1 and (self.system_prompt or not self.shared_prefix_tokens):
            raise ValueError("prefix_groups needs shared_prefix_tokens (and no system_prompt)")
        if self.trace is not None:
            if self.turns is not None or self.mix:
                raise ValueError("a trace replay takes each request's lengths from the trace: "
                                 "turns and mix do not apply")
            return self
        if self.mix is not None and not self.mix:
            raise ValueError("mix must not be empty")
        for field in ("prompt_tokens", "output_tokens"):
            if getattr(self, field) is None and not (
                self.mix and all(getattr(c, field) is not None for c in self.mix)
            ):
                raise ValueError(f"{field} is required (here, or in every mix class)")
        if self.mix and len({c.name for c in self.mix}) != len(self.mix):
            raise ValueError("mix class names must be unique")
        return self

    # -- what the run does ---------------------------------------------------------------------
    @property
    def mode(self) -> Mode:
        return "closed" if self.stages else "open" if self.arrivals else "trace"

    @property
    def duration_s(self) -> float:
        """How long requests keep being started (a request-count bound may end it sooner)."""
        if self.mode == "closed":
            return sum(s.duration for s in self.stages)
        if self.mode == "open":
            assert self.arrivals is not None
            return sum(s.duration for s in self.arrivals.rate_stages())
        assert self.trace is not None
        entries = self.trace.entries[: self.max_requests]
        span = (entries[-1].t - entries[0].t) * self.trace.time_scale
        return min(span, self.trace.duration) if self.trace.duration is not None else span

    def user_stages(self) -> list[UserStage]:
        return [UserStage(s.concurrency, s.duration, s.ramp) for s in self.stages]

    def describe(self) -> str:
        """One line on the load shape, for progress output."""
        if self.mode == "closed":
            users = "->".join(str(s.concurrency) for s in self.stages)
            return f"closed loop, {len(self.stages)} stage(s), users {users}"
        if self.mode == "open":
            assert self.arrivals is not None
            rates = "->".join(f"{s.rate:g}" for s in self.arrivals.rate_stages())
            return f"open loop, {self.arrivals.process} arrivals at {rates}/s"
        assert self.trace is not None
        return (f"trace replay of {len(self.trace.entries)} requests at time scale "
                f"{self.trace.time_scale:g}")

    def workloads(self) -> list[Workload]:
        """The request classes with the top-level defaults filled in (one, without `mix`)."""
        if self._workloads is None:
            self._workloads = self._resolve_workloads()
        return self._workloads

    def _resolve_workloads(self) -> list[Workload]:
        if self.mode == "trace":
            return []
        if not self.mix:
            return [Workload(name="default", prompt_tokens=self.prompt_tokens,
                             output_tokens=self.output_tokens, correlation=self.correlation,
                             turns=self.turns)]
        return [
            Workload(
                name=c.name,
                prompt_tokens=c.prompt_tokens or self.prompt_tokens,
                output_tokens=c.output_tokens or self.output_tokens,
                correlation=self.correlation if c.correlation is None else c.correlation,
                turns=c.turns or self.turns,
                priority=c.priority,
            )
            for c in self.mix
        ]

    @property
    def multi_turn(self) -> bool:
        return any(w.turns is not None for w in self.workloads())

    # -- command-line overrides ----------------------------------------------------------------
    def with_overrides(
        self,
        concurrency: int | None = None,
        duration: float | None = None,
        requests: int | None = None,
        *,
        rate: float | str | None = None,
        process: str | None = None,
        cv: float | None = None,
        max_in_flight: int | None = None,
        time_scale: float | None = None,
        seed: int | None = None,
    ) -> Scenario:
        """The scenario with its load shape replaced or cut, as the CLI flags ask.

        `concurrency` (closed loop) or `rate` (open loop): one stage at that level, for
        `duration` (else the scenario's own length). `duration` alone: a closed-loop scenario
        becomes one stage at its peak concurrency; an open-loop schedule is cut there (or its
        last stage lengthened); a trace replay stops there. `requests` bounds the request
        count (with no duration: an hour at most). Raises ScenarioError naming the flag.
        """
        if concurrency is not None and rate is not None:
            raise ScenarioError("--concurrency (closed loop) and --rate (open loop) exclude "
                                "each other")
        data = self.model_dump()
        own_length = None if requests is not None else self.duration_s
        if concurrency is not None or (duration is not None and rate is None
                                       and self.mode == "closed"):
            peak = max((s.concurrency for s in self.stages), default=1)
            data.update(arrivals=None, trace=None, stages=[{
                "concurrency": peak if concurrency is None else concurrency,
                "duration": duration or own_length or REQUESTS_ONLY_TIME_CAP,
                "think_time": self.stages[0].think_time if self.stages else 0.0,
            }])
        elif rate is not None:
            old = self.arrivals
            data.update(stages=[], trace=None, arrivals={
                "process": process or (old.process if old else "poisson"),
                "cv": cv if cv is not None else (old.cv if old else None),
                "rate": rate,
                "duration": duration or own_length or REQUESTS_ONLY_TIME_CAP,
                "think_time": old.think_time if old else 0.0,
            })
        elif self.mode == "open" and duration is not None:
            assert self.arrivals is not None
            data["arrivals"].update(rate=None, duration=None, stages=_fit_stages(
                [{"rate": s.rate, "duration": s.duration, "ramp": s.ramp}
                 for s in self.arrivals.rate_stages()], duration))
        elif self.mode == "trace" and duration is not None:
            data["trace"]["duration"] = duration
        if (process is not None or cv is not None) and rate is None:
            if data.get("arrivals") is None:
                raise ScenarioError("--arrival-process and --cv apply to open-loop runs "
                                    "(an arrivals scenario, or with --rate)")
            if process is not None:
                data["arrivals"]["process"] = process
            if cv is not None:
                data["arrivals"]["cv"] = cv
        if time_scale is not None:
            if data.get("trace") is None:
                raise ScenarioError("--time-scale applies to trace replays only")
            data["trace"]["time_scale"] = time_scale
        if requests is not None:
            data["max_requests"] = requests
        if max_in_flight is not None:
            data["max_in_flight"] = max_in_flight
        if seed is not None:
            data["seed"] = seed
        try:
            return Scenario.model_validate(data)
        except ValidationError as exc:
            raise ScenarioError("\n".join(_messages(exc, "overrides"))) from None


def _fit_stages(stages: list[dict[str, float]], duration: float) -> list[dict[str, float]]:
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


# -- loading -------------------------------------------------------------------------------
def _field_path(loc: tuple[Any, ...]) -> str:
    # Drop pydantic's union-member tags (e.g. 'fixed') so the path is what the user wrote.
    parts = [str(p) for p in loc if p not in _DIST_TAGS]
    return ".".join(parts) or "(top level)"


def _messages(exc: ValidationError, where: str) -> list[str]:
    lines = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{where}: field {_field_path(err['loc'])}: {msg}")
    return lines


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario; files it names (traces, length files) are taken
    relative to its folder."""
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
        return Scenario.model_validate(data, context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        raise ScenarioError("\n".join(_messages(exc, str(path)))) from None
