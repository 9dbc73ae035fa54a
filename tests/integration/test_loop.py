"""The campaign flow in-process, on real Mosquitto and on the embedded broker, logging to a
MongoDB-wire server through pymongo: results land, garbage is rejected, silence times out."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from campaigns import (
    CampaignCreated,
    CampaignPaused,
    MessageRejected,
    RunStarted,
    SuggestedTrial,
    TrialCompleted,
    TrialDispatched,
    TrialFailed,
    TrialsSuggested,
    fold,
    parse_spec,
)
from devices import DeviceStatus, MqttSettings, Topics, connect, encode
from flows.prefect.flow import campaign
from simulators import SimInstrument
from storage import MongoEventStore
from tests.conftest import closedloop_env
from tests.e2e.cli import branin


@pytest.fixture
def env(broker_url: str, mongo_uri: str, prefect_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> dict[str, str]:
    return closedloop_env(monkeypatch, tmp_path, broker_url, mongo_uri)


def spec_for(devices: list[dict], **extra: object):  # type: ignore[no-untyped-def]
    return parse_spec({
        "name": "loop", "seed": 5,
        "parameters": [{"name": "x1", "type": "float", "bounds": [-5, 10]},
                       {"name": "x2", "type": "float", "bounds": [0, 15]}],
        "objectives": [{"name": "branin", "minimize": True}],
        "budget": {"max_trials": 7}, "batch_size": 2, "trial_timeout_s": 30,
        "devices": devices, **extra,
    })


def create(env: dict[str, str], spec) -> MongoEventStore:  # type: ignore[no-untyped-def]
    store = MongoEventStore(env["CLOSEDLOOP_MONGODB_URI"], database=env["CLOSEDLOOP_MONGODB_DATABASE"])
    store.append([CampaignCreated(campaign_id="loop", seq=1, actor="user:test", spec=spec)])
    return store


def test_loop_completes_and_rejects_garbage(env: dict[str, str]) -> None:
    spec = spec_for([{"id": "sim-a", "simulator": "branin"}, {"id": "sim-b", "simulator": "branin"}])
    store = create(env, spec)
    mqtt = MqttSettings(url=env["CLOSEDLOOP_MQTT_URL"], prefix=env["CLOSEDLOOP_MQTT_PREFIX"])
    topics = Topics(env["CLOSEDLOOP_MQTT_PREFIX"])
    done = threading.Event()

    def vandal() -> None:
        # Once the loop is running, a device sends garbage and a result for a trial that never was.
        conn = connect(mqtt, client_id=f"vandal-{uuid.uuid4().hex[:6]}")
        try:
            while not done.is_set() and not any(e.kind == "TrialCompleted" for e in store.read("loop")):
                done.wait(0.1)
            conn.publish(topics.results("sim-a"), b"\xff not json")
            conn.publish(topics.results("sim-b"), b'{"kind": "trial_result", "request_id": "nope", "trial_id": "99", '
                                                  b'"status": "completed", "measurements": {"branin": 1.0}}')
        finally:
            conn.close()

    with SimInstrument("sim-a", "branin", {"duration_s": [0.05, 0.2], "seed": 1}, mqtt), \
         SimInstrument("sim-b", "branin", {"duration_s": [0.05, 0.2], "seed": 2}, mqtt):
        t = threading.Thread(target=vandal)
        t.start()
        try:
            summary = campaign("loop")
        finally:
            done.set()
            t.join(10)
    assert summary["status"] == "finished" and summary["completed"] == 7

    events = store.read("loop")
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # contiguous, no fork
    state = fold(events)
    assert state.finished_reason == "budget_exhausted" and state.count("completed") == 7
    for trial in state.trials.values():
        x1, x2 = float(trial.parameters["x1"]), float(trial.parameters["x2"])
        assert trial.measurements["branin"].mean == pytest.approx(branin(x1, x2), rel=1e-9)
    rejected = [e for e in events if isinstance(e, MessageRejected)]
    reasons = " | ".join(e.reason for e in rejected)
    assert len(rejected) == 2, reasons
    assert "JSON" in reasons or "UTF-8" in reasons
    assert "unknown request 'nope'" in reasons
    completed = [e for e in events if isinstance(e, TrialCompleted)]
    assert {e.device_id for e in completed} == {"sim-a", "sim-b"}
    store.close()


def test_silent_device_times_out(env: dict[str, str]) -> None:
    spec = spec_for([{"id": "mute", "measures": ["branin"]}], trial_timeout_s=1,
                    budget={"max_trials": 2}, optimizer={"method": "sobol"})
    store = create(env, spec)
    mqtt = MqttSettings(url=env["CLOSEDLOOP_MQTT_URL"], prefix=env["CLOSEDLOOP_MQTT_PREFIX"])
    topics = Topics(env["CLOSEDLOOP_MQTT_PREFIX"])
    # A device that says it is idle and then never answers.
    conn = connect(mqtt, client_id=f"mute-{uuid.uuid4().hex[:6]}")
    conn.publish(topics.status("mute"), encode(DeviceStatus(state="idle", device_id="mute", measures=["branin"])),
                 retain=True)
    try:
        summary = campaign("loop")
    finally:
        conn.publish(topics.status("mute"), b"", retain=True)
        conn.close()
    # Nothing ever answered: the timeouts are logged, and the run pauses with the likely causes
    # rather than finishing as if all were well (issue 14 item 15).
    assert summary["status"] == "paused" and summary["failed"] == 2
    events = store.read("loop")
    failed = [e for e in events if isinstance(e, TrialFailed)]
    assert [e.reason for e in failed] == ["timeout", "timeout"]
    assert all(e.device_id == "mute" for e in failed)
    paused = [e for e in events if isinstance(e, CampaignPaused)]
    assert [e.reason for e in paused] == ["no_results"] and "ACL" in paused[0].detail
    store.close()


def test_two_failures_in_one_pass_pause_once(env: dict[str, str]) -> None:
    # A run stopped with two trials out on devices that never answer. The resumed loop re-sends
    # both and gives them one deadline (however slow each re-send), so both time out in one
    # pass: the first failure trips the policy (1 of 1 failed); the second, in the same pass,
    # is logged as a failure but does not pause the campaign a second time.
    spec = spec_for([{"id": "mute-a", "measures": ["branin"]}, {"id": "mute-b", "measures": ["branin"]}],
                    trial_timeout_s=1, optimizer={"method": "sobol"}, failure_policy={"min_failures": 1})
    store = create(env, spec)
    fields = {"campaign_id": "loop", "actor": "orchestrator"}
    store.append([
        RunStarted(**fields, seq=2, host="lab-pc", pid=1, flow_run_id=None),
        TrialsSuggested(**fields, seq=3, trials=[
            SuggestedTrial(trial_id="0", parameters={"x1": 0.0, "x2": 5.0}, generator="human"),
            SuggestedTrial(trial_id="1", parameters={"x1": 5.0, "x2": 10.0}, generator="human"),
        ]),
        TrialDispatched(**fields, seq=4, trial_id="0", device_id="mute-a", request_id="r-0"),
        TrialDispatched(**fields, seq=5, trial_id="1", device_id="mute-b", request_id="r-1"),
    ])
    summary = campaign("loop")
    events = store.read("loop")
    store.close()
    assert summary["status"] == "paused"
    failed = [e for e in events if isinstance(e, TrialFailed)]
    assert sorted(e.device_id for e in failed) == ["mute-a", "mute-b"]
    assert all(e.reason == "timeout" for e in failed)
    paused = [e for e in events if isinstance(e, CampaignPaused)]
    assert len(paused) == 1 and paused[0].reason == "failure_rate" and "1 of 1 trials failed" in paused[0].detail
