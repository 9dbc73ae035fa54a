"""AxOptimizer against real Ax: suggestions, outcomes, errors, and the spec → Ax mapping."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from botorch.test_functions.multi_objective import BraninCurrin

import optimizer
from campaigns import CampaignSpec, Measurement, OptimizerError, load_spec, parse_spec
from optimizer import AxOptimizer, default_initialization_trials

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::pandas.errors.Pandas4Warning")

EXAMPLES = Path(__file__).parents[2] / "campaigns" / "examples"
BRANIN = load_spec(EXAMPLES / "branin.yaml")


def make_spec(parameters: list[dict[str, Any]], **extra: Any) -> CampaignSpec:
    data: dict[str, Any] = {
        "name": "t", "seed": 3, "parameters": parameters,
        "objectives": [{"name": "y", "minimize": True}], "budget": {"max_trials": 20},
        "devices": [{"id": "d", "measures": ["y", "cost"]}],
    }
    data.update(extra)
    return parse_spec(data)


def test_all_names_are_exported() -> None:
    assert sorted(optimizer.__all__) == ["AxOptimizer", "EngineChoice", "SobolPoint", "SobolSampler",
                                         "default_initialization_trials", "model_engine"]
    for name in optimizer.__all__:
        assert getattr(optimizer, name).__doc__


def test_branin_starts_with_the_centre_then_sobol_and_always_returns_exactly_n() -> None:
    opt = AxOptimizer(BRANIN)
    assert opt.initialization_trials == default_initialization_trials(BRANIN) == 5
    first = opt.suggest(3)
    second = opt.suggest(3)  # no data yet: more Sobol points, not a short batch
    trials = first + second
    assert [t.trial_id for t in trials] == ["0", "1", "2", "3", "4", "5"]
    assert [t.generator for t in trials] == ["center"] + ["sobol"] * 5
    assert [t.sobol_position for t in trials] == [None, 0, 1, 2, 3, 4]
    assert trials[0].parameters == {"x1": 2.5, "x2": 7.5}
    for t in trials:
        assert set(t.parameters) == {"x1", "x2"}
        assert -5.0 <= float(t.parameters["x1"]) <= 10.0 and 0.0 <= float(t.parameters["x2"]) <= 15.0
    assert opt.phase == "sobol"


def test_bo_phase_gives_botorch_trials_after_enough_data() -> None:
    opt = AxOptimizer(BRANIN, threads=1)
    for t in opt.suggest(4):
        x1, x2 = float(t.parameters["x1"]), float(t.parameters["x2"])
        opt.complete(t.trial_id, {"branin": Measurement(mean=(x2 - 0.13 * x1**2 + 1.6 * x1 - 6) ** 2 + 10, sem=0.1)})
    # 4 of 5 initialization trials suggested (the centre and 3 Sobol points), 4 completed: one
    # more Sobol point, then BoTorch.
    mixed = opt.suggest(3)
    assert [t.generator for t in mixed] == ["sobol", "botorch", "botorch"]
    assert [t.sobol_position for t in mixed] == [3, None, None]
    assert opt.phase == "botorch"
    assert len({tuple(t.parameters.values()) for t in mixed}) == 3


def test_int_log_scale_and_choice_parameters() -> None:
    spec = make_spec([
        {"name": "temp", "type": "float", "bounds": [20.0, 80.0]},
        {"name": "conc", "type": "float", "bounds": [0.001, 1.0], "log_scale": True},
        {"name": "steps", "type": "int", "bounds": [1, 64], "log_scale": True},
        {"name": "reps", "type": "int", "bounds": [1, 4]},
        {"name": "solvent", "type": "choice", "values": ["water", "ethanol", "dmso"]},
        {"name": "stir", "type": "choice", "values": [100, 200, 400], "is_ordered": True},
    ], optimizer={"initialization_trials": 6})
    opt = AxOptimizer(spec, threads=1)
    trials = opt.suggest(6)
    for t in trials:
        opt.complete(t.trial_id, {"y": Measurement(mean=abs(math.log10(float(t.parameters["conc"])) + 1.5)
                                                   + (t.parameters["solvent"] != "dmso"))})
    trials += opt.suggest(2)
    assert [t.generator for t in trials] == ["center"] + ["sobol"] * 5 + ["botorch"] * 2
    # The centre: mid-range (in log space when log-scaled), the middle choice.
    assert trials[0].parameters == {"temp": 50.0, "conc": pytest.approx(10**-1.5), "steps": 6, "reps": 3,
                                    "solvent": "ethanol", "stir": 200}
    for t in trials:
        p = t.parameters
        assert isinstance(p["temp"], float) and 20.0 <= p["temp"] <= 80.0
        assert isinstance(p["conc"], float) and 0.001 <= p["conc"] <= 1.0
        assert isinstance(p["steps"], int) and 1 <= p["steps"] <= 64
        assert isinstance(p["reps"], int) and 1 <= p["reps"] <= 4
        assert p["solvent"] in ("water", "ethanol", "dmso")
        assert p["stir"] in (100, 200, 400)


def constrained_spec(with_int: bool) -> CampaignSpec:
    parameters: list[dict[str, Any]] = [
        {"name": "x1", "type": "float", "bounds": [0.0, 10.0]},
        {"name": "x2", "type": "float", "bounds": [0.0, 10.0]},
    ]
    constraints = ["x1 + x2 <= 10", "x1 - 2*x2 >= -15"]
    if with_int:
        parameters.append({"name": "n", "type": "int", "bounds": [0, 10]})
        constraints[1] = "x1 - 2*x2 + n >= -5"
    return make_spec(parameters, parameter_constraints=constraints, optimizer={"initialization_trials": 5})


def check_constraints_hold(spec: CampaignSpec, batches: int) -> None:
    opt = AxOptimizer(spec, threads=1)
    trials = []
    for _ in range(batches):
        batch = opt.suggest(2)
        trials += batch
        for t in batch:  # best along the x1 + x2 = 10 edge
            opt.complete(t.trial_id, {"y": Measurement(mean=-float(t.parameters["x1"]) - float(t.parameters["x2"]))})
    assert {t.generator for t in trials} == {"center", "sobol", "botorch"}
    for t in trials:
        assert all(c.holds(t.parameters) for c in spec.parsed_parameter_constraints), t


def test_every_suggestion_satisfies_the_parameter_constraints() -> None:
    check_constraints_hold(constrained_spec(with_int=False), batches=4)


def test_no_centre_where_it_breaks_a_constraint_or_when_switched_off() -> None:
    breaking = make_spec([{"name": "x1", "type": "float", "bounds": [0.0, 10.0]},
                          {"name": "x2", "type": "float", "bounds": [0.0, 10.0]}],
                         parameter_constraints=["x1 + x2 <= 8"])
    off = make_spec([{"name": "x1", "type": "float", "bounds": [0.0, 10.0]}], optimizer={"center_first": False})
    for spec in (breaking, off):
        trials = AxOptimizer(spec).suggest(3)
        assert [t.generator for t in trials] == ["sobol"] * 3
        assert trials[0].sobol_position == 0 if spec is off else trials[0].parameters != {"x1": 5.0, "x2": 5.0}


def test_multi_objective_branin_currin_with_thresholds() -> None:
    spec = load_spec(EXAMPLES / "two_objectives.yaml")
    problem = BraninCurrin()
    opt = AxOptimizer(spec, threads=1)
    trials = []
    for _ in range(3):
        batch = opt.suggest(2)
        trials += batch
        for t in batch:
            x = torch.tensor([[float(t.parameters["x1"]), float(t.parameters["x2"])]], dtype=torch.double)
            b, c = problem(x)[0]
            opt.complete(t.trial_id, {"branin": Measurement(mean=float(b)), "currin": Measurement(mean=float(c))})
    assert [t.generator for t in trials] == ["center"] + ["sobol"] * 4 + ["botorch"]  # 5 initialization trials
    for t in trials:
        assert float(t.parameters["x1"]) + float(t.parameters["x2"]) <= 1.8 + 1e-9


def test_failed_and_pending_trials() -> None:
    opt = AxOptimizer(BRANIN)
    a, b = opt.suggest(2)
    opt.fail(a.trial_id, "timeout")
    opt.complete(b.trial_id, {"branin": Measurement(mean=12.5, sem=0.1), "extra": Measurement(mean=1.0)})
    with pytest.raises(OptimizerError, match="trial 0 is already failed"):
        opt.complete(a.trial_id, {"branin": Measurement(mean=1.0)})
    with pytest.raises(OptimizerError, match="trial 1 is already completed"):
        opt.fail(b.trial_id, "late")
    with pytest.raises(OptimizerError, match="no trial '99'") as info:
        opt.complete("99", {"branin": Measurement(mean=1.0)})
    assert info.value.trial_id == "99" and info.value.hint
    with pytest.raises(OptimizerError, match="n must be at least 1"):
        opt.suggest(0)
    c = opt.suggest(1)[0]
    with pytest.raises(OptimizerError, match="a metric name must be a non-empty string") as info:
        opt.complete(c.trial_id, {"": Measurement(mean=1.0)})  # refused as Ax refuses it
    assert info.value.trial_id == c.trial_id and "\n" not in str(info.value)
    opt.complete(c.trial_id, {"branin": Measurement(mean=3.0)})  # still pending: a good result is taken
    assert opt.num_trials == 3 and opt.unobserved_metrics == []


def test_rebuild_rejects_a_log_whose_trial_ids_are_not_ax_indices() -> None:
    from campaigns import TrialRecord, utcnow

    record = TrialRecord(trial_id="5", index=0, parameters={"x1": 0.0, "x2": 1.0}, generator="sobol",
                         sobol_position=0, suggested_at=utcnow())
    with pytest.raises(OptimizerError, match="expected trial id '0'"):
        AxOptimizer.rebuild(BRANIN, [record])


def test_rebuild_accepts_json_round_tripped_numbers() -> None:
    from campaigns import TrialRecord, utcnow

    spec = make_spec([{"name": "n", "type": "int", "bounds": [1, 9]}, {"name": "x", "type": "float", "bounds": [0, 1]}])
    record = TrialRecord(trial_id="0", index=0, parameters={"n": 3.0, "x": 1}, generator="sobol",
                         sobol_position=7, suggested_at=utcnow(), status="running")
    opt = AxOptimizer.rebuild(spec, [record])
    assert opt.num_trials == 1 and opt.next_sobol_position == 8
    nxt = opt.suggest(1)[0]
    assert nxt.trial_id == "1" and nxt.sobol_position == 8


@pytest.mark.parametrize(
    ("extra", "match", "hint"),
    [
        ({"parameter_constraints": ["x1 + c <= 5"],
          "parameters": [{"name": "x1", "type": "float", "bounds": [0.0, 10.0]},
                         {"name": "c", "type": "float", "bounds": [0.1, 10.0], "log_scale": True}]},
         "search space", "log_scale"),
        ({"outcome_constraints": ["y <= 3"]}, "objectives", "outcome constraint"),
    ],
)
def test_what_ax_refuses_becomes_one_line_optimizer_error(extra: dict[str, Any], match: str, hint: str) -> None:
    base: dict[str, Any] = {"parameters": [{"name": "x1", "type": "float", "bounds": [0.0, 10.0]}]}
    base.update(extra)
    spec = make_spec(**base)
    with pytest.raises(OptimizerError, match=match) as info:
        AxOptimizer(spec)
    assert "\n" not in str(info.value) and hint in info.value.hint


@pytest.mark.parametrize("replay", ["bulk", "per_trial"])
def test_rebuild_counts_only_completed_trials_with_data_toward_the_bo_phase(replay: Literal["bulk", "per_trial"]) -> None:
    from campaigns import TrialRecord, utcnow

    points = optimizer.SobolSampler(BRANIN).next_points(0, 4)
    records = [
        TrialRecord(trial_id=str(i), index=i, parameters=p.parameters, generator="sobol", sobol_position=p.position,
                    suggested_at=utcnow(), status="completed",
                    measurements={} if i == 1 else {"branin": Measurement(mean=float(i), sem=0.1)})
        for i, p in enumerate(points)
    ]
    records[3].status, records[3].measurements, records[3].failure_reason = "failed", {}, "timeout"
    opt = AxOptimizer.rebuild(BRANIN, reversed(records), replay=replay)
    assert opt.num_trials == 4 and opt.next_sobol_position == 4
    assert opt.phase == "sobol"  # 2 trials with data; BO needs ceil(5 / 2) = 3
    with pytest.raises(OptimizerError, match="trial 1 is already completed"):
        opt.complete("1", {"branin": Measurement(mean=1.0)})
    with pytest.raises(OptimizerError, match="trial 3 is already failed"):
        opt.fail("3", "late")
    nxt = opt.suggest(2)
    assert [(t.trial_id, t.sobol_position) for t in nxt] == [("4", 4), ("5", 5)]


def test_rebuild_keeps_a_recorded_trial_outside_todays_bounds() -> None:
    from campaigns import TrialRecord, utcnow

    # The bounds may have changed since the trial ran; Ax attaches it and uses its data.
    record = TrialRecord(trial_id="0", index=0, parameters={"x1": 20.0, "x2": 1.0}, generator="sobol",
                         sobol_position=0, suggested_at=utcnow(), status="completed",
                         measurements={"branin": Measurement(mean=3.0)})
    for replay in ("bulk", "per_trial"):
        opt = AxOptimizer.rebuild(BRANIN, [record], replay=replay)  # type: ignore[arg-type]
        assert opt.num_trials == 1 and opt.suggest(1)[0].trial_id == "1"


def test_rebuild_rejects_an_unknown_replay() -> None:
    with pytest.raises(OptimizerError, match="unknown replay") as info:
        AxOptimizer.rebuild(BRANIN, [], replay="fast")  # type: ignore[arg-type]
    assert "bulk" in info.value.hint


def test_fixed_parameters_of_every_type_hold_in_both_phases() -> None:
    from campaigns import CampaignChange, apply_change

    spec = apply_change(make_spec([
        {"name": "temp", "type": "float", "bounds": [20.0, 80.0]},
        {"name": "conc", "type": "float", "bounds": [0.001, 1.0], "log_scale": True},
        {"name": "reps", "type": "int", "bounds": [1, 4]},
        {"name": "solvent", "type": "choice", "values": ["water", "ethanol", "dmso"]},
    ], optimizer={"initialization_trials": 4}), CampaignChange(fix={"solvent": "ethanol", "reps": 3.0, "conc": 0.1}))
    opt = AxOptimizer(spec, threads=1)
    trials = opt.suggest(4)
    for t in trials:
        opt.complete(t.trial_id, {"y": Measurement(mean=abs(float(t.parameters["temp"]) - 50))})
    trials += opt.suggest(2)
    assert [t.generator for t in trials] == ["center"] + ["sobol"] * 3 + ["botorch"] * 2
    assert trials[0].parameters["temp"] == 50.0
    for t in trials:
        assert {k: t.parameters[k] for k in ("conc", "reps", "solvent")} == {"conc": 0.1, "reps": 3, "solvent": "ethanol"}
        assert isinstance(t.parameters["reps"], int)
    assert len({t.parameters["temp"] for t in trials}) == 6


def test_a_rejected_trial_takes_no_outcome() -> None:
    opt = AxOptimizer(BRANIN)
    a, b = opt.suggest(2)
    opt.reject(a.trial_id, "too hot")
    with pytest.raises(OptimizerError, match="trial 0 is already rejected"):
        opt.complete(a.trial_id, {"branin": Measurement(mean=1.0)})
    with pytest.raises(OptimizerError, match="trial 0 is already rejected"):
        opt.reject(a.trial_id, "again")
    # The rejected trial (the centre) does not count toward the 5 initialization trials, and
    # is not suggested again.
    assert (a.generator, b.sobol_position) == ("center", 0)
    opt.complete(b.trial_id, {"branin": Measurement(mean=1.0)})
    assert [t.sobol_position for t in opt.suggest(4)] == [1, 2, 3, 4]
