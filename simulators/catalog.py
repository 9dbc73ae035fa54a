"""The simulators closedloop ships, their options, and what they measure."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .functions import FUNCTIONS, TestFunction

__all__ = [
    "SIMULATORS",
    "BraninOptions",
    "Hartmann6Options",
    "BraninCurrinOptions",
    "SimulatorInfo",
    "SimulatorOptions",
    "Outcome",
]


class SimulatorOptions(BaseModel):
    """Options shared by the function simulators.

    Attributes:
        noise_sd: Standard deviation of Gaussian noise added to the measurement; when > 0
            the result reports ``sem = noise_sd``.
        duration_s: ``(low, high)``: each trial takes a uniform random time in this range.
        seed: Seed of the simulator's random generator; fresh entropy when ``None``.
        inputs: Parameter names to read, in the function's input order (default x1..xd).
        metric: Name of the measured metric (default the function's name).
        failure_rate: Probability that a trial answers ``failed``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    dim: ClassVar[int] = 0

    noise_sd: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    duration_s: tuple[float, float] = (0.0, 0.0)
    seed: int | None = None
    inputs: list[str] | None = None
    metric: str | None = Field(default=None, min_length=1)
    failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> SimulatorOptions:
        low, high = self.duration_s
        if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low <= high):
            raise ValueError("duration_s must be (low, high) with 0 <= low <= high")
        if self.inputs is not None:
            if len(self.inputs) != self.dim:
                raise ValueError(f"inputs must name {self.dim} parameters, got {len(self.inputs)}")
            if len(set(self.inputs)) != len(self.inputs) or not all(self.inputs):
                raise ValueError("inputs must be distinct, non-empty names")
        return self


class BraninOptions(SimulatorOptions):
    """Options of the ``branin`` simulator (2 inputs)."""

    dim: ClassVar[int] = 2


class Hartmann6Options(SimulatorOptions):
    """Options of the ``hartmann6`` simulator (6 inputs)."""

    dim: ClassVar[int] = 6


class BraninCurrinOptions(SimulatorOptions):
    """Options of the ``branin_currin`` simulator (2 inputs, 2 metrics: branin and currin)."""

    dim: ClassVar[int] = 2

    @model_validator(mode="after")
    def _no_rename(self) -> BraninCurrinOptions:
        if self.metric is not None:
            raise ValueError("metric: branin_currin measures two metrics (branin, currin); it cannot rename them")
        return self


@dataclass(frozen=True)
class Outcome:
    """What one simulated trial produced.

    Attributes:
        duration_s: How long the trial takes.
        values: The measured value of each metric, or ``None`` when the trial fails.
        sem: Reported standard error (``None`` when noise-free).
        error: Why the trial failed, when it does.
    """

    duration_s: float
    values: dict[str, float] | None
    sem: float | None
    error: str | None


@dataclass(frozen=True)
class SimulatorInfo:
    """One simulator of the catalog.

    Attributes:
        name: Catalog key (``closedloop sim <name>``).
        description: One line for ``--help`` and listings.
        options_model: Pydantic model (``extra="forbid"``) validating the options.
        function: The benchmark function it measures.
    """

    name: str
    description: str
    options_model: type[SimulatorOptions]
    function: TestFunction

    def options(self, options: Mapping[str, Any] | SimulatorOptions) -> SimulatorOptions:
        """Validate options (a mapping, or an already validated model)."""
        if isinstance(options, self.options_model):
            return options
        raw = options.model_dump() if isinstance(options, BaseModel) else dict(options)
        return self.options_model.model_validate(raw)

    def inputs(self, options: Mapping[str, Any] | SimulatorOptions) -> list[str]:
        """Parameter names the simulator reads, in input order."""
        chosen = self.options(options).inputs
        return list(chosen) if chosen else [f"x{i + 1}" for i in range(self.function.dim)]

    def measures(self, options: Mapping[str, Any] | SimulatorOptions) -> list[str]:
        """Metric names the simulator reports."""
        return [self.options(options).metric or self.function.name] if not self.function.outputs else list(
            self.function.outputs
        )

    def run(
        self,
        options: SimulatorOptions,
        parameters: Mapping[str, Any],
        rng: random.Random,
    ) -> Outcome:
        """Simulate one trial (without waiting for its duration).

        Args:
            options: Validated options.
            parameters: The request's parameters.
            rng: The simulator's random generator (noise, duration, failures).

        Returns:
            The outcome; a missing or non-numeric parameter gives a failed outcome.
        """
        duration = rng.uniform(*options.duration_s)
        values: list[float] = []
        for name in self.inputs(options):
            value = parameters.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                return Outcome(duration, None, None, f"parameter {name!r} is missing or not a number")
            values.append(float(value))
        if options.failure_rate and rng.random() < options.failure_rate:
            return Outcome(duration, None, None, "simulated instrument failure")
        outputs = dict(zip(self.measures(options), self.function.evaluate_all(*values), strict=True))
        if options.noise_sd > 0:
            noisy = {k: v + rng.gauss(0.0, options.noise_sd) for k, v in outputs.items()}
            return Outcome(duration, noisy, options.noise_sd, None)
        return Outcome(duration, outputs, None, None)


SIMULATORS: Mapping[str, SimulatorInfo] = {
    "branin": SimulatorInfo(
        "branin",
        "Branin on x1 in [-5, 10], x2 in [0, 15]; minimum 0.397887",
        BraninOptions,
        FUNCTIONS["branin"],
    ),
    "hartmann6": SimulatorInfo(
        "hartmann6",
        "Hartmann 6-D on [0, 1]^6; minimum -3.32237",
        Hartmann6Options,
        FUNCTIONS["hartmann6"],
    ),
    "branin_currin": SimulatorInfo(
        "branin_currin",
        "BoTorch's Branin-Currin pair on [0, 1]^2: metrics branin and currin, both minimized",
        BraninCurrinOptions,
        FUNCTIONS["branin_currin"],
    ),
}
