"""The CLI's commands for people: pending, approve, change, pause, stop, history.

A decision goes to the log by one of two paths, with the same events either way: when no
orchestrator runs the campaign, the command takes the campaign's lease and appends the events
itself; when one runs (it holds the lease), the command goes to the inbox, the orchestrator
applies it within a second, and the command waits to report whether it was applied or refused.
A deployed campaign waiting for a person has no orchestrator running: its flow run is
suspended, and the command wakes it (`wake_deployed`).
"""

from __future__ import annotations

import argparse
import getpass
import math
import signal
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from campaigns import (
    AnswerRefused,
    ApprovalGiven,
    ApprovalRejected,
    ApprovalRequested,
    BrokerDisconnected,
    BrokerReconnected,
    CampaignChanged,
    CampaignCreated,
    CampaignFinished,
    CampaignLockedError,
    CampaignNotFoundError,
    CampaignPaused,
    CampaignResumed,
    CampaignState,
    CommandRefusedError,
    EventBase,
    IntParameter,
    RunStarted,
    TrialRetried,
    UsageError,
    fold,
)
from campaigns.assignments import parameter_value, parameter_values, split_assignments
from campaigns.command import Command
from campaigns.review import approval_view
from campaigns.waiting import wait_for
from flows.app.runtime import event_store
from flows.app.settings import Settings
from flows.cli.tables import table

if TYPE_CHECKING:
    from storage import MongoEventStore

__all__ = ["add_commands", "current_user", "history"]

EXIT_INTERRUPTED = 130


def current_user() -> str:
    """Who is typing: the OS user, the default author of a decision or change."""
    return getpass.getuser()


def _by(args: argparse.Namespace) -> str:
    return str(args.by or current_user())


def _deliver(campaign_id: str, kind: str, payload: dict[str, Any], args: argparse.Namespace) -> int:
    if not isinstance(args.reason, str) or not args.reason.strip():  # argparse turns `--reason=--` into []
        raise UsageError("--reason: say why (it is recorded in the log with your name)", 'e.g. --reason "reactor limit"')
    settings = Settings()
    now = datetime.now(UTC)
    command = Command(command_id=uuid.uuid4().hex, campaign_id=campaign_id, kind=kind,  # type: ignore[arg-type]
                      payload=payload, by=_by(args), reason=args.reason,
                      submitted_at=now.replace(microsecond=now.microsecond // 1000 * 1000))
    with event_store(settings) as store:
        try:
            return _send(store, settings, command)
        except KeyboardInterrupt:
            return _interrupted(store, settings, command)


def _send(store: MongoEventStore, settings: Settings, command: Command) -> int:
    # the lease and the engine's command rules (which load the simulator catalog: a change is
    # checked against it) only for a command that goes to the log
    from flows.app.lease import hold_lease
    from flows.engine.commands import bind_approval, events_for

    campaign_id = command.campaign_id
    state = fold(store.read(campaign_id))
    if state.spec is None:
        raise CampaignNotFoundError(f"no campaign {campaign_id!r}", "see `closedloop list`", campaign_id=campaign_id)
    if command.kind == "approve":
        # Bound to what its author sees now: the orchestrator applies it to this approval, with
        # these trials, or refuses it.
        command = command.model_copy(update={"payload": bind_approval(state, command.payload)})
    if command.kind in ("approve", "change"):
        command = _typed(state, command)

    def fields(actor: str, offset: int) -> dict[str, Any]:
        return {"campaign_id": campaign_id, "seq": state.last_seq + 1 + offset, "actor": actor}

    events_for(state, command, fields)  # refuse what does not fit before anything is sent
    try:
        with hold_lease(store.uri, settings.mongodb_database, campaign_id):
            state = fold(store.read(campaign_id))
            events = events_for(state, command, fields)
            store.append(events)
            print(f"{campaign_id}: {_describe(events[-1])} (logged as event {events[-1].seq})")
            _timeout_note(command)
        if state.deployed_flow_run is not None:
            print(f"campaign {campaign_id} is deployed: {wake_deployed(fold(store.read(campaign_id)))}")
        elif command.kind != "stop" and state.status != "finished":
            print(f"no orchestrator is running it: `closedloop resume {campaign_id}` to go on")
        return 0
    except CampaignLockedError as locked:
        return _hand_over(store, settings, command, locked, state.deployed_flow_run)


def wake_deployed(state: CampaignState) -> str:
    """Wake a deployed campaign's flow run (`flows.prefect.service.wake`) after a command of a
    person is in the log or the inbox; what happened, in a few words."""
    from flows.prefect.server import quiet_prefect_defaults

    run = state.deployed_flow_run
    quiet_prefect_defaults()
    from flows.prefect.approval import prefect_server_configured

    if run is None:
        return "it has no flow run yet"
    if not prefect_server_configured():
        return (f"set PREFECT_API_URL to its Prefect server to wake its flow run {run} "
                "(or resume that flow run in the Prefect UI)")
    from campaigns import PrefectServerError
    from flows.prefect.service import asking_prefect, wake

    try:
        with asking_prefect("wake"):
            return wake(state.campaign_id, run, finished=state.status == "finished")
    except PrefectServerError as exc:  # the command is logged: say why its run was not woken
        return f"its flow run {run} could not be woken ({exc.message}): resume it in the Prefect UI"


def _suspended(flow_run_id: str) -> bool:
    from flows.prefect.server import quiet_prefect_defaults

    quiet_prefect_defaults()
    from flows.prefect.approval import prefect_server_configured

    if not prefect_server_configured():
        return False
    from uuid import UUID

    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(flow_run_id)).state
    except Exception:
        return False
    return state is not None and state.is_paused()


def _hand_over(store: MongoEventStore, settings: Settings, command: Command, locked: CampaignLockedError,
               deployed_flow_run: str | None = None) -> int:
    from storage import MongoCommandInbox

    with _ctrl_c_between_calls() as interrupted, MongoCommandInbox(store.uri, database=settings.mongodb_database) as inbox:
        inbox.submit(command.campaign_id, command.kind, command.payload, by=command.by,
                     reason=command.reason, command_id=command.command_id)
        woken: list[str] = []

        def decided() -> Command | None:
            if interrupted.is_set():
                raise KeyboardInterrupt  # between two database calls, never inside one
            current = inbox.get(command.command_id)
            if current is not None and current.state in ("applied", "refused"):
                return current
            if (deployed_flow_run is not None and not woken and current is not None and current.state == "pending"
                    and _suspended(deployed_flow_run)):
                # A deployed run that decided to suspend just before this command came: wake it.
                state = fold(store.read(command.campaign_id))
                if state.deployed_flow_run == deployed_flow_run:
                    woken.append(wake_deployed(state))
            return None

        current = wait_for(decided, settings.handover_wait_s, interval_s=0.3, sleep=interrupted.wait)
        # A run that had suspended just before the command came was woken here: said too.
        also = "".join(f"; {line}" for line in woken)
        if current is not None and current.state == "applied":
            events = store.read(command.campaign_id, after_seq=max(0, (current.seq or 1) - 1))
            print(f"{command.campaign_id}: {_describe(events[0]) if events else 'applied'} "
                  f"(applied by the running orchestrator, event {current.seq}){also}")
            _timeout_note(command)
            return 0
        if current is not None:
            raise CommandRefusedError(f"refused: {current.error}", "fix the command and send it again",
                                  campaign_id=command.campaign_id)
    print(f"{command.campaign_id}: sent to the orchestrator that runs it ({locked.owner}); "
          f"it applies it when it next checks (see `closedloop history`){also}")
    return 0


@contextmanager
def _ctrl_c_between_calls() -> Iterator[threading.Event]:
    """While a command waits for the orchestrator, Ctrl-C sets an event instead of raising
    wherever the main thread is: a KeyboardInterrupt inside a pymongo call can leave its
    connection pool locked, and the withdrawal after it then hangs (seen on a loaded machine).
    The wait raises it itself, between two calls."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
    try:
        yield interrupted
        if interrupted.is_set():
            raise KeyboardInterrupt
    finally:
        signal.signal(signal.SIGINT, previous)


def _timeout_note(command: Command) -> None:
    if command.kind == "change" and command.payload.get("trial_timeout_s") is not None:
        print("the new trial timeout applies to trials dispatched from now on; trials running now keep "
              "their deadline (a resume gives them a fresh one, under the new timeout)")


def _interrupted(store: MongoEventStore, settings: Settings, command: Command) -> int:
    """Ctrl-C while a command was on its way: withdraw it if nothing took it yet, and say
    truthfully whether it was applied."""
    from storage import MongoCommandInbox

    cid, what = command.campaign_id, f"`{command.kind}`"

    def logged_at() -> int | None:
        return next((e.seq for e in store.read(cid) if getattr(e, "command_id", None) == command.command_id), None)

    try:
        with MongoCommandInbox(store.uri, database=settings.mongodb_database) as inbox:
            withdrawn = inbox.withdraw(command.command_id)  # only while pending: then nothing applies it
            current = None if withdrawn else inbox.get(command.command_id)
            seq = None if withdrawn else logged_at()

            def verdict() -> bool:  # the orchestrator is applying it: wait for its verdict
                nonlocal current, seq
                if seq is None and current is not None and current.state == "claimed":
                    current, seq = inbox.get(command.command_id), logged_at()
                return not (seq is None and current is not None and current.state == "claimed")

            wait_for(verdict, 10, interval_s=0.2)
    except KeyboardInterrupt:
        print(f"interrupted again: whether {what} was applied is in `closedloop history {cid}`", file=sys.stderr)
        return EXIT_INTERRUPTED
    if withdrawn:
        print(f"interrupted: {what} withdrawn before the orchestrator took it; nothing applied", file=sys.stderr)
    elif seq is not None:
        print(f"interrupted, but {what} was already applied (event {seq}; see `closedloop history {cid}`)",
              file=sys.stderr)
    elif current is not None and current.state == "refused":
        print(f"interrupted; the orchestrator had refused {what}: {current.error}", file=sys.stderr)
    elif current is not None:
        print(f"interrupted while the orchestrator applies {what}; see `closedloop history {cid}`", file=sys.stderr)
    else:
        print(f"interrupted before {what} was sent; nothing applied", file=sys.stderr)
    return EXIT_INTERRUPTED


def _describe(e: EventBase) -> str:
    if isinstance(e, AnswerRefused):
        about = f" to approval {e.approval_id}" if e.approval_id else ""
        return f"refused {e.by}'s {e.command}{about}: {e.what}"
    if isinstance(e, ApprovalGiven):
        return f"approval {e.approval_id}: {e.decision()}"
    if isinstance(e, ApprovalRejected):
        return f"approval {e.approval_id}: rejected {', '.join(e.rejected)}"
    if isinstance(e, ApprovalRequested):
        return f"approval {e.approval_id} requested for trials {', '.join(e.trial_ids)} ({e.why})"
    if isinstance(e, CampaignChanged):
        return f"changed: {e.change.describe()}"
    if isinstance(e, CampaignPaused):
        return f"paused ({e.reason})"
    if isinstance(e, CampaignResumed):
        return "resumed"
    if isinstance(e, CampaignFinished):
        return f"finished ({e.reason})"
    if isinstance(e, CampaignCreated):
        return f"created ({len(e.spec.parameters)} parameters, budget {e.spec.budget.max_trials})"
    if isinstance(e, RunStarted):
        return f"run started on {e.host} (pid {e.pid})"
    if isinstance(e, TrialRetried):
        return f"trial {e.trial_id} retried after {e.reason}"
    if isinstance(e, BrokerDisconnected):
        return "MQTT broker lost"
    if isinstance(e, BrokerReconnected):
        return f"MQTT broker back after {e.down_s:.1f} s"
    return e.kind  # type: ignore[attr-defined, no-any-return]


_HISTORY = (CampaignCreated, RunStarted, ApprovalRequested, ApprovalGiven, ApprovalRejected, AnswerRefused, CampaignChanged,
            CampaignPaused, CampaignResumed, CampaignFinished, TrialRetried, BrokerDisconnected, BrokerReconnected)


def _via(e: EventBase) -> str:
    """Where a person's decision came from: ``cli`` (typed, or sent to the running orchestrator
    through its inbox), ``prefect`` (a form in the UI), ``timeout`` (the policy's), ``replay``;
    empty for what no person decided."""
    via = getattr(e, "via", None)
    if via is not None:
        return str(via)
    return "cli" if e.actor_kind == "user" else ""


def _cmd_history(args: argparse.Namespace) -> int:
    with event_store(Settings(), create=False) as store:
        events = store.read(args.campaign)
    if not events:
        raise CampaignNotFoundError(f"no campaign {args.campaign!r}", "see `closedloop list`", campaign_id=args.campaign)
    rows = [(f"{e.time:%Y-%m-%d %H:%M:%S}", e.seq, e.actor, _via(e), what, why) for e, what, why in history(events)]
    print(table(["time (UTC)", "event", "by", "via", "what", "why"], rows))
    return 0


def history(events: list[EventBase]) -> list[tuple[EventBase, str, str]]:
    """The campaign's decisions and changes (what `history` lists): each event, what it did and why."""
    out = []
    for e in events:
        if isinstance(e, _HISTORY):
            if isinstance(e, AnswerRefused):
                why = e.why
            elif isinstance(e, CampaignPaused | CampaignFinished):
                why = e.detail or e.reason
            else:
                why = getattr(e, "reason", "")
            out.append((e, _describe(e), why if why and not isinstance(e, RunStarted | TrialRetried) else ""))
    return out


def _cmd_pending(args: argparse.Namespace) -> int:
    with event_store(Settings(), create=False) as store:
        ids = [args.campaign] if args.campaign else [c.campaign_id for c in store.list_campaigns() if not c.finished]
        shown = 0
        for cid in ids:
            state = fold(store.read(cid))
            for request in state.open_approvals.values():
                shown += 1
                since = f"{request.requested_at:%Y-%m-%d %H:%M} UTC"
                until = "" if request.deadline is None else f", on {request.deadline:%Y-%m-%d %H:%M} UTC: {request.on_timeout}"
                print(f"{cid}  approval {request.approval_id}  since {since}{until}  ({request.why})")
                view = approval_view(state, request)
                print(f"    best so far (observed): {view.best}")
                print(table(view.headers, view.rows, indent="    "))
                print(f"    answer: closedloop approve {cid} --approval {request.approval_id} --reason \"...\" "
                      "[--trial ID ...] [--edit ID name=value ...] [--reject ID ...]")
    if not shown:
        print("no approvals waiting")
    return 0


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    try:
        return split_assignments(items)
    except ValueError as exc:
        raise UsageError(f"{flag} {exc}", f"e.g. {flag} x1=2.5") from None


def _number(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r}: not a number", f"e.g. {flag} x1=2.5") from None
    if not math.isfinite(value):
        raise UsageError(f"{flag} {text!r}: not a finite number", f"e.g. {flag} x1=2.5")
    return value


def _typed(state: CampaignState, command: Command) -> Command:
    """``--edit`` and ``--fix`` values and ``--set-bounds`` typed by their parameters, as the loop reads them."""
    assert state.spec is not None
    payload = dict(command.payload)
    params = state.spec.parameters
    try:
        if payload.get("edit"):
            payload["edit"] = {tid: parameter_values(params, values) for tid, values in payload["edit"].items()}
    except ValueError as exc:
        raise UsageError(f"--edit {exc}", "e.g. --edit 3 x1=2.5") from None
    try:
        if payload.get("fix"):
            payload["fix"] = parameter_values(params, payload["fix"])
    except ValueError as exc:
        raise UsageError(f"--fix {exc}", "e.g. --fix x2=3.0") from None
    bounds = {}
    for name, pair in (payload.get("set_bounds") or {}).items():
        p = next((q for q in params if q.name == name), None)
        try:
            bounds[name] = pair if not isinstance(p, IntParameter) else tuple(parameter_value(p, v) for v in pair)
        except ValueError as exc:
            raise UsageError(f"--set-bounds {exc}", "e.g. --set-bounds n=1:8") from None
    if bounds:
        payload["set_bounds"] = bounds
    return command.model_copy(update={"payload": payload})


def _cmd_approve(args: argparse.Namespace) -> int:
    from flows.engine.commands import decision_conflict

    edits: dict[str, dict[str, str]] = {}
    for group in args.edit or []:
        if len(group) < 2:
            raise UsageError(f"--edit {' '.join(group)}: expected a trial id then NAME=VALUE", "e.g. --edit 3 x1=2.5")
        edits.setdefault(group[0], {}).update(_pairs(group[1:], "--edit"))
    conflict = decision_conflict(args.trial, edits, args.reject or [], words=("--trial", "--edit", "--reject"))
    if conflict is not None:
        raise UsageError(conflict, "give each trial to one of --trial, --edit and --reject")
    payload = {"approval_id": args.approval, "approve": args.trial, "edit": edits,
               "reject": args.reject or [], "via": "cli"}
    return _deliver(args.campaign, "approve", payload, args)


def _cmd_change(args: argparse.Namespace) -> int:
    from flows.engine.commands import change_problem

    change: dict[str, Any] = {}
    bounds = {}
    for name, text in _pairs(args.set_bounds or [], "--set-bounds").items():
        low, sep, high = text.partition(":")
        if not sep:
            raise UsageError(f"--set-bounds {name}={text}: expected LOW:HIGH", "e.g. --set-bounds x1=0:5")
        bounds[name] = (_number(low, "--set-bounds"), _number(high, "--set-bounds"))
    if bounds:
        change["set_bounds"] = bounds
    fixed = _pairs(args.fix or [], "--fix")  # typed by the campaign's parameters in _send
    if fixed:
        change["fix"] = fixed
    if args.free:
        change["free"] = args.free
    if args.add_constraint:
        change["add_outcome_constraints"] = args.add_constraint
    if args.threshold:
        change["objective_thresholds"] = {k: _number(v, "--threshold") for k, v in _pairs(args.threshold, "--threshold").items()}
    for name in ("batch_size", "trial_timeout_s", "max_trials", "max_hours", "method"):
        if getattr(args, name) is not None:
            change[name] = getattr(args, name)
    if not change:
        raise UsageError("nothing to change", "give at least one of --set-bounds, --fix, --free, --batch-size, ...")
    problem = change_problem(change)
    if problem is not None:
        raise UsageError(problem, "see `closedloop change --help`")
    return _deliver(args.campaign, "change", change, args)


def _cmd_pause(args: argparse.Namespace) -> int:
    return _deliver(args.campaign, "pause", {}, args)


def _cmd_stop(args: argparse.Namespace) -> int:
    return _deliver(args.campaign, "stop", {}, args)


def add_commands(sub: Any) -> None:
    """Register the people's commands on the CLI's subparsers."""
    def who(p: argparse.ArgumentParser) -> None:
        p.add_argument("--reason", required=True, help="why (recorded in the log with your name)")
        p.add_argument("--by", help="your name (default: the OS user)")

    p = sub.add_parser("pending", help="approval requests waiting for a person")
    p.add_argument("campaign", nargs="?")
    p.set_defaults(func=_cmd_pending)

    a = sub.add_parser("approve", help="approve, edit or reject the trials of an approval request")
    a.add_argument("campaign")
    a.add_argument("--approval", help="the approval id (default: the only one waiting)")
    a.add_argument("--trial", action="append", metavar="ID", help="approve this trial (default: all not edited/rejected)")
    a.add_argument("--edit", action="append", nargs="+", metavar="ID NAME=VALUE", help="run trial ID with these values")
    a.add_argument("--reject", action="append", metavar="ID", help="never run this trial")
    who(a)
    a.set_defaults(func=_cmd_approve)

    c = sub.add_parser("change", help="change a running campaign: bounds, fixed parameters, budget, ...")
    c.add_argument("campaign")
    c.add_argument("--set-bounds", action="append", metavar="NAME=LOW:HIGH")
    c.add_argument("--fix", action="append", metavar="NAME=VALUE", help="hold a parameter at a value")
    c.add_argument("--free", action="append", metavar="NAME", help="let a fixed parameter vary again")
    c.add_argument("--add-constraint", action="append", metavar='"METRIC >= X"', help="add an outcome constraint")
    c.add_argument("--threshold", action="append", metavar="OBJECTIVE=VALUE", help="objective threshold (multi-objective)")
    c.add_argument("--batch-size", dest="batch_size", type=int)
    c.add_argument("--trial-timeout", dest="trial_timeout_s", type=float, metavar="S")
    c.add_argument("--max-trials", dest="max_trials", type=int)
    c.add_argument("--max-hours", dest="max_hours", type=float)
    c.add_argument("--method", choices=["auto", "fast", "ax", "ax_default", "sobol", "botorch", "botorch_default"],
                   help="the optimizer's engine from now on (e.g. sobol: no model; botorch and botorch_default "
                   "are the earlier names of auto and ax_default)")
    who(c)
    c.set_defaults(func=_cmd_change)

    ps = sub.add_parser("pause", help="stop dispatching until `closedloop resume`")
    ps.add_argument("campaign")
    who(ps)
    ps.set_defaults(func=_cmd_pause)

    st = sub.add_parser("stop", help="finish the campaign now (its data stays)")
    st.add_argument("campaign")
    who(st)
    st.set_defaults(func=_cmd_stop)

    h = sub.add_parser("history", help="every decision and change, with who, when and why")
    h.add_argument("campaign")
    h.set_defaults(func=_cmd_history)
