"""A simulated instrument tells a repeated request from a new one that reuses its request id,
over a real Mosquitto, and keeps telling them apart after a restart (from its record)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from devices import MqttDeviceHub, MqttSettings, ResultReceived, RunTrial, TrialResult
from simulators import SimInstrument, read_executions
from tests.conftest_brokers import unique, wait_for


class Square:
    """y = u², written out here so the test knows every true value."""

    inputs = ["u"]
    metrics = ["y"]

    def evaluate(self, parameters: Mapping[str, float]) -> dict[str, float]:
        return {"y": float(parameters["u"]) ** 2}


def _answer(hub: MqttDeviceHub, device: str, request: RunTrial) -> TrialResult:
    hub.dispatch(device, request)
    event = wait_for(hub, lambda e: isinstance(e, ResultReceived) and e.device_id == device, timeout_s=30)
    assert isinstance(event, ResultReceived)
    return event.result


def test_reused_request_id_with_other_content_is_not_answered_from_the_store(mosquitto_url: str, tmp_path: Path) -> None:
    """Issue 14 item 1: a device answered any known request id from its store, so a second
    campaign of the same name reusing ``name:trial:attempt`` got the first one's values. A
    repeat is the same id *and* the same campaign, trial and parameters; another content under
    a known id gets a ``failed`` answer, is never run, and the true repeat still gets the store."""
    settings = MqttSettings(url=mosquitto_url, prefix=unique("repeats"), connect_timeout_s=5)
    device, record = unique("dev"), tmp_path / "dev.jsonl"
    first = RunTrial(request_id="same:0:1", campaign_id="same", trial_id="0", parameters={"u": 3.0})
    other_parameters = first.model_copy(update={"parameters": {"u": 0.5}})
    other_trial = first.model_copy(update={"trial_id": "7"})
    with MqttDeviceHub(settings, client_id=unique("hub")) as hub:
        with SimInstrument(device, Square(), {}, settings, record_path=record):
            answered = _answer(hub, device, first)
            assert answered.status == "completed" and answered.measurements["y"].mean == 9.0
            reused = _answer(hub, device, other_parameters)
            assert reused.status == "failed" and reused.measurements == {}
            assert "already used" in (reused.error or "")
            assert _answer(hub, device, other_trial).status == "failed"
            assert _answer(hub, device, first).measurements["y"].mean == 9.0  # a true repeat
        # After a restart the instrument knows what the id asked for from its record.
        with SimInstrument(device, Square(), {}, settings, record_path=record):
            assert _answer(hub, device, other_parameters).status == "failed"
            assert _answer(hub, device, first).measurements["y"].mean == 9.0
    assert read_executions(record) == {"same:0:1": 1}  # run once, whatever came after
