"""Every synthetic test function of ``botorch.test_functions``, by a lower-case name.

The table below names each botorch class with its default size, so that listing and
validating simulators needs no torch; botorch itself computes every value (``evaluate_true``,
and ``evaluate_slack_true`` for constrained problems), imported on the first evaluation.
Values are botorch's own, unnegated: single-objective functions are to be minimized.
``tests/unit/test_simulators_functions.py`` checks the table against the installed botorch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from .model import ParameterValue, number

__all__ = ["FUNCTIONS", "BotorchModel", "TestFunction", "branin", "branin_currin", "hartmann6"]


@cache
def _problem(cls: str, kwargs: tuple[tuple[str, int], ...]) -> Any:
    import botorch.test_functions as tf

    return getattr(tf, cls)(**dict(kwargs))


@dataclass(frozen=True)
class TestFunction:
    """One botorch test problem, as the catalog offers it.

    Attributes:
        name: Catalog name (lower-case, e.g. ``ackley``, ``zdt1``).
        cls: The class in ``botorch.test_functions``.
        dim: Number of inputs (the default when ``dim_option``).
        objectives: Number of objectives (the default when ``objectives_option``).
        constraints: Number of constraints; each is reported as a slack metric (>= 0 feasible).
        dim_option: Whether ``dim`` is an option.
        objectives_option: Whether ``num_objectives`` is an option.
        names: Metric names of the outputs when they are not the default ones.
        fixed: Keyword arguments always given to the class (``hartmann6``: ``dim=6``).
    """

    __test__ = False  # not a pytest test class

    name: str
    cls: str
    dim: int
    objectives: int = 1
    constraints: int = 0
    dim_option: bool = False
    objectives_option: bool = False
    names: tuple[str, ...] = ()
    fixed: tuple[tuple[str, int], ...] = ()

    def kwargs(self, dim: int | None = None, num_objectives: int | None = None) -> tuple[tuple[str, int], ...]:
        """Constructor arguments for a size (``None``: the default)."""
        out = dict(self.fixed)
        if self.dim_option:
            out["dim"] = dim or self.dim
        if self.objectives_option:
            out["num_objectives"] = num_objectives or self.objectives
        return tuple(sorted(out.items()))

    def problem(self, dim: int | None = None, num_objectives: int | None = None) -> Any:
        """The botorch problem instance (imports botorch)."""
        return _problem(self.cls, self.kwargs(dim, num_objectives))

    def metrics(self, num_objectives: int | None = None) -> list[str]:
        """Default metric names: objectives, then constraint slacks."""
        if self.names:
            return list(self.names)
        k = num_objectives or self.objectives
        objectives = [self.name] if k == 1 else [f"f{i}" for i in range(k)]
        return objectives + [f"c{i}" for i in range(self.constraints)]

    def bounds(self, dim: int | None = None) -> list[tuple[float, float]]:
        """``(low, high)`` of each input, from botorch."""
        return [(float(lo), float(hi)) for lo, hi in self.problem(dim).bounds.T.tolist()]

    def optimum(self, dim: int | None = None) -> float | None:
        """Known optimal value (single objective), from botorch; ``None`` when unknown."""
        try:
            value = self.problem(dim).optimal_value
        except (AttributeError, NotImplementedError):
            return None
        return None if value is None else float(value)

    def evaluate_all(self, *x: float, dim: int | None = None, num_objectives: int | None = None) -> tuple[float, ...]:
        """Every output at ``x``: objectives, then constraint slacks."""
        import torch

        problem = self.problem(dim or (len(x) if self.dim_option else None), num_objectives)
        values = torch.tensor([list(x)], dtype=torch.float64)
        with torch.no_grad():
            out = [float(v) for v in problem.evaluate_true(values).reshape(-1)]
            if self.constraints:
                out += [float(v) for v in problem.evaluate_slack_true(values).reshape(-1)]
        return tuple(out)


class BotorchModel:
    """A botorch test function as a :class:`~simulators.SimModel`.

    Args:
        function: The table entry.
        inputs: Parameter names, in the function's input order.
        metrics: Metric names of its outputs.
        dim: Number of inputs (for functions of any dimension).
        num_objectives: Number of objectives (for problems where it is an option).
    """

    def __init__(self, function: TestFunction, inputs: Sequence[str], metrics: Sequence[str],
                 dim: int | None = None, num_objectives: int | None = None) -> None:
        self.function = function
        self.inputs = list(inputs)
        self.metrics = list(metrics)
        self._dim = dim
        self._num_objectives = num_objectives

    def evaluate(self, parameters: Mapping[str, ParameterValue]) -> dict[str, float]:
        """Noise-free outputs at ``parameters``.

        Raises:
            ParameterError: A parameter is missing or not a number.
        """
        x = [number(parameters, name) for name in self.inputs]
        values = self.function.evaluate_all(*x, dim=self._dim, num_objectives=self._num_objectives)
        return dict(zip(self.metrics, values, strict=True))



def _table() -> dict[str, TestFunction]:
    f = TestFunction
    rows = [
        # single objective (botorch.test_functions.synthetic and multi_fidelity)
        f("ackley", "Ackley", 2, dim_option=True), f("beale", "Beale", 2), f("branin", "Branin", 2),
        f("bukin", "Bukin", 2), f("cosine8", "Cosine8", 8), f("dixon_price", "DixonPrice", 2, dim_option=True),
        f("drop_wave", "DropWave", 2), f("egg_holder", "EggHolder", 2), f("griewank", "Griewank", 2, dim_option=True),
        f("hartmann", "Hartmann", 6, dim_option=True), f("hartmann6", "Hartmann", 6, fixed=(("dim", 6),)),
        f("holder_table", "HolderTable", 2), f("levy", "Levy", 2, dim_option=True),
        f("michalewicz", "Michalewicz", 2, dim_option=True), f("powell", "Powell", 4, dim_option=True),
        f("pressure_vessel", "PressureVessel", 4, constraints=4), f("rastrigin", "Rastrigin", 2, dim_option=True),
        f("rosenbrock", "Rosenbrock", 2, dim_option=True), f("shekel", "Shekel", 4),
        f("six_hump_camel", "SixHumpCamel", 2), f("speed_reducer", "SpeedReducer", 7, constraints=11),
        f("styblinski_tang", "StyblinskiTang", 2, dim_option=True),
        f("tension_compression_string", "TensionCompressionString", 3, constraints=4),
        f("three_hump_camel", "ThreeHumpCamel", 2), f("welded_beam_so", "WeldedBeamSO", 4, constraints=6),
        f("augmented_branin", "AugmentedBranin", 3), f("augmented_hartmann", "AugmentedHartmann", 7),
        f("augmented_rosenbrock", "AugmentedRosenbrock", 3, dim_option=True),
        # multi-objective (botorch.test_functions.multi_objective and multi_objective_multi_fidelity)
        f("bnh", "BNH", 2, 2, 2), f("branin_currin", "BraninCurrin", 2, 2, names=("branin", "currin")),
        f("c2dtlz2", "C2DTLZ2", 3, 2, 1, True, True), f("car_side_impact", "CarSideImpact", 7, 4),
        f("constr", "CONSTR", 2, 2, 2), f("constrained_branin_currin", "ConstrainedBraninCurrin", 2, 2, 1),
        f("disc_brake", "DiscBrake", 4, 2, 4), f("gmm", "GMM", 2, 2, objectives_option=True),
        f("mw7", "MW7", 3, 2, 2, dim_option=True), f("osy", "OSY", 6, 2, 6), f("penicillin", "Penicillin", 7, 3),
        f("srn", "SRN", 2, 2, 2), f("toy_robust", "ToyRobust", 1, 2), f("vehicle_safety", "VehicleSafety", 5, 3),
        f("welded_beam", "WeldedBeam", 4, 2, 4), f("momf_branin_currin", "MOMFBraninCurrin", 3, 2),
        f("momf_park", "MOMFPark", 5, 2),
        *(f(c.lower(), c, 3, 2, dim_option=True, objectives_option=True)
          for c in ("DTLZ1", "DTLZ2", "DTLZ3", "DTLZ4", "DTLZ5", "DTLZ7", "ZDT1", "ZDT2", "ZDT3")),
    ]
    return {row.name: row for row in rows}


FUNCTIONS: Mapping[str, TestFunction] = _table()
"""Every botorch test function, by catalog name."""


def branin(x1: float, x2: float) -> float:
    """Branin on x1 ∈ [-5, 10], x2 ∈ [0, 15]; minimum 0.397887 (three minimizers)."""
    return FUNCTIONS["branin"].evaluate_all(x1, x2)[0]


def hartmann6(x1: float, x2: float, x3: float, x4: float, x5: float, x6: float) -> float:
    """Hartmann 6-D on [0, 1]^6; minimum −3.32237."""
    return FUNCTIONS["hartmann6"].evaluate_all(x1, x2, x3, x4, x5, x6)[0]


def branin_currin(x1: float, x2: float) -> tuple[float, float]:
    """BoTorch's two-objective Branin–Currin pair on [0, 1]^2 (both to be minimized)."""
    b, c = FUNCTIONS["branin_currin"].evaluate_all(x1, x2)
    return b, c
