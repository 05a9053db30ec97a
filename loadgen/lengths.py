"""Token-length distributions of a scenario (`prompt_tokens`, `output_tokens`, `turns`).

Each maps a probability u in (0, 1) to a length (its quantile function), so two lengths can
be drawn with a chosen correlation from one pair of correlated normals (a Gaussian copula).
"""

from __future__ import annotations

import bisect
import functools
import json
import math
import random
import re
from pathlib import Path
from statistics import NormalDist
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from servescope.loadgen.fields import Strict, resolve_path

_STD_NORMAL = NormalDist()
_U_EDGE = 1e-12  # keeps inverse CDFs finite


class LengthDist(Strict):
    """A length distribution: `quantile` maps u in (0, 1) to a length."""

    def quantile(self, u: float) -> int:
        raise NotImplementedError

    def sample(self, rng: random.Random) -> int:
        return self.quantile(rng.random())


class Fixed(LengthDist):
    dist: Literal["fixed"]
    value: int = Field(ge=1)

    def quantile(self, u: float) -> int:
        return self.value


class Uniform(LengthDist):
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


class Normal(LengthDist):
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


class LogNormal(LengthDist):
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


class Empirical(LengthDist):
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
        path = resolve_path(v, info)
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
# The `dist` tags: pydantic puts them in error locations, which name fields without them.
DIST_TAGS = ("fixed", "uniform", "normal", "lognormal", "empirical")


def bare_length(value: Any) -> Any:
    """A bare integer means a fixed length."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"token count must be a positive integer, got {value}")
        return {"dist": "fixed", "value": value}
    return value


def correlated_lengths(
    prompt: LengthDist, output: LengthDist, correlation: float, rng: random.Random
) -> tuple[int, int]:
    """A (prompt, output) pair with each length from its own distribution, tied by a
    Gaussian copula: two standard normals with correlation rho are mapped through the normal
    CDF and each distribution's quantile function. rho = 0 draws them independently; the
    rank (Spearman) correlation of the lengths is (6/pi) asin(rho/2), just under rho."""
    z1 = rng.gauss(0.0, 1.0)
    z2 = correlation * z1 + math.sqrt(max(0.0, 1 - correlation**2)) * rng.gauss(0.0, 1.0)
    return prompt.quantile(_STD_NORMAL.cdf(z1)), output.quantile(_STD_NORMAL.cdf(z2))
