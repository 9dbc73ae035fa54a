"""People's commands against the log: what they become, and the one-line refusals."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from campaigns import (
    ApprovalGiven,
    ApprovalRejected,
    ApprovalRequested,
    CampaignChanged,
    CampaignCreated,
    ClosedLoopError,
    SuggestedTrial,
    TrialsSuggested,
    apply,
    fold,
    load_spec,
)
from flows.engine.commands import events_for
from storage import Command

SPEC = load_spec(Path(__file__).parents[2] / "campaigns" / "examples" / "branin.yaml")


def waiting_state():  # type: ignore[no-untyped-def]
    trials = [SuggestedTrial(trial_id=str(i), parameters={"x1": 7.0 + i, "x2": 2.0}, generator="sobol") for i in range(3)]
    return fold([
        CampaignCreated(campaign_id="c", seq=1, actor="user:a", spec=SPEC),
        TrialsSuggested(campaign_id="c", seq=2, actor="optimizer", trials=trials),
        ApprovalRequested(campaign_id="c", seq=3, actor="orchestrator", approval_id="a0", trial_ids=["0", "1", "2"],
                          why="every batch", answer_with="closedloop approve c"),
    ])


def command(kind: str, payload: dict[str, Any]) -> Command:
    return Command(command_id="k1", campaign_id="c", kind=kind, payload=payload, by="ana", reason="because",  # type: ignore[arg-type]
                   submitted_at=datetime.now(UTC))


def fields_of(state):  # type: ignore[no-untyped-def]
    return lambda actor, offset: {"campaign_id": "c", "seq": state.last_seq + 1 + offset, "actor": actor}


def test_approve_with_an_edit_and_a_rejection() -> None:
    state = waiting_state()
    [event] = events_for(state, command("approve", {"edit": {"1": {"x1": "2.5"}}, "reject": ["2"]}), fields_of(state))
    assert isinstance(event, ApprovalGiven) and event.actor == "user:ana" and event.reason == "because"
    assert event.approved == ["0"] and event.edited == {"1": {"x1": 2.5}} and event.rejected == ["2"]
    apply(state, event)
    assert [t.status for t in state.trials.values()] == ["suggested", "suggested", "rejected"]
    assert state.trials["1"].parameters["x1"] == 2.5 and state.trials["1"].suggested_parameters == {"x1": 8.0, "x2": 2.0}
    assert [t.trial_id for t in state.undispatched] == ["0", "1"] and state.budget_used == 2
    assert "k1" in state.applied_commands and not state.open_approvals


def test_rejecting_everything_is_an_approval_rejected() -> None:
    state = waiting_state()
    [event] = events_for(state, command("approve", {"reject": ["0", "1", "2"]}), fields_of(state))
    assert isinstance(event, ApprovalRejected)


@pytest.mark.parametrize(("payload", "message"), [
    ({"reject": ["9"]}, "trial 9 is not in approval a0"),
    ({"approve": ["0"]}, "trial 1 is not decided — approve, edit or reject trial 1 too"),
    ({"edit": {"0": {"x1": "99"}}}, "outside the bounds [-5, 10]"),
    ({"edit": {"0": {"x9": "1"}}}, "'x9' is not a parameter of this campaign"),
    ({"edit": {"0": {"x1": "warm"}}}, "not a number"),
    ({"approval_id": "a7"}, "approval 'a7' is not waiting"),
    ({"via": "carrier pigeon"}, "an answer via 'carrier pigeon'"),  # via is a closed vocabulary
])
def test_bad_approvals_are_refused_in_one_line(payload: dict[str, Any], message: str) -> None:
    state = waiting_state()
    with pytest.raises(ClosedLoopError) as exc:
        events_for(state, command("approve", payload), fields_of(state))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_changes_apply_to_the_effective_spec_and_bad_ones_are_refused() -> None:
    state = waiting_state()
    [event] = events_for(state, command("change", {"set_bounds": {"x1": (0, 2)}, "fix": {"x2": 3.0}, "batch_size": 4}),
                         fields_of(state))
    assert isinstance(event, CampaignChanged)
    apply(state, event)
    assert state.spec is not None and state.original_spec is not None
    assert state.spec.parameters[0].bounds == (0, 2) and state.spec.fixed_parameters == {"x2": 3.0}
    assert state.spec.batch_size == 4 and state.original_spec.batch_size == 2
    for payload, message in [({"set_bounds": {"zz": (0, 1)}}, "no such parameter"),
                             ({"set_bounds": {"x1": (3, 1)}}, "lower bound 3 is not below upper bound 1"),
                             ({"free": ["x1"]}, "the parameter is not fixed"),
                             ({"fix": {"x1": 50.0}}, "outside its bounds"),
                             ({"add_outcome_constraints": ["purity >= 0.9"]}, "does not measure 'purity'"),
                             ({}, "the change changes nothing")]:
        with pytest.raises(ClosedLoopError) as exc:
            events_for(state, command("change", payload), fields_of(state))
        assert message in str(exc.value), (payload, str(exc.value))


def test_pause_and_stop() -> None:
    state = waiting_state()
    [paused] = events_for(state, command("pause", {}), fields_of(state))
    apply(state, paused)
    assert state.status == "paused" and state.paused_reason == "user" and state.paused_detail == "because"
    with pytest.raises(ClosedLoopError, match="already paused"):
        events_for(state, command("pause", {}), fields_of(state))
    [stopped] = events_for(state, command("stop", {}), fields_of(state))
    apply(state, stopped)
    assert state.status == "finished" and state.finished_reason == "stopped"
    with pytest.raises(ClosedLoopError, match="has finished"):
        events_for(state, command("change", {"batch_size": 3}), fields_of(state))
