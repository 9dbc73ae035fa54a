"""A campaign outlives the code that started it: logs written by an earlier version (kept in
tests/data/legacy/, see its README) fold, resume and finish under this one, nothing run twice."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from campaigns import TrialCompleted, fold
from simulators import read_completions
from tests.e2e.cli import read_events, run, shared_env, start, status

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy"


def load_legacy(env: dict[str, str], name: str) -> list[dict[str, Any]]:
    """Put an old log, documents exactly as stored then, into the database of ``env``."""
    docs = [json.loads(line) for line in (LEGACY / f"{name}.jsonl").read_text().splitlines()]
    client: MongoClient[dict[str, Any]] = MongoClient(env["CLOSEDLOOP_MONGODB_URI"])
    try:
        client[env["CLOSEDLOOP_MONGODB_DATABASE"]]["events"].insert_many([dict(d) for d in docs])
    finally:
        client.close()
    return docs


def raw_log(env: dict[str, str], campaign: str) -> list[dict[str, Any]]:
    client: MongoClient[dict[str, Any]] = MongoClient(env["CLOSEDLOOP_MONGODB_URI"])
    try:
        events = client[env["CLOSEDLOOP_MONGODB_DATABASE"]]["events"]
        return list(events.find({"campaign_id": campaign}, {"_id": 0}).sort("seq", 1))
    finally:
        client.close()


def completed_once(events: list[Any], trials: int) -> None:
    per_trial = Counter(e.trial_id for e in events if isinstance(e, TrialCompleted))
    assert sorted(per_trial, key=int) == [str(i) for i in range(trials)]
    assert set(per_trial.values()) == {1}, per_trial


@pytest.mark.timeout(300)
def test_a_finished_legacy_campaign_folds_and_reports(tmp_path: Path, mosquitto_url: str, mongo_uri: str,
                                                       prefect_server: dict[str, str]) -> None:
    env = shared_env(tmp_path / "home", prefect_server, mongo_uri, mosquitto_url)
    docs = load_legacy(env, "finished")
    state = fold(read_events(env, "legacy-finished"))
    assert state.last_seq == len(docs) and state.status == "finished" and state.count("completed") == 8
    s = status("legacy-finished", env)
    assert s["trials"]["completed"] == 8 and s["status"] == "finished"
    assert s["best"]["measurements"]["branin"] == pytest.approx(
        min(m["branin"]["mean"] for d in docs if d["kind"] == "TrialCompleted" for m in [d["measurements"]]))
    out = run(["resume", "legacy-finished"], env, timeout=120)
    assert out.returncode == 1 and "already finished" in out.stderr
    assert len(read_events(env, "legacy-finished")) == len(docs)  # nothing appended


@pytest.mark.timeout(420)
def test_a_legacy_campaign_stopped_with_trials_in_flight_resumes_and_finishes(
        tmp_path: Path, mosquitto_url: str, mongo_uri: str, prefect_server: dict[str, str]) -> None:
    home = tmp_path / "home"
    env = shared_env(home, prefect_server, mongo_uri, mosquitto_url)
    docs = load_legacy(env, "in_flight")
    shutil.copytree(LEGACY / "in_flight_devices", home / "devices")
    before = fold(read_events(env, "legacy-in-flight"))
    assert [t.trial_id for t in before.in_flight] == ["6", "7"]
    assert before.spec is not None and before.spec.batch_size == 1  # the change the old version logged
    out = run(["resume", "legacy-in-flight", "--quiet"], env, timeout=360)
    assert out.returncode == 0, out.stderr
    events = read_events(env, "legacy-in-flight")
    assert raw_log(env, "legacy-in-flight")[: len(docs)] == docs  # the old events are kept as they were
    state = fold(events)
    assert state.status == "finished" and state.count("completed") == 8
    completed_once(events, 8)
    # The two trials in flight went out again with the request ids the old version logged.
    for t in ("6", "7"):
        assert state.trials[t].request_id == f"legacy-in-flight:{t}:1"
    for device in ("sim-a", "sim-b"):
        runs = read_completions(home / "devices" / f"{device}.jsonl")
        assert runs and set(runs.values()) == {1}, (device, runs)


@pytest.mark.timeout(420)
def test_a_legacy_campaign_waiting_for_approval_resumes_and_finishes(
        tmp_path: Path, mosquitto_url: str, mongo_uri: str, prefect_server: dict[str, str]) -> None:
    home = tmp_path / "home"
    env = shared_env(home, prefect_server, mongo_uri, mosquitto_url)
    load_legacy(env, "awaiting_approval")
    state = fold(read_events(env, "legacy-approval"))
    assert list(state.open_approvals) == ["a2"]
    pending = run(["pending"], env, timeout=60)
    assert pending.returncode == 0 and "a2" in pending.stdout
    # Answered with no orchestrator running: the command writes the decision to the log itself.
    out = run(["approve", "legacy-approval", "--approval", "a2", "--reason", "fine", "--by", "tester"], env)
    assert out.returncode == 0, out.stderr
    orch = start(["resume", "legacy-approval", "--quiet"], env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # first_n: 4 — trial 3 asks for approval too, in this run.
        deadline = time.monotonic() + 240
        while not (opened := [a for a in fold(read_events(env, "legacy-approval")).open_approvals if a != "a2"]):
            assert orch.poll() is None, orch.communicate()
            assert time.monotonic() < deadline, "trial 3's approval request never came"
            time.sleep(0.3)
        approval = opened[0]
        listed = run(["pending"], env, timeout=60).stdout  # as a person sees it
        assert re.search(rf"^legacy-approval  approval {approval}  since", listed, re.MULTILINE), listed
        out = run(["approve", "legacy-approval", "--approval", approval, "--reason", "fine", "--by", "tester"], env)
        assert out.returncode == 0, out.stderr
        _, err = orch.communicate(timeout=300)
        assert orch.returncode == 0, err
    finally:
        if orch.poll() is None:
            orch.kill()
    events = read_events(env, "legacy-approval")
    state = fold(events)
    assert state.status == "finished" and state.count("completed") == 8 and not state.open_approvals
    completed_once(events, 8)


@pytest.mark.timeout(420)
def test_legacy_people_and_their_replay_fold_report_and_replay_again(
        tmp_path: Path, mosquitto_url: str, mongo_uri: str, prefect_server: dict[str, str]) -> None:
    """Written by cb33d45: an approval answered with an edit and a reject, a bounds change mid-run,
    and a counterfactual replay of it that links its source and replayed the people."""
    home = tmp_path / "home"
    env = shared_env(home, prefect_server, mongo_uri, mosquitto_url)
    people = load_legacy(env, "people")
    replayed = load_legacy(env, "people_replay")
    src = fold(read_events(env, "legacy-people"))
    assert src.status == "finished" and src.count("completed") == 8 and src.count("rejected") == 1
    assert src.trials["0"].parameters == {"x1": 1.0, "x2": 2.5}  # the person's edit
    assert src.spec is not None and src.spec.parameters[0].bounds == (-2.0, 8.0)  # the change
    rep = fold(read_events(env, "legacy-people-replay"))
    assert rep.status == "finished" and rep.source is not None and rep.source.campaign_id == "legacy-people"
    assert rep.trials["0"].parameters == {"x1": 1.0, "x2": 2.5} and rep.count("rejected") == 1
    history = run(["history", "legacy-people-replay"], env, timeout=60)
    assert history.returncode == 0 and "rejected 1" in history.stdout and "x1=-2:8" in history.stdout
    for cid, docs in (("legacy-people", people), ("legacy-people-replay", replayed)):
        out = run(["resume", cid], env, timeout=120)
        assert out.returncode == 1 and "already finished" in out.stderr
        assert len(read_events(env, cid)) == len(docs)  # nothing appended
    # The old log is a source for this version's replay: the recorded trials run again, once each.
    out = run(["replay", "legacy-people", "--mode", "faithful", "--campaign-id", "again", "--quiet"], env, timeout=360)
    assert out.returncode == 0, out.stderr
    again = read_events(env, "again")
    state = fold(again)
    assert state.status == "finished" and state.source is not None and state.source.campaign_id == "legacy-people"
    completed_once(again, state.count("completed"))
    assert [state.trials[str(i)].parameters for i in range(3)] == [
        src.trials[t].parameters for t in ("0", "2", "3")]  # the dispatched ones, in order
    assert raw_log(env, "legacy-people") == people  # the source is only read


@pytest.mark.timeout(420)
def test_a_legacy_campaign_killed_after_approvals_and_a_change_resumes_and_finishes(
        tmp_path: Path, mosquitto_url: str, mongo_uri: str, prefect_server: dict[str, str]) -> None:
    """Written by cb33d45: an approval with an edit, `change --method sobol` mid-run, then kill -9
    with trial 7 suggested and dispatched and trial 6 running; crashed_devices/ holds the
    instruments' records at that moment (both trials started, neither finished)."""
    home = tmp_path / "home"
    env = shared_env(home, prefect_server, mongo_uri, mosquitto_url)
    docs = load_legacy(env, "crashed")
    shutil.copytree(LEGACY / "crashed_devices", home / "devices")
    before = fold(read_events(env, "legacy-crashed"))
    assert sorted(t.trial_id for t in before.in_flight) == ["6", "7"]
    assert before.trials["1"].parameters == {"x1": 3.0, "x2": 2.0}  # the person's edit
    assert before.spec is not None and before.spec.optimizer.method == "sobol"  # the change
    sent = {t: before.trials[t].request_id for t in ("6", "7")}
    out = run(["resume", "legacy-crashed", "--quiet"], env, timeout=360)
    assert out.returncode == 0, out.stderr
    events = read_events(env, "legacy-crashed")
    assert raw_log(env, "legacy-crashed")[: len(docs)] == docs
    state = fold(events)
    assert state.status == "finished" and state.count("completed") == 8
    completed_once(events, 8)
    assert {t: state.trials[t].request_id for t in ("6", "7")} == sent  # answered under the old ids
    for device in ("sim-a", "sim-b"):
        runs = read_completions(home / "devices" / f"{device}.jsonl")
        assert runs and set(runs.values()) == {1}, (device, runs)
