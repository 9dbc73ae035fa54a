"""Persistent sessions and manual acks: nothing a device sends is lost while the hub is away.

Mosquitto (MQTT 3.1.1 and 5) and the embedded amqtt broker (3.1.1 only, authenticated).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devices import (
    HubEvent,
    MqttConnection,
    MqttDeviceHub,
    MqttSettings,
    ResultReceived,
    TrialResult,
    connect,
    encode,
)
from tests.conftest_brokers import unique, wait_for

ROOT = Path(__file__).resolve().parents[2]

SESSION_BROKERS = [("mosquitto", 4), ("mosquitto", 5), ("amqtt", 4)]


@pytest.fixture(params=SESSION_BROKERS, ids=[f"{b}-v{p}" for b, p in SESSION_BROKERS])
def session_settings(request: pytest.FixtureRequest) -> MqttSettings:
    """Settings for each broker and protocol that keeps sessions, under a fresh prefix."""
    broker, protocol = request.param
    name = "mosquitto_url" if broker == "mosquitto" else "embedded_broker_url"
    url = request.getfixturevalue(name)
    return MqttSettings(url=url, prefix=unique("sess"), protocol=protocol, connect_timeout_s=5)


def result(request_id: str) -> bytes:
    return encode(TrialResult(request_id=request_id, trial_id=f"t-{request_id}",
                              status="completed", measurements={"y": 1.0}))


def results_of(hub: MqttDeviceHub, count: int, timeout_s: float = 60) -> list[ResultReceived]:
    """Take the next ``count`` results from the hub, acknowledging each one."""
    got: list[ResultReceived] = []
    for _ in range(count):
        event = wait_for(hub, lambda e: isinstance(e, ResultReceived), timeout_s=timeout_s)
        assert isinstance(event, ResultReceived)
        hub.ack(event)
        got.append(event)
    return got


def no_results(hub: MqttDeviceHub, wait_s: float = 0.5) -> list[HubEvent]:
    """Events of ``wait_s`` seconds that are results (expected: none)."""
    deadline = time.monotonic() + wait_s
    found: list[HubEvent] = []
    while (left := deadline - time.monotonic()) > 0:
        found += [e for e in hub.next_events(left) if isinstance(e, ResultReceived)]
    return found


def publisher(settings: MqttSettings) -> MqttConnection:
    return connect(settings, client_id=unique("dev"))


def test_results_sent_while_the_hub_is_away_are_delivered_on_its_return(
    session_settings: MqttSettings,
) -> None:
    client_id = unique("hub")
    first = MqttDeviceHub(session_settings, client_id=client_id)
    first.start()  # creates the session and its subscriptions ...
    first.stop()  # ... and leaves without unsubscribing
    device = publisher(session_settings)
    try:
        for n in range(5):
            device.publish(first.topics.results("d1"), result(f"r{n}"))
    finally:
        device.close()
    with MqttDeviceHub(session_settings, client_id=client_id) as back:
        got = results_of(back, 5)
    assert [e.result.request_id for e in got] == [f"r{n}" for n in range(5)]
    assert all(e.device_id == "d1" and e.delivery is not None for e in got)
    # All five were acknowledged: a third hub under the same id gets none of them again.
    with MqttDeviceHub(session_settings, client_id=client_id) as again:
        assert no_results(again) == []


def test_mqtt5_session_expiry_zero_keeps_nothing(mosquitto_url: str) -> None:
    settings = MqttSettings(url=mosquitto_url, prefix=unique("sess"), protocol=5,
                            session_expiry_s=0)
    client_id = unique("hub")
    with MqttDeviceHub(settings, client_id=client_id) as hub:
        topic = hub.topics.results("d1")
    device = publisher(settings)
    try:
        device.publish(topic, result("lost"))
    finally:
        device.close()
    with MqttDeviceHub(settings, client_id=client_id) as back:
        assert no_results(back) == []


HUB_SCRIPT = """
import json, sys
from devices import MqttDeviceHub, MqttSettings, ResultReceived
settings = MqttSettings.model_validate(json.loads(sys.stdin.readline()))
hub = MqttDeviceHub(settings, client_id=sys.argv[1])
hub.start()
print("ready", flush=True)
while True:
    for event in hub.next_events(1.0):
        if isinstance(event, ResultReceived):  # received, never acknowledged
            print(event.result.request_id, flush=True)
"""


def test_a_result_never_acknowledged_comes_again_after_a_crash(
    session_settings: MqttSettings,
) -> None:
    """Mosquitto delivers it again; amqtt 0.12.1 drops a message whose PUBACK does not come
    (on disconnect, or after 5 s), so there the loop's re-send by request id is the cure."""
    redelivered = session_settings.address.username is None  # Mosquitto: anonymous
    client_id = unique("hub")
    topic = MqttDeviceHub(session_settings, client_id=client_id).topics.results("d1")
    with subprocess.Popen(
        [sys.executable, "-c", HUB_SCRIPT, client_id], cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    ) as child:
        try:
            assert child.stdin is not None and child.stdout is not None
            # Credentials go through a pipe, not argv, where `ps` would show them.
            child.stdin.write(json.dumps(session_settings.model_dump(mode="json")).encode() + b"\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == b"ready"
            device = publisher(session_settings)
            try:
                device.publish(topic, result("r1"))
            finally:
                device.close()
            assert child.stdout.readline().strip() == b"r1"
            os.kill(child.pid, signal.SIGKILL)  # no DISCONNECT, no PUBACK
            child.wait(5)
        finally:
            child.kill()
    with MqttDeviceHub(session_settings, client_id=client_id) as back:
        if not redelivered:
            assert no_results(back, 1.0) == []
            return
        [again] = results_of(back, 1)
        assert again.result.request_id == "r1"
    with MqttDeviceHub(session_settings, client_id=client_id) as after_ack:
        assert no_results(after_ack) == []


def test_an_ack_from_an_earlier_connection_is_dropped(mosquitto_url: str) -> None:
    settings = MqttSettings(url=mosquitto_url, prefix=unique("sess"))
    client_id = unique("hub")
    hub = MqttDeviceHub(settings, client_id=client_id)
    hub.start()
    device = publisher(settings)
    try:
        device.publish(hub.topics.results("d1"), result("r1"))
        event = wait_for(hub, lambda e: isinstance(e, ResultReceived))
        hub.stop()
        hub.start()  # the broker delivers r1 again, under a packet id of the new connection
        again = wait_for(hub, lambda e: isinstance(e, ResultReceived))
        assert isinstance(event, ResultReceived) and isinstance(again, ResultReceived)
        assert again.result == event.result
        assert event.delivery is not None and again.delivery is not None
        assert event.delivery.connection != again.delivery.connection
        hub.ack(event)  # stale: dropped, r1 stays unacknowledged
        hub.stop()
        hub.start()
        third = wait_for(hub, lambda e: isinstance(e, ResultReceived))
        assert isinstance(third, ResultReceived) and third.result.request_id == "r1"
        hub.ack(third)
        hub.ack(third)  # twice is harmless
    finally:
        device.close()
        hub.stop()
    with MqttDeviceHub(settings, client_id=client_id) as after:
        assert no_results(after) == []
