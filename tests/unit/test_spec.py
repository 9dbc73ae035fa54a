"""The campaign spec: examples load, and every class of mistake is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from campaigns import CampaignSpec, SpecError, load_spec, parse_spec

EXAMPLES = sorted((Path(__file__).parents[2] / "campaigns" / "examples").glob("*.yaml"))

BASE: dict = {
    "name": "t",
    "parameters": [{"name": "x1", "type": "float", "bounds": [0, 1]}, {"name": "x2", "type": "int", "bounds": [1, 9]}],
    "objectives": [{"name": "y", "minimize": True}],
    "budget": {"max_trials": 5},
    "devices": [{"id": "d1", "measures": ["y"]}],
}


def with_(**changes: object) -> dict:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data.update(changes)
    return data


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_load(path: Path) -> None:
    spec = load_spec(path)
    assert isinstance(spec, CampaignSpec)
    assert spec.budget.max_trials > 0


def test_at_least_three_examples_ship() -> None:
    assert {p.stem for p in EXAMPLES} >= {"branin", "hartmann6", "two_objectives"}


def test_full_spec_parses_constraints() -> None:
    spec = parse_spec(with_(
        parameters=[{"name": "x1", "type": "float", "bounds": [0, 10], "log_scale": False},
                    {"name": "x2", "type": "float", "bounds": [0.1, 10], "log_scale": True},
                    {"name": "solvent", "type": "choice", "values": ["water", "ethanol"]}],
        parameter_constraints=["x1 + 2*x2 <= 10", "x1 - x2 >= -3"],
        outcome_constraints=["purity >= 0.2"],
        objectives=[{"name": "y", "minimize": False, "threshold": 1}, {"name": "cost", "minimize": True, "threshold": 5}],
        devices=[{"id": "d1", "measures": ["y", "cost", "purity"]}],
    ))
    c1, c2 = spec.parsed_parameter_constraints
    assert c1.coefficients == {"x1": 1.0, "x2": 2.0} and c1.bound == 10
    assert c2.coefficients == {"x1": -1.0, "x2": 1.0} and c2.bound == 3  # >= stored negated
    assert c1.holds({"x1": 2, "x2": 4}) and not c1.holds({"x1": 3, "x2": 4})
    assert spec.metrics == ["y", "cost", "purity"]


def one_line(exc: pytest.ExceptionInfo[SpecError]) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


@pytest.mark.parametrize(
    ("data", "field", "fix"),
    [
        (with_(objectivs=[]), "objectivs", "did you mean 'objectives'"),
        (with_(budget={"max_trials": 5, "max_trails": 3}), "budget.max_trails", "did you mean 'max_trials'"),
        (with_(parameters=[{"name": "x1", "type": "float", "bounds": [5, 1]}]), "parameters[0]", "[low, high]"),
        (with_(parameters=[{"name": "x1", "type": "float", "bounds": [0, 1], "log_scale": True}]), "parameters[0]", "log_scale"),
        (with_(parameters=[{"name": "x1", "type": "complex", "bounds": [0, 1]}]), "parameters[0].type", "float, int, choice"),
        (with_(parameters=[{"name": "c", "type": "choice", "values": ["a"]}]), "parameters[0]", "at least 2 values"),
        (with_(budget={"max_trials": 0}), "budget.max_trials", ""),
        (with_(parameter_constraints=["x1 + zz <= 3"]), "parameter_constraints[0]", "not a float or int parameter"),
        (with_(outcome_constraints=["purity => 3"]), "outcome_constraints[0]", "purity >= 0.2"),
        (with_(objectives=[{"name": "yield"}]), "objectives[0].name", "Python keyword"),
        (with_(outcome_constraints=["lambda <= 3"]), "outcome_constraints[0]", "rename it"),
        ({k: v for k, v in BASE.items() if k != "budget"}, "budget", "max_trials"),
        (with_(devices=[{"id": "d1"}]), "devices[0]", "measures"),
        (with_(approval="sometimes"), "approval", "every_batch"),
        (with_(approval={"when": "zz > 1"}), "approval.when", "not a parameter"),
        (with_(approval={"when": "__import__('os')"}), "approval.when", "only comparisons"),
        (with_(approval={"first_n": 2, "on_timeout": "shrug"}), "approval.on_timeout", ""),
        (with_(fixed_parameters={"x9": 1}), "fixed_parameters", "not a parameter"),
        (with_(dispatch="sometimes"), "dispatch", "'async' or 'batch'"),
        (with_(optimizer={"max_training_points": 3}), "optimizer.max_training_points", "20"),
        (with_(optimizer={"method": "magic"}), "optimizer.method", "ax_default"),
        (with_(optimizer={"method": "fast"}, parameter_constraints=["x1 + x2 <= 3"],
               parameters=[{"name": "x1", "type": "float", "bounds": [0.1, 1], "log_scale": True},
                           {"name": "x2", "type": "int", "bounds": [1, 9]}]),
         "optimizer.method", "use method auto or ax"),
        (with_(optimizer={"center_first": "perhaps"}), "optimizer.center_first", "bool"),
    ],
)
def test_bad_spec_is_one_line_naming_field_and_fix(data: dict, field: str, fix: str) -> None:
    with pytest.raises(SpecError) as exc:
        parse_spec(data, "c.yaml")
    text = one_line(exc)
    assert text.startswith("c.yaml: ") and field in text and fix in text


def test_approval_policies() -> None:
    spec = parse_spec(with_(approval={"when": "x1 > 0.5 and x2 <= 3", "timeout_s": 60, "on_timeout": "reject"}))
    assert spec.approval.needs_approval({"x1": 0.9, "x2": 2}, 0) and not spec.approval.needs_approval({"x1": 0.1, "x2": 2}, 0)
    first = parse_spec(with_(approval={"first_n": 2})).approval
    assert [first.needs_approval({}, i) for i in range(4)] == [True, True, False, False]
    assert parse_spec(with_(approval="every_batch")).approval.needs_approval({}, 99)
    assert not parse_spec(BASE).approval.needs_approval({}, 0)


def test_objective_no_device_measures() -> None:
    spec = parse_spec(with_(objectives=[{"name": "yeild"}]))
    with pytest.raises(SpecError) as exc:
        spec.check_devices({}, lambda s, o: [], lambda s, o: [])
    text = one_line(exc)
    assert "objectives[0].name" in text and "'d1'" in text and "'yeild'" in text


def test_unknown_simulator_suggests_the_close_one() -> None:
    spec = parse_spec(with_(devices=[{"id": "d1", "simulator": "branni"}]))
    with pytest.raises(SpecError) as exc:
        spec.check_devices({"branin": None, "hartmann6": None}, lambda s, o: ["y"], lambda s, o: [])
    assert "devices[0].simulator" in one_line(exc) and "'branin'" in str(exc.value)


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError) as exc:
        load_spec(bad)
    assert "not valid YAML at line" in one_line(exc)
    with pytest.raises(SpecError) as exc:
        load_spec(tmp_path / "nope.yaml")
    assert "no such file" in one_line(exc)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SpecError):
        load_spec(tmp_path / "list.yaml")
