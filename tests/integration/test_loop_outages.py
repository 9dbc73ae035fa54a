"""The loop rides out a real broker restart and a real database restart mid-campaign (the same
logic on the in-memory backends, and the failure policy, are in tests/unit/test_engine_loop.py)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from campaigns import (
    BrokerDisconnected,
    BrokerReconnected,
    CampaignCreated,
    ClosedLoopError,
    TrialCompleted,
    fold,
    parse_spec,
)
from devices import MqttSettings
from flows.prefect.flow import campaign
from simulators import SimInstrument
from storage import EmbeddedMongo, MongoEventStore
from tests.conftest_brokers import Mosquitto, free_port

SPEC = {
    "name": "outages", "seed": 8,
    "parameters": [{"name": "x1", "type": "float", "bounds": [-5, 10]},
                   {"name": "x2", "type": "float", "bounds": [0, 15]}],
    "objectives": [{"name": "branin", "minimize": True}],
    "budget": {"max_trials": 10}, "batch_size": 2, "trial_timeout_s": 30,
    "devices": [{"id": "sim-a", "measures": ["branin"]}, {"id": "sim-b", "measures": ["branin"]}],
    "optimizer": {"method": "sobol"},
}


@pytest.fixture
def setup(prefect_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict]:
    (tmp_path / "mosquitto").mkdir()
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    home = tmp_path / "db"
    mongo = EmbeddedMongo(home, port=free_port())
    uri = mongo.start()
    values = {"CLOSEDLOOP_HOME": str(tmp_path / "home"), "CLOSEDLOOP_MQTT_URL": broker.url,
              "CLOSEDLOOP_MQTT_PREFIX": f"t-{uuid.uuid4().hex[:8]}", "CLOSEDLOOP_MONGODB_URI": uri,
              "CLOSEDLOOP_MONGODB_DATABASE": "outages"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    try:
        yield {"broker": broker, "mongo": mongo, "home": home, "uri": uri, "env": values}
    finally:
        broker.stop()
        mongo.stop()


def kill_db(home: Path) -> None:
    os.kill(json.loads((home / "mongo.json").read_text())["pid"], signal.SIGKILL)


def completions(uri: str) -> int:
    try:
        with MongoEventStore(uri, database="outages", timeout_s=1) as store:
            return sum(isinstance(e, TrialCompleted) for e in store.read("outages"))
    except ClosedLoopError:
        return -1


def when(pred: Callable[[], bool], stop: threading.Event) -> bool:
    while not stop.is_set():
        if pred():
            return True
        stop.wait(0.2)
    return False


def test_broker_and_database_restarts_mid_campaign(setup: dict) -> None:
    spec = parse_spec(SPEC)
    with MongoEventStore(setup["uri"], database="outages") as store:
        store.append([CampaignCreated(campaign_id="outages", seq=1, actor="user:test", spec=spec)])
    mqtt = MqttSettings(url=setup["broker"].url, prefix=setup["env"]["CLOSEDLOOP_MQTT_PREFIX"])
    stop = threading.Event()
    restarted: list[str] = []
    second_mongo: list[EmbeddedMongo] = []

    def chaos() -> None:
        if when(lambda: completions(setup["uri"]) >= 2, stop):
            setup["broker"].stop()
            time.sleep(2.0)
            setup["broker"].start()
            restarted.append("broker")
        if when(lambda: completions(setup["uri"]) >= 5, stop):
            kill_db(setup["home"])
            time.sleep(3.0)  # trials finish meanwhile: their results wait, unacknowledged
            m = EmbeddedMongo(setup["home"], port=int(setup["uri"].rsplit(":", 1)[1].strip("/")))
            m.start()
            second_mongo.append(m)
            restarted.append("database")

    opts = {"duration_s": [0.3, 0.8]}
    with SimInstrument("sim-a", "branin", {**opts, "seed": 1}, mqtt), SimInstrument("sim-b", "branin", {**opts, "seed": 2}, mqtt):
        t = threading.Thread(target=chaos)
        t.start()
        try:
            summary = campaign("outages")
        finally:
            stop.set()
            t.join(30)
    try:
        assert restarted == ["broker", "database"]
        assert summary["status"] == "finished" and summary["completed"] == 10
        with MongoEventStore(setup["uri"], database="outages") as store:
            events = store.read("outages")
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert Counter(e.trial_id for e in events if isinstance(e, TrialCompleted)) == Counter(
            {str(i): 1 for i in range(10)})
        assert any(isinstance(e, BrokerDisconnected) for e in events)
        assert any(isinstance(e, BrokerReconnected) for e in events)
        assert fold(events).broker_down_since is None
    finally:
        for m in second_mongo:
            m.stop()
