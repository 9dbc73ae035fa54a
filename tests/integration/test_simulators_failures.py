"""Simulated failure modes as the orchestrator's hub sees them, over a real Mosquitto."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

import pytest

from devices import (
    HubEvent,
    MessageRejected,
    MqttDeviceHub,
    MqttSettings,
    ResultReceived,
    RunTrial,
    StatusChanged,
)
from simulators import SimInstrument
from tests.conftest_brokers import unique, wait_for


class Paraboloid:
    """A model that is not in the catalog, served as an emulator fitted from data would be."""

    inputs = ["u"]
    metrics = ["y"]

    def evaluate(self, parameters: Mapping[str, float]) -> dict[str, float]:
        return {"y": (float(parameters["u"]) - 0.25) ** 2}


@pytest.fixture
def mosquitto_hub(mosquitto_url: str) -> Iterator[tuple[MqttSettings, MqttDeviceHub]]:
    settings = MqttSettings(url=mosquitto_url, prefix=unique("simfail"), connect_timeout_s=5)
    with MqttDeviceHub(settings, client_id=unique("hub")) as hub:
        yield settings, hub


def _states(seen: list[HubEvent], device: str) -> list[str]:
    return [e.status.state for e in seen if isinstance(e, StatusChanged) and e.device_id == device]


def _request(device: str) -> RunTrial:
    return RunTrial(request_id=f"c:{device}:1", campaign_id="c", trial_id=device, parameters={"u": 0.75})


def test_failure_modes_seen_by_the_orchestrator(mosquitto_hub: tuple[MqttSettings, MqttDeviceHub]) -> None:
    settings, hub = mosquitto_hub
    garbage, drop, offline = unique("garbage"), unique("drop"), unique("offline")
    seen: list[HubEvent] = []
    with SimInstrument(garbage, Paraboloid(), {"failures": {"garbage": 1.0}}, settings), \
         SimInstrument(drop, Paraboloid(), {"failures": {"drop": 1.0}}, settings), \
         SimInstrument(offline, Paraboloid(), {"failures": {"offline": 1.0, "offline_s": 0.5}}, settings):
        for device in (garbage, drop, offline):
            wait_for(hub, lambda e, d=device: isinstance(e, StatusChanged) and e.device_id == d
                     and e.status.state == "idle", seen=seen)
            hub.dispatch(device, _request(device))
        # garbage: an unparseable payload arrives on the result topic and is rejected
        rejected = wait_for(hub, lambda e: isinstance(e, MessageRejected) and e.device_id == garbage, seen=seen)
        assert isinstance(rejected, MessageRejected) and "not JSON" in rejected.reason
        # offline: the status says offline, then the instrument comes back and answers
        wait_for(hub, lambda e: isinstance(e, StatusChanged) and e.device_id == offline
                 and e.status.state == "offline", seen=seen)
        answer = wait_for(hub, lambda e: isinstance(e, ResultReceived) and e.device_id == offline, seen=seen)
        assert isinstance(answer, ResultReceived)
        assert answer.result.measurements["y"].mean == pytest.approx(0.25)
        assert _states(seen, offline)[-2:] == ["offline", "busy"]
        # drop: the instrument took the request and is idle again, and no answer ever came
        deadline = time.monotonic() + 30
        while _states(seen, drop)[-2:] != ["busy", "idle"] and time.monotonic() < deadline:
            seen.extend(hub.next_events(0.2))
        assert _states(seen, drop)[-2:] == ["busy", "idle"]
        seen.extend(hub.next_events(0.5))
    assert not [e for e in seen if isinstance(e, ResultReceived | MessageRejected) and e.device_id == drop]
    assert not [e for e in seen if isinstance(e, ResultReceived) and e.device_id == garbage]
