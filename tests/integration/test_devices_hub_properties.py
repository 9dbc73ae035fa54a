"""Property: whatever arrives on a results or status topic, the hub turns it into exactly one
event (none for an unchanged or removed status) and never raises. Over the embedded broker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.errors import DeviceMessageError
from devices import (
    DeviceStatus,
    HubEvent,
    MessageRejected,
    MqttConnection,
    MqttDeviceHub,
    MqttSettings,
    ResultReceived,
    StatusChanged,
    TrialResult,
    connect,
    encode,
    parse_result,
    parse_status,
)
from tests.conftest_brokers import unique, wait_for

Rig = tuple[MqttDeviceHub, MqttConnection, list[int]]


@pytest.fixture(scope="module")
def rig(embedded_broker_url: str) -> Iterator[Rig]:
    """A hub, a raw publisher, and a counter for the marker statuses."""
    mqtt = MqttSettings(url=embedded_broker_url, prefix=unique("prop"), connect_timeout_s=5)
    with MqttDeviceHub(mqtt, client_id=unique("hub")) as hub:
        raw = connect(mqtt, client_id=unique("raw"))
        try:
            yield hub, raw, [0]
        finally:
            raw.close()


# One topic level: no '/', '+', '#', NUL; MQTT forbids surrogates and discourages controls.
device_ids = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/+#"),
    min_size=1, max_size=20,
)
results = st.builds(
    lambda rid, ok, y: TrialResult(request_id=rid, trial_id="t", status="completed",
                                   measurements={"y": y}) if ok else
    TrialResult(request_id=rid, trial_id="t", status="failed", error="e"),
    st.text(min_size=1, max_size=8), st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)
MARKER = f"marker-{uuid.uuid4().hex}"


def expected_kind(hub: MqttDeviceHub, device_id: str, channel: str, payload: bytes) -> str | None:
    """What the hub must report for this message, from the parsers alone."""
    try:
        if channel == "results":
            parse_result(payload)
            return "result_received"
        if not payload:
            return None  # an empty status removes the device
        status = parse_status(payload)
    except DeviceMessageError:
        return "message_rejected"
    if status.device_id != device_id:
        return "message_rejected"
    return None if hub.devices().get(device_id) == status else "status_changed"


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), device_id=device_ids, channel=st.sampled_from(["results", "status"]))
def test_every_message_becomes_exactly_one_event(
    rig: Rig, data: st.DataObject, device_id: str, channel: str
) -> None:
    hub, raw, counter = rig
    payload = data.draw(st.one_of(
        st.binary(max_size=300),
        results.map(encode),
        st.sampled_from(["idle", "busy", "offline"]).map(
            lambda state: encode(DeviceStatus(state=state, device_id=device_id, measures=["y"]))),
        st.just(encode(DeviceStatus(state="idle", device_id="someone-else", measures=[]))),
    ), label="payload")
    expected = expected_kind(hub, device_id, channel, payload)
    raw.publish(hub.topics.topic(device_id, channel), payload)
    # A marker status that always changes closes the window of this example's events.
    counter[0] += 1
    raw.publish(hub.topics.status(MARKER), encode(
        DeviceStatus(state="idle", device_id=MARKER, measures=[str(counter[0])])))
    seen: list[HubEvent] = []
    wait_for(hub, lambda e: isinstance(e, StatusChanged) and e.device_id == MARKER, seen=seen)
    ours = [e for e in seen if not (isinstance(e, StatusChanged) and e.device_id == MARKER)]
    for event in ours:
        hub.ack(event)
    assert [e.kind for e in ours] == ([] if expected is None else [expected])
    for event in ours:
        assert isinstance(event, ResultReceived | StatusChanged | MessageRejected)
        assert event.device_id == device_id
        if isinstance(event, ResultReceived | MessageRejected) and channel == "results":
            assert event.delivery is not None
        if isinstance(event, MessageRejected):
            assert event.reason and "\n" not in event.reason
            assert event.topic == hub.topics.topic(device_id, channel)
