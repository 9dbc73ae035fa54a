"""Restarts: a Mosquitto restart under a running hub and instrument, and instruments that stop,
die mid-trial and come back."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from campaigns.errors import BrokerError
from devices import (
    ConnectionLost,
    ConnectionRestored,
    MqttDeviceHub,
    MqttSettings,
    ResultReceived,
    RunTrial,
    StatusChanged,
    TrialResult,
    connect,
    encode,
)
from simulators import SimInstrument, read_completions, read_executions
from tests.conftest_brokers import Mosquitto, unique, wait_for

ROOT = Path(__file__).resolve().parents[2]
BRANIN_MIN = 0.397887


def request(request_id: str) -> RunTrial:
    return RunTrial(request_id=request_id, campaign_id="c1", trial_id=f"t-{request_id}",
                    parameters={"x1": math.pi, "x2": 2.275})


def result_for(hub: MqttDeviceHub, request_id: str, timeout_s: float = 60) -> ResultReceived:
    # A generous deadline, not a speed claim: a freshly started instrument imports botorch on
    # its first trial, which takes tens of seconds on a loaded 2-core CI machine.
    event = wait_for(hub, lambda e: isinstance(e, ResultReceived)
                     and e.result.request_id == request_id, timeout_s=timeout_s)
    assert isinstance(event, ResultReceived)
    hub.ack(event)
    return event


def wait_state(hub: MqttDeviceHub, device_id: str, state: str, timeout_s: float = 30) -> None:
    wait_for(hub, lambda e: isinstance(e, StatusChanged) and e.device_id == device_id
             and e.status.state == state, timeout_s=timeout_s)


def test_hub_and_instrument_ride_out_a_mosquitto_restart(
    restartable_mosquitto: Mosquitto,
) -> None:
    settings = MqttSettings(url=restartable_mosquitto.url, prefix=unique("rs"),
                            connect_timeout_s=5)
    device_id = unique("sim")
    with MqttDeviceHub(settings, client_id=unique("hub")) as hub, \
            SimInstrument(device_id, "branin", {}, settings):
        wait_state(hub, device_id, "idle")
        hub.dispatch(device_id, request("before"))
        result_for(hub, "before")
        device = connect(settings, client_id=unique("dev"))
        device.publish(hub.topics.results("d1"), encode(TrialResult(
            request_id="unacked", trial_id="t", status="completed", measurements={"y": 1})))
        device.close()
        wait_for(hub, lambda e: isinstance(e, ResultReceived))  # received, not acknowledged

        restartable_mosquitto.stop()
        lost = wait_for(hub, lambda e: isinstance(e, ConnectionLost), timeout_s=5)
        assert isinstance(lost, ConnectionLost) and lost.detail
        assert not hub.connected
        started = time.monotonic()
        with pytest.raises(BrokerError, match="not connected") as caught:
            hub.dispatch(device_id, request("while-down"), timeout_s=0.3)
        assert time.monotonic() - started < 2
        assert caught.value.device_id == device_id

        restartable_mosquitto.start()
        # Published before the hub is back: kept in its persistent session, then delivered.
        device = connect(settings, client_id=unique("dev"))
        device.publish(hub.topics.results("d1"), encode(TrialResult(
            request_id="after", trial_id="t", status="completed", measurements={"y": 2})))
        device.close()
        restored = wait_for(hub, lambda e: isinstance(e, ConnectionRestored), timeout_s=15)
        assert isinstance(restored, ConnectionRestored)
        assert restored.session_present
        assert 0 < restored.down_s < 15
        assert hub.connected
        assert result_for(hub, "unacked").result.measurements["y"].mean == 1
        assert result_for(hub, "after").result.measurements["y"].mean == 2

        # The instrument reconnected by itself and keeps serving.
        hub.dispatch(device_id, request("after-restart"))
        event = result_for(hub, "after-restart")
        assert event.result.measurements["branin"].mean == pytest.approx(BRANIN_MIN, abs=1e-6)


def test_requests_sent_while_the_instrument_is_away_run_when_it_returns(
    hub: MqttDeviceHub, mqtt_settings: MqttSettings
) -> None:
    device_id = unique("sim")
    with SimInstrument(device_id, "branin", {}, mqtt_settings):
        wait_state(hub, device_id, "idle")
    wait_state(hub, device_id, "offline")
    hub.dispatch(device_id, request("r1"))  # the broker queues it in the device's session
    with SimInstrument(device_id, "branin", {}, mqtt_settings) as back:
        event = result_for(hub, "r1")
        assert back.executions == {"r1": 1} and back.completions == {"r1": 1}
    assert event.result.measurements["branin"].mean == pytest.approx(BRANIN_MIN, abs=1e-6)


@contextmanager
def standalone(settings: MqttSettings, device_id: str, record: Path,
               options: dict[str, object]) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m simulators.standalone`` in a child process, killed on exit."""
    with subprocess.Popen(
        [sys.executable, "-m", "simulators.standalone", "branin", device_id,
         "--record", str(record), *(f"--option={k}={json.dumps(v)}" for k, v in options.items())],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ) as child:
        try:
            assert child.stdin is not None
            # Credentials go through a pipe, not argv, where `ps` would show them.
            child.stdin.write(json.dumps(settings.model_dump(mode="json")).encode() + b"\n")
            child.stdin.flush()
            yield child
        finally:
            child.kill()  # no-op once it has exited


def test_instrument_killed_mid_trial_runs_it_again_and_answers_once(
    hub: MqttDeviceHub, mqtt_settings: MqttSettings, tmp_path: Path
) -> None:
    device_id = unique("sim")
    record = tmp_path / "record.jsonl"
    with standalone(mqtt_settings, device_id, record, {"duration_s": [30, 30]}) as child:
        wait_state(hub, device_id, "idle")
        hub.dispatch(device_id, request("r1"))
        deadline = time.monotonic() + 120  # a hang guard: its first trial imports botorch (see result_for)
        while read_executions(record) != {"r1": 1}:
            assert time.monotonic() < deadline, "the trial never started"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)  # mid-trial: started, never finished
        child.wait(5)
    assert read_completions(record) == {}
    wait_state(hub, device_id, "offline")  # its last will

    with standalone(mqtt_settings, device_id, record, {"duration_s": [0.1, 0.1]}) as child:
        hub.dispatch(device_id, request("r1"))  # the loop re-sends what is still in flight
        first = result_for(hub, "r1")
        hub.dispatch(device_id, request("r1"))  # and again: answered from the record
        second = result_for(hub, "r1")
        child.send_signal(signal.SIGTERM)
        assert child.wait(60) == 0
    assert first.result == second.result
    assert first.result.measurements["branin"].mean == pytest.approx(BRANIN_MIN, abs=1e-6)
    assert read_executions(record) == {"r1": 2}  # started twice: the first run died
    assert read_completions(record) == {"r1": 1}  # finished once
