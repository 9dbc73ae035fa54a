"""The device-hub contract: what the loop relies on of a hub, on every backend.

``MqttDeviceHub`` over Mosquitto and over the embedded broker (amqtt), with devices that are plain
MQTT clients, and the engine's ``MemoryDeviceHub`` with hand-driven devices: statuses, a request
reaching its device with its request id, the result coming back with it, acknowledgement, an
unacknowledged result delivered again after the hub restarts, garbage rejected with a reason, and
a result on another device's topic reported as that device's (the loop decides it is not theirs).
The hubs serve two devices, as a campaign's hub serves its spec's (a device outside the list:
test_hub_topics.py).
"""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from devices import (
    DeviceStatus,
    HubEvent,
    MessageRejected,
    MqttConnection,
    MqttDeviceHub,
    MqttSettings,
    ResultReceived,
    RunTrial,
    StatusChanged,
    connect,
    encode,
    parse_request,
)
from flows.engine.memory import ManualClock
from flows.engine.memory_hub import MemoryDeviceHub
from flows.engine.ports import DeviceHub
from tests.conftest_brokers import unique, wait_for

Hub = MqttDeviceHub | MemoryDeviceHub
DEVICES = ["d1", "d2"]  # the campaign's devices: an MQTT hub subscribes to theirs only, as a campaign's does


@dataclass
class Side:
    """A backend under test: its hub, and the devices' side of the wire."""

    hub: Hub
    backend: str
    settings: MqttSettings | None = None
    client_id: str = ""
    device_conn: MqttConnection | None = None
    received: queue.SimpleQueue[tuple[str, RunTrial]] = field(default_factory=queue.SimpleQueue)
    retained: list[str] = field(default_factory=list)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        if isinstance(self.hub, MemoryDeviceHub):
            self.hub.publish(topic, payload)
            return
        assert self.device_conn is not None
        self.device_conn.publish(topic, payload, retain=retain)
        if retain:
            self.retained.append(topic)

    def status(self, device_id: str, state: str, measures: list[str]) -> None:
        status = DeviceStatus(state=state, device_id=device_id, measures=measures)  # type: ignore[arg-type]
        self.publish(self.hub.topics.status(device_id), encode(status), retain=True)

    def result(self, device_id: str, request_id: str, trial_id: str, measurements: dict[str, Any]) -> None:
        body = {"kind": "trial_result", "request_id": request_id, "trial_id": trial_id, "status": "completed",
                "measurements": measurements}
        self.publish(self.hub.topics.results(device_id), json.dumps(body).encode())

    def next_request(self, device_id: str) -> RunTrial:
        if isinstance(self.hub, MemoryDeviceHub):
            return self.hub.requests[-1][1]
        got_device, request = self.received.get(timeout=30)
        assert got_device == device_id
        return request

    def restart_hub(self) -> Hub:
        """The orchestrator's hub goes away and comes back under the same session."""
        if isinstance(self.hub, MemoryDeviceHub):
            self.hub.restart()
            return self.hub
        assert self.settings is not None
        self.hub.stop()
        self.hub = MqttDeviceHub(self.settings, client_id=self.client_id)
        self.hub.start(DEVICES)
        return self.hub


@pytest.fixture(params=["mosquitto", "amqtt", "memory"])
def side(request: pytest.FixtureRequest) -> Iterator[Side]:
    yield from _side(request)


@pytest.fixture(params=["mosquitto", "memory"])
def durable_side(request: pytest.FixtureRequest) -> Iterator[Side]:
    """The backends that keep an unacknowledged QoS 1 message across a reconnect. amqtt 0.12.1
    drops it (test_devices_sessions.py): durability is the production broker's, proved on Mosquitto."""
    yield from _side(request)


def _side(request: pytest.FixtureRequest) -> Iterator[Side]:
    if request.param == "memory":
        hub = MemoryDeviceHub(ManualClock(), prefix=unique("test"))
        for device_id in DEVICES:
            hub.device(device_id)
        yield Side(hub, "memory")
        return
    url = str(request.getfixturevalue("mosquitto_url" if request.param == "mosquitto" else "embedded_broker_url"))
    settings = MqttSettings(url=url, prefix=unique("test"), connect_timeout_s=5)
    client_id = unique("hub")
    mqtt_hub = MqttDeviceHub(settings, client_id=client_id)
    mqtt_hub.start(DEVICES)
    s = Side(mqtt_hub, request.param, settings, client_id)
    topics = mqtt_hub.topics

    def on_request(topic: str, payload: bytes, delivery: object) -> bool:
        s.received.put((topics.parse(topic)[0], parse_request(payload)))
        return False

    s.device_conn = connect(settings, client_id=unique("dev"), subscriptions=[topics.all_devices("requests")],
                            on_message=on_request)
    try:
        yield s
    finally:
        for topic in s.retained:
            s.device_conn.publish(topic, b"", retain=True)
        s.device_conn.close()
        s.hub.stop(end_session=True)  # type: ignore[union-attr]


def _wait(hub: Hub, predicate: Any) -> HubEvent:
    return wait_for(hub, predicate)  # type: ignore[arg-type]


def test_a_hub_is_a_device_hub(side: Side) -> None:
    hub: DeviceHub = side.hub  # what the engine is typed against
    assert hub.connected and hub.topics.prefix


def test_statuses_become_events_and_the_latest_is_kept(side: Side) -> None:
    side.status("d1", "idle", ["y"])
    first = _wait(side.hub, lambda e: isinstance(e, StatusChanged) and e.device_id == "d1")
    assert isinstance(first, StatusChanged) and first.status.state == "idle" and first.status.measures == ["y"]
    side.status("d1", "busy", ["y"])
    _wait(side.hub, lambda e: isinstance(e, StatusChanged) and e.device_id == "d1" and e.status.state == "busy")
    assert side.hub.devices()["d1"].state == "busy"
    side.publish(side.hub.topics.status("d1"), b"", retain=True)  # an operator removes the device
    side.status("d2", "idle", ["y"])  # comes after the removal on the same connection
    _wait(side.hub, lambda e: isinstance(e, StatusChanged) and e.device_id == "d2")
    assert set(side.hub.devices()) == {"d2"}


def test_a_status_naming_another_device_is_rejected(side: Side) -> None:
    payload = encode(DeviceStatus(state="idle", device_id="d2", measures=["y"]))
    side.publish(side.hub.topics.status("d1"), payload)
    event = _wait(side.hub, lambda e: isinstance(e, MessageRejected))
    assert isinstance(event, MessageRejected) and event.device_id == "d1" and "does not match the topic" in event.reason
    assert "d1" not in side.hub.devices()


def test_a_dispatched_request_reaches_its_device_and_the_result_comes_back_with_its_request_id(side: Side) -> None:
    sent = RunTrial(request_id="req-1", campaign_id="c", trial_id="0", parameters={"x1": 1.5, "kind": "a"})
    side.hub.dispatch("d1", sent, timeout_s=10)
    got = side.next_request("d1")
    assert got == sent
    side.result("d1", got.request_id, got.trial_id, {"y": {"mean": 2.5, "sem": 0.1}, "z": None})
    event = _wait(side.hub, lambda e: isinstance(e, ResultReceived))
    assert isinstance(event, ResultReceived) and event.device_id == "d1"
    assert event.result.request_id == "req-1" and event.result.trial_id == "0"
    assert event.result.measured["y"].mean == 2.5 and event.result.not_measured == ["z"]
    assert event.delivery is not None  # held until the loop has logged it
    side.hub.ack(event)


def test_an_unacknowledged_result_comes_again_after_a_restart_and_an_acknowledged_one_does_not(
        durable_side: Side) -> None:
    side = durable_side
    side.result("d1", "r-acked", "0", {"y": 1.0})
    acked = _wait(side.hub, lambda e: isinstance(e, ResultReceived) and e.result.request_id == "r-acked")
    side.hub.ack(acked)
    side.result("d1", "r-held", "1", {"y": 2.0})
    _wait(side.hub, lambda e: isinstance(e, ResultReceived) and e.result.request_id == "r-held")  # not acknowledged
    hub = side.restart_hub()
    seen: list[HubEvent] = []
    again = wait_for(hub, lambda e: isinstance(e, ResultReceived) and e.result.request_id == "r-held", seen=seen)  # type: ignore[arg-type]
    assert isinstance(again, ResultReceived) and again.delivery is not None
    hub.ack(again)
    side.result("d1", "r-after", "2", {"y": 3.0})  # a marker: whatever was to come again came before it
    wait_for(hub, lambda e: isinstance(e, ResultReceived) and e.result.request_id == "r-after", seen=seen)  # type: ignore[arg-type]
    ids = [e.result.request_id for e in seen if isinstance(e, ResultReceived)]
    assert "r-acked" not in ids and ids.count("r-held") == 1


def test_garbage_on_a_results_topic_is_rejected_with_a_reason_and_an_excerpt(side: Side) -> None:
    side.publish(side.hub.topics.results("d1"), b'{"kind": "trial_result", "request_id": ')
    event = _wait(side.hub, lambda e: isinstance(e, MessageRejected))
    assert isinstance(event, MessageRejected)
    assert event.device_id == "d1" and event.topic == side.hub.topics.results("d1")
    assert event.reason and "\n" not in event.reason and event.excerpt.startswith('{"kind": "trial_result"')
    assert event.delivery is not None  # acknowledged once the rejection is logged
    side.hub.ack(event)


def test_a_result_on_another_devices_topic_is_reported_as_that_devices(side: Side) -> None:
    side.hub.dispatch("d1", RunTrial(request_id="req-x", campaign_id="c", trial_id="0", parameters={"x1": 1.0}))
    side.next_request("d1")
    side.result("d2", "req-x", "0", {"y": 1.0})
    event = _wait(side.hub, lambda e: isinstance(e, ResultReceived))
    assert isinstance(event, ResultReceived) and event.device_id == "d2" and event.result.request_id == "req-x"
    side.hub.ack(event)
