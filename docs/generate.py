"""Write docs/asyncapi.yaml (protocol v1) and docs/events.schema.json from the pydantic models.

    python docs/generate.py           # (re)write both files
    python docs/generate.py --check   # exit 1, naming the stale files, if either differs

The models are the truth: the protocol's payloads (devices/messages.py), its topics
(devices/topics.py), the MQTT settings' defaults (devices/settings.py), the orchestrator's
client id (campaigns/identity.py) and the campaign events (campaigns/events.py). This script
only renders them, beside its outputs and outside the installed packages, so no runtime layer
imports it. tests/unit/test_published_docs.py fails when a checked-in file is stale.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# This tree's models, not whichever closedloop is installed.
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from pydantic import BaseModel, TypeAdapter  # noqa: E402

from campaigns.events import Event  # noqa: E402
from campaigns.identity import client_id  # noqa: E402
from devices.messages import MAX_PAYLOAD_BYTES, PROTOCOL_VERSION, DeviceStatus, RunTrial, TrialResult  # noqa: E402
from devices.mqtt import _BARRIER_TOPIC, RECONNECT_MAX_S, RECONNECT_MIN_S  # noqa: E402
from devices.settings import MqttSettings  # noqa: E402

__all__ = ["ASYNCAPI", "COMMAND", "EVENTS_SCHEMA", "asyncapi", "events_schema", "render"]

ASYNCAPI = ROOT / "docs" / "asyncapi.yaml"
EVENTS_SCHEMA = ROOT / "docs" / "events.schema.json"
COMMAND = "python docs/generate.py"

_REF = "#/components/schemas/{model}"
_ADDRESS = "{prefix}/devices/{device_id}/"
_DEFAULTS = MqttSettings.model_fields
_KEEPALIVE_S = _DEFAULTS["keepalive_s"].default
_SESSION_EXPIRY_S = _DEFAULTS["session_expiry_s"].default
_PREFIX = _DEFAULTS["prefix"].default
# What campaigns.identity.client_id produces (tests/unit/test_published_docs.py checks it).
CLIENT_ID_PATTERN = r"^closedloop-[A-Za-z0-9_.-]{1,40}-[0-9a-f]{16}$"


def _summary(model: type[BaseModel]) -> str:
    """A model's docstring without its Google-style ``Attributes:`` section (fields say it)."""
    doc = inspect.cleandoc(model.__doc__ or "").split("\nAttributes:")[0].strip()
    # Sphinx roles and literals as plain Markdown code.
    return re.sub(r":\w+:`~?([^`]+)`", r"`\1`", doc).replace("``", "`")


def _tidy(schema: Any) -> Any:
    """Drop pydantic's per-property titles ("Request Id"): the property names say it."""
    if isinstance(schema, dict):
        out = {k: _tidy(v) for k, v in schema.items()}
        for prop in out.get("properties", {}).values():
            prop.pop("title", None)
        return out
    if isinstance(schema, list):
        return [_tidy(v) for v in schema]
    return schema


def _wire_schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    """The payload schema of a protocol model, its sub-models moved to ``components``."""
    schema = model.model_json_schema(ref_template=_REF)
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = _tidy({**sub, "description": _summary(getattr(sys.modules[model.__module__], name))})
    schema["description"] = _summary(model)
    return _tidy(schema)


def _payloads() -> dict[str, dict[str, Any]]:
    """The three payload schemas plus their sub-schemas, as the parsers accept them.

    Where a parser accepts more or less than the model's own schema says, the wire rule is
    added here, each with the code it comes from (devices/messages.py).
    """
    schemas: dict[str, dict[str, Any]] = {}
    for model in (DeviceStatus, RunTrial, TrialResult):
        schemas[model.__name__] = _wire_schema(model, schemas)
    for name in ("RunTrial", "TrialResult"):
        # _parse() refuses a request or result without "kind", though the model defaults it.
        schemas[name]["required"] = ["kind", *schemas[name]["required"]]
    result = schemas["TrialResult"]
    # TrialResult._numbers_to_measurements: a bare number is the mean.
    result["properties"]["measurements"]["additionalProperties"] = {
        "anyOf": [{"type": "number"}, {"$ref": _REF.format(model="Measurement")}, {"type": "null"}],
    }
    # TrialResult._consistent.
    result["allOf"] = [
        {"if": {"properties": {"status": {"const": "completed"}}},
         "then": {"required": ["measurements"], "properties": {"measurements": {"minProperties": 1}}}},
        {"if": {"properties": {"status": {"const": "failed"}}},
         "then": {"required": ["error"], "properties": {"error": {"type": "string", "minLength": 1}}}},
    ]
    return schemas


def _example_status(state: str) -> dict[str, Any]:
    return DeviceStatus(state=state, device_id="hplc-1", measures=["yield_pct", "purity"]).model_dump(mode="json")  # type: ignore[arg-type]


_REQUEST = RunTrial(request_id="c1:3f9c2a7d41b08e65:3:1", campaign_id="c1", trial_id="3",
                    parameters={"x1": 2.5, "x2": 7.0, "solvent": "ethanol"})
_COMPLETED = {"kind": "trial_result", "request_id": _REQUEST.request_id, "trial_id": "3", "status": "completed",
              "measurements": {"yield_pct": 82.0, "purity": {"mean": 97.1, "sem": 0.4}}}
_FAILED = {"kind": "trial_result", "request_id": _REQUEST.request_id, "trial_id": "3", "status": "failed",
           "error": "pump 2 pressure fault"}
_NOT_MEASURED = {"kind": "trial_result", "request_id": _REQUEST.request_id, "trial_id": "3", "status": "completed",
                 "measurements": {"yield_pct": 82.0, "purity": None}}
_REUSED = {"kind": "trial_result", "request_id": _REQUEST.request_id, "trial_id": "3", "status": "failed",
           "error": f"request id {_REQUEST.request_id} was already used for another campaign, trial or "
                    "parameters: not run"}


def _parameters() -> dict[str, Any]:
    return {
        "prefix": {
            "description": "Topic prefix: one or more levels without wildcards, the same on the orchestrator "
                           "(CLOSEDLOOP_MQTT_PREFIX) and on every device of a campaign.",
            "default": _PREFIX,
            "examples": [_PREFIX, "lab2/closedloop"],
        },
        "device_id": {
            "description": "The device's id, one topic level: not empty, no '/', '+', '#' or NUL; the id the "
                           "campaign file lists under devices.",
            "examples": ["hplc-1", "sim-branin-3"],
        },
    }


def _channel(name: str, description: str, messages: dict[str, Any]) -> dict[str, Any]:
    return {"address": _ADDRESS + name, "title": name, "description": description,
            "parameters": {"prefix": {"$ref": "#/components/parameters/prefix"},
                           "device_id": {"$ref": "#/components/parameters/device_id"}},
            "messages": messages}


def _mqtt(**fields: Any) -> dict[str, Any]:
    return {"mqtt": {**fields, "bindingVersion": "0.2.0"}}


def _message(name: str, title: str, summary: str, examples: list[tuple[str, dict[str, Any]]],
             correlated: bool) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": name, "title": title, "summary": summary, "contentType": "application/json",
        "payload": {"$ref": _REF.format(model=name)},
        "bindings": _mqtt(payloadFormatIndicator=1, contentType="application/json"),
        "examples": [{"name": label, "payload": payload} for label, payload in examples],
    }
    if correlated:
        message["correlationId"] = {"description": "A result answers the request with the same request_id.",
                                    "location": "$message.payload#/request_id"}
    return message


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of protocol v1, from a device's side (what a device does)."""
    offline = json.dumps(_example_status("offline"))
    largest = client_id("c" * 100, "0" * 16)
    info_text = "\n\n".join([
        "The contract between the closedloop orchestrator and a lab device (instrument), described from the "
        "device's side: a device receives `RunTrial` requests, sends `TrialResult`s and keeps a retained "
        "`DeviceStatus`. docs/protocol.md says the same in prose, with a complete device.",
        f"Every payload is one JSON object, UTF-8, at most {MAX_PAYLOAD_BYTES // 1024} KiB "
        f"({MAX_PAYLOAD_BYTES} bytes), without NaN or Infinity; unknown fields are allowed and ignored. "
        "Every message travels at QoS 1 (at least once): the orchestrator and devices keep persistent "
        "sessions (a fixed client id, clean session off; under MQTT 5 a Session Expiry Interval too) and "
        "de-duplicate by `request_id`.",
        f"The orchestrator (x-closedloop-orchestrator) speaks MQTT 3.1.1 with a keep-alive of {_KEEPALIVE_S} s. "
        "It subscribes at QoS 1 to `{prefix}/devices/{device_id}/status` and "
        "`{prefix}/devices/{device_id}/results` of its campaign's devices only (no wildcard: other "
        "campaigns' devices on the prefix never reach it) and publishes "
        "to `{prefix}/devices/{device_id}/requests`. Its client id is `closedloop-<the campaign id's first 40 "
        "characters, any but A-Z a-z 0-9 _ . - as _>-<16 hex digits>`, at most "
        f"{len(largest)} characters, stable across the restarts of one campaign. Before every clean "
        f"disconnect it unsubscribes from `{_BARRIER_TOPIC}` (the barrier channel). It reconnects by itself, "
        f"waiting {RECONNECT_MIN_S} s, doubling up to {RECONNECT_MAX_S} s.",
    ])
    components: dict[str, Any] = {
        "schemas": _payloads(),
        "parameters": _parameters(),
        "messages": {
            "DeviceStatus": _message(
                "DeviceStatus", "Device status",
                "The device's state and metrics, retained; its last will is the same with state offline.",
                [("idle", _example_status("idle")), ("busy", _example_status("busy")),
                 ("offline (last will)", _example_status("offline"))], correlated=False),
            "RunTrial": _message(
                "RunTrial", "Run one trial",
                "Run one trial with these parameters; answer on the results topic, once per request_id.",
                [("request", _REQUEST.model_dump(mode="json"))], correlated=True),
            "TrialResult": _message(
                "TrialResult", "Trial result",
                "The answer to one RunTrial, sent once the measurement is done (or has failed).",
                [("completed", _COMPLETED), ("failed", _FAILED), ("a metric not measured", _NOT_MEASURED),
                 ("request id reused for another request", _REUSED)], correlated=True),
        },
        "securitySchemes": {
            "userPassword": {"type": "userPassword",
                             "description": "User name and password, as the broker requires (the embedded "
                                            "broker always does)."},
            "clientCertificate": {"type": "X509",
                                  "description": "A client certificate, for mqtts brokers that require one."},
        },
    }
    device_binding = _mqtt(
        cleanSession=False, keepAlive=_KEEPALIVE_S,
        lastWill={"topic": _ADDRESS + "status", "qos": 1, "retain": True, "message": offline},
    )
    return {
        "asyncapi": "3.0.0",
        "id": "urn:closedloop:device-protocol:v1",
        "info": {
            "title": "closedloop device protocol",
            "version": str(PROTOCOL_VERSION),
            "description": info_text,
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "mqtt": {"host": "localhost:1883", "protocol": "mqtt", "protocolVersion": "3.1.1",
                     "description": "Any MQTT 3.1.1 or 5 broker (Mosquitto, EMQX, HiveMQ, the embedded amqtt). "
                                    "A device may speak 3.1.1 or 5; the orchestrator speaks 3.1.1.",
                     "security": [{"$ref": "#/components/securitySchemes/userPassword"}],
                     "bindings": device_binding},
            "mqtts": {"host": "localhost:8883", "protocol": "secure-mqtt", "protocolVersion": "3.1.1",
                      "description": "The same over TLS (mqtts://).",
                      "security": [{"$ref": "#/components/securitySchemes/userPassword"},
                                   {"$ref": "#/components/securitySchemes/clientCertificate"}],
                      "bindings": device_binding},
        },
        "channels": {
            "status": _channel(
                "status",
                "The device's retained status (QoS 1, retain). A device with no status, or whose status is "
                "busy or offline, is sent no trial; nor is one whose measures lack a metric the campaign "
                "needs (logged once as DeviceSkipped). device_id in the payload must equal the topic's. "
                "An empty retained payload removes the device. Set the last will to the offline status.",
                {"DeviceStatus": {"$ref": "#/components/messages/DeviceStatus"}}),
            "requests": _channel(
                "requests",
                "Requests to run a trial, published by the orchestrator at QoS 1, not retained. The same "
                "request_id may come again (redelivery, or a re-send after a restart, a reconnect or an "
                "idle status while the log says the device runs it): answer a repeat from your store.",
                {"RunTrial": {"$ref": "#/components/messages/RunTrial"}}),
            "results": _channel(
                "results",
                "Results, published by the device at QoS 1, not retained. A result counts only on the "
                "results topic of the device its request went to; others are rejected and counted.",
                {"TrialResult": {"$ref": "#/components/messages/TrialResult"}}),
            "barrier": {
                "address": _BARRIER_TOPIC, "title": "barrier",
                "description": "Carries no message. Every closedloop client (orchestrator and simulators) "
                               "unsubscribes from this fixed topic, whatever the prefix, before a clean "
                               "disconnect: the broker's UNSUBACK confirms it has the packets sent before. "
                               "A broker ACL need not grant it; it must not refuse the connection for it.",
                "messages": {},
            },
        },
        "operations": {
            "sendStatus": {
                "action": "send", "channel": {"$ref": "#/channels/status"},
                "summary": "Announce the device's state: on every connect, on every change, offline before "
                           "a clean shutdown.",
                "bindings": _mqtt(qos=1, retain=True),
                "messages": [{"$ref": "#/channels/status/messages/DeviceStatus"}],
            },
            "receiveRunTrial": {
                "action": "receive", "channel": {"$ref": "#/channels/requests"},
                "summary": "Subscribe at QoS 1 with a persistent session; acknowledge a request once answered.",
                "bindings": _mqtt(qos=1),
                "messages": [{"$ref": "#/channels/requests/messages/RunTrial"}],
                "reply": {"channel": {"$ref": "#/channels/results"},
                          "messages": [{"$ref": "#/channels/results/messages/TrialResult"}]},
            },
            "sendTrialResult": {
                "action": "send", "channel": {"$ref": "#/channels/results"},
                "summary": "Answer a request once its measurement is done; a repeat from the store.",
                "bindings": _mqtt(qos=1, retain=False),
                "messages": [{"$ref": "#/channels/results/messages/TrialResult"}],
            },
        },
        "components": components,
        "x-closedloop-orchestrator": {
            "mqttVersion": "3.1.1",
            "clientIdPattern": CLIENT_ID_PATTERN,
            "clientIdMaxLength": len(largest),
            "clientIdExample": client_id("branin", "3f9c2a7d41b08e65"),
            "keepAlive": _KEEPALIVE_S,
            "cleanSession": False,
            "subscribes": [_ADDRESS.replace("{device_id}", "+") + "status",
                           _ADDRESS.replace("{device_id}", "+") + "results"],
            "publishes": [_ADDRESS + "requests"],
            "unsubscribes": [_BARRIER_TOPIC],
        },
    }


def events_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of a stored campaign event: one of every event kind."""
    schema = TypeAdapter(Event).json_schema(mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:closedloop:campaign-event:1",
        "title": "closedloop campaign event",
        "description": "One event of a campaign's append-only log, as stored (event_to_doc in "
                       "campaigns/events.py): the 'kind' property names which. Generated by "
                       f"`{COMMAND}`.",
        **schema,
    }


class _Dumper(yaml.SafeDumper):
    """Plain YAML for people: no anchors, multi-line text as ``|`` blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _text)


def render() -> dict[Path, str]:
    """Every generated file and its exact text."""
    header = f"# Generated by `{COMMAND}` from devices/messages.py, devices/topics.py and\n" \
             "# campaigns/identity.py. Do not edit: change the models, then run the command.\n"
    return {
        ASYNCAPI: header + yaml.dump(asyncapi(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100),
        EVENTS_SCHEMA: json.dumps(events_schema(), indent=2, ensure_ascii=False) + "\n",
    }


def stale(rendered: Callable[[], dict[Path, str]] = render) -> list[Path]:
    """The checked-in files that differ from what :func:`render` gives."""
    return [path for path, text in rendered().items()
            if not path.exists() or path.read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is stale")
    args = parser.parse_args(argv)
    if args.check:
        old = stale()
        for path in old:
            print(f"{path.relative_to(ROOT)} is stale: run `{COMMAND}`", file=sys.stderr)
        return 1 if old else 0
    for path, text in render().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
