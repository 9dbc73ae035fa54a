"""A timeout's cause is in the log: a device's status appearing, going offline and coming back
are events (``DeviceOnline`` / ``DeviceOffline``), on a real Mosquitto; a flapping device
cannot grow the log without limit."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from campaigns import fold
from devices import MqttSettings
from storage import MongoEventStore
from tests.conftest_brokers import Mosquitto
from tests.integration.loop_harness import (
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
    with MongoEventStore(mongo_uri, database=f"cl_presence_{uuid.uuid4().hex[:8]}") as s:
        yield s


@pytest.fixture
def mqtt(tmp_path: Path) -> Iterator[MqttSettings]:
    broker: Mosquitto = private_mosquitto(tmp_path / "mosquitto")
    try:
        yield MqttSettings(url=broker.url, prefix=f"p-{uuid.uuid4().hex[:8]}")
    finally:
        broker.stop()


@pytest.fixture
def device(mqtt: MqttSettings) -> Iterator[Device]:
    d = Device(mqtt)
    try:
        yield d
    finally:
        d.close()


ONE = [{"id": "dev-d", "measures": ["branin"]}]


def test_a_device_going_offline_is_logged_before_its_trial_times_out(store: MongoEventStore, mqtt: MqttSettings,
                                                                    device: Device) -> None:
    seed(store, spec(ONE, trial_timeout_s=30), {"0": "dev-d"})
    clock = ManualClock()
    device.status("dev-d", "busy", ["branin"])
    with running_loop(store, mqtt, clock=clock):
        events = wait_log(store, lambda ev: bool(kinds(ev, "DeviceOnline")))
        [online] = kinds(events, "DeviceOnline")
        assert (online.device_id, online.state, online.measures) == ("dev-d", "busy", ["branin"])
        device.status("dev-d", "offline", ["branin"])
        events = wait_log(store, lambda ev: bool(kinds(ev, "DeviceOffline")))
        [offline] = kinds(events, "DeviceOffline")
        assert offline.device_id == "dev-d" and not kinds(events, "TrialFailed")
        clock.advance(31)
        events = wait_log(store, lambda ev: bool(kinds(ev, "TrialFailed")))
        [failed] = kinds(events, "TrialFailed")
        assert failed.reason == "timeout" and failed.seq > offline.seq  # the cause, then the effect
        assert fold(events).devices == {"dev-d": "offline"}
        # A device that flaps is logged a bounded number of times per run, never once per message.
        for i in range(30):
            device.status("dev-d", "offline" if i % 2 else "busy", ["branin"])
        # Then a message the loop logs: once it is in the log, every status before it was read.
        device.result("dev-d", "r-unknown", "9", {"branin": 1.0})
        events = wait_log(store, lambda ev: bool(kinds(ev, "MessageRejected")))
        assert kinds(events, "MessageRejected")
    transitions = kinds(events, "DeviceOnline") + kinds(events, "DeviceOffline")
    assert len(transitions) == 10, [e.kind for e in transitions]
