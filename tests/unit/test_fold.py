"""fold(events) -> CampaignState: pure, total, and incremental."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns import (
    CampaignCreated,
    CampaignFinished,
    Measurement,
    MessageRejected,
    SuggestedTrial,
    TrialCompleted,
    TrialDispatched,
    TrialFailed,
    TrialsSuggested,
    apply,
    event_from_doc,
    event_to_doc,
    fold,
    load_spec,
)
from campaigns.events import EventBase, RunStarted

SPEC = load_spec(Path(__file__).parents[2] / "campaigns" / "examples" / "branin.yaml")
CID = "c1"


def numbered(*events: EventBase) -> list[EventBase]:
    return [e.model_copy(update={"seq": i}) for i, e in enumerate(events, start=1)]


def story() -> list[EventBase]:
    return numbered(
        CampaignCreated(campaign_id=CID, seq=1, actor="user:ana", spec=SPEC),
        RunStarted(campaign_id=CID, seq=1, actor="orchestrator", host="h", pid=1),
        TrialsSuggested(campaign_id=CID, seq=1, actor="optimizer", trials=[
            SuggestedTrial(trial_id="0", parameters={"x1": 1.0, "x2": 2.0}, generator="sobol", sobol_position=0),
            SuggestedTrial(trial_id="1", parameters={"x1": 3.0, "x2": 4.0}, generator="sobol", sobol_position=1),
            SuggestedTrial(trial_id="2", parameters={"x1": 5.0, "x2": 6.0}, generator="sobol", sobol_position=2),
        ]),
        TrialDispatched(campaign_id=CID, seq=1, actor="orchestrator", trial_id="0", device_id="d1", request_id="r0"),
        TrialDispatched(campaign_id=CID, seq=1, actor="orchestrator", trial_id="1", device_id="d2", request_id="r1"),
        TrialCompleted(campaign_id=CID, seq=1, actor="device:d1", trial_id="0", device_id="d1", request_id="r0",
                       measurements={"branin": Measurement(mean=5.0)}),
        TrialFailed(campaign_id=CID, seq=1, actor="orchestrator", trial_id="1", reason="timeout", device_id="d2", request_id="r1"),
        MessageRejected(campaign_id=CID, seq=1, actor="device:d2", device_id="d2", topic="t", reason="not JSON"),
        TrialCompleted(campaign_id=CID, seq=1, actor="device:d2", trial_id="1", device_id="d2", request_id="r1",
                       measurements={"branin": Measurement(mean=0.1)}),  # late: already failed
    )


def test_story() -> None:
    state = fold(story())
    assert state.status == "running" and state.last_seq == 9 and state.runs == 1
    assert [t.status for t in state.trials.values()] == ["completed", "failed", "suggested"]
    assert state.trials["1"].failure_reason == "timeout"
    assert state.best() is not None and state.best().trial_id == "0"  # type: ignore[union-attr]
    assert state.rejected_messages == 1 and state.anomalies == 1  # the late result is not applied
    assert [t.trial_id for t in state.undispatched] == ["2"]
    finished = fold([*story(), CampaignFinished(campaign_id=CID, seq=10, actor="orchestrator", reason="stopped")])
    assert finished.status == "finished" and finished.finished_reason == "stopped"


def test_fold_is_pure() -> None:
    events = story()
    a, b = fold(events), fold(events)
    assert a == b and a is not b
    assert fold([]).status == "empty"


def test_docs_round_trip() -> None:
    for e in every_kind():
        assert event_from_doc({**event_to_doc(e), "_id": "x"}) == e


def test_minimize_false_and_maximize_best() -> None:
    spec = SPEC.model_copy(update={"objectives": [SPEC.objectives[0].model_copy(update={"minimize": False})]})
    events = list(story())
    events[0] = CampaignCreated(campaign_id=CID, seq=1, actor="user:ana", spec=spec)
    events.insert(6, TrialCompleted(campaign_id=CID, seq=1, actor="device:d2", trial_id="1", device_id="d2",
                                    request_id="r1", measurements={"branin": Measurement(mean=9.0)}))
    state = fold(numbered(*events))
    assert state.best().trial_id == "1"  # type: ignore[union-attr]


def test_best_satisfies_the_outcome_constraints() -> None:
    spec = SPEC.model_copy(update={"outcome_constraints": ["impurity <= 3"]})
    done = [("0", 5.0, 2.0), ("1", 0.5, 7.0), ("2", 2.0, 3.0)]  # trial 1 is better but too impure
    events: list[EventBase] = [CampaignCreated(campaign_id=CID, seq=1, actor="user:ana", spec=spec), *story()[2:5]]
    events.append(TrialDispatched(campaign_id=CID, seq=1, actor="orchestrator", trial_id="2", device_id="d1", request_id="r2"))
    for tid, value, impurity in done:
        events.append(TrialCompleted(campaign_id=CID, seq=1, actor="device:d1", trial_id=tid, device_id="d1",
                                     request_id=f"r{tid}", measurements={"branin": Measurement(mean=value),
                                                                         "impurity": Measurement(mean=impurity)}))
    state = fold(numbered(*events))
    assert state.best().trial_id == "2"  # type: ignore[union-attr]
    assert [state.feasible(t) for t in state.trials.values()] == [True, False, True]


def every_kind() -> list[EventBase]:
    from campaigns import (
        BrokerDisconnected,
        BrokerReconnected,
        CampaignPaused,
        CampaignResumed,
        LateResultRecorded,
        RequestResent,
        TrialRetried,
    )

    return [*story(),
            RequestResent(campaign_id=CID, seq=1, actor="orchestrator", trial_id="0", device_id="d1", request_id="r0",
                          reason="resume"),
            TrialRetried(campaign_id=CID, seq=1, actor="orchestrator", trial_id="1", attempt=1, reason="timeout"),
            LateResultRecorded(campaign_id=CID, seq=1, actor="device:d2", trial_id="1", device_id="d2", request_id="r1",
                               measurements={"branin": Measurement(mean=1.0)}),
            BrokerDisconnected(campaign_id=CID, seq=1, actor="orchestrator"),
            BrokerReconnected(campaign_id=CID, seq=1, actor="orchestrator", down_s=1.5),
            CampaignPaused(campaign_id=CID, seq=1, actor="orchestrator", reason="failure_rate"),
            CampaignResumed(campaign_id=CID, seq=1, actor="user:ana")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(every_kind()), max_size=30), st.integers(min_value=0, max_value=30))
def test_fold_is_total_and_incremental(events: list[EventBase], cut: int) -> None:
    """Any sequence folds without raising, and folding in two parts equals folding at once."""
    events = numbered(*events)
    whole = fold(events)
    state = fold(events[:cut])
    for e in events[cut:]:
        apply(state, e)
    assert state == whole
    assert whole.last_seq == len(events)
    assert sum(whole.count(s) for s in ("suggested", "running", "completed", "failed")) == len(whole.trials)


def test_retry_late_result_and_pause_window() -> None:
    from campaigns import (
        CampaignPaused,
        CampaignResumed,
        LateResultRecorded,
        RequestResent,
        TrialRetried,
    )

    spec = SPEC.model_copy(update={"failure_policy": SPEC.failure_policy.model_copy(update={"min_failures": 1})})
    events = numbered(
        CampaignCreated(campaign_id=CID, seq=1, actor="user:ana", spec=spec),
        TrialsSuggested(campaign_id=CID, seq=1, actor="optimizer", trials=[
            SuggestedTrial(trial_id="0", parameters={"x1": 1.0, "x2": 2.0}, generator="sobol", sobol_position=0)]),
        TrialDispatched(campaign_id=CID, seq=1, actor="orchestrator", trial_id="0", device_id="d1", request_id="c1:0:1"),
        RequestResent(campaign_id=CID, seq=1, actor="orchestrator", trial_id="0", device_id="d1", request_id="c1:0:1",
                      reason="resume"),
        TrialRetried(campaign_id=CID, seq=1, actor="orchestrator", trial_id="0", attempt=1, reason="timeout"),
    )
    state = fold(events)
    t = state.trials["0"]
    assert t.status == "suggested" and t.attempts == 1 and t.resends == 1 and t.request_id is None
    assert [u.trial_id for u in state.undispatched] == ["0"]  # waits for a device again

    events += numbered(*events, TrialDispatched(campaign_id=CID, seq=1, actor="orchestrator", trial_id="0",
                                                device_id="d2", request_id="c1:0:2"),
                       TrialFailed(campaign_id=CID, seq=1, actor="orchestrator", trial_id="0", reason="timeout"),
                       LateResultRecorded(campaign_id=CID, seq=1, actor="device:d2", trial_id="0", device_id="d2",
                                          request_id="c1:0:2", measurements={"branin": Measurement(mean=3.0)}))[len(events):]
    state = fold(events)
    t = state.trials["0"]
    assert t.status == "failed" and t.attempts == 2 and t.late_measurements["branin"].mean == 3.0
    assert state.best() is None  # a late result does not count for the optimizer or the best
    assert state.failure_rate_exceeded() is not None  # 1 of 1 failed, min_failures 1

    events += numbered(*events, CampaignPaused(campaign_id=CID, seq=1, actor="orchestrator", reason="failure_rate"))[len(events):]
    assert fold(events).status == "paused"
    events += numbered(*events, CampaignResumed(campaign_id=CID, seq=1, actor="user:ana", reason="fixed pump"))[len(events):]
    resumed = fold(events)
    assert resumed.status == "running" and resumed.failure_rate_exceeded() is None  # the window restarted


def test_prior_trials_open_a_campaign_and_only_there() -> None:
    from campaigns import (
        Measurement,
        PriorTrial,
        PriorTrialsAdded,
        SuggestedTrial,
        TrialsSuggested,
        parse_spec,
    )

    spec = parse_spec({**SPEC.model_dump(mode="json"), "prior_data": [{"campaign": "earlier"}]})
    prior = PriorTrialsAdded(campaign_id=CID, seq=2, actor="user:ana", sources=spec.prior_data, trials=[
        PriorTrial(trial_id="0", parameters={"x1": 1.0, "x2": 2.0}, measurements={"branin": Measurement(mean=3.0)},
                   source=0, origin="7")])
    created = CampaignCreated(campaign_id=CID, seq=1, actor="user:ana", spec=spec)
    state = fold([created, prior])
    t = state.trials["0"]
    assert (t.status, t.engine, t.prior, t.measurements["branin"].mean) == ("completed", "prior",
                                                                           "campaign earlier trial 7", 3.0)
    assert state.prior_count == 1 and state.budget_used == 0 and state.count("completed") == 0 and not state.anomalies
    assert state.prior_sources == spec.prior_data
    # After a trial of its own, prior data would renumber trials: an anomaly, ignored.
    own = TrialsSuggested(campaign_id=CID, seq=2, actor="optimizer", trials=[
        SuggestedTrial(trial_id="0", parameters={"x1": 0.0, "x2": 0.0}, generator="sobol")])
    late = fold([created, own, prior.model_copy(update={"seq": 3})])
    assert late.anomalies == 1 and late.prior_count == 0 and late.trials["0"].engine != "prior"
