"""Simulated failure modes as the orchestrator's hub sees them, over a real Mosquitto."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

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
from tests.conftest_brokers import unique


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

    def collect_until(done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30
        while not done() and time.monotonic() < deadline:
            seen.extend(hub.next_events(0.2))
        assert done(), seen

    def of(kind: type, device: str) -> list[HubEvent]:
        return [e for e in seen if isinstance(e, kind) and getattr(e, "device_id", None) == device]

    with SimInstrument(garbage, Paraboloid(), {"failures": {"garbage": 1.0}}, settings), \
         SimInstrument(drop, Paraboloid(), {"failures": {"drop": 1.0}}, settings), \
         SimInstrument(offline, Paraboloid(), {"failures": {"offline": 1.0, "offline_s": 0.5}}, settings):
        collect_until(lambda: all("idle" in _states(seen, d) for d in (garbage, drop, offline)))
        for device in (garbage, drop, offline):
            hub.dispatch(device, _request(device))
        collect_until(lambda: bool(of(MessageRejected, garbage)) and bool(of(ResultReceived, offline))
                      and _states(seen, drop)[-2:] == ["busy", "idle"])
        seen.extend(hub.next_events(0.5))
    # garbage: an unparseable payload arrived on the result topic and was rejected
    rejected = of(MessageRejected, garbage)
    assert len(rejected) == 1 and "not JSON" in rejected[0].reason  # type: ignore[attr-defined]
    assert not of(ResultReceived, garbage)
    # offline: the status said offline, then busy again, and the result came
    states = _states(seen, offline)
    assert states[states.index("offline") + 1] == "busy"
    answers = of(ResultReceived, offline)
    assert [a.result.measurements["y"].mean for a in answers] == [pytest.approx(0.25)]  # type: ignore[attr-defined]
    # drop: the instrument took the request and went idle again; no answer ever came
    assert not of(ResultReceived, drop) and not of(MessageRejected, drop)
