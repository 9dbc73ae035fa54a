"""Approval requests in the Prefect UI: a paused flow run with a form, answered like the CLI.

When a Prefect server is configured, each open approval gets its own small flow run
``approval/<campaign>/<approval_id>``, a child of the running ``campaign`` flow run, that pauses
with ``pause_flow_run(wait_for_input=ApprovalForm...)``. The campaign flow keeps running: the
approval run lives in a background thread. A person answers in the UI ("Resume" shows the form)
or through Prefect's API (``resume_flow_run(flow_run_id, run_input={...})``); the answer becomes
the same command the CLI submits (``on_answer``), which the loop checks and turns into an
``ApprovalGiven``/``ApprovalRejected`` event. Prefect is a window onto the approval, never its
source of truth: the event log is.

When the approval is decided elsewhere (CLI, timeout) the loop calls ``close``, which resumes the
paused run with a marker input so it completes ("Decided elsewhere") and sends nothing.

Nothing here raises into the loop: Prefect errors are logged, and the CLI path keeps working.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

import anyio
import anyio.to_thread
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import get_run_context
from prefect.exceptions import FlowPauseTimeout, NotPausedError
from prefect.flow_runs import apause_flow_run, resume_flow_run
from prefect.input import RunInput
from prefect.states import Cancelled, Completed
from pydantic import ConfigDict, Field

from campaigns.assignments import split_assignment
from campaigns.review import ApprovalView, number
from campaigns.waiting import wait_for

__all__ = ["ApprovalForm", "PrefectApprovals", "answer_through", "closed_input", "parse_edits", "prefect_server_configured"]

log = logging.getLogger(__name__)

#: The key ``close`` puts in the resume input; the form has no such field, so the UI never shows it.
CLOSED_KEY = "decided_elsewhere"
#: How long one pause lasts before it is renewed (the campaign's approval policy owns real timeouts).
PAUSE_TIMEOUT_S = 7 * 24 * 3600
#: After an answer is submitted, how long to wait for the loop to record a decision before the
#: form is offered again (the loop may have refused the answer, e.g. a value out of bounds).
ANSWER_CONFIRM_S = 120.0


def prefect_server_configured() -> bool:
    """True when ``PREFECT_API_URL`` points at a server (not Prefect's ephemeral one, nor the
    local one a run starts in its place: nobody watches its UI)."""
    try:
        from prefect.settings import get_current_settings

        from flows.prefect.server import local_api_url

        url = get_current_settings().api.url
        return bool(url) and url != local_api_url()
    except Exception:
        log.exception("could not read Prefect settings")
        return False


#: What a required text field of a form must hold: a character that is not a space.
NOT_BLANK = r"\S"


def closed_input(reason: str) -> dict[str, str]:
    """The input that resumes a form's paused run when the answer came from elsewhere: the
    marker, and the form's required fields (Prefect's server checks them against its schema)."""
    return {CLOSED_KEY: reason, "reason": reason, "by": "closedloop"}


class ApprovalForm(RunInput):
    """The form shown in the Prefect UI when resuming an approval flow run."""

    # `close` resumes with a marker key outside the form; keep it (model_extra) instead of failing.
    model_config = ConfigDict(extra="allow")

    decision: Literal["approve", "reject all"] = Field(
        "approve",
        description="approve: run every trial except those listed under reject or edits "
                    "(edited ones run with your values). reject all: run none of them.")
    reject: list[str] = Field(default_factory=list, description="Trial ids not to run, e.g. 3")
    edits: str = Field(
        "", description="Trials to run with your parameters instead: 'ID: name=value, name=value; ID: ...', "
                        "e.g. '3: x1=2.5, x2=1'")
    # Required, as the CLI's --reason: no default, at least one character that is not a space
    # (the JSON schema's minLength and pattern: Prefect's UI marks the field required and its
    # server refuses the resume otherwise; pydantic checks the same when the answer is read).
    reason: str = Field(min_length=1, max_length=2000, pattern=NOT_BLANK,
                        description="Why (required; recorded in the campaign log)")
    by: str = Field(min_length=1, max_length=200, pattern=NOT_BLANK,
                    description="Your name (required; recorded in the campaign log)")


def parse_edits(text: str) -> dict[str, dict[str, str]]:
    """``"3: x1=2.5, x2=1; 4: x1=0"`` -> ``{"3": {"x1": "2.5", "x2": "1"}, "4": {"x1": "0"}}``.

    The values stay as typed: the loop types them by their parameters, as it does the CLI's.

    Raises:
        ValueError: the text does not have that shape (the message says where).
    """
    edits: dict[str, dict[str, str]] = {}
    for part in filter(None, (p.strip() for p in re.split(r"[;\n]", text))):
        trial, sep, rest = part.partition(":")
        if not sep or not trial.strip():
            raise ValueError(f"{part!r}: expected 'ID: name=value, ...'")
        changes: dict[str, str] = {}
        for item in filter(None, (i.strip() for i in rest.split(","))):
            try:
                name, value = split_assignment(item)
            except ValueError as exc:
                raise ValueError(f"trial {trial.strip()}: {exc}") from None
            if not value:
                raise ValueError(f"{item!r} (trial {trial.strip()}): expected name=value")
            changes[name] = value
        if not changes:
            raise ValueError(f"{part!r}: no name=value given")
        edits.setdefault(trial.strip(), {}).update(changes)
    return edits


def command_from_form(form: ApprovalForm, approval_id: str, trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The command a CLI answer would submit, from an answered form.

    Raises:
        ValueError: the answer does not fit the request (unknown trial or parameter, bad edits).
    """
    ids = [str(t["trial_id"]) for t in trials]
    params = {str(t["trial_id"]): set(t.get("parameters") or {}) for t in trials}
    reject = [str(r).strip() for r in form.reject if str(r).strip()]
    edit = parse_edits(form.edits)
    for tid in [*reject, *edit]:
        if tid not in ids:
            raise ValueError(f"trial {tid} is not in approval {approval_id} (it holds {', '.join(ids)})")
    for tid, changes in edit.items():
        if tid in reject:
            raise ValueError(f"trial {tid} is both rejected and edited")
        unknown = sorted(set(changes) - params[tid]) if params[tid] else []
        if unknown:
            raise ValueError(f"trial {tid}: no parameter {unknown[0]!r} (parameters: {', '.join(sorted(params[tid]))})")
    if form.decision == "reject all":
        approve, reject, edit = [], ids, {}
    else:
        approve = [t for t in ids if t not in reject and t not in edit]
    return {"approval_id": approval_id, "approve": approve, "edit": edit, "reject": reject,
            "reason": form.reason.strip(), "by": form.by.strip(), "via": "prefect"}


def answer_through(inbox: Any, campaign_id: str, wait_s: float = ANSWER_CONFIRM_S) -> Callable[[dict[str, Any]], str | None]:
    """``on_answer`` for a running campaign: the answer goes to its command inbox (``submit``,
    ``get``: ``storage.MongoCommandInbox``) as a CLI answer does, and the running loop's verdict
    is awaited (it checks the inbox every ``LoopOptions.command_poll_s``): the refusal's one-line
    reason, so that the form comes back with it at once, or None once applied (or after
    ``wait_s``, still unread: the form then waits for the loop to close it)."""
    def on_answer(command: dict[str, Any]) -> str | None:
        payload = dict(command)
        by = str(payload.pop("by", "") or "prefect-ui")
        reason = str(payload.pop("reason", "") or "answered in the Prefect UI")
        sent = inbox.submit(campaign_id, "approve", payload, by=by, reason=reason)

        def verdict() -> Any:
            current = inbox.get(sent.command_id)
            return current if current is not None and current.state in ("applied", "refused") else None

        done = wait_for(verdict, wait_s, interval_s=0.25, max_interval_s=1.0)
        if done is not None and done.state == "refused":
            return str(done.error or "refused by the campaign")
        return None

    return on_answer


def describe(campaign_id: str, approval_id: str, trials: list[dict[str, Any]], why: str, answer_with: str,
             problem: str | None = None, view: ApprovalView | None = None) -> str:
    """The markdown shown above the form: the trials with their bounds and the model's
    prediction, and the best so far (``view``; without it, the trials' parameters alone)."""
    if view is None:
        names = sorted({k for t in trials for k in (t.get("parameters") or {})})
        view = ApprovalView(["trial", *names], [
            [str(t["trial_id"]), *(number((t.get("parameters") or {}).get(n, "")) for n in names)] for t in trials
        ], "")
    lines = []
    if problem:
        lines += [f"> **The previous answer was not accepted:** {_cell(problem)}", ""]
    lines += [f"### Campaign `{campaign_id}`: approval `{approval_id}`", "",
              f"**Why:** {why}", ""]
    if view.best:
        lines += [f"**Best so far (observed):** {view.best}", ""]
    lines += ["| " + " | ".join(_cell(h) for h in view.headers) + " |",
              "|" + "---|" * len(view.headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in view.rows]
    lines += ["", "Approve all (default), list trials to **reject**, give **edits** as "
              "`ID: name=value, ...; ID: ...`, or **reject all**. Your **reason** and **name** are required: "
              "they are written to the campaign log with the answer, which is checked like a CLI answer "
              "(bounds, choices); a refused answer brings this form back with the reason.", "",
              "Answer from a shell instead:", "", f"```\n{answer_with}\n```"]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell (one line, no column break)."""
    return " ".join(str(text).split()).replace("|", "\\|")


@dataclass
class _Approval:
    approval_id: str
    trials: list[dict[str, Any]]
    why: str
    answer_with: str
    view: ApprovalView | None = None
    closed: threading.Event = field(default_factory=threading.Event)
    close_reason: str = "decided elsewhere"
    flow_run_id: str | None = None
    thread: threading.Thread | None = None
    closer: threading.Thread | None = None


class PrefectApprovals:
    """Shows a campaign's approval requests as paused Prefect flow runs with a form.

    Args:
        campaign_id: The campaign.
        on_answer: Called (from a background thread) with the command an answer in Prefect means:
            ``{"approval_id", "approve", "edit", "reject", "reason", "by", "via": "prefect"}``. If it
            raises or returns a string (a refusal), the form is offered again with that message.
        poll_interval: Seconds between the paused run's checks for an answer (answer latency).
        confirm_s: After an answer, seconds to wait for ``close`` before offering the form again.
    """

    def __init__(self, campaign_id: str, on_answer: Callable[[dict[str, Any]], Any], *,
                 poll_interval: int = 2, confirm_s: float = ANSWER_CONFIRM_S) -> None:
        self.campaign_id = campaign_id
        self.on_answer = on_answer
        self.poll_interval = max(1, int(poll_interval))
        self.confirm_s = confirm_s
        self._lock = threading.Lock()
        self._approvals: dict[str, _Approval] = {}

    # -- the loop's side -------------------------------------------------------------------

    def open(self, approval_id: str, trials: list[dict[str, Any]], why: str, answer_with: str,
             view: ApprovalView | None = None) -> None:
        """Start the approval flow run (in the background); a no-op if it already runs.

        ``view``: what the form shows of the trials (bounds, predictions, best so far).
        """
        try:
            with self._lock:
                current = self._approvals.get(approval_id)
                if current is not None and current.thread is not None and current.thread.is_alive() \
                        and not current.closed.is_set():
                    return
                a = _Approval(approval_id, [dict(t) for t in trials], why, answer_with, view)
                self._approvals[approval_id] = a
            # A copy of the caller's context: inside the campaign flow run the approval run is its child.
            ctx = contextvars.copy_context()
            a.thread = threading.Thread(target=ctx.run, args=(self._run, a), daemon=True,
                                        name=f"prefect-approval-{approval_id}")
            a.thread.start()
        except Exception:
            log.exception("approval %s: could not show it in Prefect (the CLI still answers it)", approval_id)

    def close(self, approval_id: str, reason: str = "decided elsewhere") -> None:
        """The approval was decided elsewhere: complete its paused run without sending anything."""
        try:
            with self._lock:
                a = self._approvals.get(approval_id)
            if a is None or a.closed.is_set():
                return
            a.close_reason = reason
            a.closed.set()
            # The caller's context too: Prefect's settings (the API URL) may live in a context variable;
            # without them the thread would start an ephemeral server of its own.
            ctx = contextvars.copy_context()
            a.closer = threading.Thread(target=ctx.run, args=(self._resume_closed, a), daemon=True,
                                        name=f"prefect-approval-close-{approval_id}")
            a.closer.start()
        except Exception:
            log.exception("approval %s: could not close its Prefect flow run", approval_id)

    def flow_run_id(self, approval_id: str) -> str | None:
        """The approval's flow run, once created."""
        with self._lock:
            a = self._approvals.get(approval_id)
        return None if a is None else a.flow_run_id

    def shutdown(self, timeout_s: float = 20.0) -> None:
        """Close every approval run (they are shown again by the next campaign run) and join the threads."""
        with self._lock:
            approvals = list(self._approvals.values())
        for a in approvals:
            self.close(a.approval_id, reason="the campaign flow run ended; the next one asks again")
        deadline = time.monotonic() + timeout_s
        for a in approvals:
            for t in (a.closer, a.thread):
                if t is not None:
                    t.join(max(0.0, deadline - time.monotonic()))
            if a.thread is not None and a.thread.is_alive():
                log.warning("approval %s: its Prefect flow run did not finish in time", a.approval_id)

    # -- background threads ----------------------------------------------------------------

    def _run(self, a: _Approval) -> None:
        try:
            run = approval_flow.with_options(flow_run_name=f"approval/{self.campaign_id}/{a.approval_id}")
            # This thread runs in a context of its own (see `open`): the flow run inside finds
            # its approval there, handed over explicitly, not through shared module state.
            _THIS_APPROVAL.set((self, a))
            asyncio.run(run(self.campaign_id, a.approval_id, a.trials, a.why, a.answer_with))
        except Exception:
            log.exception("approval %s: its Prefect flow run failed (the CLI still answers it)", a.approval_id)

    def _resume_closed(self, a: _Approval) -> None:
        """Resume the paused run with the "decided elsewhere" marker, once it is paused."""
        def resumed() -> bool:
            if a.thread is None or not a.thread.is_alive():
                return True
            if a.flow_run_id is not None:
                try:
                    resume_flow_run(UUID(a.flow_run_id), run_input=closed_input(a.close_reason))
                    return True
                except NotPausedError:
                    pass  # not paused yet (or already answered): look again
                except Exception as e:
                    if "schema not found" not in str(e):  # Prefect pauses, then saves the form
                        log.exception("approval %s: resuming its Prefect flow run failed", a.approval_id)
            return False

        if not wait_for(resumed, 60.0, interval_s=0.25):
            log.warning("approval %s: its Prefect flow run could not be closed", a.approval_id)

    async def _cancel_stale(self, a: _Approval, name: str, logger: Any) -> None:
        """Cancel paused runs of this approval left by an earlier campaign run (a crashed process)."""
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterName,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort


        with self._lock:
            ours = {x.flow_run_id for x in self._approvals.values()} | {a.flow_run_id}
        try:
            async with get_client() as client:
                stale = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    name=FlowRunFilterName(any_=[name]),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))),
                    # prefect 3.8.8's client sends limit/sort null unless given; its server answers 422.
                    limit=50, sort=FlowRunSort.START_TIME_DESC)
                for run in stale:
                    if str(run.id) not in ours:
                        await client.set_flow_run_state(run.id, Cancelled(
                            message=f"superseded by flow run {a.flow_run_id}"), force=True)
                        logger.info("approval %s: cancelled the stale paused run %s", a.approval_id, run.name)
        except Exception:
            logger.exception("approval %s: could not look for stale paused runs", a.approval_id)

    async def _pause(self, a: _Approval, n: int, problem: str | None) -> ApprovalForm | None:
        """Pause the approval run with its form until resumed; None if the run ended otherwise
        (cancelled in the UI, or by the next campaign run): then nobody will answer here."""
        form = ApprovalForm.with_initial_data(
            description=describe(self.campaign_id, a.approval_id, a.trials, a.why, a.answer_with, problem, a.view),
            decision="approve", reject=[], edits="")  # reason and by stay required: no initial value
        answer: ApprovalForm | None = None
        run_id = UUID(a.flow_run_id)

        async with anyio.create_task_group() as tg:
            async def pause() -> None:
                nonlocal answer
                answer = await apause_flow_run(wait_for_input=form, timeout=PAUSE_TIMEOUT_S,
                                               poll_interval=self.poll_interval, key=f"answer-{n}")
                tg.cancel_scope.cancel()

            async def watch() -> None:
                # apause_flow_run only ever returns on Running: stop waiting if the run ended instead.
                async with get_client() as client:
                    while True:
                        await anyio.sleep(self.poll_interval)
                        run = await client.read_flow_run(run_id)
                        if run.state is not None and (run.state.is_final() or run.state.is_cancelling()):
                            tg.cancel_scope.cancel()
                            return
                        if a.closed.is_set() and run.state is not None and run.state.is_paused():
                            # Backstop for close(): its thread gives up after a minute.
                            await client.resume_flow_run(run_id, run_input=closed_input(a.close_reason))

            tg.start_soon(pause)
            tg.start_soon(watch)
        return answer

    async def _wait(self, a: _Approval, logger: Any) -> dict[str, Any] | str:
        """Inside the approval flow run: pause until answered; the command, or why it ended without one."""
        problem: str | None = None
        n = 0
        while not a.closed.is_set():
            n += 1
            try:
                answer = await self._pause(a, n, problem)
            except FlowPauseTimeout:
                problem = None
                continue
            if answer is None:
                logger.warning("approval %s: its flow run ended without an answer (the CLI still answers it)",
                               a.approval_id)
                return _ENDED
            if a.closed.is_set() or CLOSED_KEY in (answer.model_extra or {}):
                reason = str((answer.model_extra or {}).get(CLOSED_KEY, a.close_reason))
                logger.info("approval %s was %s", a.approval_id, reason)
                return reason
            try:
                command = command_from_form(answer, a.approval_id, a.trials)
            except ValueError as exc:
                problem = str(exc)
                logger.error("approval %s: answer not accepted: %s", a.approval_id, problem)
                continue
            logger.info("approval %s answered by %s: approve %s, edit %s, reject %s", a.approval_id,
                        command["by"] or "?", command["approve"], command["edit"], command["reject"])
            try:
                refusal = self.on_answer(dict(command))
            except Exception as exc:
                refusal = f"could not be submitted: {exc}"
            if isinstance(refusal, str) and refusal:
                problem = refusal
                logger.error("approval %s: answer not accepted: %s", a.approval_id, problem)
                continue
            if await anyio.to_thread.run_sync(a.closed.wait, self.confirm_s):
                return command
            problem = ("the campaign has not recorded a decision: it may have refused the answer "
                       f"(see `closedloop pending {self.campaign_id}` or the campaign log)")
            logger.warning("approval %s: %s", a.approval_id, problem)
        return a.close_reason


_ENDED = "ended without an answer"

#: The approval an approval flow run serves, set in the thread that runs it (one per approval).
_THIS_APPROVAL: contextvars.ContextVar[tuple[PrefectApprovals, _Approval]] = contextvars.ContextVar("approval")


@flow(name="approval", persist_result=False, validate_parameters=False)
async def approval_flow(campaign_id: str, approval_id: str, trials: list[dict[str, Any]], why: str,
                        answer_with: str) -> Any:
    """One approval request of a campaign, waiting for a person in the Prefect UI."""
    logger = get_run_logger()
    approvals, a = _THIS_APPROVAL.get()
    a.flow_run_id = str(get_run_context().flow_run.id)  # type: ignore[union-attr]
    await approvals._cancel_stale(a, f"approval/{campaign_id}/{approval_id}", logger)
    command = await approvals._wait(a, logger)
    if command == _ENDED:
        # Cancelled from outside (the UI, or superseded by the next campaign run): it stays
        # Cancelled rather than turning Completed when this function returns.
        return Cancelled(message="ended without an answer (cancelled); the CLI still answers the approval")
    if isinstance(command, str):
        return Completed(name="Decided elsewhere", message=command)
    return Completed(name="Answered", message=f"answer submitted to campaign {campaign_id}")
