"""One grammar for constraints and approval conditions: what was valid stays valid and means the same."""

from __future__ import annotations

import ast
import math
import operator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from campaigns import SpecError, load_spec, parse_spec
from campaigns.approval import condition_holds
from campaigns.expressions import ExpressionError, Logic, linear, outcome, parse

EXAMPLE = yaml.safe_load((Path(__file__).parents[2] / "campaigns" / "examples" / "branin.yaml").read_text())


@pytest.mark.parametrize(("text", "coefficients", "op", "bound"), [
    ("x1 + 2*x2 <= 10", {"x1": 1.0, "x2": 2.0}, "<=", 10.0),
    ("x1 - x2 >= -3", {"x1": 1.0, "x2": -1.0}, ">=", -3.0),
    ("2x1 + 3 x2<=1e1", {"x1": 2.0, "x2": 3.0}, "<=", 10.0),
    ("-x1 - -2*x2 + .5*x1 >= +4", {"x1": -0.5, "x2": 2.0}, ">=", 4.0),
    ("  x1   <=  -2.5E-1 ", {"x1": 1.0}, "<=", -0.25),
    ("(x1 + x2) <= 3", {"x1": 1.0, "x2": 1.0}, "<=", 3.0),  # refused before; means what it says
])
def test_linear_constraints_read_as_they_always_did(text: str, coefficients: dict[str, float], op: str,
                                                    bound: float) -> None:
    assert linear(parse(text)) == (coefficients, op, bound)


@pytest.mark.parametrize("text", ["x1 < 3", "x1 * 2 <= 3", "x1 + 3 <= 5", "x1 <= x2", "2*3*x1 <= 1", "x1 x2 <= 3",
                                  "0 <= x1 <= 3", "-(x1 + x2) <= 3", "x1 <= 'a'", "x1 <= True", "", "x1 <="])
def test_what_is_not_a_linear_constraint_is_refused(text: str) -> None:
    with pytest.raises(ExpressionError):
        linear(parse(text))


def test_outcome_constraints_share_the_grammar() -> None:
    assert outcome(parse("purity >= 0.9")) == ("purity", ">=", 0.9)
    assert outcome(parse("impurity_pct<=-3")) == ("impurity_pct", "<=", -3.0)
    for text in ("purity => 3", "0.9 <= purity", "purity + 1 >= 2", "purity > 1"):
        with pytest.raises(ExpressionError):
            outcome(parse(text))


NAMES = ["x1", "x2", "solvent"]
ATOMS = st.one_of(st.sampled_from(NAMES), st.integers(-5, 5).map(str), st.floats(-5, 5).map(repr),
                  st.sampled_from(["'dmso'", '"water"', "-x1", "- 2.5", "1_0", "0x1f", "1e-3", "True"]))
COMPARISON = st.builds(lambda a, op, b: f"{a} {op} {b}", ATOMS, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]),
                       ATOMS)
CONDITIONS = st.recursive(COMPARISON, lambda inner: st.one_of(
    st.builds(lambda a, b: f"{a} and {b}", inner, inner), st.builds(lambda a, b: f"({a}) or {b}", inner, inner),
    st.builds(lambda a: f"not ({a})", inner), st.builds(lambda a, b, c: f"{a} < {b} <= {c}", ATOMS, ATOMS, ATOMS)),
    max_leaves=6)
VALUES = st.fixed_dictionaries({"x1": st.floats(-6, 6), "x2": st.integers(-6, 6),
                                "solvent": st.sampled_from(["dmso", "water"])})


_OLD_OPS: dict[type, Any] = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
                             ast.Eq: operator.eq, ast.NotEq: operator.ne}


def _old(node: ast.AST, values: dict[str, Any]) -> Any:
    """How campaigns.approval evaluated a condition before this grammar (Python's parser, commit 99cf7a4)."""
    if isinstance(node, ast.Expression):
        return _old(node.body, values)
    if isinstance(node, ast.BoolOp):
        results = (_old(v, values) for v in node.values)
        return all(results) if isinstance(node.op, ast.And) else any(results)
    if isinstance(node, ast.UnaryOp):
        inner = _old(node.operand, values)
        return (not inner) if isinstance(node.op, ast.Not) else -inner
    if isinstance(node, ast.Compare):
        left = _old(node.left, values)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _old(comparator, values)
            try:
                if not _OLD_OPS[type(op)](left, right):
                    return False
            except TypeError:
                return False
            left = right
        return True
    if isinstance(node, ast.Name):
        return values.get(node.id)
    assert isinstance(node, ast.Constant)
    return node.value


@given(CONDITIONS, VALUES)
def test_a_condition_means_what_python_read_it_to_mean(text: str, values: dict[str, Any]) -> None:
    try:
        expected = bool(_old(ast.parse(text, mode="eval"), values))
    except TypeError:  # -'dmso': the approval asks a person, with both readers
        with pytest.raises(TypeError):
            condition_holds(text, values)
        return
    assert condition_holds(text, values) == expected, text


@pytest.mark.parametrize("text", ["x1 + 1 > 2", "__import__('os')", "x1 > 2 if x2 else 3", "x1 in (1, 2)",
                                  "x1 > 'a' 'b", "x1 >", "(" * 150 + "x1 > 1" + ")" * 150, "x1 = 2", "x1 > None"])
def test_conditions_that_are_not_comparisons_are_one_line(text: str) -> None:
    with pytest.raises(SpecError) as exc:  # "x1 > None": None reads as a name, and is no parameter
        parse_spec({**EXAMPLE, "approval": {"when": text}})
    assert "\n" not in str(exc.value) and str(exc.value).startswith("spec: approval.when: ")


def test_conditions_and_constraints_are_parsed_once_when_the_spec_is_read() -> None:
    spec = parse_spec({**EXAMPLE, "approval": {"when": "x1 > 2 and x2 <= 3"},
                       "parameter_constraints": ["x1 + x2 <= 12"]})
    assert isinstance(spec.approval.condition, Logic) and spec.approval.when == "x1 > 2 and x2 <= 3"
    assert spec.parsed_parameter_constraints[0].coefficients == {"x1": 1.0, "x2": 1.0}
    assert spec.approval.needs_approval({"x1": 3.0, "x2": 1.0}, 0)
    assert not spec.approval.needs_approval({"x1": 1.0, "x2": 1.0}, 0)


def test_a_choice_parameter_in_a_linear_constraint_is_refused_by_its_type(tmp_path: Path) -> None:
    data = {**EXAMPLE, "parameters": [*EXAMPLE["parameters"],
                                      {"name": "solvent", "type": "choice", "values": ["water", "dmso"]}],
            "parameter_constraints": ["x1 + solvent <= 3"]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=r"'solvent' is a choice parameter — a linear constraint reads float or int"):
        load_spec(path)
    data["parameter_constraints"], data["approval"] = [], {"when": "solvent > 3"}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=r"compares parameter solvent \(text\) with 3 \(a number\)"):
        load_spec(path)


def test_every_example_campaign_still_reads() -> None:
    for path in sorted((Path(__file__).parents[2] / "campaigns" / "examples").glob("*.yaml")):
        spec = load_spec(path)
        assert all(math.isfinite(c.bound) for c in spec.parsed_parameter_constraints + spec.parsed_outcome_constraints)
