"""Scenario files (scenarios/*.yaml): validated with pydantic, errors name file and field.

A scenario says what each request asks for (token lengths, shared prefixes, conversations,
a mix of request classes) and how load arrives: closed-loop concurrency `stages`, open-loop
`arrivals` at a request rate, or the replay of a timestamped `trace`. scenarios/README.md
documents every field.
"""

from __future__ import annotations

import random
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from servescope.core.durations import parse_duration
from servescope.loadgen.arrivals import UserStage
from servescope.loadgen.fields import Strict
from servescope.loadgen.lengths import (
    DIST_TAGS,
    Distribution,
    Empirical,
    LogNormal,
    bare_length,
    correlated_lengths,
)
from servescope.loadgen.shapes import (
    REQUESTS_ONLY_TIME_CAP,
    Arrivals,
    Stage,
    Trace,
    fit_stages,
    parse_rate,
)

# The public names, some defined in lengths.py and shapes.py and re-exported for the modules
# and tests that import them from here.
__all__ = [
    "Empirical", "LogNormal", "Scenario", "ScenarioError", "Workload", "bundled_scenarios",
    "correlated_lengths", "load_scenario", "parse_rate", "scenario_path",
]


class ScenarioError(ValueError):
    """A scenario file is unreadable or invalid; str() names the file and the field."""


# -- what requests ask for -----------------------------------------------------------------
class RequestClass(Strict):
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
        return bare_length(v)


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


class Slo(Strict):
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


class Scenario(Strict):
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
        return bare_length(v)

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
            data["arrivals"].update(rate=None, duration=None, stages=fit_stages(
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


# -- loading -------------------------------------------------------------------------------
def _field_path(loc: tuple[Any, ...]) -> str:
    # Drop pydantic's union-member tags (e.g. 'fixed') so the path is what the user wrote.
    parts = [str(p) for p in loc if p not in DIST_TAGS]
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
