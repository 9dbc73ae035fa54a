"""Humans in the loop: approvals that survive restarts and need no process to wait, answered
from another process; mid-campaign changes that the optimizer obeys, before and after a resume."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from campaigns import ApprovalGiven, ApprovalRequested, CampaignChanged, TrialDispatched, TrialsSuggested, fold
from tests.e2e.cli import CLOSEDLOOP, cli_env, run, status, write_spec
from tests.e2e.test_crash_resume import log_events, status_or_none, wait_for

SPEC: dict[str, Any] = {
    "name": "approvals",
    "seed": 3,
    "parameters": [{"name": "x1", "type": "float", "bounds": [-5.0, 10.0]},
                   {"name": "x2", "type": "float", "bounds": [0.0, 15.0]}],
    "objectives": [{"name": "branin", "minimize": True}],
    "budget": {"max_trials": 2},  # a rejected trial does not count: trials 0 and 1 asked, then 2
    "batch_size": 2,
    "trial_timeout_s": 60,
    "approval": "every_batch",
    "optimizer": {"method": "sobol"},
    "devices": [{"id": f"sim-{i}", "simulator": "branin", "options": {"duration_s": [0.1, 0.3], "seed": i}}
                for i in (1, 2)],
}


def waiting(campaign: str, env: dict[str, str], trials: list[str]) -> bool:
    s = status_or_none(campaign, env)
    return bool(s) and any(a["trial_ids"] == trials for a in s["approvals_waiting"])  # type: ignore[index]


@pytest.mark.timeout(600)
def test_approval_waits_through_kills_and_is_answered_from_another_process(
        tmp_path: Path, prefect_server: dict[str, str]) -> None:
    home = tmp_path / "home"
    env = cli_env(home, prefect_server)
    spec = write_spec(tmp_path / "spec.yaml", SPEC)
    first = subprocess.Popen([CLOSEDLOOP, "run", str(spec), "--quiet"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: waiting("approvals", env, ["0", "1"]), 240, "the first approval request")
    first.send_signal(signal.SIGKILL)
    first.wait(30)

    # Resumed while waiting: it keeps waiting, and dispatches nothing.
    second = subprocess.Popen([CLOSEDLOOP, "resume", "approvals", "--quiet"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (s := status_or_none("approvals", env)) and s["runs"] == 2, 240, "the resumed run")
    pending = run(["pending"], env)
    assert "approval a0" in pending.stdout and "trial 0:" in pending.stdout and "trial 1:" in pending.stdout
    assert not [e for e in log_events(home, "approvals") if isinstance(e, TrialDispatched)]

    # Answered from another process while the resumed orchestrator runs: one edit, one rejection.
    out = run(["approve", "approvals", "--edit", "0", "x1=1.5", "--reject", "1",
               "--reason", "x1 above 5 risks a runaway", "--by", "ana"], env)
    assert out.returncode == 0, out.stderr
    assert "applied by the running orchestrator" in out.stdout

    # Trial 0 runs; the free instrument's next trial (2) is asked for in its own request.
    wait_for(lambda: waiting("approvals", env, ["2"]), 240, "the second approval request")
    second.send_signal(signal.SIGKILL)
    second.wait(30)

    # Nobody runs the campaign now: the answer goes straight to the log, and resume carries on.
    out = run(["approve", "approvals", "--trial", "2", "--reason", "looks safe", "--by", "bob"], env)
    assert out.returncode == 0, out.stderr
    assert "no orchestrator is running it" in out.stdout
    out = run(["resume", "approvals", "--quiet"], env)
    assert out.returncode == 0, out.stderr

    events = log_events(home, "approvals")
    state = fold(events)
    assert state.status == "finished"
    assert {t: s.status for t, s in state.trials.items()} == {"0": "completed", "1": "rejected", "2": "completed"}
    # Exactly the approved and edited trials ran, the edit with the person's value.
    assert {e.trial_id for e in events if isinstance(e, TrialDispatched)} == {"0", "2"}
    assert state.trials["0"].parameters["x1"] == 1.5 and state.trials["0"].generator == "human"
    assert state.trials["0"].suggested_parameters is not None and state.trials["0"].suggested_parameters["x1"] != 1.5
    decisions = [e for e in events if isinstance(e, ApprovalGiven)]
    assert [(d.actor, d.reason, d.rejected) for d in decisions] == [
        ("user:ana", "x1 above 5 risks a runaway", ["1"]), ("user:bob", "looks safe", [])]
    assert len([e for e in events if isinstance(e, ApprovalRequested)]) == 2

    history = run(["history", "approvals"], env).stdout
    assert "user:ana" in history and "edited 0 (x1=1.5)" in history and "rejected 1" in history
    assert "x1 above 5 risks a runaway" in history


@pytest.mark.timeout(600)
def test_changed_bounds_hold_for_every_later_suggestion_also_after_resume(
        tmp_path: Path, prefect_server: dict[str, str]) -> None:
    home = tmp_path / "home"
    env = cli_env(home, prefect_server)
    data = {**SPEC, "name": "narrowed", "approval": "never", "budget": {"max_trials": 16}, "optimizer": {},
            "devices": [{"id": f"sim-{i}", "simulator": "branin", "options": {"duration_s": [0.4, 0.8], "seed": i}}
                        for i in (1, 2)]}
    spec = write_spec(tmp_path / "spec.yaml", data)
    first = subprocess.Popen([CLOSEDLOOP, "run", str(spec), "--quiet"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (s := status_or_none("narrowed", env)) and s["trials"]["completed"] >= 3, 240, "3 trials")
    out = run(["change", "narrowed", "--set-bounds", "x1=0:2", "--reason", "the reactor limits x1", "--by", "cy"], env)
    assert out.returncode == 0, out.stderr
    wait_for(lambda: (s := status_or_none("narrowed", env)) and s["trials"]["total"] >= 9, 300, "suggestions after the change")
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    out = run(["resume", "narrowed", "--quiet"], env)
    assert out.returncode == 0, out.stderr

    events = log_events(home, "narrowed")
    change = next(e for e in events if isinstance(e, CampaignChanged))
    later = [t for e in events if isinstance(e, TrialsSuggested) and e.seq > change.seq for t in e.trials]
    assert len(later) >= 6 and any(t.generator == "botorch" for t in later)
    assert all(0.0 <= float(t.parameters["x1"]) <= 2.0 for t in later), [t.parameters for t in later]
    earlier = [t for e in events if isinstance(e, TrialsSuggested) and e.seq < change.seq for t in e.trials]
    assert any(not 0.0 <= float(t.parameters["x1"]) <= 2.0 for t in earlier)  # the change did change something
    assert status("narrowed", env)["status"] == "finished"
    history = run(["history", "narrowed"], env).stdout
    assert "changed: bounds x1=0:2" in history and "the reactor limits x1" in history and "user:cy" in history
