"""The botorch test functions of the catalog: all of them, sized and valued as botorch has them."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import botorch.test_functions as tf
from simulators import FUNCTIONS, SIMULATORS, branin_currin

_NOT_PROBLEMS = {"SyntheticTestFunction"}


def test_every_botorch_test_function_is_in_the_catalog() -> None:
    classes = {name for name in tf.__all__ if inspect.isclass(getattr(tf, name)) and name not in _NOT_PROBLEMS}
    assert classes == {f.cls for f in FUNCTIONS.values()}
    assert all(name in SIMULATORS and name == name.lower() for name in FUNCTIONS)
    assert {"ackley", "levy", "hartmann", "branin", "zdt1", "dtlz2", "branin_currin"} <= set(SIMULATORS)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_table_sizes_match_botorch(name: str) -> None:
    f = FUNCTIONS[name]
    problem = f.problem()
    assert problem.dim == f.dim
    assert getattr(problem, "num_objectives", 1) == f.objectives
    assert getattr(problem, "num_constraints", 0) == f.constraints
    model = SIMULATORS[name].model({})
    x = [(lo + hi) / 2 for lo, hi in f.bounds()]
    values = model.evaluate(dict(zip(model.inputs, x, strict=True)))
    assert list(values) == model.metrics and all(math.isfinite(v) for v in values.values())


def _optimizers() -> list[tuple[str, list[float], float]]:
    out = []
    for name, f in sorted(FUNCTIONS.items()):
        problem = f.problem()
        optimum = f.optimum()
        points = getattr(problem, "_optimizers", None)
        if f.objectives == 1 and optimum is not None and points:
            out.append((name, list(points[0]), optimum))
    return out


@pytest.mark.parametrize(("name", "x", "optimum"), _optimizers())
def test_value_at_botorchs_optimizer_is_its_optimal_value(name: str, x: list[float], optimum: float) -> None:
    model = SIMULATORS[name].model({})
    value = model.evaluate(dict(zip(model.inputs, x, strict=True)))[model.metrics[0]]
    assert value == pytest.approx(optimum, abs=1e-3, rel=1e-3)


def test_dimension_and_objectives_options() -> None:
    ackley = SIMULATORS["ackley"].model({"dim": 5, "inputs": ["a", "b", "c", "d", "e"], "metric": "loss"})
    assert ackley.inputs == ["a", "b", "c", "d", "e"] and ackley.metrics == ["loss"]
    assert ackley.evaluate(dict.fromkeys("abcde", 0.0))["loss"] == pytest.approx(0.0, abs=1e-9)
    dtlz2 = SIMULATORS["dtlz2"].model({"dim": 6, "num_objectives": 3})
    assert len(dtlz2.inputs) == 6 and dtlz2.metrics == ["f0", "f1", "f2"]
    x = torch.full((1, 6), 0.3, dtype=torch.float64)
    expected = tf.DTLZ2(dim=6, num_objectives=3).evaluate_true(x).reshape(-1).tolist()
    assert list(dtlz2.evaluate(dict.fromkeys(dtlz2.inputs, 0.3)).values()) == pytest.approx(expected)
    vessel = SIMULATORS["pressure_vessel"].measures({})
    assert vessel == ["pressure_vessel", "c0", "c1", "c2", "c3"]


def test_branin_currin_keeps_its_metric_names_and_values() -> None:
    assert SIMULATORS["branin_currin"].measures({}) == ["branin", "currin"]
    expected = tf.BraninCurrin().evaluate_true(torch.tensor([[0.2, 0.7]], dtype=torch.float64)).reshape(-1).tolist()
    assert list(branin_currin(0.2, 0.7)) == pytest.approx(expected)


@pytest.mark.parametrize(("name", "options", "message"), [
    ("branin", {"dim": 3}, "branin has 2 inputs, always"),
    ("hartmann", {"dim": 5}, "Hartmann with dim 5 not defined"),
    ("ackley", {"dim": 3, "inputs": ["a", "b"]}, "inputs must name 3 parameters"),
    ("branin_currin", {"metric": "y"}, "name them all with metrics"),
    ("zdt1", {"metrics": ["a"]}, "metrics must be 2 distinct names"),
])
def test_bad_function_options_say_what_is_wrong(name: str, options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SIMULATORS[name].options(options)
