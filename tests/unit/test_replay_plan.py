"""Planning a replay from a folded log: the spec it runs, what it refuses, and the people's
script (changes at trial counts, approval answers by position). Pure: no broker, no database."""

from __future__ import annotations

from pathlib import Path

import pytest

from campaigns import (
    ApprovalGiven,
    ApprovalRequested,
    CampaignChanged,
    CampaignCreated,
    Measurement,
    SpecError,
    SuggestedTrial,
    TrialCompleted,
    TrialDispatched,
    TrialsSuggested,
    fold,
    load_spec,
)
from campaigns.changes import CampaignChange
from campaigns.events import EventBase
from flows.engine.replay import ReplayScript, ScriptedOptimizer, faithful_points, plan_replay

SPEC = load_spec(Path(__file__).parents[2] / "campaigns" / "examples" / "branin.yaml")


def source_log() -> list[EventBase]:
    """Two trials suggested and approved (trial 1 edited), both run, then a bounds change."""
    events: list[EventBase] = [CampaignCreated(campaign_id="src", seq=1, actor="user:ana", spec=SPEC)]

    def add(cls: type[EventBase], **fields: object) -> None:
        events.append(cls(campaign_id="src", seq=len(events) + 1, **fields))

    add(TrialsSuggested, actor="optimizer", trials=[
        SuggestedTrial(trial_id="0", parameters={"x1": 1.0, "x2": 2.0}, generator="sobol", sobol_position=0),
        SuggestedTrial(trial_id="1", parameters={"x1": 3.0, "x2": 4.0}, generator="sobol", sobol_position=1)])
    add(ApprovalRequested, actor="orchestrator", approval_id="a0", trial_ids=["0", "1"], why="every batch", answer_with="closedloop approve")
    add(ApprovalGiven, actor="user:ana", approval_id="a0", approved=["0"], edited={"1": {"x1": 2.5}},
        reason="too hot")
    for tid in ("1", "0"):  # dispatched in this order
        add(TrialDispatched, actor="orchestrator", trial_id=tid, device_id="d", request_id=f"r{tid}")
        add(TrialCompleted, actor="device:d", trial_id=tid, device_id="d", request_id=f"r{tid}",
            measurements={"branin": Measurement(mean=float(tid) + 1)})
    add(CampaignChanged, actor="user:bo", change=CampaignChange(set_bounds={"x1": (0.0, 5.0)}), reason="safety")
    return events


def test_faithful_plan_reruns_the_trials_that_ran_as_they_ran() -> None:
    source = fold(source_log())
    assert [t.trial_id for t in faithful_points(source)] == ["1", "0"]
    spec, link = plan_replay(source, mode="faithful", simulator="branin")
    assert spec.budget.max_trials == 2 and spec.approval.mode == "never"
    assert all(d.simulator == "branin" for d in spec.devices)
    assert link.campaign_id == "src" and link.mode == "faithful" and link.source_seq == source.last_seq
    script = ScriptedOptimizer([t.parameters for t in faithful_points(source)], 0)
    assert [s.parameters for s in script.suggest(5)] == [{"x1": 2.5, "x2": 4.0}, {"x1": 1.0, "x2": 2.0}]
    assert script.suggest(1) == []


def test_counterfactual_plan_starts_from_the_spec_as_created_with_overrides() -> None:
    source = fold(source_log())
    spec, link = plan_replay(source, mode="counterfactual", batch_size=1, seed=9, method="sobol")
    assert spec.parameters[0].bounds == (-5.0, 10.0)  # the change comes back through the script
    assert (spec.batch_size, spec.seed, spec.optimizer.method) == (1, 9, "sobol")
    assert link.overrides == {"batch_size": 1, "seed": 9, "optimizer.method": "sobol"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "faithful", "simulator": "branin", "batch_size": 2}, "a faithful replay re-runs the recorded trials"),
        ({"mode": "counterfactual", "batch_size": 0}, "the replay's spec is invalid"),
    ],
)
def test_plans_that_do_not_fit_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(SpecError) as exc:
        plan_replay(fold(source_log()), **kwargs)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_a_source_with_real_devices_needs_a_simulator() -> None:
    real = SPEC.model_copy(update={"devices": [SPEC.devices[0].model_copy(update={"simulator": None,
                                                                                   "measures": ["branin"]})]})
    log = [CampaignCreated(campaign_id="src", seq=1, actor="user:ana", spec=real)]
    with pytest.raises(SpecError, match="uses real device"):
        plan_replay(fold(log), mode="counterfactual")
    with pytest.raises(SpecError, match="no trial that ran"):
        plan_replay(fold(log), mode="faithful", simulator="branin")


def test_the_script_answers_by_position_and_changes_at_the_same_trial_count() -> None:
    script = ReplayScript(source_log())
    spec, link = plan_replay(fold(source_log()), mode="counterfactual")
    replay: list[EventBase] = [CampaignCreated(campaign_id="cf", seq=1, actor="user:ana", spec=spec, source=link)]
    replay.append(TrialsSuggested(campaign_id="cf", seq=2, actor="optimizer", trials=[
        SuggestedTrial(trial_id="0", parameters={"x1": 7.0, "x2": 1.0}, generator="sobol", sobol_position=0)]))
    replay.append(ApprovalRequested(campaign_id="cf", seq=3, actor="orchestrator", approval_id="a0",
                                    trial_ids=["0"], why="every batch", answer_with="closedloop approve"))
    [answer] = script.due(fold(replay))  # one trial so far: the change (made at 2 trials) is not due
    assert answer.kind == "approve" and answer.by == "ana" and "replayed from src" in answer.reason
    assert answer.payload["approve"] == ["0"] and answer.payload["edit"] == {}
    replay.append(TrialsSuggested(campaign_id="cf", seq=4, actor="optimizer", trials=[
        SuggestedTrial(trial_id="1", parameters={"x1": 8.0, "x2": 1.0}, generator="sobol", sobol_position=1)]))
    due = script.due(fold(replay))
    kinds = sorted(c.kind for c in due)
    assert kinds == ["approve", "change"]
    change = next(c for c in due if c.kind == "change")
    assert change.by == "bo" and change.payload == {"set_bounds": {"x1": [0.0, 5.0]}}
