"""Humans in the loop: approvals that survive restarts and need no process to wait, answered
from another process; mid-campaign changes that the optimizer obeys, before and after a resume."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from campaigns import (
    ApprovalGiven,
    ApprovalRejected,
    ApprovalRequested,
    CampaignChanged,
    TrialDispatched,
    TrialsSuggested,
    fold,
)
from tests.e2e.cli import read_events, run, shared_env, start, status, write_spec
from tests.e2e.test_crash_resume import status_or_none, wait_for

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
        tmp_path: Path, prefect_server: dict[str, str], mongo_uri: str, mosquitto_url: str) -> None:
    home = tmp_path / "home"
    env = shared_env(home, prefect_server, mongo_uri, mosquitto_url)
    spec = write_spec(tmp_path / "spec.yaml", SPEC)
    first = start(["run", str(spec), "--quiet"], env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: waiting("approvals", env, ["0", "1"]), 240, "the first approval request")
    first.send_signal(signal.SIGKILL)
    first.wait(30)

    # Resumed while waiting: it keeps waiting, and dispatches nothing.
    second = start(["resume", "approvals", "--quiet"], env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (s := status_or_none("approvals", env)) and s["runs"] == 2, 240, "the resumed run")
    pending = run(["pending"], env)
    trials = [line.split()[0] for line in pending.stdout.splitlines()[4:]]  # heading, best, table header, rule
    assert "approval a0" in pending.stdout and trials[:2] == ["0", "1"], pending.stdout
    # What a person decides on: the bounds, the model's prediction (none yet: Sobol), the best so far.
    assert "x1 [-5, 10]" in pending.stdout and "x2 [0, 15]" in pending.stdout, pending.stdout
    assert "no model yet (Sobol)" in pending.stdout and "best so far (observed): branin: nothing measured yet" \
        in pending.stdout, pending.stdout
    assert not [e for e in read_events(env, "approvals") if isinstance(e, TrialDispatched)]

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

    events = read_events(env, "approvals")
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
    assert [line.split()[4] for line in history.splitlines() if "user:ana" in line] == ["cli"], history  # via


@pytest.mark.timeout(600)
def test_changed_bounds_hold_for_every_later_suggestion_also_after_resume(
        tmp_path: Path, prefect_server: dict[str, str], mongo_uri: str, mosquitto_url: str) -> None:
    home = tmp_path / "home"
    env = shared_env(home, prefect_server, mongo_uri, mosquitto_url)
    # A budget the first run cannot reach before the test kills it, however fast the trials or
    # slow the status polls (30 trials once finished first); the resume gets two more trials.
    data = {**SPEC, "name": "narrowed", "approval": "never", "budget": {"max_trials": 1000}, "optimizer": {},
            "devices": [{"id": f"sim-{i}", "simulator": "branin", "options": {"duration_s": [0.2, 0.4], "seed": i}}
                        for i in (1, 2)]}
    spec = write_spec(tmp_path / "spec.yaml", data)
    first = start(["run", str(spec), "--quiet"], env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (s := status_or_none("narrowed", env)) and s["trials"]["completed"] >= 3, 240, "3 trials")
    out = run(["change", "narrowed", "--set-bounds", "x1=0:2", "--reason", "the reactor limits x1", "--by", "cy"], env)
    assert out.returncode == 0, out.stderr
    changed_at = status("narrowed", env)["trials"]["total"]  # every trial from here on was suggested after it
    wait_for(lambda: (s := status_or_none("narrowed", env)) and s["trials"]["total"] >= changed_at + 4, 300,
             "suggestions after the change")
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    budget = fold(read_events(env, "narrowed")).budget_used + 2
    out = run(["change", "narrowed", "--max-trials", str(budget), "--reason", "test"], env)
    assert out.returncode == 0, out.stderr
    out = run(["resume", "narrowed", "--quiet"], env)
    assert out.returncode == 0, out.stderr

    events = read_events(env, "narrowed")
    change = next(e for e in events if isinstance(e, CampaignChanged))
    later = [t for e in events if isinstance(e, TrialsSuggested) and e.seq > change.seq for t in e.trials]
    assert len(later) >= 6 and any(t.generator == "botorch" for t in later)
    assert all(0.0 <= float(t.parameters["x1"]) <= 2.0 for t in later), [t.parameters for t in later]
    earlier = [t for e in events if isinstance(e, TrialsSuggested) and e.seq < change.seq for t in e.trials]
    assert any(not 0.0 <= float(t.parameters["x1"]) <= 2.0 for t in earlier)  # the change did change something
    assert status("narrowed", env)["status"] == "finished"
    history = run(["history", "narrowed"], env).stdout
    assert "changed: bounds x1=0:2" in history and "the reactor limits x1" in history and "user:cy" in history


def paused_approval_run(name: str) -> Any:
    """The paused approval flow run of that name, through Prefect's API (None until it exists)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]),
                                          state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))),
            limit=5, sort=FlowRunSort.START_TIME_DESC)
        run_ = runs[0] if runs else None
        if run_ is None or not (run_.state and run_.state.state_details.run_input_keyset):
            return None
        return run_


@pytest.mark.timeout(600)
def test_answering_in_prefect_has_the_same_effect_as_the_cli(tmp_path: Path, prefect_env: dict[str, str],
                                                             mongo_uri: str, mosquitto_url: str) -> None:
    from prefect.flow_runs import resume_flow_run

    home = tmp_path / "home"
    env = shared_env(home, prefect_env, mongo_uri, mosquitto_url)
    spec = write_spec(tmp_path / "spec.yaml", {**SPEC, "name": "via-prefect"})
    orch = start(["run", str(spec), "--quiet"], env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The request is a paused flow run with an input form in Prefect...
        first = wait_for(lambda: paused_approval_run("approval/via-prefect/a0"), 240, "a paused approval flow run")
        assert first.state.type.value == "PAUSED" and first.parent_task_run_id is not None  # a child of the campaign run
        # ...and an answer given through Prefect's API is logged like a CLI answer.
        resume_flow_run(first.id, run_input={"decision": "approve", "edits": "0: x1=1.5", "reject": ["1"],
                                             "reason": "x1 above 5 risks a runaway", "by": "dee"})
        second = wait_for(lambda: paused_approval_run("approval/via-prefect/a2"), 240, "the second approval run")
        resume_flow_run(second.id, run_input={"decision": "approve", "reason": "looks safe", "by": "dee"})
        out, err = orch.communicate(timeout=300)
        assert orch.returncode == 0, err
    finally:
        if orch.poll() is None:
            orch.kill()
    events = read_events(env, "via-prefect")
    state = fold(events)
    assert {t: s.status for t, s in state.trials.items()} == {"0": "completed", "1": "rejected", "2": "completed"}
    assert state.trials["0"].parameters["x1"] == 1.5 and state.trials["0"].generator == "human"
    decisions = [e for e in events if isinstance(e, ApprovalGiven)]
    assert [(d.actor, d.via, d.reason, d.rejected) for d in decisions] == [
        ("user:dee", "prefect", "x1 above 5 risks a runaway", ["1"]), ("user:dee", "prefect", "looks safe", [])]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("on_timeout", ["approve", "reject"])
def test_an_unanswered_approval_follows_its_timeout_policy(
        on_timeout: str, tmp_path: Path, prefect_server: dict[str, str], mongo_uri: str, mosquitto_url: str) -> None:
    env = shared_env(tmp_path / "home", prefect_server, mongo_uri, mosquitto_url)
    name = f"timeout-{on_timeout}"
    spec = write_spec(tmp_path / "spec.yaml", {
        **SPEC, "name": name, "budget": {"max_trials": 2},
        "approval": {"every_batch": True, "timeout_s": 2, "on_timeout": on_timeout}})
    if on_timeout == "approve":
        out = run(["run", str(spec), "--quiet"], env)
    else:
        # Rejected trials do not count against the budget, so the run would go on: it is stopped
        # (SIGTERM, as a service manager stops it) once two requests have timed out, seen in its
        # log (a --max-runtime of 12 s could end a slow run before the second timeout).
        proc = start(["run", str(spec), "--quiet"], env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: len([e for e in read_events(env, name) if isinstance(e, ApprovalRejected)]) >= 2,
                     240, "two timed-out approval requests")
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    events = read_events(env, name)
    decisions = [e for e in events if isinstance(e, ApprovalGiven | ApprovalRejected)]
    assert decisions and all(d.via == "timeout" and d.actor == "orchestrator" for d in decisions)
    assert all("on_timeout is " + on_timeout in d.reason for d in decisions)
    dispatched = {e.trial_id for e in events if isinstance(e, TrialDispatched)}
    if on_timeout == "approve":
        assert out.returncode == 0, out.stderr
        assert fold(events).status == "finished" and dispatched == {"0", "1"}
    else:
        state = fold(events)
        still_waiting = {t for a in state.open_approvals.values() for t in a.trial_ids}
        assert not dispatched and len(decisions) >= 2
        assert all(t.status == "rejected" for t in state.trials.values() if t.trial_id not in still_waiting)
