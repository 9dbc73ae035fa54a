"""The scrambled Sobol initialization: a pure function of the spec and a position."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from campaigns import OptimizerError, load_spec, parse_spec
from optimizer import SobolSampler

EXAMPLES = Path(__file__).parents[2] / "campaigns" / "examples"


def spec_with(parameters: list[dict[str, object]], constraints: list[str] | None = None, seed: int = 0):  # type: ignore[no-untyped-def]
    return parse_spec({
        "name": "t", "seed": seed, "parameters": parameters,
        "objectives": [{"name": "y"}], "budget": {"max_trials": 10},
        "parameter_constraints": constraints or [],
        "devices": [{"id": "d", "measures": ["y"]}],
    })


MIXED = spec_with([
    {"name": "temp", "type": "float", "bounds": [20.0, 80.0]},
    {"name": "conc", "type": "float", "bounds": [1e-4, 1.0], "log_scale": True},
    {"name": "steps", "type": "int", "bounds": [1, 1000], "log_scale": True},
    {"name": "reps", "type": "int", "bounds": [0, 3]},
    {"name": "solvent", "type": "choice", "values": ["water", "ethanol", "dmso"]},
])


def test_points_lie_in_the_search_space_with_the_right_types() -> None:
    points = SobolSampler(MIXED).next_points(0, 256)
    assert [p.position for p in points] == list(range(256))
    for p in points:
        x = p.parameters
        assert isinstance(x["temp"], float) and 20.0 <= x["temp"] <= 80.0
        assert isinstance(x["conc"], float) and 1e-4 <= x["conc"] <= 1.0
        assert isinstance(x["steps"], int) and 1 <= x["steps"] <= 1000
        assert isinstance(x["reps"], int) and 0 <= x["reps"] <= 3
        assert x["solvent"] in {"water", "ethanol", "dmso"}
    # Every integer and every choice shows up; log-scale values spread over the decades.
    assert {p.parameters["reps"] for p in points} == {0, 1, 2, 3}
    assert {p.parameters["solvent"] for p in points} == {"water", "ethanol", "dmso"}
    decades = {math.floor(math.log10(float(p.parameters["conc"]))) for p in points}
    assert decades >= {-4, -3, -2, -1}
    assert sum(1 for p in points if float(p.parameters["conc"]) < 1e-2) == pytest.approx(128, abs=10)


def test_a_position_gives_the_same_point_in_any_sampler_and_the_seed_matters() -> None:
    a, b = SobolSampler(MIXED), SobolSampler(MIXED)
    run = a.next_points(0, 40)
    assert [p.parameters for p in b.next_points(17, 5)] == [p.parameters for p in run[17:22]]
    assert b.point_at(33) == run[33].parameters
    other = SobolSampler(MIXED.model_copy(update={"seed": 1}))
    assert other.point_at(0) != a.point_at(0)


def test_points_breaking_a_parameter_constraint_are_skipped() -> None:
    spec = spec_with(
        [{"name": "x1", "type": "float", "bounds": [0, 1]}, {"name": "x2", "type": "float", "bounds": [0, 1]}],
        ["x1 + x2 <= 0.5"],
    )
    points = SobolSampler(spec).next_points(0, 20)
    assert all(float(p.parameters["x1"]) + float(p.parameters["x2"]) <= 0.5 for p in points)
    positions = [p.position for p in points]
    assert positions == sorted(positions) and positions[-1] > 40  # about 7 in 8 rejected


def test_an_empty_feasible_region_is_an_optimizer_error() -> None:
    spec = spec_with(
        [{"name": "x1", "type": "float", "bounds": [0, 1]}, {"name": "x2", "type": "float", "bounds": [0, 1]}],
        ["x1 + x2 >= 3"],
    )
    with pytest.raises(OptimizerError, match="no new point satisfying") as info:
        SobolSampler(spec).next_points(0, 1)
    assert "loosen the parameter constraints" in info.value.hint


def test_the_demo_spec_maps_onto_its_bounds() -> None:
    spec = load_spec(EXAMPLES / "branin.yaml")
    for p in SobolSampler(spec).next_points(0, 64):
        assert -5.0 <= float(p.parameters["x1"]) <= 10.0 and 0.0 <= float(p.parameters["x2"]) <= 15.0


def test_one_sampler_asked_in_any_order_gives_a_fresh_samplers_points() -> None:
    """The sampler keeps one scrambled engine and fast-forwards or resets it; whatever order
    positions are asked in, each point is the one a new sampler gives at that position."""
    sampler = SobolSampler(MIXED)
    for start, n in [(0, 5), (5, 3), (2, 4), (100, 2), (50, 1), (50, 7), (0, 1), (300, 3)]:
        got = [p.parameters for p in sampler.next_points(start, n)]
        assert got == [p.parameters for p in SobolSampler(MIXED).next_points(start, n)], (start, n)
        assert sampler.point_at(start) == SobolSampler(MIXED).point_at(start)
