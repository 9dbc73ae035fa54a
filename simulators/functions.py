"""Benchmark functions the simulated instruments measure, computed by botorch.

botorch (and torch) are imported on first evaluation only, so that listing or validating
simulators stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

__all__ = ["TestFunction", "branin", "branin_currin", "hartmann6", "FUNCTIONS"]


@cache
def _botorch_function(name: str) -> Any:
    from botorch.test_functions import Branin, Hartmann
    from botorch.test_functions.multi_objective import BraninCurrin

    return {"branin": Branin, "hartmann6": lambda: Hartmann(dim=6), "branin_currin": BraninCurrin}[name]()


def _evaluate_all(name: str, x: Sequence[float]) -> tuple[float, ...]:
    import torch

    values = torch.tensor([list(x)], dtype=torch.float64)
    return tuple(float(v) for v in _botorch_function(name)(values).reshape(-1))


def _evaluate(name: str, x: Sequence[float]) -> float:
    return _evaluate_all(name, x)[0]


def branin(x1: float, x2: float) -> float:
    """Branin on x1 ∈ [-5, 10], x2 ∈ [0, 15]; minimum 0.397887 (three minimizers)."""
    return _evaluate("branin", (x1, x2))


def hartmann6(x1: float, x2: float, x3: float, x4: float, x5: float, x6: float) -> float:
    """Hartmann 6-D on [0, 1]^6; minimum −3.32237."""
    return _evaluate("hartmann6", (x1, x2, x3, x4, x5, x6))


def branin_currin(x1: float, x2: float) -> tuple[float, float]:
    """BoTorch's two-objective Branin–Currin pair on [0, 1]^2 (both to be minimized)."""
    b, c = _evaluate_all("branin_currin", (x1, x2))
    return b, c


@dataclass(frozen=True)
class TestFunction:
    """A benchmark function and its domain.

    Attributes:
        name: Default metric name.
        bounds: ``(low, high)`` per input, in order.
        minimum: Known global minimum (of the first output).
        evaluate: Takes the inputs in order and returns the value (a tuple when several outputs).
        outputs: Metric names of the outputs, when there are several.
    """

    __test__ = False  # not a pytest test class

    name: str
    bounds: tuple[tuple[float, float], ...]
    minimum: float
    evaluate: Callable[..., Any]
    outputs: tuple[str, ...] = ()

    @property
    def dim(self) -> int:
        """Number of inputs."""
        return len(self.bounds)

    @property
    def metrics(self) -> tuple[str, ...]:
        """Metric names of the outputs (the function's name when it has one output)."""
        return self.outputs or (self.name,)

    def evaluate_all(self, *x: float) -> tuple[float, ...]:
        """All outputs, as a tuple."""
        value = self.evaluate(*x)
        return tuple(value) if isinstance(value, tuple) else (float(value),)


FUNCTIONS: dict[str, TestFunction] = {
    "branin": TestFunction("branin", ((-5.0, 10.0), (0.0, 15.0)), 0.397887, branin),
    "hartmann6": TestFunction("hartmann6", ((0.0, 1.0),) * 6, -3.32237, hartmann6),
    "branin_currin": TestFunction(
        "branin_currin", ((0.0, 1.0),) * 2, float("nan"), branin_currin, outputs=("branin", "currin")
    ),
}
