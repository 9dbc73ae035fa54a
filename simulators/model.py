"""What a simulated instrument serves: a model of the measurement, noise-free.

A :class:`SimModel` names the parameters it reads and the metrics it reports, and computes
their noise-free means. The instrument (:class:`~simulators.SimInstrument`) adds everything
else a real instrument does — noise, drift, durations, failures — from the behaviour options
(:class:`~simulators.SimulatorOptions`), identically for every model.

Two optional methods refine it:

- ``noise_sd(parameters) -> dict[str, float]``: the model's own measurement noise (a
  sensor's shot noise, an emulator's predictive spread), added to the options' noise;
- ``derive(measured) -> dict[str, float]`` with a ``derived: list[str]`` attribute: metrics
  computed from the other, measured ones (a colour distance from spectral channels), so that
  they are computed from the *noisy* readings, as the real instrument would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

__all__ = ["ParameterError", "ParameterValue", "SimModel", "choice", "derived_metrics", "model_noise_sd", "number"]

ParameterValue = float | int | str | bool
"""A parameter's value in a request (protocol v1)."""


class ParameterError(ValueError):
    """A request's parameters do not fit the model (missing, wrong type, unknown choice).

    The instrument answers such a request with a ``failed`` result carrying this message.
    """


@runtime_checkable
class SimModel(Protocol):
    """A noise-free model a simulated instrument serves.

    Attributes:
        inputs: Names of the parameters it reads.
        metrics: Names of the metrics it reports, in a fixed order.
    """

    inputs: list[str]
    metrics: list[str]

    def evaluate(self, parameters: Mapping[str, ParameterValue]) -> dict[str, float]:
        """Noise-free mean of every metric at ``parameters``.

        Raises:
            ParameterError: (or any ``ValueError``) the parameters do not fit the model.
        """
        ...


def model_noise_sd(model: SimModel, parameters: Mapping[str, ParameterValue]) -> dict[str, float]:
    """The model's own noise standard deviation per metric (0 for a model without one)."""
    method = getattr(model, "noise_sd", None)
    own = method(parameters) if callable(method) else {}
    return {m: max(0.0, float(own.get(m, 0.0))) for m in model.metrics}


def derived_metrics(model: SimModel) -> list[str]:
    """Metrics the model computes from its other metrics (``derived`` attribute; default none)."""
    derived = getattr(model, "derived", None)
    return list(derived) if derived and callable(getattr(model, "derive", None)) else []


def number(parameters: Mapping[str, ParameterValue], name: str) -> float:
    """Read a numeric parameter.

    Raises:
        ParameterError: It is missing or not a number.
    """
    value = parameters.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ParameterError(f"parameter {name!r} is missing or not a number")
    return float(value)


def choice(parameters: Mapping[str, ParameterValue], name: str, values: Mapping[str, object]) -> str:
    """Read a categorical parameter among ``values``' keys.

    Raises:
        ParameterError: It is missing or not one of them.
    """
    value = parameters.get(name)
    if not isinstance(value, str) or value not in values:
        raise ParameterError(f"parameter {name!r} must be one of {sorted(values)}, got {value!r}")
    return value
