"""Whose value is it, decided on a folded log and one message alone (flows.engine.verdicts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from campaigns import (
    CampaignCreated,
    CampaignPaused,
    LateResultRecorded,
    SuggestedTrial,
    TrialCompleted,
    TrialDispatched,
    TrialFailed,
    TrialRetried,
    TrialsSuggested,
    apply,
    fold,
    load_spec,
)
from campaigns.events import EventBase
from campaigns.state import CampaignState
from devices.messages import TrialResult
from flows.engine.verdicts import failure_events, judge_result

SPEC = load_spec(Path(__file__).parents[2] / "campaigns" / "examples" / "branin.yaml")
NEEDED = ["branin"]


def state_with(spec_changes: dict[str, Any] | None = None) -> CampaignState:
    """Trial 0 dispatched to d1 (request r0), trial 1 to d2 (r1), trial 2 suggested only."""
    spec = SPEC.model_copy(update=spec_changes or {})
    events: list[EventBase] = [
        CampaignCreated(campaign_id="c", seq=1, actor="user:ana", spec=spec),
        TrialsSuggested(campaign_id="c", seq=2, actor="optimizer", trials=[
            SuggestedTrial(trial_id=str(i), parameters={"x1": float(i), "x2": 1.0}, generator="sobol", sobol_position=i)
            for i in range(3)]),
        TrialDispatched(campaign_id="c", seq=3, actor="orchestrator", trial_id="0", device_id="d1", request_id="r0"),
        TrialDispatched(campaign_id="c", seq=4, actor="orchestrator", trial_id="1", device_id="d2", request_id="r1"),
    ]
    return fold(events)


def result(request_id: str = "r0", trial_id: str = "0", **body: Any) -> TrialResult:
    body.setdefault("status", "completed")
    if body["status"] == "completed":
        body.setdefault("measurements", {"branin": 1.5})
    return TrialResult(request_id=request_id, trial_id=trial_id, **body)


def stage(state: CampaignState, events: list[EventBase]) -> None:
    for e in events:
        apply(state, e)


def test_a_result_from_the_device_asked_completes_its_trial() -> None:
    state = state_with()
    v = judge_result(state, NEEDED, "d1", result(), announced=["branin"])
    assert v.refused is None and v.heard and v.frees_device and v.trial_id == "0"
    [done] = v.events
    assert isinstance(done, TrialCompleted) and done.seq == state.last_seq + 1 and done.actor == "device:d1"
    assert done.measurements["branin"].mean == 1.5 and v.completed == done.measurements


@pytest.mark.parametrize(("device", "request_id", "trial_id", "kind"), [
    ("d2", "r0", "0", "wrong_device"),      # another device answers trial 0's request
    ("d1", "r1", "1", "wrong_device"),      # d1 answers d2's request
    ("d1", "r9", "0", "unknown_request"),   # a request nobody sent
    ("d1", "r0", "1", "unknown_request"),   # the right request, another trial's id
    ("d1", "r2", "2", "unknown_request"),   # a suggested trial never dispatched
])
def test_a_value_counts_only_from_the_device_the_request_went_to(device: str, request_id: str, trial_id: str,
                                                                  kind: str) -> None:
    v = judge_result(state_with(), NEEDED, device, result(request_id, trial_id), announced=None)
    assert v.events == [] and v.refused is not None and v.refused[1] == kind and v.completed is None
    assert not v.heard and not v.frees_device


def test_metrics_the_status_does_not_announce_are_left_out_and_a_needed_one_fails_the_trial() -> None:
    state = state_with()
    v = judge_result(state, NEEDED, "d1", result(measurements={"branin": 2.0, "cost": 3.0}), announced=["branin"])
    assert set(v.completed or {}) == {"branin"} and v.ignored == ["cost"]
    v = judge_result(state, NEEDED, "d1", result(measurements={"branin": 2.0}), announced=["cost"])
    [failed] = v.events  # the default policy: no retry
    assert isinstance(failed, TrialFailed) and failed.reason == "invalid_result" and v.failed
    assert "not among the metrics its status announces" in failed.detail and v.completed is None


def test_null_is_not_a_value_and_a_device_failure_is_retried_then_failed() -> None:
    state = state_with({"failure_policy": SPEC.failure_policy.model_copy(update={"retries": 1})})
    v = judge_result(state, NEEDED, "d1", result(measurements={"branin": None}), announced=["branin"])
    assert isinstance(v.events[0], TrialRetried) and v.events[0].reason == "not_measured" and v.frees_device
    assert not v.failed and v.completed is None
    v = judge_result(state_with(), NEEDED, "d1", result(status="failed", error="jammed"), announced=["branin"])
    assert isinstance(v.events[0], TrialFailed) and v.events[0].detail == "jammed" and v.failed


def test_a_late_result_is_recorded_once_and_a_duplicate_is_refused() -> None:
    state = state_with()
    stage(state, [TrialFailed(campaign_id="c", seq=5, actor="orchestrator", trial_id="0", reason="timeout",
                              device_id="d1", request_id="r0")])
    v = judge_result(state, NEEDED, "d1", result(), announced=["branin"])
    [late] = v.events
    assert isinstance(late, LateResultRecorded) and v.completed is None and not v.failed and v.heard
    stage(state, v.events)
    again = judge_result(state, NEEDED, "d1", result(), announced=["branin"])
    assert again.events == [] and again.refused is not None and again.refused[1] == "duplicate" and again.heard


def test_an_earlier_attempt_s_failure_says_nothing_of_the_attempt_under_way() -> None:
    state = state_with()
    stage(state, [
        TrialRetried(campaign_id="c", seq=5, actor="orchestrator", trial_id="0", reason="timeout", detail="",
                     device_id="d1", request_id="r0", attempt=1),
        TrialDispatched(campaign_id="c", seq=6, actor="orchestrator", trial_id="0", device_id="d1", request_id="r0b"),
    ])
    v = judge_result(state, NEEDED, "d1", result(status="failed", error="old"), announced=["branin"])
    assert v.refused is not None and v.refused[1] == "duplicate" and not v.frees_device
    # A good result of the earlier attempt measures the same parameters: the first one wins.
    v = judge_result(state, NEEDED, "d1", result(), announced=["branin"])
    assert isinstance(v.events[0], TrialCompleted) and v.events[0].request_id == "r0" and not v.frees_device


def test_failures_beyond_the_policy_pause_the_campaign_once() -> None:
    policy = SPEC.failure_policy.model_copy(update={"retries": 0, "min_failures": 2, "max_failure_rate": 0.4})
    state = state_with({"failure_policy": policy})
    first = failure_events(state, state.trials["0"], "timeout", "no result")
    assert [type(e) for e in first] == [TrialFailed]  # one failure: below min_failures
    stage(state, first)
    second = failure_events(state, state.trials["1"], "timeout", "no result")
    assert [type(e) for e in second] == [TrialFailed, CampaignPaused]
    assert [e.seq for e in second] == [state.last_seq + 1, state.last_seq + 2]
    assert second[1].reason == "failure_rate" and "2 of 2 trials failed" in second[1].detail
    stage(state, second)
    assert state.paused_reason == "failure_rate"
