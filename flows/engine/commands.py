"""People's commands (approve, change, pause, stop) turned into events, checked against the log.

The same function serves both paths: the CLI when no orchestrator runs (it takes the lease and
appends itself), and the running loop, which applies commands from the inbox. A command that
does not fit the campaign as it stands is refused with one line saying why.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, get_args

from pydantic import ValidationError

from campaigns import (
    AnswerRefused,
    ApprovalGiven,
    ApprovalRejected,
    CampaignChange,
    CampaignChanged,
    CampaignFinished,
    CampaignPaused,
    CampaignState,
    ChoiceParameter,
    CommandRefusedError,
    EventBase,
    apply_change,
)
from campaigns.assignments import parameter_value
from campaigns.command import Command
from campaigns.events import AnswerVia, author_problem
from campaigns.state import OpenApproval
from flows.engine.catalog import check_spec_devices

__all__ = ["DECISIONS", "bind_approval", "change_problem", "command_summary", "decision_conflict", "events_for",
           "refusal"]

Fields = Callable[[str, int], dict[str, Any]]


def _refuse(state: CampaignState, message: str, hint: str) -> CommandRefusedError:
    return CommandRefusedError(message, hint, campaign_id=state.campaign_id)


def _coerce(state: CampaignState, trial_id: str, name: str, value: Any) -> Any:
    assert state.spec is not None
    p = next((q for q in state.spec.parameters if q.name == name), None)
    if p is None:
        raise _refuse(state, f"edit of trial {trial_id}: {name!r} is not a parameter of this campaign",
                      f"parameters: {', '.join(q.name for q in state.spec.parameters)}")
    try:
        typed = parameter_value(p, value)
    except ValueError as exc:
        raise _refuse(state, f"edit of trial {trial_id}: {exc}", "give a value the parameter takes") from None
    if isinstance(p, ChoiceParameter):
        return typed
    low, high = p.bounds
    if not low <= typed <= high:
        raise _refuse(state, f"edit of trial {trial_id}: {name}={value} is outside the bounds [{low:g}, {high:g}]",
                      "choose a value inside, or widen the bounds with a change of the campaign's bounds")
    return typed


#: The largest numbers a change takes: beyond them a value is a typo, and some could not even
#: be stored (MongoDB holds 8-byte integers). Worded in the campaign's terms: the same check
#: answers the CLI, the inbox and a replay.
_CHANGE_LIMITS: dict[str, tuple[str, float]] = {
    "batch_size": ("batch size", 10_000),
    "max_trials": ("max trials", 1_000_000_000),
    "trial_timeout_s": ("trial timeout", 365 * 24 * 3600.0),
    "max_hours": ("max hours", 100 * 365 * 24.0),
}


def change_problem(payload: Mapping[str, Any], state: CampaignState | None = None) -> str | None:
    """What is wrong with a change's numbers, in one line (None: nothing).

    Batch size and max trials are whole numbers from 1, the trial timeout and max hours finite
    numbers above 0, each below a generous limit; with ``state``, max trials is not below the
    trials that already count against the budget (`closedloop stop` ends a campaign now).
    """
    for name, (what, limit) in _CHANGE_LIMITS.items():
        value = payload.get(name)
        if value is None:
            continue
        whole = name in ("batch_size", "max_trials")
        if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
            return f"{what} {value!r}: not {'a whole number' if whole else 'a number'}"
        if not math.isfinite(value) or value <= 0 or value > limit:
            return f"{what} {value}: must be {'at least 1' if whole else 'above 0'} and at most {limit:.0f}"
    used = None if state is None else state.budget_used
    if used is not None and payload.get("max_trials") is not None and payload["max_trials"] < used:
        return (f"max trials {payload['max_trials']}: {used} trials already count against the budget; "
                f"give at least {used}, or `closedloop stop` the campaign")
    return None


#: How a decision names its three parts; the CLI passes its flags instead.
DECISIONS = ("approved", "edited", "rejected")


def decision_conflict(approve: list[str] | None, edit: Mapping[str, Any], reject: list[str],
                      words: tuple[str, str, str] = DECISIONS) -> str | None:
    """A trial both approved and rejected (or edited), in one line (None: no conflict).

    ``words`` names the three parts of a decision in the message (the CLI: its flags).
    """
    parts = dict(zip(words, (set(approve or []), set(edit), set(reject)), strict=True))
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = sorted(parts[a] & parts[b])
            if both:
                joined = f"given to both {a} and {b}" if words != DECISIONS else f"both {a} and {b}"
                return f"trial {both[0]} is {joined}: decide each trial once"
    return None


def _open_request(state: CampaignState, approval_id: str | None) -> OpenApproval:
    opened = state.open_approvals
    if not opened:
        raise _refuse(state, f"campaign {state.campaign_id!r} has no approval waiting", "see `closedloop pending`")
    if approval_id is None:
        if len(opened) > 1:
            raise _refuse(state, f"{len(opened)} approvals are waiting: {', '.join(opened)}",
                          "name the approval the decision is for")
        approval_id = next(iter(opened))
    request = opened.get(approval_id)
    if request is None:
        raise _refuse(state, f"approval {approval_id!r} is not waiting (answered or expired)",
                      f"waiting: {', '.join(opened)}; see `closedloop pending`")
    return request


def bind_approval(state: CampaignState, payload: Mapping[str, Any]) -> dict[str, Any]:
    """An `approve` payload bound to the approval its author sees now: its id and its trials.

    The orchestrator applies the decision only while that approval is open with those trials,
    so an answer never lands on an approval its author did not see.

    Raises:
        CommandRefusedError: no approval waits, several wait and none is named, or the named one is not open.
    """
    request = _open_request(state, payload.get("approval_id"))
    return {**payload, "approval_id": request.approval_id, "trial_ids": list(request.trial_ids)}


def _approval(state: CampaignState, command: Command, fields: Fields) -> EventBase:
    p = command.payload
    request = _open_request(state, p.get("approval_id"))
    approval_id = request.approval_id
    shown = p.get("trial_ids")  # None in commands sent before decisions were bound
    if shown is not None and [str(t) for t in shown] != request.trial_ids:
        raise _refuse(state, f"approval {approval_id} holds trials {', '.join(request.trial_ids)}, "
                             f"not the {', '.join(map(str, shown))} the decision was made on",
                      "see `closedloop pending` and answer again")
    waiting = set(request.trial_ids)
    reject = [str(t) for t in p.get("reject", [])]
    edit = {str(t): dict(v) for t, v in (p.get("edit") or {}).items()}
    approve = p.get("approve")
    approve = None if approve is None else [str(t) for t in approve]
    conflict = decision_conflict(approve, edit, reject)
    if conflict is not None:
        raise _refuse(state, conflict, "send one decision per trial")
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
                          f"approve, edit or reject trial {undecided[0]} too")
    edited = {tid: {k: _coerce(state, tid, k, v) for k, v in changes.items()} for tid, changes in edit.items()}
    assert state.spec is not None
    for tid, changes in edited.items():
        point = {**state.trials[tid].parameters, **changes}
        for c in state.spec.parsed_parameter_constraints:
            if not c.holds(point):
                raise _refuse(state, f"edit of trial {tid}: the edited trial breaks the parameter constraint {c.text!r}",
                              "choose values that satisfy it")
    via = p.get("via", "cli")
    if via not in get_args(AnswerVia):  # ApprovalGiven.via is a closed vocabulary
        raise _refuse(state, f"an answer via {str(via)[:40]!r}", f"answer via {', '.join(get_args(AnswerVia))}")
    common = {"approval_id": approval_id, "reason": command.reason, "via": via, "command_id": command.command_id}
    if not approved and not edited:
        return ApprovalRejected(**fields(f"user:{command.by}", 0), rejected=reject, **common)
    return ApprovalGiven(**fields(f"user:{command.by}", 0), approved=approved, edited=edited, rejected=reject, **common)


def command_summary(kind: str, payload: Mapping[str, Any]) -> str:
    """What a command asked, in one short line (for the log's ``AnswerRefused``)."""
    if kind == "approve":
        parts = []
        if payload.get("approve") is not None:
            parts.append("approve " + (", ".join(map(str, payload["approve"])) or "none"))
        for tid, changes in (payload.get("edit") or {}).items():
            parts.append(f"edit {tid} (" + ", ".join(f"{k}={v}" for k, v in dict(changes).items()) + ")")
        if payload.get("reject"):
            parts.append("reject " + ", ".join(map(str, payload["reject"])))
        text = "; ".join(parts) or "approve all"
    elif kind == "change":
        text = "change " + ", ".join(f"{k}={v}" for k, v in payload.items())
    else:
        text = kind
    return " ".join(text.split())[:500]


def refusal(state: CampaignState, command: Command, why: str, fields: Fields) -> AnswerRefused:
    """The ``AnswerRefused`` event of a person's command that did not fit (written by the orchestrator)."""
    p = command.payload
    via = p.get("via", "cli")
    return AnswerRefused(**fields("orchestrator", 0), command=command.kind, by=" ".join(command.by.split())[:200],
                         via=via if via in get_args(AnswerVia) else "cli",
                         approval_id=str(p["approval_id"])[:100] if p.get("approval_id") is not None else None,
                         what=command_summary(command.kind, p), why=" ".join(why.split())[:1000],
                         command_id=command.command_id)


def events_for(state: CampaignState, command: Command, fields: Fields) -> list[EventBase]:
    """The events a command means for the campaign as the log stands.

    Args:
        state: The folded log.
        command: The command.
        fields: ``(actor, offset) -> {campaign_id, seq, actor}`` for the next events.

    Raises:
        CommandRefusedError: the command does not fit (the one-line reason is shown to its author).
    """
    if state.spec is None:
        raise _refuse(state, f"no campaign {command.campaign_id!r}", "see `closedloop list`")
    if state.status == "finished":
        raise _refuse(state, f"campaign {state.campaign_id!r} has finished ({state.finished_reason})",
                      "nothing can change it now")
    problem = author_problem(command.by)
    if problem is not None:  # the log's actor is `user:<name>`, one line
        raise _refuse(state, problem, "give the name on one line")
    actor = f"user:{command.by}"
    if command.kind == "approve":
        return [_approval(state, command, fields)]
    if command.kind == "change":
        problem = change_problem(command.payload, state)  # again here: changes also come from the inbox
        if problem is not None:
            raise _refuse(state, problem, "see what a change may hold: `closedloop change --help`")
        try:
            change = CampaignChange.model_validate(command.payload)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(x) for x in err["loc"]) or "change"
            raise _refuse(state, f"{where}: {err['msg']}", "see what a change may hold: `closedloop change --help`") from None
        if change.is_empty():
            raise _refuse(state, "the change changes nothing", "see what a change may hold: `closedloop change --help`")
        changed = apply_change(state.spec, change)  # refuses what does not fit, before anything is logged
        if change.add_outcome_constraints:
            check_spec_devices(changed)  # every device must measure a newly constrained metric
        return [CampaignChanged(**fields(actor, 0), change=change, reason=command.reason, command_id=command.command_id)]
    if command.kind == "pause":
        if state.status == "paused":
            raise _refuse(state, f"campaign {state.campaign_id!r} is already paused", "`closedloop resume` it")
        return [CampaignPaused(**fields(actor, 0), reason="user", detail=command.reason, command_id=command.command_id)]
    return [CampaignFinished(**fields(actor, 0), reason="stopped", detail=command.reason, command_id=command.command_id)]
