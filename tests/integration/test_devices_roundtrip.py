"""Hub and simulated instruments over real brokers (Mosquitto and the embedded amqtt)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from devices import (
    HubEvent,
    MessageRejected,
    MqttDeviceHub,
    MqttSettings,
    ResultReceived,
    RunTrial,
    StatusChanged,
    connect,
)
from simulators import SimInstrument
from tests.conftest_brokers import unique, wait_for

ROOT = Path(__file__).resolve().parents[2]
BRANIN_MIN = 0.397887


def request(request_id: str, x1: float = math.pi, x2: float = 2.275) -> RunTrial:
    return RunTrial(
        request_id=request_id, campaign_id="c1", trial_id=f"t-{request_id}",
        parameters={"x1": x1, "x2": x2},
    )


def wait_idle(hub: MqttDeviceHub, device_id: str, seen: list[HubEvent] | None = None) -> None:
    wait_for(hub, lambda e: isinstance(e, StatusChanged) and e.device_id == device_id
             and e.status.state == "idle", seen=seen)


def test_sim_instrument_answers_with_the_branin_value(
    hub: MqttDeviceHub, mqtt_settings: MqttSettings
) -> None:
    device_id = unique("sim")
    with SimInstrument(device_id, "branin", {}, mqtt_settings):
        wait_idle(hub, device_id)
        assert hub.devices()[device_id].measures == ["branin"]
        hub.dispatch(device_id, request("r1"))
        event = wait_for(hub, lambda e: isinstance(e, ResultReceived))
    assert isinstance(event, ResultReceived)
    assert event.device_id == device_id
    assert (event.result.request_id, event.result.trial_id, event.result.status) == (
        "r1", "t-r1", "completed")
    measurement = event.result.measurements["branin"]
    assert measurement.mean == pytest.approx(BRANIN_MIN, abs=1e-6)
    assert measurement.sem is None
    wait_for(hub, lambda e: isinstance(e, StatusChanged) and e.status.state == "offline")
    assert hub.devices()[device_id].state == "offline"


def test_repeated_request_id_is_answered_from_the_store_and_run_once(
    hub: MqttDeviceHub, mqtt_settings: MqttSettings, tmp_path: Path
) -> None:
    device_id = unique("sim")
    record = tmp_path / "record.jsonl"
    options = {"noise_sd": 0.5, "seed": 7, "metric": "yield", "inputs": ["a", "b"]}
    trial = RunTrial(request_id="r1", campaign_id="c1", trial_id="t1",
                     parameters={"a": 1.0, "b": 2.0})
    with SimInstrument(device_id, "branin", options, mqtt_settings, record_path=record) as sim:
        wait_idle(hub, device_id)
        for _ in range(3):  # as a QoS 1 redelivery or a resumed loop would
            hub.dispatch(device_id, trial)
        results = [wait_for(hub, lambda e: isinstance(e, ResultReceived)) for _ in range(3)]
        assert sim.executions == {"r1": 1}
    values = {r.result.measurements["yield"].mean for r in results if isinstance(r, ResultReceived)}
    assert len(values) == 1  # noisy, yet identical: not run again
    assert all(r.result.measurements["yield"].sem == 0.5 for r in results
               if isinstance(r, ResultReceived))
    assert len(record.read_text().splitlines()) == 1

    # A restarted instrument answers from its record file, still without running.
    with SimInstrument(device_id, "branin", options, mqtt_settings, record_path=record) as again:
        hub.dispatch(device_id, trial)
        event = wait_for(hub, lambda e: isinstance(e, ResultReceived))
        assert again.executions == {}
    assert isinstance(event, ResultReceived)
    assert event.result.measurements["yield"].mean in values


def test_garbage_becomes_message_rejected_and_the_hub_goes_on(
    hub: MqttDeviceHub, mqtt_settings: MqttSettings
) -> None:
    topics = hub.topics
    raw = connect(mqtt_settings, client_id=unique("raw"))
    try:
        raw.publish(topics.results("bad"), b"\xff\xfe not json at all" + b"x" * 500)
        raw.publish(topics.results("bad"), b'{"kind": "trial_result", "request_id": "r"}')
        raw.publish(topics.status("bad"), b'{"state": "idle", "device_id": "other", "measures": []}')
        # Garbage on a device's requests topic: the instrument logs it and keeps serving.
        device_id = unique("sim")
        with SimInstrument(device_id, "branin", {}, mqtt_settings):
            raw.publish(topics.requests(device_id), b"{]")
            raw.publish(topics.requests(device_id), b'{"kind": "run_trial"}')
            seen: list[HubEvent] = []
            wait_idle(hub, device_id, seen)
            hub.dispatch(device_id, request("after-garbage", x1=-math.pi, x2=12.275))
            event = wait_for(hub, lambda e: isinstance(e, ResultReceived), seen=seen)
    finally:
        raw.close()
    assert isinstance(event, ResultReceived)
    assert event.result.measurements["branin"].mean == pytest.approx(BRANIN_MIN, abs=1e-6)
    rejected = [e for e in seen if isinstance(e, MessageRejected)]
    assert [r.device_id for r in rejected] == ["bad", "bad", "bad"]
    assert "not UTF-8" in rejected[0].reason
    assert len(rejected[0].excerpt) == 200
    assert "\ufffd" in rejected[0].excerpt
    assert "trial_id: Field required" in rejected[1].reason
    assert "does not match the topic" in rejected[2].reason
    assert "bad" not in hub.devices()


def test_last_will_shows_offline_when_the_instrument_dies(
    hub: MqttDeviceHub, mqtt_settings: MqttSettings
) -> None:
    device_id = unique("sim")
    script = (
        "import json, sys, threading\n"
        "from devices import MqttSettings\n"
        "from simulators import run_standalone\n"
        "settings = MqttSettings.model_validate(json.loads(sys.stdin.readline()))\n"
        f"run_standalone('branin', {device_id!r}, settings, {{}}, threading.Event())\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ) as child:
        try:
            assert child.stdin is not None
            # Credentials go through a pipe, not argv, where `ps` would show them.
            child.stdin.write(json.dumps(mqtt_settings.model_dump(mode="json")).encode() + b"\n")
            child.stdin.flush()
            wait_idle(hub, device_id)
            os.kill(child.pid, signal.SIGKILL)  # no DISCONNECT: the broker sends the will
            child.wait(5)
            event = wait_for(
                hub, lambda e: isinstance(e, StatusChanged) and e.device_id == device_id
            )
        finally:
            child.kill()  # no-op once dead; the with-block then reaps it
    assert isinstance(event, StatusChanged)
    assert event.status.state == "offline"
    assert event.status.measures == ["branin"]
    assert hub.devices()[device_id].state == "offline"
