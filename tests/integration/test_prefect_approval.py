"""Approvals in Prefect's UI: a paused child flow run with an input form, answered through
Prefect's API (what the UI's "Resume" form does), against a real `prefect server start`."""

from __future__ import annotations

import contextvars
import threading
import time
from typing import Any
from uuid import UUID

import pytest

pytestmark = pytest.mark.usefixtures("prefect_env")

TRIALS = [{"trial_id": "3", "parameters": {"x1": 0.5, "x2": 1.0}},
          {"trial_id": "4", "parameters": {"x1": 2.0, "x2": 7.5}},
          {"trial_id": "5", "parameters": {"x1": 9.0, "x2": 0.0}}]
ANSWER_WITH = "closedloop approve c1 --approval a3 --reason ..."


def _wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _read(flow_run_id: str) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(flow_run_id))


def _paused_with_form(approvals: Any, approval_id: str, pause_key: str | None = None) -> tuple[str, dict[str, Any], str]:
    """Wait until the approval run is Paused (under `pause_key`, if given) with its form saved;
    (flow run id, schema, description). Prefect sets the Paused state first and saves the form
    just after, and a resume in between is refused ("Run input schema not found")."""
    from prefect.client.orchestration import get_client

    run_id = _wait_for(lambda: approvals.flow_run_id(approval_id), 120, "the approval flow run")
    run = _wait_for(lambda: (r := _read(run_id)).state.is_paused()
                    and (pause_key is None or r.state.state_details.pause_key == pause_key) and r,
                    60, f"the Paused state {pause_key or ''}")
    keyset = run.state.state_details.run_input_keyset
    assert keyset, "paused without an input form"

    def form() -> tuple[Any, Any] | None:
        with get_client(sync_client=True) as client:
            try:
                return (client.read_flow_run_input(UUID(run_id), keyset["schema"]),
                        client.read_flow_run_input(UUID(run_id), keyset["description"]))
            except Exception:  # noqa: BLE001 - saved just after the state changes
                return None

    schema_json, description = _wait_for(form, 120, "the form's schema")
    import json

    return run_id, json.loads(schema_json), json.loads(description)


def _campaign_like_flow(body: Any) -> Any:
    """A stand-in for the `campaign` flow: opens the approval from inside a running flow run."""
    from prefect import flow

    @flow(name="campaign-standin", persist_result=False)
    def campaign_standin() -> Any:
        return body()

    return campaign_standin


def test_answer_in_prefect_becomes_the_cli_command() -> None:
    from prefect.flow_runs import resume_flow_run

    from flows.prefect.approval import PrefectApprovals, prefect_server_configured

    assert prefect_server_configured()
    got: list[dict[str, Any]] = []
    answered = threading.Event()

    def on_answer(command: dict[str, Any]) -> None:
        got.append(command)
        answered.set()

    approvals = PrefectApprovals("c1", on_answer, poll_interval=1, confirm_s=30)
    timings: dict[str, float] = {}

    def body() -> str:
        parent = __import__("prefect.context", fromlist=["x"]).get_run_context().flow_run.id
        t0 = time.monotonic()
        approvals.open("a3", TRIALS, "the first 3 trials need approval", ANSWER_WITH)
        run_id, schema, description = _paused_with_form(approvals, "a3")
        timings["paused"] = time.monotonic() - t0
        # Visible as the campaign's child, named after the campaign and approval, with its form.
        run = _read(run_id)
        assert run.name == "approval/c1/a3"
        assert run.parent_task_run_id is not None, "not a child of the campaign flow run"
        assert {"decision", "reject", "edits", "reason", "by"} <= set(schema["properties"])
        assert "x1" in description and "closedloop approve c1" in description
        # The campaign flow run keeps going while the approval waits.
        assert not answered.is_set()

        # Reason and name are required, as the CLI's --reason: Prefect's server refuses a resume
        # without them, or with blanks (the schema the UI renders), and the run stays paused.
        assert {"reason", "by"} <= set(schema["required"])
        for blank in ({"decision": "approve"}, {"decision": "approve", "reason": "  ", "by": "alice"}):
            with pytest.raises(RuntimeError, match="Cannot resume"):
                resume_flow_run(UUID(run_id), run_input=blank)
        assert _read(run_id).state.is_paused()

        # A wrong answer (unknown trial) is reported in the run's log and the form is offered again.
        resume_flow_run(UUID(run_id), run_input={"decision": "approve", "reject": ["99"], "reason": "r", "by": "b"})
        _, _, again = _paused_with_form(approvals, "a3", pause_key="answer-2")  # the form offered again
        assert "not accepted" in again and "trial 99 is not in approval a3" in again
        assert not got

        t1 = time.monotonic()
        resume_flow_run(UUID(run_id), run_input={"decision": "approve", "reject": ["5"], "edits": "4: x1=2.5, x2=1",
                                                  "reason": "x1 too high on 5", "by": "alice"})
        assert answered.wait(120), "the answer never reached on_answer"
        timings["answer"] = time.monotonic() - t1
        approvals.close("a3")  # what the loop does once it wrote ApprovalGiven
        _wait_for(lambda: _read(run_id).state.is_completed(), 120, "the approval run to complete")
        approvals.shutdown()
        return str(parent)

    _campaign_like_flow(body)()
    # Values as typed: the loop types them by their parameters, as it does a CLI answer's (campaigns.assignments).
    assert got == [{"approval_id": "a3", "approve": ["3"], "edit": {"4": {"x1": "2.5", "x2": "1"}}, "reject": ["5"],
                    "reason": "x1 too high on 5", "by": "alice", "via": "prefect"}]
    print(f"paused with form after {timings['paused']:.2f} s; answer reached on_answer after {timings['answer']:.2f} s")


def test_reject_all_in_prefect() -> None:
    from prefect.flow_runs import resume_flow_run

    from flows.prefect.approval import PrefectApprovals

    got: list[dict[str, Any]] = []

    def on_answer(command: dict[str, Any]) -> str:
        got.append(command)
        return "the campaign refused it: trial 3 is not in approval a1 any more"  # as `answer_through` returns

    approvals = PrefectApprovals("c2", on_answer, poll_interval=1, confirm_s=600)
    approvals.open("a1", TRIALS[:2], "every batch needs approval", ANSWER_WITH)
    try:
        run_id, _, _ = _paused_with_form(approvals, "a1")  # also works outside a flow run (no parent)
        resume_flow_run(UUID(run_id), run_input={"decision": "reject all", "reason": "too hot", "by": "bob"})
        _wait_for(lambda: got, 60, "on_answer")
        assert got[0] == {"approval_id": "a1", "approve": [], "edit": {}, "reject": ["3", "4"], "reason": "too hot",
                          "by": "bob", "via": "prefect"}
        # Refused by the campaign: the form comes back at once (not after confirm_s) with the reason.
        _, _, again = _paused_with_form(approvals, "a1", pause_key="answer-2")
        assert "not accepted:** the campaign refused it: trial 3 is not in approval a1 any more" in again
    finally:
        approvals.close("a1")
        approvals.shutdown()


def test_closed_elsewhere_completes_without_an_answer() -> None:
    from flows.prefect.approval import PrefectApprovals

    got: list[dict[str, Any]] = []
    approvals = PrefectApprovals("c1", got.append, poll_interval=1)

    def body() -> str:
        approvals.open("a7", TRIALS, "approval needed when x1 > 5", ANSWER_WITH)
        run_id, _, _ = _paused_with_form(approvals, "a7")
        t0 = time.monotonic()
        approvals.close("a7")  # decided through the CLI (or the timeout policy)
        run = _wait_for(lambda: (r := _read(run_id)).state.is_final() and r, 120, "the approval run to finish")
        print(f"closed run finished {time.monotonic() - t0:.2f} s after close()")
        assert run.state.is_completed() and run.state.name == "Decided elsewhere"
        approvals.shutdown()
        return run_id

    _campaign_like_flow(body)()
    assert got == []


def test_close_right_after_open_and_shutdown_never_hang() -> None:
    """close() racing the run's creation, and shutdown() with an approval still waiting."""
    from flows.prefect.approval import PrefectApprovals

    got: list[dict[str, Any]] = []
    approvals = PrefectApprovals("c3", got.append, poll_interval=1)
    approvals.open("a1", TRIALS[:1], "why", ANSWER_WITH)
    approvals.close("a1")
    approvals.open("a2", TRIALS[1:], "why", ANSWER_WITH)
    _paused_with_form(approvals, "a2")
    # It returns (a hang is what the timeout guards against; no claim about speed).
    # Run in this test's context (its Prefect settings point at the session server): a bare
    # thread would read the settings Prefect made at import, and start a local server.
    stopper = threading.Thread(target=contextvars.copy_context().run, args=(approvals.shutdown,), daemon=True)
    stopper.start()
    stopper.join(timeout=240)
    assert not stopper.is_alive(), "shutdown() hung"
    for aid in ("a1", "a2"):
        run_id = approvals.flow_run_id(aid)
        if run_id is not None:
            assert _read(run_id).state.is_final()
    assert got == []


def test_a_run_cancelled_elsewhere_ends_and_the_next_campaign_run_supersedes_stale_ones() -> None:
    """A crashed campaign run leaves its approval run Paused: the next run's open() cancels it.
    A run cancelled from outside (the UI's Cancel) ends its thread without an answer."""
    from flows.prefect.approval import PrefectApprovals

    got: list[dict[str, Any]] = []
    first = PrefectApprovals("c4", got.append, poll_interval=1)
    first.open("a1", TRIALS, "why", ANSWER_WITH)
    old_id, _, _ = _paused_with_form(first, "a1")

    second = PrefectApprovals("c4", got.append, poll_interval=1)  # the next campaign run
    second.open("a1", TRIALS, "why", ANSWER_WITH)
    new_id, _, _ = _paused_with_form(second, "a1")
    assert new_id != old_id
    assert _wait_for(lambda: (r := _read(old_id)).state.is_cancelled() and r, 60, "the stale run cancelled")  # deadline, not a speed claim
    thread = first._approvals["a1"].thread
    assert thread is not None
    thread.join(10)
    assert not thread.is_alive(), "the superseded approval's thread kept waiting"
    assert _read(old_id).state.is_cancelled(), "the stale run must stay Cancelled once its thread ended"
    second.shutdown()
    first.shutdown()
    assert _read(new_id).state.is_completed()
    assert got == []
