"""Devices: MQTT protocol v1 between the orchestrator and lab instruments.

The only package that imports paho. Public names:

- messages: :class:`DeviceStatus`, :class:`RunTrial`, :class:`TrialResult`,
  :class:`Measurement`, :func:`parse_result`, :func:`parse_status`, :func:`parse_request`,
  :func:`encode`
- topics: :class:`Topics`, :func:`validate_device_id`
- settings: :class:`MqttSettings`, :class:`BrokerAddress`, :func:`parse_broker_url`,
  :func:`redact_url`
- connection: :func:`connect`, :class:`MqttConnection`, :class:`Delivery`,
  :data:`MessageHandler`
- orchestrator side: :class:`MqttDeviceHub` and its events (:data:`HubEvent`)
  :class:`ResultReceived`, :class:`StatusChanged`, :class:`MessageRejected`,
  :class:`ConnectionLost`, :class:`ConnectionRestored`
- embedded default broker: :class:`EmbeddedBroker`

Every name is imported on first use, from the module that holds it: the names that need paho
or amqtt (the connection, the hub, the embedded broker) load no MQTT client for code that never
talks MQTT (the engine's in-memory hub), and the settings check of every CLI command
(``parse_broker_url``, ``Topics``) loads neither the messages nor the events.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and readers see; at run time, __getattr__ below
    from .broker import EmbeddedBroker
    from .events import (
        ConnectionLost,
        ConnectionRestored,
        Delivery,
        HubEvent,
        MessageRejected,
        ResultReceived,
        StatusChanged,
    )
    from .hub import MqttDeviceHub
    from .messages import (
        MAX_PAYLOAD_BYTES,
        PROTOCOL_VERSION,
        DeviceStatus,
        Measurement,
        RunTrial,
        TrialResult,
        encode,
        parse_request,
        parse_result,
        parse_status,
    )
    from .mqtt import MessageHandler, MqttConnection, connect
    from .settings import BrokerAddress, MqttSettings, parse_broker_url, redact_url
    from .topics import Channel, Topics, validate_device_id

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "PROTOCOL_VERSION",
    "BrokerAddress",
    "Channel",
    "ConnectionLost",
    "ConnectionRestored",
    "Delivery",
    "DeviceStatus",
    "EmbeddedBroker",
    "HubEvent",
    "Measurement",
    "MessageHandler",
    "MessageRejected",
    "MqttConnection",
    "MqttDeviceHub",
    "MqttSettings",
    "ResultReceived",
    "RunTrial",
    "StatusChanged",
    "Topics",
    "TrialResult",
    "connect",
    "encode",
    "parse_broker_url",
    "parse_request",
    "parse_result",
    "parse_status",
    "redact_url",
    "validate_device_id",
]

_MODULES = {
    **dict.fromkeys(["ConnectionLost", "ConnectionRestored", "Delivery", "HubEvent", "MessageRejected",
                     "ResultReceived", "StatusChanged"], ".events"),
    **dict.fromkeys(["MAX_PAYLOAD_BYTES", "PROTOCOL_VERSION", "DeviceStatus", "Measurement", "RunTrial",
                     "TrialResult", "encode", "parse_request", "parse_result", "parse_status"], ".messages"),
    **dict.fromkeys(["BrokerAddress", "MqttSettings", "parse_broker_url", "redact_url"], ".settings"),
    **dict.fromkeys(["Channel", "Topics", "validate_device_id"], ".topics"),
    # these need paho or amqtt
    "EmbeddedBroker": ".broker", "MqttDeviceHub": ".hub", "MessageHandler": ".mqtt", "MqttConnection": ".mqtt",
    "connect": ".mqtt",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
