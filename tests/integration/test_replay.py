"""Replays in-process, over a real broker and the MongoDB-wire server: a campaign whose people
approved, edited, rejected and changed bounds is replayed counterfactually with the same
seed and comes out the same, trial for trial; the source is never touched."""

from __future__ import annotations

import threading
from contextlib import ExitStack
from pathlib import Path

import pytest

from campaigns import CampaignChanged, CampaignCreated, fold, parse_spec
from devices import MqttSettings
from flows.prefect.flow import campaign
from flows.engine.replay import plan_replay
from flows.cli.replay import identical_trials
from simulators import SimInstrument
from storage import MongoCommandInbox, MongoEventStore
from tests.conftest import closedloop_env


@pytest.fixture
def env(mosquitto_url: str, mongo_uri: str, prefect_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> dict[str, str]:  # the transport is covered on both brokers elsewhere
    return closedloop_env(monkeypatch, tmp_path, mosquitto_url, mongo_uri)


DEVICES = [{"id": "sim-a", "simulator": "branin", "options": {"noise_sd": 0.5, "seed": 11}},
           {"id": "sim-b", "simulator": "branin", "options": {"noise_sd": 0.5, "seed": 11}}]

SPEC = parse_spec({
    "name": "replayed", "seed": 5,
    "parameters": [{"name": "x1", "type": "float", "bounds": [-5, 10]},
                   {"name": "x2", "type": "float", "bounds": [0, 15]}],
    "objectives": [{"name": "branin", "minimize": True}],
    "budget": {"max_trials": 10}, "batch_size": 2, "trial_timeout_s": 30,
    "dispatch": "batch",
    "optimizer": {"initialization_trials": 4},
    "approval": {"first_n": 4},
    "devices": DEVICES,
})


def _person(store: MongoEventStore, inbox: MongoCommandInbox, stop: threading.Event) -> None:
    """The source's people: edit and reject in the first approval; narrow x1, then approve the
    second as is. The campaign waits for each answer, so the change lands at a known point
    (four trials) by construction, however fast the instruments are."""
    answered: set[str] = set()
    while not stop.wait(0.05):
        state = fold(store.read("src"))
        for a in state.open_approvals.values():
            if a.approval_id in answered:
                continue
            answered.add(a.approval_id)
            if len(answered) == 1:
                payload = {"approval_id": a.approval_id, "edit": {a.trial_ids[0]: {"x1": 2.5}}, "reject": [a.trial_ids[1]]}
            else:
                inbox.submit("src", "change", {"set_bounds": {"x1": [0.0, 5.0]}}, by="ana", reason="the left side is toxic")
                payload = {"approval_id": a.approval_id}
            inbox.submit("src", "approve", payload, by="ana", reason="chemist's call")
        if state.status == "finished":
            return


@pytest.mark.timeout(400)
def test_counterfactual_replay_with_the_same_seed_reproduces_people_and_all(env: dict[str, str]) -> None:
    store = MongoEventStore(env["CLOSEDLOOP_MONGODB_URI"], database=env["CLOSEDLOOP_MONGODB_DATABASE"])
    inbox = MongoCommandInbox(env["CLOSEDLOOP_MONGODB_URI"], database=env["CLOSEDLOOP_MONGODB_DATABASE"])
    mqtt = MqttSettings(url=env["CLOSEDLOOP_MQTT_URL"], prefix=env["CLOSEDLOOP_MQTT_PREFIX"])
    store.append([CampaignCreated(campaign_id="src", seq=1, actor="user:test", spec=SPEC)])
    stop = threading.Event()
    with ExitStack() as lab:
        for d in DEVICES:
            lab.enter_context(SimInstrument(d["id"], "branin", d["options"], mqtt))
        person = threading.Thread(target=_person, args=(store, inbox, stop))
        person.start()
        try:
            assert campaign("src")["status"] == "finished"
        finally:
            stop.set()
            person.join(10)
        source_events = store.read("src")
        source = fold(source_events)
        assert source.count("rejected") == 1 and any(t.generator == "human" for t in source.trials.values())
        assert any(isinstance(e, CampaignChanged) for e in source_events)

        spec, link = plan_replay(source, mode="counterfactual")
        store.append([CampaignCreated(campaign_id="cf", seq=1, actor="user:test", spec=spec, source=link)])
        assert campaign("cf")["status"] == "finished"

    assert store.read("src") == source_events  # the source is only read

    replay = fold(store.read("cf"))
    same_points, same_all, n = identical_trials(source, replay)
    assert n == len(source.trials) == len(replay.trials)
    assert same_points == same_all == n
    assert [t.status for t in replay.trials.values()] == [t.status for t in source.trials.values()]
    # The people's decisions came back, attributed to the source's author and marked as replayed.
    changes = [e for e in store.read("cf") if isinstance(e, CampaignChanged)]
    assert len(changes) == 1 and changes[0].actor == "user:ana" and "replayed from src" in changes[0].reason
    assert replay.spec is not None and replay.spec.parameters[0].bounds == (0.0, 5.0)
    assert replay.source is not None and replay.source.campaign_id == "src"
