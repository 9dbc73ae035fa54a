"""What the device hub reports: results, statuses, rejected messages, and its connection.

Every event is a frozen model with a ``kind`` literal. :class:`ResultReceived` and
:class:`MessageRejected` for a ``results`` topic carry the :class:`~devices.mqtt.Delivery`
that acknowledges them: the orchestrator passes the event to
:meth:`~devices.hub.MqttDeviceHub.ack` once it has logged it durably.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from .messages import DeviceStatus, TrialResult

__all__ = [
    "ConnectionLost",
    "ConnectionRestored",
    "HubEvent",
    "MessageRejected",
    "ResultReceived",
    "StatusChanged",
]

_EVENT = ConfigDict(extra="forbid", frozen=True)



class Delivery(BaseModel):
    """What acknowledges one received QoS 1 message: its packet id on one connection.

    Attributes:
        message_id: The MQTT packet id the broker gave the message.
        qos: The QoS it was delivered at (1).
        connection: Which network connection received it (a number unique in the process,
            new at every connect and disconnect); an ack for an older connection is dropped,
            since the broker delivers the message again on the new one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    message_id: int
    qos: int
    connection: int


class ResultReceived(BaseModel):
    """A well-formed result arrived from a device (possibly a duplicate: QoS 1).

    Attributes:
        device_id: The device named by the topic.
        result: The parsed result.
        received_at: When the hub received it (UTC).
        delivery: What :meth:`~devices.hub.MqttDeviceHub.ack` needs; ``None`` when the
            message came at QoS 0 or the hub acknowledges by itself.
    """

    model_config = _EVENT

    kind: Literal["result_received"] = "result_received"
    device_id: str
    result: TrialResult
    received_at: datetime
    delivery: Delivery | None = None


class StatusChanged(BaseModel):
    """A device's status differs from the last one the hub saw (or is the first).

    Statuses are acknowledged on receipt: the retained status is the truth, not the log.
    """

    model_config = _EVENT

    kind: Literal["status_changed"] = "status_changed"
    device_id: str
    status: DeviceStatus
    received_at: datetime


class MessageRejected(BaseModel):
    """A message broke protocol v1 and was dropped.

    Attributes:
        device_id: The device named by the topic, when the topic could be parsed.
        topic: The topic it came on.
        reason: One line saying what is wrong.
        excerpt: At most 200 characters of the payload, decoded with replacement.
        received_at: When the hub received it (UTC).
        delivery: Set for a ``results`` topic (acknowledge after logging the rejection);
            ``None`` for a status, which is acknowledged on receipt.
    """

    model_config = _EVENT

    kind: Literal["message_rejected"] = "message_rejected"
    device_id: str | None
    topic: str
    reason: str
    excerpt: str
    received_at: datetime
    delivery: Delivery | None = None


class ConnectionLost(BaseModel):
    """The hub lost the broker; paho reconnects by itself with back-off (1 s up to 30 s).

    Attributes:
        detail: One line saying why (no credentials).
        at: When the loss was noticed (UTC).
    """

    model_config = _EVENT

    kind: Literal["connection_lost"] = "connection_lost"
    detail: str
    at: datetime


class ConnectionRestored(BaseModel):
    """The hub is connected again after a :class:`ConnectionLost`.

    Attributes:
        down_s: Seconds between the loss and the new CONNACK.
        at: When the connection came back (UTC).
        session_present: Whether the broker still had the hub's session. ``False`` means
            messages sent meanwhile may be gone (e.g. a broker without persistence was
            restarted): re-send the requests still in flight (same ``request_id``s).
    """

    model_config = _EVENT

    kind: Literal["connection_restored"] = "connection_restored"
    down_s: float
    at: datetime
    session_present: bool


HubEvent = ResultReceived | StatusChanged | MessageRejected | ConnectionLost | ConnectionRestored
"""Everything :meth:`~devices.hub.MqttDeviceHub.next_events` returns."""


_EXCERPT_CHARS = 200


def rejection(device_id: str | None, topic: str, payload: bytes, reason: str, received_at: datetime,
              delivery: Delivery | None = None) -> MessageRejected:
    """The ``MessageRejected`` every hub reports for a message that broke the protocol, with a
    bounded, printable excerpt of its payload."""
    excerpt = payload[: _EXCERPT_CHARS * 4].decode("utf-8", errors="replace")[:_EXCERPT_CHARS]
    return MessageRejected(device_id=device_id, topic=topic, reason=reason, excerpt=excerpt,
                           received_at=received_at, delivery=delivery)
