"""Many campaigns on one broker and prefix: a hub told its campaign's devices gets nothing of others.

A hub subscribed to ``P/devices/+/...`` received, and rejected, every other campaign's results,
and its persistent session queued them all while it was away (days, for a suspended campaign).
Told its devices, it subscribes to theirs only; a session left with the wildcards by an earlier
version drops them. On Mosquitto (MQTT 3.1.1 and 5) and the embedded amqtt broker.
"""

from __future__ import annotations

import pytest

from campaigns.errors import DeviceMessageError
from devices import (
    ConnectionRestored,
    MqttConnection,
    MqttDeviceHub,
    MqttSettings,
    ResultReceived,
    TrialResult,
    connect,
    encode,
)
from tests.conftest_brokers import Mosquitto, unique, wait_for

SESSION_BROKERS = [("mosquitto", 4), ("mosquitto", 5), ("amqtt", 4)]
OURS = ["dev-a", "dev-b"]
THEIRS = "dev-c"  # another campaign's device on the same prefix


@pytest.fixture(params=SESSION_BROKERS, ids=[f"{b}-v{p}" for b, p in SESSION_BROKERS])
def settings(request: pytest.FixtureRequest) -> MqttSettings:
    """Each broker and protocol that keeps sessions, under a fresh prefix."""
    broker, protocol = request.param
    url = request.getfixturevalue("mosquitto_url" if broker == "mosquitto" else "embedded_broker_url")
    return MqttSettings(url=url, prefix=unique("topics"), protocol=protocol, connect_timeout_s=5)


def result(request_id: str) -> bytes:
    return encode(TrialResult(request_id=request_id, trial_id=f"t-{request_id}", status="completed",
                              measurements={"y": 1.0}))


def publish(settings: MqttSettings, *messages: tuple[str, str]) -> None:
    """Publish ``(device_id, request_id)`` results in this order, from one device connection."""
    device: MqttConnection = connect(settings, client_id=unique("dev"))
    try:
        topics = MqttDeviceHub(settings, client_id="unused").topics
        for device_id, request_id in messages:
            device.publish(topics.results(device_id), result(request_id))
    finally:
        device.close()


def results_until(hub: MqttDeviceHub, request_id: str) -> list[tuple[str, str]]:
    """``(device_id, request_id)`` of every result up to and including ``request_id``'s, each acked.

    A broker forwards one publisher's messages to a subscriber in the order they were published,
    so a message published before the marker, if it comes at all, comes before it. Each is acked
    as it comes (amqtt sends the next queued message only after the previous one's PUBACK).
    """
    got: list[tuple[str, str]] = []
    while not got or got[-1][1] != request_id:
        event = wait_for(hub, lambda e: isinstance(e, ResultReceived))
        assert isinstance(event, ResultReceived)
        hub.ack(event)
        got.append((event.device_id, event.result.request_id))
    return got


def test_a_hub_told_its_devices_receives_theirs_and_nothing_of_another_device(settings: MqttSettings) -> None:
    hub = MqttDeviceHub(settings, client_id=unique("hub"))
    hub.start(OURS)
    try:
        publish(settings, (THEIRS, "c-1"), ("dev-b", "b-1"), (THEIRS, "c-2"), ("dev-a", "a-1"))
        assert results_until(hub, "a-1") == [("dev-b", "b-1"), ("dev-a", "a-1")]
    finally:
        hub.stop(end_session=True)


def test_while_the_hub_is_away_only_its_devices_results_are_queued(settings: MqttSettings) -> None:
    client_id = unique("hub")
    away = MqttDeviceHub(settings, client_id=client_id)
    away.start(OURS)
    away.stop()  # keeps the session: a stopped or suspended campaign
    publish(settings, (THEIRS, "c-1"), ("dev-a", "a-1"), (THEIRS, "c-2"), ("dev-b", "b-1"))
    back = MqttDeviceHub(settings, client_id=client_id)
    back.start(OURS)
    try:
        assert results_until(back, "b-1") == [("dev-a", "a-1"), ("dev-b", "b-1")]
    finally:
        back.stop(end_session=True)


def test_a_session_left_with_the_wildcards_stops_collecting_another_devices_results(
        settings: MqttSettings) -> None:
    """A campaign that ran under the old version: its session holds ``P/devices/+/...``."""
    client_id = unique("hub")
    old = MqttDeviceHub(settings, client_id=client_id)
    old.start()  # every device, as every hub did before
    old.stop()
    publish(settings, (THEIRS, "c-old"), ("dev-a", "a-1"))
    upgraded = MqttDeviceHub(settings, client_id=client_id)
    upgraded.start(OURS)
    # Queued under the wildcard before the upgrade: delivered once (the loop rejects it).
    assert results_until(upgraded, "a-1") == [(THEIRS, "c-old"), ("dev-a", "a-1")]
    upgraded.stop()  # its clean disconnect comes after the broker has handled the UNSUBSCRIBE
    publish(settings, (THEIRS, "c-new"), ("dev-b", "b-1"))
    again = MqttDeviceHub(settings, client_id=client_id)
    again.start(OURS)
    try:
        assert results_until(again, "b-1") == [("dev-b", "b-1")]
    finally:
        again.stop(end_session=True)


def test_after_the_broker_lost_the_session_the_reconnect_subscribes_to_the_devices_again(
        restartable_mosquitto: Mosquitto) -> None:
    settings = MqttSettings(url=restartable_mosquitto.url, prefix=unique("topics"), connect_timeout_s=5)
    client_id = unique("hub")
    hub = MqttDeviceHub(settings, client_id=client_id)
    hub.start(OURS)
    try:
        restartable_mosquitto.stop()
        (restartable_mosquitto.directory / "mosquitto.db").unlink()  # sessions and subscriptions gone
        restartable_mosquitto.start()
        restored = wait_for(hub, lambda e: isinstance(e, ConnectionRestored), timeout_s=60)
        assert isinstance(restored, ConnectionRestored) and not restored.session_present
    finally:
        hub.stop()  # after the broker has handled the reconnect's SUBSCRIBEs
    # Queued in the session the reconnect made, by the subscriptions it made.
    publish(settings, (THEIRS, "c-1"), ("dev-a", "a-1"))
    back = MqttDeviceHub(settings, client_id=client_id)
    back.start(OURS)
    try:
        assert results_until(back, "a-1") == [("dev-a", "a-1")]
    finally:
        back.stop(end_session=True)


@pytest.mark.parametrize("device_id", ["+", "#", "a/b", "dev-+", ""])
def test_a_device_id_cannot_widen_the_subscriptions(mosquitto_url: str, device_id: str) -> None:
    hub = MqttDeviceHub(MqttSettings(url=mosquitto_url, prefix=unique("topics")), client_id=unique("hub"))
    with pytest.raises(DeviceMessageError, match="invalid device id"):
        hub.start(["dev-a", device_id])
    assert not hub.connected
