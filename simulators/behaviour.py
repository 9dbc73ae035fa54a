"""How a simulated instrument behaves, whatever it measures: durations, noise, failures, drift.

Every simulator takes these options (:class:`SimulatorOptions`); :func:`simulate` turns one
request into an :class:`Outcome` with a random generator made for that run alone
(:func:`run_random`), so a campaign replayed with the same seeds gets the same numbers no
matter in which order the instruments ran the trials.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .model import ParameterValue, SimModel, derived_metrics, model_noise_sd

__all__ = [
    "Drift",
    "Duration",
    "ExponentialDuration",
    "Failures",
    "Fate",
    "FixedDuration",
    "LognormalDuration",
    "Outcome",
    "SimulatorOptions",
    "UniformDuration",
    "run_random",
    "simulate",
]

_STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Fate = Literal["ok", "error", "drop", "garbage", "offline"]
"""What a run does: answer, answer ``failed``, never answer, answer garbage, go offline first."""


class FixedDuration(BaseModel):
    """Every trial takes ``seconds``."""

    model_config = _STRICT
    dist: Literal["fixed"]
    seconds: float = Field(ge=0.0)


class UniformDuration(BaseModel):
    """Uniform between ``low`` and ``high`` seconds."""

    model_config = _STRICT
    dist: Literal["uniform"]
    low: float = Field(ge=0.0)
    high: float = Field(ge=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> UniformDuration:
        if self.low > self.high:
            raise ValueError("duration: low must be <= high")
        return self


class LognormalDuration(BaseModel):
    """Log-normal: ``median_s`` times ``exp(sigma * N(0, 1))``, cut at ``max_s`` when given."""

    model_config = _STRICT
    dist: Literal["lognormal"]
    median_s: float = Field(gt=0.0)
    sigma: float = Field(default=0.5, ge=0.0)
    max_s: float | None = Field(default=None, gt=0.0)


class ExponentialDuration(BaseModel):
    """Exponential with mean ``mean_s`` (memoryless waits), cut at ``max_s`` when given."""

    model_config = _STRICT
    dist: Literal["exponential"]
    mean_s: float = Field(gt=0.0)
    max_s: float | None = Field(default=None, gt=0.0)


Duration = Annotated[
    FixedDuration | UniformDuration | LognormalDuration | ExponentialDuration,
    Field(discriminator="dist"),
]
"""A trial duration distribution, chosen by ``dist``."""


class Failures(BaseModel):
    """Probability of each failure mode per run (at most one happens; their sum is <= 1).

    Attributes:
        error: Answers a ``failed`` result.
        drop: Never answers (the request is acknowledged and forgotten): the orchestrator
            times the trial out. A repeated request is run anew.
        garbage: Publishes an unparseable payload on its result topic instead of the result.
        offline: Goes ``offline`` (the status its last will would publish) for ``offline_s``
            seconds, then comes back and answers normally.
        offline_s: How long an outage lasts.
    """

    model_config = _STRICT
    error: Probability = 0.0
    drop: Probability = 0.0
    garbage: Probability = 0.0
    offline: Probability = 0.0
    offline_s: float = Field(default=5.0, ge=0.0)

    @model_validator(mode="after")
    def _total(self) -> Failures:
        if self.error + self.drop + self.garbage + self.offline > 1.0 + 1e-12:
            raise ValueError("failures: the probabilities add up to more than 1")
        return self


class Drift(BaseModel):
    """A slow drift of every measured metric: ``per_trial * k + per_hour * h``.

    ``k`` is the number of trials this instrument ran before (reproducible); ``h`` the hours
    since it started (wall time: not reproducible from run to run).

    Attributes:
        per_trial: Drift per trial run.
        per_hour: Drift per hour of wall time.
        relative: Whether the drift is a relative gain (value times ``1 + drift``) rather
            than an offset added to the value.
    """

    model_config = _STRICT
    per_trial: float = 0.0
    per_hour: float = 0.0
    relative: bool = False


class SimulatorOptions(BaseModel):
    """Behaviour options every simulator takes.

    Attributes:
        noise_sd: Standard deviation of Gaussian noise added to each measured metric
            (homoscedastic).
        noise_rel: Noise proportional to the value: standard deviation ``noise_rel * |value|``
            (heteroscedastic). With ``noise_sd`` and a model's own noise they add in
            quadrature, and the result reports that total as ``sem``.
        duration_s: ``(low, high)``: a uniform duration in seconds (shorthand of ``duration``).
        duration: A duration distribution (``dist: fixed | uniform | lognormal | exponential``).
        failure_rate: Probability that a run answers ``failed`` (shorthand of ``failures.error``).
        failures: Probabilities of each failure mode.
        drift: Slow drift of the measurements.
        seed: Seed of the instrument's runs; fresh entropy when ``None``.
    """

    model_config = _STRICT

    noise_sd: float = Field(default=0.0, ge=0.0)
    noise_rel: float = Field(default=0.0, ge=0.0)
    duration_s: tuple[float, float] = (0.0, 0.0)
    duration: Duration | None = None
    failure_rate: Probability = 0.0
    failures: Failures = Failures()
    drift: Drift = Drift()
    seed: int | None = None

    @model_validator(mode="after")
    def _consistent_behaviour(self) -> SimulatorOptions:
        low, high = self.duration_s
        if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low <= high):
            raise ValueError("duration_s must be (low, high) with 0 <= low <= high")
        if self.duration is not None and self.duration_s != (0.0, 0.0):
            raise ValueError("give duration_s or duration, not both")
        if self.failure_rate and self.failures.error:
            raise ValueError("give failure_rate or failures.error, not both")
        if self.failure_rate + self.failures.drop + self.failures.garbage + self.failures.offline > 1.0 + 1e-12:
            raise ValueError("failure probabilities add up to more than 1")
        return self

    def draw_duration(self, rng: random.Random) -> float:
        """A trial duration in seconds."""
        d = self.duration
        if d is None:
            return rng.uniform(*self.duration_s)
        if isinstance(d, FixedDuration):
            return d.seconds
        if isinstance(d, UniformDuration):
            return rng.uniform(d.low, d.high)
        value = d.median_s * math.exp(d.sigma * rng.gauss(0.0, 1.0)) if isinstance(d, LognormalDuration) \
            else rng.expovariate(1.0 / d.mean_s)
        return value if d.max_s is None else min(value, d.max_s)

    def draw_fate(self, rng: random.Random) -> Fate:
        """Which failure mode, if any, this run shows."""
        u = rng.random()
        for fate, p in (("error", self.failure_rate or self.failures.error), ("drop", self.failures.drop),
                        ("garbage", self.failures.garbage), ("offline", self.failures.offline)):
            if u < p:
                return fate  # type: ignore[return-value]
            u -= p
        return "ok"


@dataclass(frozen=True)
class Outcome:
    """What one simulated run produced (before waiting for its duration).

    Attributes:
        duration_s: How long the run takes.
        fate: What the instrument does with it (see :data:`Fate`).
        values: The measured value of each metric; ``None`` when it fails.
        sems: The reported standard error of each metric (``None`` when noise-free).
        error: Why it failed, when it does.
    """

    duration_s: float
    fate: Fate
    values: dict[str, float] | None
    sems: dict[str, float | None] | None
    error: str | None


def run_random(seed: int, trial_id: str, attempt: str, runs_before: int) -> random.Random:
    """The random generator of one run, from what identifies it (never a shared stream).

    Args:
        seed: The instrument's seed.
        trial_id: The trial.
        attempt: Which attempt of the trial (``:{trial}:{n}``, n the request id's last field).
        runs_before: How many times this instrument ran that request before.
    """
    key = "\x1f".join((str(seed), trial_id, attempt, str(runs_before))).encode()
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:16], "big"))


def simulate(
    model: SimModel,
    options: SimulatorOptions,
    parameters: Mapping[str, ParameterValue],
    rng: random.Random,
    *,
    trials_before: int = 0,
    hours: float = 0.0,
) -> Outcome:
    """Simulate one run: its duration, its fate, and its noisy, drifted measurements.

    Args:
        model: What is measured.
        options: The behaviour options.
        parameters: The request's parameters.
        rng: This run's generator (see :func:`run_random`).
        trials_before: Trials the instrument ran before this one (for ``drift.per_trial``).
        hours: Hours since the instrument started (for ``drift.per_hour``).

    Returns:
        The outcome; parameters that do not fit the model give a failed outcome.
    """
    duration = options.draw_duration(rng)
    fate = options.draw_fate(rng)
    if fate == "error":
        return Outcome(duration, fate, None, None, "simulated instrument failure")
    try:
        means = model.evaluate(parameters)
        own_sd = model_noise_sd(model, parameters)
    except ValueError as exc:
        return Outcome(duration, "error", None, None, str(exc).splitlines()[0] if str(exc) else "bad parameters")
    derived = derived_metrics(model)
    drift = options.drift.per_trial * trials_before + options.drift.per_hour * hours
    values: dict[str, float] = {}
    sems: dict[str, float | None] = {}
    for metric in model.metrics:
        if metric in derived:
            continue
        mean = float(means[metric])
        sd = math.sqrt(own_sd[metric] ** 2 + options.noise_sd ** 2 + (options.noise_rel * mean) ** 2)
        shifted = mean * (1.0 + drift) if options.drift.relative else mean + drift
        values[metric] = shifted + rng.gauss(0.0, sd) if sd > 0 else shifted
        sems[metric] = sd if sd > 0 else None
    if derived:
        extra = model.derive(values)  # type: ignore[attr-defined]
        for metric in derived:
            values[metric] = float(extra[metric])
            sems[metric] = None
    bad = [m for m in model.metrics if not math.isfinite(values[m])]
    if bad:
        return Outcome(duration, "error", None, None, f"the model gave a non-finite {bad[0]!r}")
    return Outcome(duration, fate, {m: values[m] for m in model.metrics}, {m: sems[m] for m in model.metrics}, None)
