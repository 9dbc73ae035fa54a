"""Suggestions computed ahead (async dispatch) and batch-synchronous dispatch, in the engine on
its in-memory backends (formerly on a real Mosquitto and a MongoDB-wire log); and the optimizer
thread's ordering and retirement rules, threaded and inline."""

from __future__ import annotations

import threading

import pytest

from campaigns import (
    CampaignSpec,
    Measurement,
    OptimizerError,
    TrialCompleted,
    TrialDispatched,
    TrialsSuggested,
    fold,
    parse_spec,
)
from flows.engine.ahead import OptimizerThread
from optimizer import AxOptimizer
from tests.unit.engine_rig import Rig


def spec(**extra: object) -> CampaignSpec:
    return parse_spec({
        "name": "ahead", "seed": 3,
        "parameters": [{"name": "x1", "type": "float", "bounds": [-5, 10]},
                       {"name": "x2", "type": "float", "bounds": [0, 15]}],
        "objectives": [{"name": "branin", "minimize": True}],
        "trial_timeout_s": 60, "optimizer": {"method": "sobol"},
        "devices": [{"id": "dev-a", "simulator": "branin"}, {"id": "dev-b", "simulator": "branin"}],
        **extra,
    })


def run(campaign: CampaignSpec, duration_s: list[float], reason: str = "budget_exhausted") -> list:  # type: ignore[type-arg]
    rig = Rig(campaign, campaign_id=campaign.name)
    rig.hub.instrument("dev-a", "branin", {"duration_s": duration_s, "seed": 1})
    rig.hub.instrument("dev-b", "branin", {"duration_s": duration_s, "seed": 2})
    state = rig.run(max_runtime_s=10**6)
    assert state.finished_reason == reason
    events = rig.events()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    return events


def test_async_next_trial_is_logged_before_the_previous_result() -> None:
    # Trials last far longer than a Sobol suggestion: each device's next trial is already in
    # the log when its previous result arrives, so it goes out at once.
    events = run(spec(budget={"max_trials": 6}, batch_size=2), [0.4, 0.8])
    assert fold(events).count("completed") == 6
    suggested_at = {t.trial_id: e.seq for e in events if isinstance(e, TrialsSuggested) for t in e.trials}
    last_result: dict[str, int] = {}
    checked = 0
    for e in events:
        if isinstance(e, TrialCompleted):
            last_result[e.device_id] = e.seq
        elif isinstance(e, TrialDispatched) and e.device_id in last_result:
            assert suggested_at[e.trial_id] < last_result[e.device_id], (e, events)
            checked += 1
    assert checked == 4  # every dispatch but each device's first


def test_batch_dispatch_waits_for_the_whole_batch() -> None:
    events = run(spec(budget={"max_trials": 7}, batch_size=3, dispatch="batch"), [0.0, 0.05])
    batches = [e for e in events if isinstance(e, TrialsSuggested)]
    assert [len(b.trials) for b in batches] == [3, 3, 1]
    for b in batches:
        before = fold(e for e in events if e.seq < b.seq)
        assert all(t.terminal for t in before.trials.values())  # nothing in flight, nothing queued
    assert fold(events).count("completed") == 7


def test_async_campaign_out_of_time_finishes_with_suggestions_ahead() -> None:
    # max_hours ends the campaign while the next trials are suggested ahead: it finishes, once
    # the trials in flight are done, and the undispatched ones stay in the log unrun.
    events = run(spec(budget={"max_trials": 500, "max_hours": 0.001}, batch_size=2), [0.2, 0.4], reason="max_hours")
    state = fold(events)
    assert not state.in_flight and state.undispatched
    assert state.count("completed") + len(state.undispatched) == len(state.trials)


def test_optimizer_thread_keeps_order_and_drops_a_retired_suggestion() -> None:
    campaign = spec(budget={"max_trials": 10})
    woken = threading.Event()
    worker: OptimizerThread[AxOptimizer] = OptimizerThread(woken.set)
    try:
        worker.use(AxOptimizer(campaign, threads=1))
        worker.suggest(2, lambda o, n: o.suggest(n))
        first = worker.collect(wait=True)
        assert first is not None and [t.trial_id for t in first] == ["0", "1"] and woken.is_set()
        # A result told before a suggestion is known to it; an error surfaces in the loop's thread.
        worker.tell(lambda o: o.complete("0", {"branin": Measurement(mean=3.0)}))
        worker.tell(lambda o: o.complete("7", {"branin": Measurement(mean=1.0)}))
        with pytest.raises(OptimizerError):
            worker.suggest(1, lambda o, n: o.suggest(n))
            worker.collect(wait=True)
        # A suggestion under way when the optimizer is replaced is dropped, unlogged.
        gate = threading.Event()
        worker.suggest(1, lambda o, n: (gate.wait(30), o.suggest(n))[1])
        assert worker.collect() is None and worker.computing == 1
        threading.Timer(0.2, gate.set).start()
        worker.use(AxOptimizer.rebuild(campaign, fold([]).trials.values(), threads=1))
        assert worker.computing == 0 and worker.collect(wait=True) is None
        worker.suggest(1, lambda o, n: o.suggest(n))
        again = worker.collect(wait=True)
        assert again is not None and [t.trial_id for t in again] == ["0"]
    finally:
        worker.close()


def test_inline_optimizer_runs_each_call_at_once_under_the_same_rules() -> None:
    campaign = spec(budget={"max_trials": 10})
    woken = threading.Event()
    worker: OptimizerThread[AxOptimizer] = OptimizerThread(woken.set, threaded=False)
    try:
        worker.use(AxOptimizer(campaign, threads=1))
        worker.suggest(2, lambda o, n: o.suggest(n))
        assert woken.is_set() and worker.computing == 2  # computed already; collected on the next look
        first = worker.collect()
        assert first is not None and [t.trial_id for t in first] == ["0", "1"] and worker.computing == 0
        worker.tell(lambda o: o.complete("7", {"branin": Measurement(mean=1.0)}))  # no such trial
        with pytest.raises(OptimizerError):
            worker.check()
        worker.use(AxOptimizer.rebuild(campaign, fold([]).trials.values(), threads=1))
        worker.suggest(1, lambda o, n: o.suggest(n))
        again = worker.collect()
        assert again is not None and [t.trial_id for t in again] == ["0"]
    finally:
        worker.close()
