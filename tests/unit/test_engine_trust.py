"""Whose value is it, in the engine on its in-memory backends: a result counts only from the
device its request went to and for metrics it announces; null is not a number; outcomes reach
the log at once; a run nobody answers pauses; garbage cannot grow the log without limit
(issue 14). Formerly on a real Mosquitto and nx-27017 (tests/integration/test_loop_trust.py);
the hub contract (tests/integration/test_hub_contract.py) ties these to the MQTT hub."""

from __future__ import annotations

import json
import logging

import pytest

from campaigns import TrialFailed, fold
from tests.unit.engine_rig import CAMPAIGN, Rig, kinds, spec

TWO = [{"id": "dev-d", "measures": ["branin", "purity"]}, {"id": "dev-e", "measures": ["branin", "purity"]}]


def started(events: list) -> bool:  # type: ignore[type-arg]
    return bool(kinds(events, "RunStarted"))


def test_late_result_counts_only_from_the_device_it_was_sent_to() -> None:
    """Issue 14 item 2: trial 0 timed out on dev-d. A well-formed late result for its request on
    dev-e's topic and on the topic of a device not in the spec was recorded as the late result,
    and dev-d's real answer was then rejected as a duplicate. Now both impostors are rejected and
    dev-d's answer is the late result on record."""
    rig = Rig()
    rig.seed(spec(TWO), {"0": "dev-d"}, after=lambda seq: [TrialFailed(
        campaign_id=CAMPAIGN, seq=seq, actor="orchestrator", trial_id="0", reason="timeout",
        detail="no result within 30 s", device_id="dev-d", request_id="r-0")])
    d, e, ghost = rig.hub.device("dev-d"), rig.hub.device("dev-e"), rig.hub.device("ghost")
    for device in (d, e):
        device.status("busy", ["branin", "purity"])  # busy: the loop sends nothing new meanwhile

    def answers() -> None:
        e.result("r-0", "0", {"branin": 111.0})
        ghost.result("r-0", "0", {"branin": 222.0})
        d.result("r-0", "0", {"branin": 333.0})

    rig.when(started, answers)
    rig.run(until=lambda ev: len(kinds(ev, "LateResultRecorded") + kinds(ev, "MessageRejected")) >= 3)
    events = rig.events()
    late = kinds(events, "LateResultRecorded")
    assert [(x.device_id, x.measurements["branin"].mean) for x in late] == [("dev-d", 333.0)]
    rejected = kinds(events, "MessageRejected")
    assert len(rejected) == 2
    assert rejected[0].device_id == "dev-e" and "went to 'dev-d'" in rejected[0].reason
    assert rejected[1].device_id is None and "/ghost/" in rejected[1].topic and "went to 'dev-d'" in rejected[1].reason
    assert fold(events).trials["0"].late_measurements["branin"].mean == 333.0


def test_null_measurements() -> None:
    """Issue 14 item 4: results with a null metric were rejected whole (the protocol allows null).
    Now null for a metric the campaign does not need completes the trial without that metric;
    null for the objective fails the trial with a reason naming it."""
    rig = Rig()
    rig.seed(spec(TWO), {"0": "dev-d", "1": "dev-e"})
    d, e = rig.hub.device("dev-d"), rig.hub.device("dev-e")
    for device in (d, e):
        device.status("busy", ["branin", "purity"])

    def answers() -> None:
        d.result("r-0", "0", {"branin": 1.5, "purity": None})
        e.result("r-1", "1", {"branin": None, "purity": 0.9})

    rig.when(started, answers)
    state = rig.run(until=lambda ev: len(kinds(ev, "TrialCompleted") + kinds(ev, "TrialFailed")) >= 2)
    events = rig.events()
    assert state.trials["0"].status == "completed"
    assert {k: v.mean for k, v in state.trials["0"].measurements.items()} == {"branin": 1.5}
    failed = kinds(events, "TrialFailed")
    assert len(failed) == 1 and failed[0].trial_id == "1" and failed[0].reason == "not_measured"
    assert "'branin'" in failed[0].detail and "null" in failed[0].detail
    assert not kinds(events, "MessageRejected")


def test_timeout_is_logged_in_its_pass_while_every_device_is_busy() -> None:
    """Issue 14 item 5: with every device busy and no message arriving, a trial's
    TrialFailed(timeout) stayed out of the log (41 s seen) while `status` said running. With the
    clock past the deadline, and nothing else happening, it is in the log, 30 s after the re-send."""
    rig = Rig()
    rig.seed(spec(TWO, failure_policy={"min_failures": 10}), {"0": "dev-d"})
    for device_id in ("dev-d", "dev-e"):
        rig.hub.device(device_id).status("busy", ["branin", "purity"])
    resent_at: list[float] = []
    rig.when(lambda ev: bool(kinds(ev, "RequestResent")), lambda: resent_at.append(rig.clock.monotonic()))
    state = rig.run(until=lambda ev: bool(kinds(ev, "TrialFailed")))  # what `closedloop status` shows then
    failed = kinds(rig.events(), "TrialFailed")
    assert [(e.trial_id, e.reason, e.device_id) for e in failed] == [("0", "timeout", "dev-d")]
    assert state.trials["0"].status == "failed" and state.status == "running"
    assert 30 <= rig.clock.monotonic() - resent_at[0] <= 31  # in the pass the deadline passed


def test_device_whose_status_lacks_a_metric_gets_no_trials(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 14 item 16: a device whose retained status does not announce a metric the campaign
    needs still got trials (each failing). Now it gets none, the other device gets them all, and
    the log says why, once."""
    rig = Rig(spec([{"id": "dev-d", "measures": ["branin"]}, {"id": "sim-a", "simulator": "branin"}],
                   budget={"max_trials": 4}, trial_timeout_s=5))
    rig.hub.device("dev-d").status("idle", ["absorbance"])
    rig.hub.instrument("sim-a", "branin", {"duration_s": [0.02, 0.05], "seed": 1})
    caplog.set_level(logging.WARNING, logger="closedloop.loop")
    state = rig.run()
    events = rig.events()
    assert state.finished_reason == "budget_exhausted"
    assert {e.device_id for e in kinds(events, "TrialDispatched")} == {"sim-a"}
    skipped = kinds(events, "DeviceSkipped")
    assert [(e.device_id, e.missing, e.measures) for e in skipped] == [("dev-d", ["branin"], ["absorbance"])]
    lines = [r.getMessage() for r in caplog.records if "dev-d gets no trials" in r.getMessage()]
    assert len(lines) == 1 and "branin" in lines[0]


def test_results_that_never_come_back_pause_the_run_with_the_likely_causes() -> None:
    """Issue 14 item 15: with a broker ACL that lets devices read requests but not publish results,
    every trial timed out and the run finished ("budget_exhausted", exit 0) with no hint. Now the
    run pauses with a reason naming the likely causes. (The devices here run every request and
    their answers are lost, as the ACL loses them.)"""
    rig = Rig(spec([{"id": "sim-a", "simulator": "branin"}, {"id": "sim-b", "simulator": "branin"}],
                   budget={"max_trials": 4}, batch_size=2, trial_timeout_s=1))
    lost = {"duration_s": [0.02, 0.05], "seed": 1, "failures": {"drop": 1.0}}
    sims = [rig.hub.instrument(d, "branin", lost) for d in ("sim-a", "sim-b")]
    state = rig.run()
    assert sum(sum(s.executions.values()) for s in sims) >= 1  # the devices did run trials
    assert state.status == "paused" and state.paused_reason == "no_results", state.finished_reason
    assert "ACL" in state.paused_detail and "t/devices/+/results" in state.paused_detail
    assert "prefix" in state.paused_detail and "subscribed" in state.paused_detail
    events = rig.events()
    assert not kinds(events, "CampaignFinished") and not kinds(events, "TrialCompleted")


def test_a_flood_of_garbage_is_counted_not_logged_one_by_one(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 14 item 19: every garbage message became a permanent event (2,000 messages, 990
    events). Now 2,000 mixed garbage messages (not UTF-8, invalid results, unknown request ids,
    unknown devices, invalid statuses) make at most 50 rejection events — at most 32 during a run
    plus one summary per (device, reason) at its end — whose counts add up to 2,000; and a
    bounded number of log lines."""
    rig = Rig()
    rig.seed(spec([{"id": "dev-d", "measures": ["branin"]}], budget={"max_trials": 1}, trial_timeout_s=600),
             {"0": "dev-d"})
    d = rig.hub.device("dev-d")
    d.status("busy", ["branin"])
    caplog.set_level(logging.WARNING)
    t = rig.hub.topics
    sent = []

    def flood() -> None:
        for i in range(2000):
            which = i % 20
            if which < 5:
                d.raw(b"\xff not utf-8 %d" % i)
            elif which < 10:
                d.result(f"nope-{i}", "0", {"branin": 1.0})
            elif which < 14:
                rig.hub.device(f"ghost-{i % 50}").result(f"r-{i}", str(i), {"branin": 1.0})
            elif which < 17:
                d.raw(b'{"kind": "trial_result", "request_id": "r-0"}')
            elif which < 18:
                d.raw(b'{"state": "asleep"}', topic=t.status("dev-d"))
            else:
                d.raw(b"{}", topic=t.status(f"ghost-{i % 50}"))
            sent.append(i)
        d.result("r-0", "0", {"branin": 2.5})  # the real answer, after all the garbage

    rig.when(started, flood)
    state = rig.run()
    events = rig.events()
    assert len(sent) == 2000
    assert state.finished_reason == "budget_exhausted"
    full, summaries = kinds(events, "MessageRejected"), kinds(events, "MessagesRejected")
    assert len(full) + len(summaries) <= 50, (len(full), len(summaries))
    assert len(full) + sum(s.count for s in summaries) == 2000
    assert state.rejected_messages == 2000
    assert {(s.device_id, s.reason) for s in summaries} == {
        ("dev-d", "not_utf8"), ("dev-d", "unknown_request"), (None, "unknown_request"),
        ("dev-d", "invalid_result"), ("dev-d", "invalid_status"), (None, "invalid_status")}
    lines = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(lines) <= 51, len(lines)  # one per rejection event, and one for the cap
    completed = kinds(events, "TrialCompleted")
    assert [(e.device_id, e.measurements["branin"].mean) for e in completed] == [("dev-d", 2.5)]


def test_a_flapping_status_does_not_grow_the_log() -> None:
    """Issue 14 item 19: every "idle" status of a device running a trial re-sent the request and
    logged a RequestResent (at most every 5 s), so a status flapping busy/idle — or anyone
    publishing on the device's status topic — grew the log for as long as it went on. Now a
    trial is re-sent on "idle" a few times per run at most: 40 flaps, 10 s apart, make 5."""
    rig = Rig()
    rig.seed(spec([{"id": "dev-d", "measures": ["branin"]}], trial_timeout_s=10**9), {"0": "dev-d"})
    topic = rig.hub.topics.status("dev-d")
    start = rig.clock.monotonic()
    for k in range(40):
        for j, state in enumerate(("busy", "idle")):
            body = json.dumps({"state": state, "device_id": "dev-d", "measures": ["branin"]}).encode()
            rig.hub.call_at(start + 10 * k + 5 * j, lambda b=body: rig.hub.publish(topic, b))
    rig.run(max_runtime_s=1000, poll_s=1.0)
    resent = [e for e in kinds(rig.events(), "RequestResent") if e.reason == "device_idle"]
    assert len(resent) == 5, len(resent)
