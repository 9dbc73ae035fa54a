"""One full loop on real parts: the Prefect campaign flow in-process, simulated instruments on a
real Mosquitto, the log on a MongoDB-wire server through pymongo: results land, garbage is
rejected. The loop's logic (silence, timeouts, failure policy, trust) is tested on the engine's
in-memory backends (tests/unit/test_engine_*.py); the backends' contracts in
test_storage_contract.py and test_hub_contract.py (Mosquitto, amqtt, nx-27017)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from campaigns import CampaignCreated, MessageRejected, TrialCompleted, fold, parse_spec
from devices import MqttSettings, Topics, connect
from flows.prefect.flow import campaign
from simulators import SimInstrument
from storage import MongoEventStore
from tests.conftest import closedloop_env
from tests.e2e.cli import branin


@pytest.fixture
def env(mosquitto_url: str, mongo_uri: str, prefect_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> dict[str, str]:
    return closedloop_env(monkeypatch, tmp_path, mosquitto_url, mongo_uri)


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
