"""Stops lose nothing: SIGKILL the orchestrator mid-campaign, resume, and check the log and the
instruments' own records; two concurrent runs; a result published while nobody listens."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from campaigns import (
    LateResultRecorded,
    MessageRejected,
    RunStarted,
    TrialCompleted,
    TrialDispatched,
    fold,
)
from simulators import read_completions, read_executions
from storage import EmbeddedMongo, MongoEventStore
from tests.e2e.cli import cli_env, run, start, status, status_now, write_spec

SPEC: dict[str, Any] = {
    "name": "crashy",
    "seed": 4,
    "parameters": [{"name": "x1", "type": "float", "bounds": [-5.0, 10.0]},
                   {"name": "x2", "type": "float", "bounds": [0.0, 15.0]}],
    "objectives": [{"name": "branin", "minimize": True}],
    "budget": {"max_trials": 10},
    "batch_size": 2,
    "trial_timeout_s": 60,
    "devices": [{"id": "dev-a", "measures": ["branin"]}, {"id": "dev-b", "measures": ["branin"]}],
    "optimizer": {"method": "sobol"},
}


def start_sim(device: str, env: dict[str, str], record: Path) -> Any:
    """`closedloop sim` for ``device``, in a session of its own (stopped with ``os.killpg``)."""
    return start(["sim", "branin", "--device-id", device, "--record", str(record),
                  "--option", "duration_s=[0.8, 1.5]", "--option", f"seed={abs(hash(device)) % 1000}"],
                 env, stderr=subprocess.DEVNULL, text=True, start_new_session=True)


def wait_for(pred, timeout: float, what: str) -> Any:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def assert_each_request_ran_once(records: Path, devices: tuple[str, ...], events: list[Any]) -> None:
    """The instruments' own records (``records/<device>.jsonl``): every request they started they
    finished, exactly once, and every result they recorded is in the log (none lost)."""
    dispatched = {e.request_id for e in events if isinstance(e, TrialDispatched)}
    logged = {e.request_id for e in events if isinstance(e, TrialCompleted | LateResultRecorded)}
    for device in devices:
        started = read_executions(records / f"{device}.jsonl")
        finished = read_completions(records / f"{device}.jsonl")
        assert finished and set(started) == set(finished), device
        assert set(started.values()) == {1} and set(finished.values()) == {1}  # nothing ran twice
        assert set(finished) <= logged and set(finished) <= dispatched


def log_events(home: Path, campaign: str) -> list[Any]:
    """The campaign's log, read through the same embedded server a user's CLI would use."""
    with EmbeddedMongo(home) as mongo, MongoEventStore(mongo.uri) as store:
        return store.read(campaign)


def status_or_none(campaign: str, env: dict[str, str]) -> dict[str, Any] | None:
    return status_now(campaign, env)


@pytest.mark.timeout(600)
def test_sigkill_mid_campaign_then_resume(tmp_path: Path, mosquitto_url: str, prefect_server: dict[str, str]) -> None:
    home = tmp_path / "home"
    env = cli_env(home, prefect_server, CLOSEDLOOP_MQTT_URL=mosquitto_url)
    # A budget the first run cannot reach before the kill, however slow the status polls; the
    # budget is brought down to 10 (or what was already used) before the resume.
    spec = write_spec(tmp_path / "spec.yaml", {**SPEC, "budget": {"max_trials": 1000}})
    sims = {d: start_sim(d, env, tmp_path / f"{d}.jsonl") for d in ("dev-a", "dev-b")}
    try:
        orch = start(["run", str(spec), "--no-simulators", "--quiet"], env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        s = wait_for(lambda: (x := status_or_none("crashy", env)) and x["trials"]["completed"] >= 3
                     and x["trials"]["running"] >= 1 and x, 240, "trials in flight")
        # A second run of the same campaign, meanwhile, is refused in one line naming the owner
        # (and writes nothing: two RunStarted below, the killed run's and the resume's).
        second = run(["run", str(spec), "--no-simulators", "--quiet"], env)
        assert second.returncode != 0 and orch.poll() is None
        assert "is being run by" in second.stderr and f":{orch.pid}" in second.stderr, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        orch.send_signal(signal.SIGKILL)
        orch.wait(timeout=30)
        assert s["status"] == "running"
        budget = max(10, fold(log_events(home, "crashy")).budget_used)
        out = run(["change", "crashy", "--max-trials", str(budget), "--reason", "test"], env)
        assert out.returncode == 0, out.stderr
        # The instruments finish the trials they were running while no orchestrator listens.
        wait_for(lambda: all(set(read_executions(tmp_path / f"{d}.jsonl")) == set(read_completions(tmp_path / f"{d}.jsonl"))
                             for d in sims), 120, "the instruments to finish their trials")

        out = run(["resume", "crashy", "--no-simulators", "--quiet"], env)
        assert out.returncode == 0, out.stderr
    finally:
        for p in sims.values():
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=20)

    final = status("crashy", env)
    assert final["status"] == "finished" and final["trials"]["completed"] == budget and final["trials"]["failed"] == 0
    events = log_events(home, "crashy")
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # no fork, no gap
    assert sum(isinstance(e, RunStarted) for e in events) == 2
    completed = Counter(e.trial_id for e in events if isinstance(e, TrialCompleted))
    assert set(completed.values()) == {1} and len(completed) == budget  # each trial's result once
    assert_each_request_ran_once(tmp_path, ("dev-a", "dev-b"), events)


# A device that runs each request id once and ignores repeats (it keeps no results to answer
# from), so the only way its result reaches the log is the broker's queue for the
# orchestrator's persistent session.
ONCE_DEVICE_SH = r"""
set -u
H="$1"; P="$2"; SEEN="$3"; GO="$4"; SENT="$5"; D=closedloop/devices/once-dev
touch "$SEEN"
mosquitto_pub -h "$H" -p "$P" -q 1 -r -t "$D/status" -m '{"state": "idle", "device_id": "once-dev", "measures": ["y"]}'
mosquitto_sub -h "$H" -p "$P" -q 1 -t "$D/requests" | while read -r line; do
  rid=$(printf '%s' "$line" | sed -E 's/.*"request_id": *"([^"]*)".*/\1/')
  tid=$(printf '%s' "$line" | sed -E 's/.*"trial_id": *"([^"]*)".*/\1/')
  grep -qxF "$rid" "$SEEN" && continue
  echo "$rid" >> "$SEEN"
  mosquitto_pub -h "$H" -p "$P" -q 1 -r -t "$D/status" -m '{"state": "busy", "device_id": "once-dev", "measures": ["y"]}'
  while [ ! -e "$GO" ]; do sleep 0.1; done  # the measurement ends when the test says (after the kill)
  mosquitto_pub -h "$H" -p "$P" -q 1 -t "$D/results" -m "{\"kind\": \"trial_result\", \"request_id\": \"$rid\", \"trial_id\": \"$tid\", \"status\": \"completed\", \"measurements\": {\"y\": 1.25}}"
  touch "$SENT"
  mosquitto_pub -h "$H" -p "$P" -q 1 -r -t "$D/status" -m '{"state": "idle", "device_id": "once-dev", "measures": ["y"]}'
done
"""


@pytest.mark.timeout(300)
def test_result_published_while_orchestrator_down_is_logged(tmp_path: Path, mosquitto_url: str,
                                                            prefect_server: dict[str, str]) -> None:
    home = tmp_path / "home"
    env = cli_env(home, prefect_server, CLOSEDLOOP_MQTT_URL=mosquitto_url)
    spec = write_spec(tmp_path / "spec.yaml", {
        "name": "offline-result", "seed": 1,
        "parameters": [{"name": "x", "type": "float", "bounds": [0.0, 1.0]}],
        "objectives": [{"name": "y", "minimize": True}],
        "budget": {"max_trials": 1}, "trial_timeout_s": 60,
        "devices": [{"id": "once-dev", "measures": ["y"]}], "optimizer": {"method": "sobol"},
    })
    u = urlsplit(mosquitto_url)
    script = tmp_path / "once.sh"
    script.write_text(ONCE_DEVICE_SH)
    seen, go, sent = tmp_path / "seen.txt", tmp_path / "go", tmp_path / "sent"
    device = subprocess.Popen(["bash", str(script), str(u.hostname), str(u.port), str(seen), str(go), str(sent)],
                              start_new_session=True)
    try:
        orch = start(["run", str(spec), "--no-simulators", "--quiet"], env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: seen.exists() and seen.read_text().strip(), 240, "the device to get the request")
        orch.send_signal(signal.SIGKILL)
        orch.wait(timeout=30)
        go.touch()  # the device publishes its result now, to a broker with nobody subscribed
        wait_for(sent.exists, 120, "the device to publish its result")
        out = run(["resume", "offline-result", "--no-simulators", "--quiet"], env)
        assert out.returncode == 0, out.stderr
    finally:
        os.killpg(device.pid, signal.SIGTERM)
        device.wait(timeout=10)
    ran = seen.read_text().split()  # the device ran it once, ignored the re-send
    assert len(ran) == 1 and re.fullmatch(r"offline-result:[0-9a-f]{16}:0:1", ran[0]), ran
    events = log_events(home, "offline-result")
    done = [e for e in events if isinstance(e, TrialCompleted)]
    assert len(done) == 1 and done[0].measurements["y"].mean == 1.25
    assert not [e for e in events if isinstance(e, MessageRejected)]
