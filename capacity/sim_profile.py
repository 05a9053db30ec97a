"""A calibration profile (what `servescope calibrate` saves) and predictions with intervals.

The profile holds the fitted step model with its noise, the overheads, refits on resampled
steps (the fit's uncertainty), the server's scheduler as it was measured, where it all came
from, and the error the simulator made when it replayed the calibration runs themselves:
that error widens every interval, so an interval says how sure the simulator can be, not
only how noisy the server is.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from servescope.capacity.sim_calibrate import Calibration
from servescope.capacity.sim_run import simulate_run
from servescope.capacity.sim_summary import add_intervals, figures, summarize_run
from servescope.capacity.sim_types import SchedulerConfig, SimRequest, StepModel
from servescope.capacity.steptime import LinearStepModel

SCHEMA = "servescope.sim-profile/1"
# figures whose calibration error is measured and carried into the intervals
ERROR_FIGURES = ("ttft_ms.p50", "ttft_ms.p90", "ttft_ms.p99", "itl_ms.p50", "itl_ms.p90",
                 "itl_ms.p99", "e2e_ms.p50", "e2e_ms.p90", "e2e_ms.p99", "tpot_ms.p50",
                 "output_tokens_per_s", "requests_per_s")


@dataclass
class Workload:
    """One simulated load: the requests and the shape (see sim_run.simulate_run)."""

    requests: list[SimRequest]
    closed_loop_users: int | None = None
    duration_s: float | None = None
    think_s: float = 0.0
    warmup_requests: int = 0
    slos: dict[str, dict[str, float]] = field(default_factory=dict)
    max_requests: int | None = None
    ramp_s: float = 0.0  # closed loop: the users' first sends spread over this (simulate_run)


def rel_errors(predicted: dict[str, Any], measured: dict[str, Any],
               names: Sequence[str] = ERROR_FIGURES) -> dict[str, float | None]:
    """(predicted - measured) / measured per figure (None where either is missing)."""
    p, m = figures(predicted), figures(measured)
    out: dict[str, float | None] = {}
    for k in names:
        a, b = p.get(k), m.get(k)
        out[k] = None if a is None or not b else (a - b) / b
    return out


@dataclass
class Profile:
    calibration: Calibration
    scheduler: dict[str, Any]
    bootstrap: list[dict[str, float]] = field(default_factory=list)
    model_error: dict[str, float] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    # relative error per doubling of the users beyond the calibrated levels, measured by
    # fitting without the highest level and predicting it (extrapolation_error_from)
    extrapolation_error: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "source": self.source, "scheduler": self.scheduler,
                "calibration": self.calibration.to_dict(), "bootstrap": self.bootstrap,
                "model_error": self.model_error, "checks": self.checks,
                "extrapolation_error": self.extrapolation_error}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "profile") -> Profile:
        if d.get("schema") != SCHEMA:
            raise ValueError(f"{where}: schema {d.get('schema')!r}, expected {SCHEMA!r} (made "
                             "by `servescope calibrate`)")
        try:
            return cls(Calibration.from_dict(d["calibration"]), dict(d.get("scheduler") or {}),
                       list(d.get("bootstrap") or []), dict(d.get("model_error") or {}),
                       dict(d.get("source") or {}), list(d.get("checks") or []),
                       dict(d.get("extrapolation_error") or {}))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None

    def config(self, **overrides: Any) -> SchedulerConfig:
        """The measured server's scheduler, with any knob replaced (None: kept)."""
        known = {k: v for k, v in self.scheduler.items() if k in SchedulerConfig.__annotations__
                 and v is not None}
        known.update({k: v for k, v in overrides.items() if v is not None})
        return SchedulerConfig(**known)

    def error_for(self, users: int | None) -> dict[str, float]:
        """The relative error an interval carries at `users` closed-loop users: the
        replayed calibration's own, plus the measured extrapolation error per doubling past
        the highest calibrated level (open loop, or within the levels: none added)."""
        levels = [v for v in self.source.get("levels") or [] if v]
        doublings = math.log2(users / max(levels)) if users and levels else 0.0
        if doublings <= 0 or not self.extrapolation_error:
            return dict(self.model_error)
        return {k: self.model_error.get(k, 0.0)
                + self.extrapolation_error.get(k, 0.0) * doublings
                for k in {*self.model_error, *self.extrapolation_error}}

    def step_models(self) -> list[LinearStepModel]:
        """The fit's refits, each with the main fit's noise (for the replicas)."""
        base = self.calibration.step
        return [LinearStepModel(b["a_s"], b["prefill_s_per_token"], b["decode_s_per_seq"],
                                b["kv_s_per_token"], base.ratios,
                                pair_tokens=base.pair_tokens) for b in self.bootstrap]


def run_summary(work: Workload, config: SchedulerConfig, step: StepModel, seed: int = 0,
                overhead_s: float = 0.0, tail_s: float = 0.0) -> dict[str, Any]:
    run = simulate_run(work.requests, config, step, closed_loop_users=work.closed_loop_users,
                       duration_s=work.duration_s, think_s=work.think_s, ramp_s=work.ramp_s,
                       seed=seed, overhead_s=overhead_s, tail_s=tail_s,
                       max_requests=work.max_requests)
    return summarize_run(run, work.slos, work.warmup_requests)


def predict(make_workload: Callable[[int], Workload], config: SchedulerConfig,
            profile: Profile | None = None, step: StepModel | None = None,
            replicas: int = 20, level: float = 0.9) -> dict[str, Any]:
    """A simulated summary with `level` prediction intervals. `make_workload(i)` gives
    replica i's requests (i = 0: the point estimate; others redraw lengths and arrivals).
    With a profile: the calibrated step model with its noise, each replica on one of its
    refits at a server speed drawn from the calibration's run-to-run spread, intervals
    widened by its measured error. Without: `step` (physics) alone."""
    if profile is None and step is None:
        raise ValueError("predict: give a calibration profile or a step model")
    cal = profile.calibration if profile else None
    main = cal.step if cal else step
    over, tail = (cal.ttft_overhead_s, cal.tail_s) if cal else (0.0, 0.0)
    work0 = make_workload(0)
    point = run_summary(work0, config, main, 0, over, tail)  # type: ignore[arg-type]
    refits = profile.step_models() if profile else []
    boots = profile.bootstrap if profile else []
    run_sd = cal.run_sd if cal else 0.0
    reps = []
    n_runs = len(cal.run_speeds) if cal else 0
    for i in range(1, replicas + 1):
        model = refits[(i - 1) % len(refits)] if refits else main
        if run_sd and isinstance(model, LinearStepModel):  # this run's server speed
            model = model.scaled(math.exp(run_sd * speed_draw(f"speed:{i}", n_runs)))
        o = boots[(i - 1) % len(boots)].get("ttft_overhead_s", over) if boots else over
        reps.append(run_summary(make_workload(i), config, model, i, o, tail))  # type: ignore[arg-type]
    users = work0.closed_loop_users
    add_intervals(point, reps, profile.error_for(users) if profile else 0.0, level)
    levels = profile.source.get("levels") if profile else None
    if users and levels and users > max(levels) and profile.extrapolation_error:
        point["interval_note"] = (
            f"{users} users is past the calibrated levels (up to {max(levels)}): the "
            "intervals carry the error measured predicting the highest level from the others, "
            "per doubling")
    point["step_model"] = getattr(main, "label", "custom")
    return point


def speed_draw(seed: str, runs: int) -> float:
    """A new run's log speed, in units of the calibration runs' spread: the prediction
    for one more run from `runs` seen, whose spread is itself estimated (Student's t with
    runs - 1 degrees of freedom, times sqrt(1 + 1/runs)); a standard normal draw where
    fewer than 3 runs say nothing of it."""
    rng = random.Random(seed)
    z = rng.gauss(0.0, 1.0)
    if runs < 3:
        return z
    df = runs - 1
    return z / math.sqrt(rng.gammavariate(df / 2, 2.0) / df) * math.sqrt(1 + 1 / runs)


def model_error_from(checks: Sequence[dict[str, Any]], floor: float = 0.02
                     ) -> dict[str, float]:
    """Per figure, the largest relative error of the replayed calibration runs (at least
    `floor`): what the intervals add for the simulator's own bias."""
    out: dict[str, float] = {}
    for k in ERROR_FIGURES:
        errs = [abs(c["errors"][k]) for c in checks if c["errors"].get(k) is not None]
        out[k] = max([floor, *errs])
    return out


def extrapolation_error_from(errors: dict[str, float | None], doublings: float
                             ) -> dict[str, float]:
    """Per figure, the relative error of a prediction `doublings` doublings of the users
    past the levels fitted, per doubling (absolute)."""
    if doublings <= 0:
        return {}
    return {k: abs(v) / doublings for k, v in errors.items() if v is not None}
