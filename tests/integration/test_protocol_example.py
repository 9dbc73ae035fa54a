"""The complete instrument of docs/protocol.md, run as a device author would run it.

The code is taken from the page itself (its ``python`` block under "A complete instrument"),
so the page cannot drift from a device that works. It runs in its own process against
Mosquitto, with nothing of closedloop but what the page shows, and is checked with the
orchestrator's own hub: its statuses, a request answered, the same request answered again from
its store (also after a restart), a reused request id answered ``failed``, a request sent while
it was away answered when it returns, and its last will when it is killed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devices import HubEvent, MqttDeviceHub, MqttSettings, ResultReceived, RunTrial, StatusChanged
from devices.messages import TrialResult
from tests.conftest_brokers import unique, wait_for

PAGE = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def example_code() -> str:
    """The one ``python`` block of the page's "A complete instrument" section."""
    text = PAGE.read_text(encoding="utf-8")
    section = text.split("\n## A complete instrument\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```$", section, flags=re.S | re.M)
    assert len(blocks) == 1, "docs/protocol.md: 'A complete instrument' must hold exactly one python block"
    return str(blocks[0])


class Device:
    """The page's instrument in a subprocess: ``python instrument.py URL DEVICE_ID STORE``."""

    def __init__(self, script: Path, url: str, device_id: str, store: Path, prefix: str) -> None:
        self.args = [sys.executable, str(script), url, device_id, str(store)]
        self.env = {**os.environ, "CLOSEDLOOP_MQTT_PREFIX": prefix}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def stop(self, sig: int) -> str:
        """Send ``sig``, wait for the exit, return what it wrote to stderr."""
        process, self.process = self.process, None
        assert process is not None
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=20)
        return stderr.decode(errors="replace")


@pytest.fixture
def hub(mosquitto_url: str) -> Iterator[MqttDeviceHub]:
    settings = MqttSettings(url=mosquitto_url, prefix=unique("doc"), connect_timeout_s=5)
    with MqttDeviceHub(settings, client_id=unique("hub")) as started:
        yield started


@pytest.fixture
def device(hub: MqttDeviceHub, mosquitto_url: str, tmp_path: Path) -> Iterator[Device]:
    script = tmp_path / "instrument.py"
    script.write_text(example_code(), encoding="utf-8")
    made = Device(script, mosquitto_url, unique("hplc"), tmp_path / "store.jsonl", hub.topics.prefix)
    try:
        yield made
    finally:
        if made.process is not None:
            made.process.kill()
            made.process.wait()


def _status(device_id: str, state: str):  # type: ignore[no-untyped-def]
    return lambda e: isinstance(e, StatusChanged) and e.device_id == device_id and e.status.state == state


def _result(hub: MqttDeviceHub, request_id: str, seen: list[HubEvent] | None = None) -> TrialResult:
    event = wait_for(hub, lambda e: isinstance(e, ResultReceived) and e.result.request_id == request_id,
                     seen=seen)
    assert isinstance(event, ResultReceived)
    hub.ack(event)
    return event.result


def test_the_documented_instrument_serves_the_orchestrator(hub: MqttDeviceHub, device: Device) -> None:
    d = device.args[3]
    device.start()
    wait_for(hub, _status(d, "idle"))
    assert hub.devices()[d].measures == ["y"]

    # A request: busy, then the result, then idle again.
    first = RunTrial(request_id="c:0123456789abcdef:1:1", campaign_id="c", trial_id="1", parameters={"x": 0.5})
    hub.dispatch(d, first)
    seen: list[HubEvent] = []
    answer = _result(hub, first.request_id, seen)
    assert any(_status(d, "busy")(e) for e in seen), "no busy status before the result"
    assert (answer.status, answer.trial_id) == ("completed", "1")
    y = answer.measurements["y"]
    assert y is not None and abs(y.mean - 0.04) < 0.1 and y.sem == 0.01
    wait_for(hub, _status(d, "idle"))

    # The same request again: answered from the store (the noisy measurement is not redone).
    hub.dispatch(d, first)
    assert _result(hub, first.request_id) == answer

    # The same request id asking for other parameters: not a repeat, not run, failed.
    reused = first.model_copy(update={"parameters": {"x": 0.9}})
    hub.dispatch(d, reused)
    refusal = _result(hub, first.request_id)
    assert refusal.status == "failed" and refusal.error is not None and "already used" in refusal.error

    # A clean stop says offline; a request sent meanwhile is answered on return; the store
    # survives the restart.
    stderr = device.stop(signal.SIGTERM)
    wait_for(hub, _status(d, "offline"))
    second = RunTrial(request_id="c:0123456789abcdef:2:1", campaign_id="c", trial_id="2", parameters={"x": 0.3})
    hub.dispatch(d, second)
    device.start()
    assert _result(hub, second.request_id).status == "completed", stderr
    hub.dispatch(d, first)
    assert _result(hub, first.request_id) == answer

    # Killed: the broker publishes its last will.
    if hub.devices()[d].state != "idle":
        wait_for(hub, _status(d, "idle"))
    device.stop(signal.SIGKILL)
    wait_for(hub, _status(d, "offline"))
    assert hub.devices()[d].measures == ["y"]
