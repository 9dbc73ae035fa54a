"""An emulator fitted to a recorded campaign serves a new campaign over a real broker, as an
instrument the new campaign knows only by what it measures."""

from __future__ import annotations

from pathlib import Path

import pytest

from campaigns import CampaignCreated, TrialCompleted, fold, load_spec, parse_spec
from devices import MqttSettings
from flows.prefect.flow import campaign
from simulators import SimInstrument
from simulators.emulator import Emulator
from storage import MongoEventStore
from tests.conftest import closedloop_env

EXAMPLES = Path(__file__).resolve().parents[2] / "campaigns" / "examples"


@pytest.fixture
def env(mosquitto_url: str, mongo_uri: str, prefect_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> dict[str, str]:  # the transport is covered on both brokers elsewhere
    return closedloop_env(monkeypatch, tmp_path, mosquitto_url, mongo_uri)


@pytest.mark.timeout(400)
def test_an_emulator_of_a_recorded_campaign_serves_a_new_one(env: dict[str, str]) -> None:
    store = MongoEventStore(env["CLOSEDLOOP_MONGODB_URI"], database=env["CLOSEDLOOP_MONGODB_DATABASE"])
    mqtt = MqttSettings(url=env["CLOSEDLOOP_MQTT_URL"], prefix=env["CLOSEDLOOP_MQTT_PREFIX"])
    # The recorded campaign: Hartmann6 on a simulated instrument, quasi-random (cheap here).
    recorded = load_spec(EXAMPLES / "hartmann6.yaml").model_dump(mode="json")
    recorded.update(name="recorded", budget={"max_trials": 24}, batch_size=4, optimizer={"method": "sobol"},
                    devices=[{"id": "h6", "simulator": "hartmann6", "options": {"seed": 3}}])
    store.append([CampaignCreated(campaign_id="recorded", seq=1, actor="user:test", spec=parse_spec(recorded))])
    with SimInstrument("h6", "hartmann6", {"seed": 3}, mqtt):
        assert campaign("recorded")["status"] == "finished"
    emulator = Emulator.fit(fold(store.read("recorded")).spec, fold(store.read("recorded")).trials.values())  # type: ignore[arg-type]

    # The new campaign knows the emulator only as a device that measures hartmann6.
    new = dict(recorded, name="served", budget={"max_trials": 8},
               devices=[{"id": "emu", "measures": ["hartmann6"]}])
    store.append([CampaignCreated(campaign_id="served", seq=1, actor="user:test", spec=parse_spec(new))])
    with SimInstrument("emu", emulator, {"seed": 1}, mqtt):
        assert campaign("served")["status"] == "finished"
    served = [e for e in store.read("served") if isinstance(e, TrialCompleted)]
    assert len(served) == 8 and all(e.device_id == "emu" for e in served)
    state = fold(store.read("served"))
    # Each answer is the emulator's prediction plus its own noise (a few predictive sd at most).
    for t in state.trials.values():
        mean = emulator.evaluate(t.parameters)["hartmann6"]
        sd = emulator.noise_sd(t.parameters)["hartmann6"]
        assert abs(t.measurements["hartmann6"].mean - mean) <= 5 * sd + 1e-9
