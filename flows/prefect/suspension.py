"""A deployed campaign that waits for a person holds no process: its flow run is suspended.

When a deployed campaign's loop returns because only a person can move it on (an open
approval, or a pause), its flow run suspends itself with a form
(`suspend_flow_run`): the approval's form, or a resume form. Its process exits and its worker
slot is free. An answer — the form in the Prefect UI, ``resume_flow_run`` with the form's input,
or a `closedloop` command (`wake`) — reschedules the flow run on a worker; it starts from the
top, reads the answer of its last suspension (`last_answer`) and goes on from the log. An
approval with a deadline suspends until then: Prefect fails the run when it passes, and the
campaign's automation starts a new one, which applies the approval's ``on_timeout``
(`flows.prefect.service`). Prefect's triggers can lose that event (SQLite under load), so the
suspending run also schedules a flow run for a while after the deadline (``CLOSEDLOOP_STANDBY_S``,
as a running flow run's standby: `schedule_deadline_run`); it ends at once, with nothing written, if the deadline was dealt with
(`deadline_dealt_with`).

Suspensions are keyed ``wait-<n>-pause`` or ``wait-<n>-approval-<id>`` (n counts the flow run's
suspensions): a flow run resumed reads the answer to the highest. An answer
becomes a command whose id is the flow run's and the key's, so it is applied at most once.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.flow_runs import suspend_flow_run
from prefect.input import RunInput
from pydantic import ConfigDict, Field

from campaigns import AnswerRefused, CampaignResumed, CampaignState
from campaigns.events import author_problem
from campaigns.review import approval_view
from flows.engine.commands import command_summary
from flows.engine.loop import answer_with
from flows.prefect.approval import (
    CLOSED_KEY,
    NOT_BLANK,
    ApprovalForm,
    command_from_form,
    describe,
)

__all__ = [
    "DEADLINE_TAG",
    "Answer",
    "ResumeForm",
    "apply_answer",
    "command_id",
    "deadline_dealt_with",
    "fired",
    "last_answer",
    "schedule_deadline_run",
    "suspend",
]

#: The tag of a deadline's backup flow run.
DEADLINE_TAG = "closedloop:deadline"

log = logging.getLogger(__name__)

_KEY = re.compile(r"wait-(\d+)-(pause|approval-(?:x[0-9a-f]+|[a-z0-9]+))")  # Prefect: [a-z0-9-] only


def _key(n: int, what: str) -> str:
    """``wait-<n>-pause`` or ``wait-<n>-approval-<id>`` (an id outside [a-z0-9] hex-encoded: x...)."""
    if what == "pause":
        return f"wait-{n}-pause"
    approval_id = what.partition(":")[2]
    return f"wait-{n}-approval-" + (approval_id if re.fullmatch(r"[a-z0-9]+", approval_id) and not
                                    approval_id.startswith("x") else "x" + approval_id.encode().hex())


def _what(token: str) -> str:
    if token == "pause":
        return token
    encoded = token.removeprefix("approval-")
    return "approval:" + (bytes.fromhex(encoded[1:]).decode() if encoded.startswith("x") else encoded)


class ResumeForm(RunInput):
    """The form of a paused campaign's suspended flow run: resuming it resumes the campaign."""

    model_config = ConfigDict(extra="allow")  # `wake` resumes with CLOSED_KEY: decided elsewhere

    # Required, as the CLI's --reason (see ApprovalForm).
    reason: str = Field(min_length=1, max_length=2000, pattern=NOT_BLANK,
                        description="Why the campaign goes on (required; recorded in the campaign log)")
    by: str = Field(min_length=1, max_length=200, pattern=NOT_BLANK,
                    description="Your name (required; recorded in the campaign log)")


@dataclass(frozen=True)
class Answer:
    """What the flow run was resumed with, for the wait ``what`` (``pause`` or ``approval:<id>``)."""

    what: str
    key: str
    form: ApprovalForm | ResumeForm

    @property
    def decided_elsewhere(self) -> bool:
        """A command already in the log (or the inbox) woke the run: nothing to apply here."""
        return CLOSED_KEY in (self.form.model_extra or {})


def fired(flow_run_id: UUID) -> list[tuple[int, str]]:
    """This flow run's suspensions so far, ``(n, what)`` in order (read once per process: only
    the process itself suspends its run, at its end)."""
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
    keys = run.empirical_policy.pause_keys or set()
    return sorted((int(m[1]), _what(m[2])) for k in keys if (m := _KEY.fullmatch(k)))


def last_answer(fired: list[tuple[int, str]]) -> Answer | None:
    """The answer to the last of ``fired`` (None: it never suspended, or no input came)."""
    if not fired:
        return None
    n, what = fired[-1]
    key = _key(n, what)
    form = ResumeForm if what == "pause" else ApprovalForm
    try:  # a suspension that already fired returns the input it was resumed with
        value = suspend_flow_run(wait_for_input=form, key=key)
    except Exception:  # resumed without input (e.g. `prefect flow-run resume`): no answer
        log.warning("this flow run was resumed without an answer to %s", what, exc_info=True)
        return None
    return None if value is None else Answer(what, key, value)


def command_id(flow_run_id: UUID, answer: Answer) -> str:
    """The id of the command an answer becomes: the same however often the run starts."""
    return f"{flow_run_id}:{answer.key}"


def apply_answer(answer: Answer, state: CampaignState, flow_run_id: UUID, *, append: Any, submit: Any,
                 logger: Any) -> str | None:
    """Turn an answer given in Prefect into what the same answer from the CLI is; returns why it
    was not accepted (shown above the form when the run suspends again), else None.

    A resume form appends ``CampaignResumed`` (``append``: the caller holds the lease); an
    approval form becomes an ``approve`` command (``submit(kind, payload, by, reason, command_id)``)
    that the loop checks and applies, exactly as a CLI answer.
    """
    if answer.decided_elsewhere:
        return None
    form = answer.form
    by, reason = form.by.strip(), form.reason.strip()
    cid = command_id(flow_run_id, answer)
    logged = next((r for r in state.refusals if r.command_id == cid), None)
    if logged is not None:  # this run started again with the same answer: refused once, logged once
        return logged.why

    def refuse(problem: str, what: str, approval_id: str | None = None) -> str:
        logger.error("%s: answer not accepted: %s", answer.what, problem)
        append(AnswerRefused(campaign_id=state.campaign_id, seq=state.last_seq + 1, actor="orchestrator",
                             command="resume" if answer.what == "pause" else "approve",
                             by=" ".join(by.split())[:200], via="prefect", approval_id=approval_id,
                             what=what[:500], why=" ".join(problem.split())[:1000], command_id=cid))
        return problem

    if (problem := author_problem(by)) is not None:  # refused as the CLI's --by is (flows.engine.commands)
        return refuse(problem, "resume" if answer.what == "pause" else answer.what)
    if answer.what == "pause":
        if state.status != "paused":
            logger.info("campaign %s is not paused any more: the resume form changes nothing", state.campaign_id)
            return None
        append(CampaignResumed(campaign_id=state.campaign_id, seq=state.last_seq + 1, actor=f"user:{by or 'prefect-ui'}",
                               reason=reason or "resumed in the Prefect UI", via="prefect"))
        return None
    approval_id = answer.what.partition(":")[2]
    request = state.open_approvals.get(approval_id)
    if request is None:
        logger.info("approval %s was decided meanwhile: the answer in Prefect is not applied", approval_id)
        return None
    assert isinstance(form, ApprovalForm)
    try:
        payload = command_from_form(form, approval_id, _trials(state, request.trial_ids))
    except ValueError as exc:
        what = command_summary("approve", {"reject": form.reject}) if form.decision != "reject all" else "reject all"
        return refuse(str(exc), f"{what}; edits {form.edits!r}" if form.edits.strip() else what, approval_id)
    payload.pop("by", None)
    payload.pop("reason", None)
    submit("approve", payload, by or "prefect-ui", reason or "answered in the Prefect UI", cid)
    return None


def _trials(state: CampaignState, trial_ids: list[str]) -> list[dict[str, Any]]:
    return [{"trial_id": t, "parameters": dict(state.trials[t].parameters) if t in state.trials else {}}
            for t in trial_ids]


def suspend(state: CampaignState, fired: list[tuple[int, str]], problem: str | None = None, *,
            backup_after_s: float = 120.0) -> NoReturn:
    """Suspend this flow run until a person answers (raises Prefect's ``Pause``; the process exits).

    Args:
        state: The campaign, paused or waiting for an approval.
        fired: This flow run's suspensions so far (`fired`).
        problem: Why the previous answer was not accepted, shown above the form.
        backup_after_s: How long after an approval's deadline its backup flow run starts
            (`schedule_deadline_run`).
    """
    n = (fired[-1][0] if fired else 0) + 1
    timeout: int | None = None
    if state.status == "paused":
        what = "pause"
        text = ("" if problem is None else f"> **The previous answer was not accepted:** {problem}\n\n") + (
                f"### Campaign `{state.campaign_id}` is paused\n\n{state.paused_detail or state.paused_reason}\n\n"
                "Resume to let it go on (the reason and your name are recorded in the campaign log), or from a "
                f"shell:\n\n```\nclosedloop resume {state.campaign_id} --reason ...\n```")
        form: Any = ResumeForm.with_initial_data(description=text)
    else:
        request = min(state.open_approvals.values(), key=lambda r: r.requested_at)
        what = f"approval:{request.approval_id}"
        deadlines = [a.deadline for a in state.open_approvals.values()
                     if a.deadline is not None and a.on_timeout != "keep_waiting"]
        if deadlines:  # Prefect fails the suspended run then; a new run applies on_timeout
            timeout = max(1, math.ceil((min(deadlines) - datetime.now(UTC)).total_seconds()))
            schedule_deadline_run(state, min(deadlines), backup_after_s)
        form = ApprovalForm.with_initial_data(
            description=describe(state.campaign_id, request.approval_id, _trials(state, request.trial_ids),
                                 request.why, answer_with(state.campaign_id, request.approval_id), problem,
                                 view=approval_view(state, request)),
            decision="approve", reject=[], edits="")
    suspend_flow_run(wait_for_input=form, key=_key(n, what), timeout=timeout)
    raise AssertionError("suspend_flow_run returned in the flow run it suspended")  # pragma: no cover


def schedule_deadline_run(state: CampaignState, deadline: datetime, after_s: float) -> None:
    """A flow run of this run's deployment, ``after_s`` after ``deadline``: it applies the
    approval's ``on_timeout`` if the automation's run (Prefect fails the suspended run within
    seconds of the deadline) never came. One per campaign instance
    and deadline (Prefect's idempotency key), however often the campaign suspends before it."""
    from prefect.context import get_run_context
    from prefect.deployments import run_deployment

    flow_run = get_run_context().flow_run  # type: ignore[union-attr]
    key = f"closedloop:{state.instance or state.campaign_id}:deadline:{deadline.isoformat()}"
    try:
        run_deployment(flow_run.deployment_id, scheduled_time=deadline + timedelta(seconds=after_s),
                       timeout=0, as_subflow=False, idempotency_key=key, flow_run_name=state.campaign_id,
                       tags=["closedloop", f"campaign:{state.campaign_id}", DEADLINE_TAG])
    except Exception as exc:  # the automation remains: the campaign is not stuck without it
        log.warning("could not schedule the flow run that backs up the deadline of %s: %s", state.campaign_id, exc)


def deadline_dealt_with(state: CampaignState, now: datetime) -> str | None:
    """Why a deadline's backup run has nothing to do (None: an approval's deadline passed and its
    ``on_timeout`` is not applied yet)."""
    if state.status == "finished":
        return f"campaign {state.campaign_id} is finished"
    if any(a.deadline is not None and a.deadline <= now and a.on_timeout != "keep_waiting"
           for a in state.open_approvals.values()):
        return None
    return f"no approval of campaign {state.campaign_id} is past its deadline and unanswered"
