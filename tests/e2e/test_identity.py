"""Whose value is it: campaigns that share a name, a name prefix, an instrument or a broker
never take each other's results, and a finished campaign leaves no session on the broker.
All on a real Mosquitto, through the CLI as a user runs it."""

from __future__ import annotations

import json
import queue
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devices import DeviceStatus, Measurement, MqttSettings, RunTrial, Topics, TrialResult, connect, encode, parse_request
from simulators import SimInstrument
from tests.conftest_brokers import Mosquitto, unique
from tests.e2e.cli import branin, cli_env, run, start, status, write_spec


def _spec(name: str, seed: int, devices: list[dict[str, Any]], max_trials: int,
          trial_timeout_s: float = 20) -> dict[str, Any]:
    return {
        "name": name,
        "seed": seed,
        "parameters": [{"name": "x1", "type": "float", "bounds": [-5.0, 10.0]},
                       {"name": "x2", "type": "float", "bounds": [0.0, 15.0]}],
        "objectives": [{"name": "branin", "minimize": True}],
        "budget": {"max_trials": max_trials},
        "trial_timeout_s": trial_timeout_s,
        "devices": devices,
        "optimizer": {"method": "sobol"},
    }


def _rows(campaign: str, env: dict[str, str]) -> list[dict[str, Any]]:
    out = run(["export", campaign, "--format", "json"], env, timeout=60)
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout)["trials"])


def _assert_true_values(rows: list[dict[str, Any]], n: int) -> None:
    """Every trial completed at its first attempt with Branin's true value at its own point."""
    assert [r["status"] for r in rows] == ["completed"] * n, rows
    for r in rows:
        assert r["attempts"] == 1, r
        assert r["branin"] == pytest.approx(branin(r["param.x1"], r["param.x2"]), rel=1e-9), r


@pytest.mark.timeout(400)
def test_same_name_in_two_homes_records_its_own_values(tmp_path: Path, mosquitto_url: str, mongo_uri: str,
                                                       prefect_server: dict[str, str]) -> None:
    """Issue 14 item 1: two campaigns named alike in two homes (two databases) share one
    instrument; request ids were ``name:trial:attempt``, so the instrument answered the second
    campaign's requests from its store with the first one's values (recorded as the second's
    results). Each must record the true value at its own points."""
    prefix, device = unique("ident"), unique("shared")
    settings = MqttSettings(url=mosquitto_url, prefix=prefix)
    homes = [tmp_path / "lab-a", tmp_path / "lab-b"]
    # Two labs: two databases (on the session's server), one broker and topic prefix.
    envs = [cli_env(home, prefect_server, CLOSEDLOOP_MQTT_URL=mosquitto_url, CLOSEDLOOP_MQTT_PREFIX=prefix,
                    CLOSEDLOOP_MONGODB_URI=mongo_uri, CLOSEDLOOP_MONGODB_DATABASE=unique("lab").replace("-", "_"))
            for home in homes]
    with SimInstrument(device, "branin", {}, settings, record_path=tmp_path / "instrument.jsonl"):
        for seed, home, env in zip((1, 2), homes, envs, strict=True):
            spec = write_spec(home.with_suffix(".yaml"), _spec("same-name", seed, [{"id": device, "measures": ["branin"]}], 4))
            out = run(["run", str(spec), "--no-simulators", "--quiet"], env)
            assert out.returncode == 0, out.stderr
    first, second = _rows("same-name", envs[0]), _rows("same-name", envs[1])
    # Different seeds, different points (all but Sobol's centre): the other campaign's values cannot pass.
    points = [{(r["param.x1"], r["param.x2"]) for r in rows} for rows in (first, second)]
    assert len(points[1] - points[0]) == 3
    _assert_true_values(first, 4)
    _assert_true_values(second, 4)


@pytest.mark.timeout(500)
def test_long_names_with_one_prefix_run_at_once(tmp_path: Path, mosquitto_url: str,
                                                prefect_server: dict[str, str]) -> None:
    """Issue 14 item 3: the client id was ``closedloop-orchestrator-<name>`` cut at 128
    characters, so two campaigns whose names share their first 128 characters shared one MQTT
    session: running at once, they took the connection from each other and each received (and
    rejected) results meant for the other, lost to their owner until it sent the request again.
    Each must get all its own results and nothing else (two topic prefixes: nothing of the other
    campaign's may reach it)."""
    names, prefixes = ["x" * 130 + "-a", "x" * 130 + "-b"], [unique("long"), unique("long")]
    envs = [cli_env(tmp_path / f"home-{i}", prefect_server, CLOSEDLOOP_MQTT_URL=mosquitto_url,
                    CLOSEDLOOP_MQTT_PREFIX=prefix) for i, prefix in enumerate(prefixes)]
    # Campaign a's one trial waits on a device the test answers, so that a is connected all
    # through b's run, by construction.
    held = Topics(prefixes[0])
    requests: queue.SimpleQueue[RunTrial] = queue.SimpleQueue()

    def take(topic: str, payload: bytes, delivery: object) -> bool:
        requests.put(parse_request(payload))
        return False

    device = connect(MqttSettings(url=mosquitto_url), client_id=unique("held"), subscriptions=[held.requests("held")],
                     on_message=take)
    try:
        device.publish(held.status("held"), encode(DeviceStatus(state="idle", device_id="held", measures=["branin"])),
                       retain=True)
        # Its deadline outlasts b's whole run however slow the machine (b's run is bounded by its own timeout).
        spec_a = write_spec(tmp_path / "a.yaml", _spec(names[0], 1, [{"id": "held", "measures": ["branin"]}], 1,
                                                       trial_timeout_s=3600))
        a = start(["run", str(spec_a), "--no-simulators", "--quiet"], envs[0],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        request = requests.get(timeout=240)  # a is connected and has sent its trial
        b_device = {"id": "dev-b", "simulator": "branin", "options": {"duration_s": [0.3, 0.5]}}
        spec_b = write_spec(tmp_path / "b.yaml", _spec(names[1], 2, [b_device], 8))
        b = run(["run", str(spec_b), "--quiet"], envs[1], timeout=400)
        assert b.returncode == 0, b.stderr
        x1, x2 = float(request.parameters["x1"]), float(request.parameters["x2"])
        device.publish(held.results("held"), encode(TrialResult(
            request_id=request.request_id, trial_id=request.trial_id, status="completed",
            measurements={"branin": Measurement(mean=branin(x1, x2))})))
        _, err = a.communicate(timeout=240)
        assert a.returncode == 0, err
    finally:
        device.close()
    for name, env, n in zip(names, envs, (1, 8), strict=True):
        _assert_true_values(_rows(name, env), n)
        now = status(name, env)
        assert now["status"] == "finished" and now["rejected_messages"] == 0, now


def _persistent_client_ids(log: str, exclude: set[str]) -> set[str]:
    # Mosquitto's notice: "New client connected from 127.0.0.1:PORT as ID (p2, c0, k30)."
    found = re.findall(r"New client connected from \S+ as (\S+) \(p\d+, c0,", log)
    return set(found) - exclude


def _session_present(url: str, client_id: str) -> bool:
    # manual_ack and no subscription: nothing queued for the session is taken from it.
    connection = connect(MqttSettings(url=url, connect_timeout_s=5), client_id=client_id, manual_ack=True)
    try:
        return connection.session_present
    finally:
        connection.close()


@pytest.mark.timeout(400)
def test_finished_campaign_ends_its_broker_session(tmp_path: Path, restartable_mosquitto: Mosquitto,
                                                   prefect_server: dict[str, str]) -> None:
    """Issue 14 item 22: every campaign kept a persistent session and a finished one never
    ended it, so Mosquitto (which by default never expires MQTT 3.1.1 sessions) kept them and
    their queued messages forever. A stopped campaign keeps its session (it comes back); a
    finished one leaves none."""
    url, prefix, device = restartable_mosquitto.url, unique("sessions"), "slow-1"
    settings = MqttSettings(url=url, prefix=prefix)
    env = cli_env(tmp_path / "home", prefect_server, CLOSEDLOOP_MQTT_URL=url, CLOSEDLOOP_MQTT_PREFIX=prefix)
    spec = write_spec(tmp_path / "spec.yaml", _spec("ends-session", 3, [{"id": device, "measures": ["branin"]}], 3))
    sim_client = unique("sim")
    with SimInstrument(device, "branin", {"duration_s": [1.0, 1.0]}, settings, client_id=sim_client):
        stopped = run(["run", str(spec), "--no-simulators", "--quiet", "--max-runtime", "1"], env)
        assert stopped.returncode == 1 and status("ends-session", env)["status"] == "running", stopped.stderr
        orchestrator = _persistent_client_ids(restartable_mosquitto.log.read_text(), {sim_client})
        assert len(orchestrator) == 1, restartable_mosquitto.log.read_text()
        (client_id,) = orchestrator
        assert _session_present(url, client_id)  # stopped: kept for the resume
        finished = run(["resume", "ends-session", "--no-simulators", "--quiet"], env)
        assert finished.returncode == 0, finished.stderr
    assert status("ends-session", env)["status"] == "finished"
    assert _persistent_client_ids(restartable_mosquitto.log.read_text(), {sim_client}) == {client_id}
    assert not _session_present(url, client_id)
