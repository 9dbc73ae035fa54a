"""The fast engine on int and choice parameters and linear parameter constraints (issue 18):
every suggested point is in the space and satisfies the constraints, whatever the seed."""

from __future__ import annotations

import math
from typing import Any

import pytest

from campaigns import CampaignChange, Measurement, SuggestedTrial, apply_change
from optimizer import AxOptimizer, model_engine
from tests.unit.test_optimizer import make_spec

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

PARAMETERS: list[dict[str, Any]] = [
    {"name": "x1", "type": "float", "bounds": [0.0, 10.0]},
    {"name": "x2", "type": "float", "bounds": [0.0, 10.0]},
    {"name": "conc", "type": "float", "bounds": [0.001, 1.0], "log_scale": True},
    {"name": "n", "type": "int", "bounds": [0, 10]},
    {"name": "steps", "type": "int", "bounds": [1, 64], "log_scale": True},
    {"name": "solvent", "type": "choice", "values": ["water", "ethanol", "dmso"]},
    {"name": "stir", "type": "choice", "values": [100, 200, 400], "is_ordered": True},
]
# The best points lie on the edges: x1 + x2 = 10 and x1 - 2*x2 + n = -5 meet at an int n.
CONSTRAINTS = ["x1 + x2 <= 10", "x1 - 2*x2 + n >= -5"]


def value(p: dict[str, Any]) -> float:
    """Larger x1 + x2 and n, dmso, stir 200 and conc near 0.03 are better (minimized)."""
    return (-float(p["x1"]) - float(p["x2"]) - 0.3 * int(p["n"]) + (p["solvent"] != "dmso") + (p["stir"] != 200)
            + abs(math.log10(float(p["conc"])) + 1.5) + 0.01 * int(p["steps"]))


def check_in_space(spec: Any, trials: list[SuggestedTrial]) -> None:
    by_name = {p.name: p for p in spec.parameters}
    for t in trials:
        for name, v in t.parameters.items():
            p = by_name[name]
            if p.type == "choice":
                assert v in p.values, t
            else:
                assert p.bounds[0] <= v <= p.bounds[1], t
                assert isinstance(v, int if p.type == "int" else float), t
        assert all(c.holds(t.parameters) for c in spec.parsed_parameter_constraints), t


def optimize(opt: AxOptimizer, rounds: int, batch: int, score: Any) -> list[SuggestedTrial]:
    """``rounds`` batches suggested, each trial completed with ``score(parameters)`` as y."""
    trials: list[SuggestedTrial] = []
    for _ in range(rounds):
        suggested = opt.suggest(batch)
        trials += suggested
        for t in suggested:
            opt.complete(t.trial_id, {"y": Measurement(mean=score(t.parameters))})
    return trials


@pytest.mark.parametrize("seed", range(8))
def test_fast_suggestions_stay_in_a_mixed_constrained_space_whatever_the_seed(seed: int) -> None:
    spec = make_spec(PARAMETERS, parameter_constraints=CONSTRAINTS, seed=seed, optimizer={"initialization_trials": 5})
    assert model_engine(spec).engine == "fast"
    trials = optimize(AxOptimizer(spec, threads=1), 3, 4, value)
    assert [t.engine for t in trials][-4:] == ["fast"] * 4
    check_in_space(spec, trials)
    assert len({tuple(t.parameters.values()) for t in trials}) == len(trials)  # no trial twice


def test_fixed_choice_and_int_hold_and_a_small_discrete_space_is_not_repeated() -> None:
    spec = apply_change(make_spec(PARAMETERS, parameter_constraints=CONSTRAINTS, optimizer={"initialization_trials": 4}),
                        CampaignChange(fix={"solvent": "water", "n": 4}))
    opt = AxOptimizer(spec, threads=1)
    trials = opt.suggest(4)
    for t in trials:
        opt.complete(t.trial_id, {"y": Measurement(mean=value(t.parameters))})
    trials += opt.suggest(4)
    assert [t.engine for t in trials][-4:] == ["fast"] * 4
    check_in_space(spec, trials)
    assert all((t.parameters["solvent"], t.parameters["n"]) == ("water", 4) for t in trials)
    # Two ints and an ordered choice only: 3 x 4 x 3 = 36 points; 20 trials, none twice.
    small = make_spec([{"name": "a", "type": "int", "bounds": [0, 2]}, {"name": "b", "type": "int", "bounds": [1, 4]},
                       {"name": "c", "type": "choice", "values": ["lo", "mid", "hi"], "is_ordered": True}],
                      optimizer={"initialization_trials": 4})
    trials = optimize(AxOptimizer(small, threads=1), 5, 4, lambda p: (int(p["a"]) - 1) ** 2 + int(p["b"]))
    check_in_space(small, trials)
    assert len({tuple(t.parameters.values()) for t in trials}) == 20 and "fast" in {t.engine for t in trials}
    # A choice and an int only, 3 x 3 = 9 points, each scored: all 9, none twice.
    tiny = make_spec([{"name": "a", "type": "choice", "values": ["x", "y", "z"]}, {"name": "b", "type": "int", "bounds": [0, 2]}],
                     optimizer={"initialization_trials": 3})
    trials = optimize(AxOptimizer(tiny, threads=1), 3, 3, lambda p: (p["a"] == "y") + int(p["b"]))
    assert [t.engine for t in trials][3:] == ["fast"] * 6 and len({tuple(t.parameters.values()) for t in trials}) == 9


def test_a_rebuilt_mixed_optimizer_makes_the_same_next_suggestion() -> None:
    from campaigns import TrialRecord, utcnow

    spec = make_spec(PARAMETERS, parameter_constraints=CONSTRAINTS, seed=5, optimizer={"initialization_trials": 5})
    opt = AxOptimizer(spec, threads=1)
    records = []
    for _ in range(2):
        for t in opt.suggest(4):
            y = value(t.parameters)
            opt.complete(t.trial_id, {"y": Measurement(mean=y)})
            records.append(TrialRecord(trial_id=t.trial_id, index=len(records), parameters=t.parameters,
                                       generator=t.generator, sobol_position=t.sobol_position, suggested_at=utcnow(),
                                       status="completed", measurements={"y": Measurement(mean=y)}))
    rebuilt = AxOptimizer.rebuild(spec, records, threads=1)
    assert [t.parameters for t in opt.suggest(3)] == [t.parameters for t in rebuilt.suggest(3)]


def test_ax_keeps_what_the_fast_engine_cannot_do() -> None:
    many = [{"name": f"c{i}", "type": "choice", "values": ["a", "b", "c", "d"]} for i in range(3)]  # 64 combinations
    choice = model_engine(make_spec([*PARAMETERS[:2], *many]))
    assert choice.engine == "ax" and "64 combinations of choice values" in choice.why
    log_constrained = make_spec(PARAMETERS, parameter_constraints=["x1 + conc <= 5"])
    assert model_engine(log_constrained).engine == "ax" and "log_scale" in model_engine(log_constrained).why
    fixed = apply_change(make_spec([*PARAMETERS[:2], *many]), CampaignChange(fix={"c0": "a"}))  # 16 left
    assert model_engine(fixed).engine == "fast"
