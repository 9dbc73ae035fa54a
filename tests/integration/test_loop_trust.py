"""Whose value is it: on a real Mosquitto, a result counts only from the device its request went
to and for metrics it announces; null is not a number; outcomes reach the log at once; a run
nobody answers pauses; garbage cannot grow the log without limit (issue 14)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from campaigns import CampaignCreated, CampaignState, TrialFailed, fold
from devices import MqttDeviceHub, MqttSettings
from flows.engine.loop import CampaignLoop
from simulators import SimInstrument
from storage import MongoEventStore
from tests.conftest_brokers import Mosquitto
from tests.integration.loop_harness import (
    CAMPAIGN,
    Device,
    ManualClock,
    kinds,
    private_mosquitto,
    running_loop,
    seed,
    spec,
    wait_log,
)


@pytest.fixture
def store(mongo_uri: str) -> Iterator[MongoEventStore]:
    with MongoEventStore(mongo_uri, database=f"cl_trust_{uuid.uuid4().hex[:8]}") as s:
        yield s


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    # No cap on a subscriber's queue: every one of a flood of messages must reach the loop.
    b = private_mosquitto(tmp_path / "mosquitto", "max_queued_messages 0")
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def mqtt(broker: Mosquitto) -> MqttSettings:
    return MqttSettings(url=broker.url, prefix=f"t-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def device(mqtt: MqttSettings) -> Iterator[Device]:
    d = Device(mqtt)
    try:
        yield d
    finally:
        d.close()


TWO = [{"id": "dev-d", "measures": ["branin", "purity"]}, {"id": "dev-e", "measures": ["branin", "purity"]}]


def test_late_result_counts_only_from_the_device_it_was_sent_to(store: MongoEventStore, mqtt: MqttSettings,
                                                                 device: Device) -> None:
    """Issue 14 item 2: trial 0 timed out on dev-d. A well-formed late result for its request on
    dev-e's topic and on the topic of a device not in the spec was recorded as the late result,
    and dev-d's real answer was then rejected as a duplicate. Now both impostors are rejected and
    dev-d's answer is the late result on record."""
    seed(store, spec(TWO), {"0": "dev-d"}, after=lambda seq: [TrialFailed(
        campaign_id=CAMPAIGN, seq=seq, actor="orchestrator", trial_id="0", reason="timeout",
        detail="no result within 30 s", device_id="dev-d", request_id="r-0")])
    for d in ("dev-d", "dev-e"):
        device.status(d, "busy", ["branin", "purity"])  # busy: the loop sends nothing new meanwhile
    with running_loop(store, mqtt):
        wait_log(store, lambda ev: bool(kinds(ev, "RunStarted")))
        device.result("dev-e", "r-0", "0", {"branin": 111.0})
        device.result("ghost", "r-0", "0", {"branin": 222.0})
        device.result("dev-d", "r-0", "0", {"branin": 333.0})
        events = wait_log(store, lambda ev: len(kinds(ev, "LateResultRecorded") + kinds(ev, "MessageRejected")) >= 3)
    late = kinds(events, "LateResultRecorded")
    assert [(e.device_id, e.measurements["branin"].mean) for e in late] == [("dev-d", 333.0)]
    rejected = kinds(events, "MessageRejected")
    assert len(rejected) == 2
    assert rejected[0].device_id == "dev-e" and "went to 'dev-d'" in rejected[0].reason
    assert rejected[1].device_id is None and "/ghost/" in rejected[1].topic and "went to 'dev-d'" in rejected[1].reason
    assert fold(events).trials["0"].late_measurements["branin"].mean == 333.0


def test_null_measurements(store: MongoEventStore, mqtt: MqttSettings, device: Device) -> None:
    """Issue 14 item 4: results with a null metric were rejected whole (the protocol allows null).
    Now null for a metric the campaign does not need completes the trial without that metric;
    null for the objective fails the trial with a reason naming it."""
    seed(store, spec(TWO), {"0": "dev-d", "1": "dev-e"})
    for d in ("dev-d", "dev-e"):
        device.status(d, "busy", ["branin", "purity"])
    with running_loop(store, mqtt):
        wait_log(store, lambda ev: bool(kinds(ev, "RunStarted")))
        device.result("dev-d", "r-0", "0", {"branin": 1.5, "purity": None})
        device.result("dev-e", "r-1", "1", {"branin": None, "purity": 0.9})
        events = wait_log(store, lambda ev: len(kinds(ev, "TrialCompleted") + kinds(ev, "TrialFailed")) >= 2)
    state = fold(events)
    assert state.trials["0"].status == "completed"
    assert {k: v.mean for k, v in state.trials["0"].measurements.items()} == {"branin": 1.5}
    failed = kinds(events, "TrialFailed")
    assert len(failed) == 1 and failed[0].trial_id == "1" and failed[0].reason == "not_measured"
    assert "'branin'" in failed[0].detail and "null" in failed[0].detail
    assert not kinds(events, "MessageRejected")


def test_timeout_is_logged_in_its_pass_while_every_device_is_busy(store: MongoEventStore, mqtt: MqttSettings,
                                                                    device: Device) -> None:
    """Issue 14 item 5: with every device busy and no message arriving, a trial's
    TrialFailed(timeout) stayed out of the log (41 s seen) while `status` said running. With the
    clock moved past the deadline, and nothing else happening, it is in the log."""
    seed(store, spec(TWO, failure_policy={"min_failures": 10}), {"0": "dev-d"})
    for d in ("dev-d", "dev-e"):
        device.status(d, "busy", ["branin", "purity"])
    clock = ManualClock()
    with running_loop(store, mqtt, clock=clock):
        # The resumed trial's deadline counts from the re-send, logged just before it.
        wait_log(store, lambda ev: bool(kinds(ev, "RequestResent")))
        clock.advance(31)
        events = wait_log(store, lambda ev: bool(kinds(ev, "TrialFailed")))
        state = fold(events)  # what `closedloop status` shows now, the loop still running
    failed = kinds(events, "TrialFailed")
    assert [(e.trial_id, e.reason, e.device_id) for e in failed] == [("0", "timeout", "dev-d")]
    assert state.trials["0"].status == "failed" and state.status == "running"


def test_device_whose_status_lacks_a_metric_gets_no_trials(store: MongoEventStore, mqtt: MqttSettings,
                                                             device: Device, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 14 item 16: a device whose retained status does not announce a metric the campaign
    needs still got trials (each failing). Now it gets none, the other device gets them all, and
    the log says why, once."""
    campaign = spec([{"id": "dev-d", "measures": ["branin"]}, {"id": "sim-a", "simulator": "branin"}],
                    budget={"max_trials": 4}, trial_timeout_s=5)
    store.append([CampaignCreated(campaign_id=CAMPAIGN, seq=1, actor="user:test", spec=campaign)])
    device.status("dev-d", "idle", ["absorbance"])
    caplog.set_level(logging.WARNING, logger="closedloop.loop")
    with SimInstrument("sim-a", "branin", {"duration_s": [0.02, 0.05], "seed": 1}, mqtt, client_id=f"sim-{uuid.uuid4().hex[:6]}"), \
            running_loop(store, mqtt):
        events = wait_log(store, lambda ev: bool(kinds(ev, "CampaignFinished")), timeout_s=60)
    assert fold(events).finished_reason == "budget_exhausted"
    assert {e.device_id for e in kinds(events, "TrialDispatched")} == {"sim-a"}
    skipped = kinds(events, "DeviceSkipped")
    assert [(e.device_id, e.missing, e.measures) for e in skipped] == [("dev-d", ["branin"], ["absorbance"])]
    lines = [r.getMessage() for r in caplog.records if "dev-d gets no trials" in r.getMessage()]
    assert len(lines) == 1 and "branin" in lines[0]


def test_a_broker_acl_that_drops_results_pauses_the_run(tmp_path: Path, store: MongoEventStore) -> None:
    """Issue 14 item 15: with a broker ACL that lets devices read requests but not publish results,
    every trial timed out and the run finished ("budget_exhausted", exit 0) with no hint. Now the
    run pauses with a reason naming the likely causes."""
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    acl = tmp_path / "acl"
    acl.write_text(f"topic readwrite {prefix}/devices/+/status\n"
                   f"topic readwrite {prefix}/devices/+/requests\n"
                   f"topic read {prefix}/devices/+/results\n")
    broker = private_mosquitto(tmp_path / "acl-mosquitto", f"acl_file {acl}")
    try:
        mqtt = MqttSettings(url=broker.url, prefix=prefix)
        campaign = spec([{"id": "sim-a", "simulator": "branin"}, {"id": "sim-b", "simulator": "branin"}],
                        budget={"max_trials": 4}, batch_size=2, trial_timeout_s=1)
        store.append([CampaignCreated(campaign_id=CAMPAIGN, seq=1, actor="user:test", spec=campaign)])
        sims = [SimInstrument(d, "branin", {"duration_s": [0.02, 0.05], "seed": 1}, mqtt,
                              client_id=f"sim-{uuid.uuid4().hex[:6]}") for d in ("sim-a", "sim-b")]
        for s in sims:
            s.start()
        try:
            with MqttDeviceHub(mqtt, client_id=f"hub-{uuid.uuid4().hex[:8]}") as hub:
                state: CampaignState = CampaignLoop(CAMPAIGN, store, hub, run_info={"host": "h", "pid": 1}).run()
        finally:
            for s in sims:
                s.stop()
        assert sum(len(s.completions) for s in sims) >= 1  # the devices did run trials: only results were lost
    finally:
        broker.stop()
    assert state.status == "paused" and state.paused_reason == "no_results", state.finished_reason
    assert "ACL" in state.paused_detail and f"{prefix}/devices/+/results" in state.paused_detail
    assert "prefix" in state.paused_detail and "subscribed" in state.paused_detail
    events = store.read(CAMPAIGN)
    assert not kinds(events, "CampaignFinished") and not kinds(events, "TrialCompleted")


def test_a_flood_of_garbage_is_counted_not_logged_one_by_one(store: MongoEventStore, mqtt: MqttSettings,
                                                               device: Device, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 14 item 19: every garbage message became a permanent event (2,000 messages, 990
    events). Now 2,000 mixed garbage messages (not UTF-8, invalid results, unknown request ids,
    unknown devices, invalid statuses) make at most 50 rejection events — at most 32 during a run
    plus one summary per (device, reason) at its end — whose counts add up to 2,000; and a
    bounded number of log lines."""
    seed(store, spec([{"id": "dev-d", "measures": ["branin"]}], budget={"max_trials": 1}, trial_timeout_s=600),
         {"0": "dev-d"})
    device.status("dev-d", "busy", ["branin"])
    caplog.set_level(logging.WARNING)
    t = device.topics
    sent = 0
    with running_loop(store, mqtt):
        wait_log(store, lambda ev: bool(kinds(ev, "RunStarted")))
        for i in range(2000):
            which = i % 20
            if which < 5:
                device.raw(t.results("dev-d"), b"\xff not utf-8 %d" % i)
            elif which < 10:
                device.result("dev-d", f"nope-{i}", "0", {"branin": 1.0})
            elif which < 14:
                device.result(f"ghost-{i % 50}", f"r-{i}", str(i), {"branin": 1.0})
            elif which < 17:
                device.raw(t.results("dev-d"), b'{"kind": "trial_result", "request_id": "r-0"}')
            elif which < 18:
                device.raw(t.status("dev-d"), b'{"state": "asleep"}')
            else:
                device.raw(t.status(f"ghost-{i % 50}"), b"{}")
            sent += 1
        device.result("dev-d", "r-0", "0", {"branin": 2.5})  # the real answer, after all the garbage
        events = wait_log(store, lambda ev: bool(kinds(ev, "CampaignFinished")), timeout_s=120)
    assert sent == 2000
    assert fold(events).finished_reason == "budget_exhausted"
    full, summaries = kinds(events, "MessageRejected"), kinds(events, "MessagesRejected")
    assert len(full) + len(summaries) <= 50, (len(full), len(summaries))
    assert len(full) + sum(s.count for s in summaries) == 2000
    assert fold(events).rejected_messages == 2000
    assert {(s.device_id, s.reason) for s in summaries} == {
        ("dev-d", "not_utf8"), ("dev-d", "unknown_request"), (None, "unknown_request"),
        ("dev-d", "invalid_result"), ("dev-d", "invalid_status"), (None, "invalid_status")}
    lines = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(lines) <= 51, len(lines)  # one per rejection event, and one for the cap
    completed = kinds(events, "TrialCompleted")
    assert [(e.device_id, e.measurements["branin"].mean) for e in completed] == [("dev-d", 2.5)]
