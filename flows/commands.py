"""People's commands (approve, change, pause, stop) turned into events, checked against the log.

The same function serves both paths: the CLI when no orchestrator runs (it takes the lease and
appends itself), and the running loop, which applies commands from the inbox. A command that
does not fit the campaign as it stands is refused with one line saying why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from campaigns import (
    ApprovalGiven,
    ApprovalRejected,
    CampaignChange,
    CampaignChanged,
    CampaignFinished,
    CampaignPaused,
    CampaignState,
    ChoiceParameter,
    ClosedLoopError,
    EventBase,
    IntParameter,
    apply_change,
)
from storage import Command

from flows.runtime import check_spec_devices

__all__ = ["events_for"]

Fields = Callable[[str, int], dict[str, Any]]


def _refuse(state: CampaignState, message: str, hint: str) -> ClosedLoopError:
    return ClosedLoopError(message, hint, campaign_id=state.campaign_id)


def _coerce(state: CampaignState, trial_id: str, name: str, value: Any) -> Any:
    assert state.spec is not None
    p = next((q for q in state.spec.parameters if q.name == name), None)
    if p is None:
        raise _refuse(state, f"--edit {trial_id} {name}=...: no such parameter",
                      f"parameters: {', '.join(q.name for q in state.spec.parameters)}")
    if isinstance(p, ChoiceParameter):
        for v in p.values:
            if str(v) == str(value):
                return v
        raise _refuse(state, f"--edit {trial_id} {name}={value}: not one of {p.values}", "pick one of the values")
    try:
        number = int(value) if isinstance(p, IntParameter) else float(value)
    except (TypeError, ValueError):
        raise _refuse(state, f"--edit {trial_id} {name}={value}: not a number", "e.g. --edit 3 x1=2.5") from None
    low, high = p.bounds
    if not low <= number <= high:
        raise _refuse(state, f"--edit {trial_id} {name}={value}: outside the bounds [{low:g}, {high:g}]",
                      "choose a value inside, or widen the bounds with `closedloop change --set-bounds`")
    return number


def _approval(state: CampaignState, command: Command, fields: Fields) -> EventBase:
    p = command.payload
    opened = state.open_approvals
    if not opened:
        raise _refuse(state, f"campaign {state.campaign_id!r} has no approval waiting", "see `closedloop pending`")
    approval_id = p.get("approval_id")
    if approval_id is None:
        if len(opened) > 1:
            raise _refuse(state, f"{len(opened)} approvals are waiting: {', '.join(opened)}", "pass --approval ID")
        approval_id = next(iter(opened))
    request = opened.get(approval_id)
    if request is None:
        raise _refuse(state, f"approval {approval_id!r} is not waiting", f"waiting: {', '.join(opened)}")
    waiting = set(request.trial_ids)
    reject = [str(t) for t in p.get("reject", [])]
    edit = {str(t): dict(v) for t, v in (p.get("edit") or {}).items()}
    approve = p.get("approve")
    for tid in [*reject, *edit, *(approve or [])]:
        if tid not in waiting:
            raise _refuse(state, f"trial {tid} is not in approval {approval_id}",
                          f"it holds trials {', '.join(request.trial_ids)}")
    if approve is None:
        approved = [t for t in request.trial_ids if t not in reject and t not in edit]
    else:
        approved = [str(t) for t in approve]
        undecided = [t for t in request.trial_ids if t not in approved and t not in edit and t not in reject]
        if undecided:
            raise _refuse(state, f"trial {undecided[0]} is not decided",
                          f"add --trial {undecided[0]} to approve it or --reject {undecided[0]}")
    edited = {tid: {k: _coerce(state, tid, k, v) for k, v in changes.items()} for tid, changes in edit.items()}
    assert state.spec is not None
    for tid, changes in edited.items():
        point = {**state.trials[tid].parameters, **changes}
        for c in state.spec.parsed_parameter_constraints:
            if not c.holds(point):
                raise _refuse(state, f"--edit {tid}: the edited trial breaks the parameter constraint {c.text!r}",
                              "choose values that satisfy it")
    common = {"approval_id": approval_id, "reason": command.reason, "via": p.get("via", "cli"),
              "command_id": command.command_id}
    if not approved and not edited:
        return ApprovalRejected(**fields(f"user:{command.by}", 0), rejected=reject, **common)
    return ApprovalGiven(**fields(f"user:{command.by}", 0), approved=approved, edited=edited, rejected=reject, **common)


def events_for(state: CampaignState, command: Command, fields: Fields) -> list[EventBase]:
    """The events a command means for the campaign as the log stands.

    Args:
        state: The folded log.
        command: The command.
        fields: ``(actor, offset) -> {campaign_id, seq, actor}`` for the next events.

    Raises:
        ClosedLoopError: the command does not fit (the one-line reason is shown to its author).
    """
    if state.spec is None:
        raise _refuse(state, f"no campaign {command.campaign_id!r}", "see `closedloop list`")
    if state.status == "finished":
        raise _refuse(state, f"campaign {state.campaign_id!r} has finished ({state.finished_reason})",
                      "nothing can change it now")
    actor = f"user:{command.by}"
    if command.kind == "approve":
        return [_approval(state, command, fields)]
    if command.kind == "change":
        change = CampaignChange.model_validate(command.payload)
        if change.is_empty():
            raise _refuse(state, "the change changes nothing", "see `closedloop change --help`")
        changed = apply_change(state.spec, change)  # refuses what does not fit, before anything is logged
        if change.add_outcome_constraints:
            check_spec_devices(changed)  # every device must measure a newly constrained metric
        return [CampaignChanged(**fields(actor, 0), change=change, reason=command.reason, command_id=command.command_id)]
    if command.kind == "pause":
        if state.status == "paused":
            raise _refuse(state, f"campaign {state.campaign_id!r} is already paused", "`closedloop resume` it")
        return [CampaignPaused(**fields(actor, 0), reason="user", detail=command.reason, command_id=command.command_id)]
    return [CampaignFinished(**fields(actor, 0), reason="stopped", detail=command.reason, command_id=command.command_id)]
