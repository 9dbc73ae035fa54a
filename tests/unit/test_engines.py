"""The optimizer says what it is: ``optimizer.method`` names an engine, each suggested trial
records the engine that chose it, and old logs without one read honestly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from campaigns import (
    Measurement,
    SpecError,
    SuggestedTrial,
    event_from_doc,
    fold,
    parse_spec,
)
from optimizer import AxOptimizer, model_engine

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy"
BASE = yaml.safe_load((LEGACY / "finished.yaml").read_text())


def spec_with(**changes: object) -> object:
    return parse_spec({**BASE, **changes}, "spec")


SOLVENT = {"name": "solvent", "type": "choice", "values": ["water", "ethanol"]}
# 6 x 6 = 36 combinations of choice values: more than the fast engine enumerates.
MANY_CHOICES = [{"name": f"c{i}", "type": "choice", "values": list("abcdef")} for i in range(2)]


@pytest.mark.parametrize(
    ("changes", "engine", "why"),
    [
        ({}, "fast", "auto: a continuous space"),
        ({"parameters": [*BASE["parameters"], SOLVENT]}, "fast",
         "auto: float and choice parameters (2 choice combinations, each optimized)"),
        ({"parameters": [*BASE["parameters"], {"name": "n", "type": "int", "bounds": [1, 4]}]}, "fast",
         "auto: float and int parameters"),
        ({"parameter_constraints": ["x1 + x2 <= 10"]}, "fast", "auto: float parameters, 1 parameter constraint"),
        ({"parameters": [*BASE["parameters"], *MANY_CHOICES]}, "ax",
         "auto: 36 combinations of choice values (the fast engine enumerates up to 32)"),
        ({"optimizer": {"method": "ax"}}, "ax", "optimizer.method: ax"),
        ({"optimizer": {"method": "sobol"}}, "sobol", "optimizer.method: sobol"),
        ({"optimizer": {"method": "botorch"}}, "fast", "auto: a continuous space"),  # an earlier name
        ({"optimizer": {"method": "botorch_default"}}, "ax_default", "optimizer.method: ax_default"),
    ],
)
def test_the_engine_and_why_follow_from_the_spec(changes: dict, engine: str, why: str) -> None:
    choice = model_engine(spec_with(**changes))  # type: ignore[arg-type]
    assert choice.engine == engine and choice.why.startswith(why)


def test_the_fast_engine_with_too_many_choice_combinations_is_refused_in_one_line() -> None:
    with pytest.raises(SpecError) as err:
        spec_with(parameters=[*BASE["parameters"], *MANY_CHOICES], optimizer={"method": "fast"})
    line = str(err.value)
    assert "\n" not in line and "fast" in line and "36 combinations of choice values" in line and "auto or ax" in line
    assert model_engine(spec_with(parameters=[*BASE["parameters"], SOLVENT], optimizer={"method": "fast"})).engine == "fast"


@pytest.mark.parametrize(
    ("generator", "engine"),
    [("center", "sobol"), ("sobol", "sobol"), ("sobol (fallback: NanError: x)", "sobol"), ("fixed", "fixed"),
     ("replay", "replay"), ("botorch", "unknown")],
)
def test_a_suggested_trial_logged_without_an_engine_reads_one_derived_honestly(generator: str, engine: str) -> None:
    trial = SuggestedTrial.model_validate({"trial_id": "0", "parameters": {"x1": 1.0}, "generator": generator})
    assert trial.engine == engine


def test_legacy_logs_fold_with_each_trial_s_engine() -> None:
    for log in sorted(LEGACY.glob("*.jsonl")):
        docs = [json.loads(line) for line in log.read_text().splitlines()]
        state = fold(event_from_doc(d) for d in docs)
        logged = {t["trial_id"]: t["generator"] for d in docs if d["kind"] == "TrialsSuggested" for t in d["trials"]}
        assert logged and set(logged) == set(state.trials), log.name
        for tid, generator in logged.items():  # a person's edit keeps the engine that proposed the trial
            assert state.trials[tid].engine == ("unknown" if generator == "botorch" else "sobol"), (log.name, tid)


def _complete(opt: AxOptimizer, trials: list[SuggestedTrial]) -> None:
    for t in trials:
        x1, x2 = float(t.parameters["x1"]), float(t.parameters["x2"])
        opt.complete(t.trial_id, {"branin": Measurement(mean=(x1 - 1) ** 2 + (x2 - 3) ** 2)})


@pytest.mark.parametrize(
    ("changes", "model"),
    [({}, "fast"), ({"parameters": [*BASE["parameters"], SOLVENT]}, "fast"),
     ({"parameters": [*BASE["parameters"], *MANY_CHOICES]}, "ax")],
)
def test_uses_model_predicts_what_suggest_does_and_each_trial_names_its_engine(changes: dict, model: str) -> None:
    """The one "Sobol or model?" rule: asked before suggesting (as the Prefect flow does), it
    agrees with what the optimizer then does, including while results lag behind suggestions."""
    spec = spec_with(**changes, seed=3)
    opt = AxOptimizer(spec, threads=1)
    seen: list[tuple[bool, list[str]]] = []
    pending: list[SuggestedTrial] = []
    for step in range(5):
        predicted = opt.uses_model(2)
        batch = opt.suggest(2)
        seen.append((predicted, [t.engine for t in batch]))
        pending += batch
        if step >= 1:  # results lag one batch behind: 6 trials suggested with 2 completed
            _complete(opt, pending[:2])
            pending = pending[2:]
    for predicted, engines in seen:
        assert predicted == any(e != "sobol" for e in engines), seen
        assert set(engines) <= {"sobol", model}
    assert seen[2] == (False, ["sobol", "sobol"])  # 6 suggested > 5 opening, but only 2 results yet
    assert any(model in engines for _, engines in seen)


def test_only_foreign_libraries_errors_become_check_the_measurements() -> None:
    """A TypeError, KeyError or IndexError is a bug of ours: it must surface as one, never as
    an OptimizerError telling the user to check the recorded measurements."""
    from ax.exceptions.core import AxError, UserInputError
    from botorch.exceptions.errors import BotorchError

    from optimizer.ax_setup import AX_ERRORS

    for ours in (TypeError, KeyError, IndexError, AttributeError, RuntimeError):
        assert not issubclass(ours, AX_ERRORS), ours
    for theirs in (AxError, UserInputError, BotorchError):
        assert issubclass(theirs, AX_ERRORS), theirs


@pytest.mark.parametrize(("k", "sobol"), [(2, 3), (4, 1), (5, 0), (7, 0)])
def test_prior_points_count_as_opening_trials(k: int, sobol: int) -> None:
    # Two prior points of 5 opening trials leave 3 Sobol points to run; 5 or more leave none.
    from campaigns import CampaignCreated
    from campaigns.prior import prior_event

    spec = spec_with(prior_data=[{"campaign": "earlier"}], budget={"max_trials": 10})
    name = spec.objectives[0].name
    points = [({"x1": -5.0 + i, "x2": 1.0 + i}, {name: Measurement(mean=float(i))}, str(i)) for i in range(k)]
    state = fold([CampaignCreated(campaign_id="c", seq=1, actor="user:t", spec=spec),
                  prior_event("c", 2, "user:t", spec.prior_data, [points], None)])
    optimizer = AxOptimizer.rebuild(spec, state.trials.values(), threads=1)
    opening = optimizer.suggest(sobol) if sobol else []
    assert [t.engine for t in opening] == ["sobol"] * sobol
    assert [t.trial_id for t in opening] == [str(k + i) for i in range(sobol)]
    for t in opening:
        optimizer.complete(t.trial_id, {name: Measurement(mean=1.0)})
    assert [t.engine for t in optimizer.suggest(2)] == ["fast", "fast"]  # the model, once the opening is done
    assert state.budget_used == 0 and state.count("completed") == 0 and state.prior_count == k
