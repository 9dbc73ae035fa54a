"""A hub that ends its session leaves nothing on the broker; the client ids closedloop derives
are accepted as they are by every broker of the tests.

Mosquitto (MQTT 3.1.1 and 5) and the embedded amqtt broker (3.1.1 only, authenticated).
"""

from __future__ import annotations

import pytest

from campaigns.identity import client_id, new_instance
from devices import MqttDeviceHub, MqttSettings, ResultReceived, TrialResult, connect, encode
from tests.conftest_brokers import unique, wait_for

SESSION_BROKERS = [("mosquitto", 4), ("mosquitto", 5), ("amqtt", 4)]


@pytest.fixture(params=SESSION_BROKERS, ids=[f"{b}-v{p}" for b, p in SESSION_BROKERS])
def session_settings(request: pytest.FixtureRequest) -> MqttSettings:
    broker, protocol = request.param
    url = request.getfixturevalue("mosquitto_url" if broker == "mosquitto" else "embedded_broker_url")
    return MqttSettings(url=url, prefix=unique("end"), protocol=protocol, connect_timeout_s=5)


def _publish_result(settings: MqttSettings, topic: str) -> None:
    device = connect(settings, client_id=unique("dev"))
    try:
        device.publish(topic, encode(TrialResult(request_id="r", trial_id="t", status="completed",
                                                 measurements={"y": 1.0})))
    finally:
        device.close()


def test_ended_session_is_gone_and_a_kept_one_stays(session_settings: MqttSettings) -> None:
    """Issue 14 item 22: a finished campaign's hub ends its session (the broker drops its
    subscriptions and queues nothing more for it); one that only stops keeps it. Both ids are
    what closedloop derives for 200-character names (68 characters): every broker takes them."""
    kept, ended = client_id("x" * 200, new_instance()), client_id("x" * 200, new_instance())
    for cid in (kept, ended):
        hub = MqttDeviceHub(session_settings, client_id=cid)
        hub.start()
        hub.stop(end_session=cid == ended)
        topic = hub.topics.results("d1")
    _publish_result(session_settings, topic)  # acknowledged: queued for every session subscribed
    with MqttDeviceHub(session_settings, client_id=kept) as back:
        back.ack(wait_for(back, lambda e: isinstance(e, ResultReceived)))
    # Back under the ended id, subscribing to nothing: a session still there would deliver what
    # it queued right after the CONNACK, before the PUBACK of anything published after it.
    queued: list[str] = []
    check = connect(session_settings, client_id=ended, manual_ack=True,
                    on_message=lambda topic, payload, delivery: bool(queued.append(topic)))
    try:
        check.publish(f"{session_settings.prefix}/barrier", b"{}", timeout_s=5)
        assert queued == []
        if "@" not in session_settings.url:  # Mosquitto (amqtt keeps an empty clean session a while)
            assert not check.session_present
    finally:
        check.close()
