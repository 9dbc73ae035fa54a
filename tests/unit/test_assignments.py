"""``NAME=VALUE`` as people type it: one reader, typed by the parameter, one clear line for any mistake."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaigns import ChoiceParameter, FloatParameter, IntParameter
from campaigns.assignments import (
    option_value,
    parameter_value,
    parameter_values,
    split_assignment,
    split_assignments,
)
from flows.prefect.approval import parse_edits

X = FloatParameter(name="x", bounds=(0.0, 10.0))
N = IntParameter(name="n", type="int", bounds=(1, 8))
SOLVENT = ChoiceParameter(name="solvent", type="choice", values=["water", "dmso"])
LEVEL = ChoiceParameter(name="level", type="choice", values=[0.1, 0.2])
PARAMS = [X, N, SOLVENT, LEVEL]


def test_a_value_is_typed_by_its_parameter() -> None:
    assert parameter_values(PARAMS, {"x": "2.5", "n": "3", "solvent": "dmso", "level": "0.20"}) == {
        "x": 2.5, "n": 3, "solvent": "dmso", "level": 0.2}
    # the same from JSON (the inbox, the Prefect API)
    assert parameter_values(PARAMS, {"x": 2, "n": 3.0, "level": 0.1}) == {"x": 2.0, "n": 3, "level": 0.1}
    assert isinstance(parameter_value(N, "4.0"), int) and isinstance(parameter_value(X, "4"), float)


def test_the_cli_and_the_prefect_form_split_alike() -> None:
    assert split_assignments(["x=2.5", "solvent = dmso", "a=b=c"]) == {"x": "2.5", "solvent": "dmso", "a": "b=c"}
    assert parse_edits("3: x=2.5, solvent=dmso; 4: n=2") == {"3": {"x": "2.5", "solvent": "dmso"}, "4": {"n": "2"}}


@pytest.mark.parametrize(("item", "message"), [
    ("x2.5", "expected NAME=VALUE"),
    ("=2.5", "no name before '='"),
    ("", "expected NAME=VALUE"),
    ("2x=1", "is not a name"),
    ("x\ny=1", "is not a name"),
])
def test_malformed_items_are_one_line(item: str, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        split_assignment(item)
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(("parameter", "value", "message"), [
    (X, "warm", "x='warm': not a number; x takes a finite number"),
    (X, "1e400", "not a finite number"),
    (X, "nan", "not a finite number"),
    (X, "-inf", "not a finite number"),
    (X, float("nan"), "not a finite number"),
    (X, 10 ** 400, "not a finite number"),
    (X, "", "not a number"),
    (X, True, "true/false is not a number"),
    (X, "b=c", "not a number"),
    (X, None, "not a number"),
    (N, "2.5", "n='2.5': not a whole number"),
    (N, "1e400", "not a finite number"),
    (SOLVENT, "acetone", "solvent='acetone': not one of its values (water, dmso)"),
    (SOLVENT, "", "not one of its values"),
    (LEVEL, "0.3", "not one of its values (0.1, 0.2)"),
    (LEVEL, True, "not one of its values"),
])
def test_a_value_the_parameter_does_not_take_is_one_line(parameter: Any, value: Any, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        parameter_value(parameter, value)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_an_unknown_parameter_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'y' is not a parameter of this campaign \(parameters: x, n, solvent, level\)"):
        parameter_values(PARAMS, {"y": "1"})


@given(st.text(max_size=200))
def test_any_text_is_a_value_or_one_line(text: str) -> None:
    for parameter in PARAMS:
        try:
            value = parameter_value(parameter, text)
        except ValueError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 300
        else:
            assert value in parameter.values if isinstance(parameter, ChoiceParameter) else value == value  # noqa: PLR0124
    try:
        split_assignment(text)
    except ValueError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 300


def test_simulator_options_read_as_json_and_refuse_what_is_not_finite() -> None:
    assert [option_value(t) for t in ("0.1", "[1, 2]", "true", "dmso")] == [0.1, [1, 2], True, "dmso"]
    for text in ("1e400", "NaN", "Infinity", "-inf"):
        with pytest.raises(ValueError, match="not a finite number"):
            option_value(text)
