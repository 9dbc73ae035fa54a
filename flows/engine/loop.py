"""The closed loop itself: log → fold → optimizer → devices → log, until the budget is spent.

The loop is the campaign's single writer (it holds the campaign's lease). Every decision is
appended to the event log before it takes effect (``TrialDispatched`` before the MQTT
publish) and every outcome after it arrives; a device message is acknowledged to the broker
only once what it caused is in the log, so a crash in between makes the broker deliver it
again. The in-memory state is always ``fold(log)`` plus what one pass has staged and not yet
flushed (``flows.engine.writer``): a pass's events go to the log in one insert, before any publish or
acknowledgement they allow.

Dispatch is ``async`` by default: every call on the optimizer runs, in order, in one worker
thread (``flows.engine.ahead``), so while devices are busy the next suggestion is computed ahead
(``LoopOptions.suggest_ahead`` trials beyond the free devices, pending trials known to the
optimizer) and logged as soon as it is ready; a device that frees up gets it at once. The loop
never waits for the optimizer meanwhile: it handles results and commands. ``batch`` dispatch
suggests ``batch_size`` trials only when none is in flight, and waits for the whole batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from campaigns import (
    ApprovalGiven,
    ApprovalRejected,
    ApprovalRequested,
    CampaignFinished,
    CampaignNotFoundError,
    CampaignSpec,
    CampaignState,
    ClosedLoopError,
    EventBase,
    Measurement,
    RequestResent,
    RunStarted,
    SuggestedTrial,
    TrialDispatched,
    TrialRecord,
    TrialsSuggested,
    fold,
)
from campaigns.command import Command
from campaigns.errors import BrokerError
from campaigns.identity import request_id as new_request_id
from campaigns.review import ApprovalView, approval_view
from devices.messages import RunTrial
from flows.engine.ahead import OptimizerThread
from flows.engine.commands import events_for, refusal
from flows.engine.outcomes import Outcomes
from flows.engine.ports import Clock, CommandInbox, DeviceHub, EventLog, SystemClock
from flows.engine.writer import EventWriter
from optimizer import AxOptimizer

__all__ = ["CampaignLoop", "LoopOptions", "Optimizer", "answer_with"]

log = logging.getLogger("closedloop.loop")


class Optimizer(Protocol):
    """What the loop needs of an optimizer (``optimizer.AxOptimizer`` is the real one)."""

    def suggest(self, n: int) -> list[SuggestedTrial]: ...
    def complete(self, trial_id: str, measurements: dict[str, Measurement]) -> None: ...
    def fail(self, trial_id: str, reason: str) -> None: ...


@dataclass(frozen=True)
class LoopOptions:
    """Knobs of the loop that are not part of the campaign spec.

    ``suggest_ahead``: in ``async`` dispatch, how many trials to keep suggested beyond the
    devices free right now, so that a device that frees up gets one at once. ``None``:
    ``ceil(devices / 5)``, at least 1 — about how many devices free up while one suggestion is
    computed when trials last 5x a suggestion or more.
    """

    poll_s: float = 0.05
    suggest_ahead: int | None = None
    # None: a request is handed to paho without waiting for its PUBACK (a lost one is re-sent
    # on reconnect, on the device's idle status, or fails by timeout, as the log says).
    dispatch_timeout_s: float | None = None
    max_runtime_s: float | None = None
    resend_min_interval_s: float = 5.0
    command_poll_s: float = 0.5
    # False: every optimizer call runs in the loop's own thread, in order (deterministic runs
    # on a manual clock; nothing is computed while the loop waits on devices).
    optimizer_in_thread: bool = True
    # True: return, instead of idling, once only a person can move the campaign on (an open
    # approval, nothing in flight or to send, nothing being computed): a deployed campaign's
    # flow run then suspends and holds no process while it waits (flows.prefect.suspension),
    # and the suspension carries the approval's deadline.
    leave_when_waiting: bool = False


class ApprovalNotifier(Protocol):
    """Shows approval requests somewhere else too (e.g. the Prefect UI); answers come back as commands."""

    def open(self, approval_id: str, trials: list[dict[str, object]], why: str, answer_with: str,
             view: ApprovalView | None = None) -> None: ...
    def close(self, approval_id: str) -> None: ...


def answer_with(campaign_id: str, approval_id: str) -> str:
    """The CLI command that answers an approval request (shown wherever the request is)."""
    return (f"closedloop approve {campaign_id} --approval {approval_id} "
            f"[--trial ID ...] [--edit ID name=value ...] [--reject ID ...] --reason \"...\"")


class CommandScript(Protocol):
    """Commands that fall due as the campaign goes (a replay's people: ``flows.engine.replay.ReplayScript``)."""

    def due(self, state: CampaignState) -> list[Command]: ...


class CampaignLoop(Outcomes):
    """Runs one campaign from its log until it finishes or pauses (or ``max_runtime_s`` passes).

    Args:
        campaign_id: The campaign to run; it must exist in ``store``.
        store: The event log.
        hub: The connected device hub (MQTT: persistent session, stable client id).
        make_optimizer: ``(spec, trials) -> Optimizer``, rebuilding the optimizer from the log.
        options: Loop tuning.
        clock: Monotonic seconds for trial deadlines and UTC time for the campaign's
            ``max_hours`` (a manual clock in tests).
        run_info: ``host``, ``pid`` and ``flow_run_id`` recorded in ``RunStarted``.
        lease_lost: Returns the exception to stop on once the campaign's lease was lost.
        inbox: Where people's commands (approve, change, pause, stop) arrive.
        notifier: Also shows approval requests elsewhere (the Prefect UI).
        script: For a counterfactual replay: the source's people (``flows.engine.replay.ReplayScript``),
            whose commands are applied as they fall due, as a person's would be.
    """

    def __init__(
        self,
        campaign_id: str,
        store: EventLog,
        hub: DeviceHub,
        make_optimizer: Callable[[CampaignSpec, Iterable[TrialRecord]], Optimizer] = AxOptimizer.rebuild,
        options: LoopOptions | None = None,
        clock: Clock | None = None,
        run_info: dict[str, object] | None = None,
        lease_lost: Callable[[], BaseException | None] = lambda: None,
        inbox: CommandInbox | None = None,
        notifier: ApprovalNotifier | None = None,
        script: CommandScript | None = None,
    ) -> None:
        self.campaign_id = campaign_id
        self.store, self.hub = store, hub
        self.options = options or LoopOptions()
        clock = clock or SystemClock()
        self._clock = clock
        self.clock: Callable[[], float] = clock.monotonic
        self.wallclock: Callable[[], datetime] = clock.now
        self.run_info = run_info or {}
        self._lease_lost = lease_lost
        self._make_optimizer = make_optimizer
        self.state = CampaignState()
        self.writer = self._writer_for(store)
        self._deadlines: dict[str, float] = {}
        self._last_resend: dict[str, float] = {}
        self._answered: set[str] = set()  # devices whose last status predates their last result
        self.inbox, self.notifier = inbox, notifier
        self.script = script
        self._script_refused: set[str] = set()
        self._next_command_poll = 0.0
        self._worker: OptimizerThread[Optimizer] = self._new_worker()
        self._start_outcomes()

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> CampaignState:
        """Run until the campaign finishes or pauses (or ``max_runtime_s``); returns the state."""
        self.state = fold(self.store.read(self.campaign_id))
        self.writer = self._writer_for(self.store)
        spec = self.state.spec
        if spec is None:
            raise CampaignNotFoundError(
                f"campaign {self.campaign_id!r} does not exist", "start it with `closedloop run SPEC.yaml`",
                campaign_id=self.campaign_id,
            )
        if self.state.status in ("finished", "paused"):
            return self.state
        self._worker = self._new_worker()
        try:
            return self._run()
        finally:
            self._worker.close()  # a suggestion still being computed is dropped, unlogged

    def _run(self) -> CampaignState:
        self._rebuild()
        self._start_outcomes()
        self.writer.append(RunStarted(**self.writer.fields("orchestrator"), **self.run_info))  # type: ignore[arg-type]
        started = self.clock()
        # Trials in flight when the last run stopped: ask their devices again, with the same
        # request id (a v1 device answers a request it has run from its store), and give them
        # all one fresh deadline from now (not from each re-send, however slow the broker).
        now = self.clock()
        for t in self.state.in_flight:
            self._resend(t, "resume", force=True, since=now)
        for approval in self.state.open_approvals.values():
            self._notify(approval.approval_id)
        while True:
            lost = self._lease_lost()
            if lost is not None:
                raise lost
            events = self.hub.next_events(self.options.poll_s)
            for event in events:
                self._handle(event, self._spec())
            self._worker.check()
            self._commands()
            self._scripted()
            spec = self._spec()
            self._expire(spec)
            self._summarize_rejections()
            self._expire_approvals()
            out_of_time = spec.budget.max_hours is not None and self._hours_used() >= spec.budget.max_hours
            out_of_trials = self.state.budget_used >= spec.budget.max_trials
            sent: list[TrialRecord] = []
            if self.state.status == "running" and not out_of_time and self.hub.connected:
                sent = self._dispatch(spec)
            # Everything this pass decided goes to the log in one insert; only then its side
            # effects: the messages that caused it are acknowledged, the trials sent. An outcome
            # (a timeout too, with every device busy) is in the log by the end of its pass; what
            # nothing waits for (a suggestion made ahead) may ride with a later pass's insert.
            held = [e for e in events if getattr(e, "delivery", None) is not None]
            if held or sent or self._urgent or self.state.status != "running":
                self.writer.flush()
                self._urgent = False
            for event in held:
                self.hub.ack(event)
            for trial in sent:
                self._publish(trial)
            if self.state.status in ("paused", "finished"):
                self._end_run()
                return self.state
            if (out_of_time or out_of_trials) and not self.state.in_flight and (out_of_time or (
                not self._worker.computing and not self.state.undispatched and not self.state.open_approvals
            )):
                self._summarize_rejections(final=True)
                if self._pause_if_silent(spec, ending=True):  # not "finished" when nobody ever answered
                    self._end_run()
                    return self.state
                reason = "max_hours" if out_of_time and not out_of_trials else "budget_exhausted"
                self.writer.append(CampaignFinished(**self.writer.fields("orchestrator"), reason=reason))  # type: ignore[arg-type]
                return self.state
            if self.options.max_runtime_s is not None and self.clock() - started > self.options.max_runtime_s:
                self._end_run()
                return self.state
            if self.options.leave_when_waiting and not sent and self.waits_for_a_person():
                self._next_command_poll = 0.0
                self._commands()  # a last look: a command that came meanwhile is applied, not slept on
                if self.waits_for_a_person():
                    self._end_run()
                    return self.state

    def waits_for_a_person(self) -> bool:
        """Only a person's answer (or an approval's deadline) moves this running campaign on: an
        approval is open, and nothing is in flight, to send or being computed."""
        return (self.state.status == "running" and bool(self.state.open_approvals) and not self.state.in_flight
                and not self.state.undispatched and not self._worker.computing)

    def _writer_for(self, store: EventLog) -> EventWriter:
        # Back-off through a database outage waits on the loop's clock.
        return EventWriter(store, self.state, sleep=self._clock.sleep, clock=self._clock.monotonic)

    def _new_worker(self) -> OptimizerThread[Optimizer]:
        return OptimizerThread(self.hub.wake, threaded=self.options.optimizer_in_thread)

    def _spec(self) -> CampaignSpec:
        assert self.state.spec is not None
        return self.state.spec  # the effective spec: mid-campaign changes applied

    def _rebuild(self) -> None:
        # Decisions and changes reshape the optimizer: it is rebuilt from the log (cheap),
        # exactly as a resume would rebuild it. A suggestion the old one was computing is
        # dropped: nothing suggested under the old spec is logged after the change.
        self._worker.use(self._make_optimizer(self._spec(), list(self.state.trials.values())))

    # -- people ------------------------------------------------------------------------------

    def _commands(self) -> None:
        if self.inbox is None or self.clock() < self._next_command_poll:
            return
        self._next_command_poll = self.clock() + self.options.command_poll_s
        for command in self.inbox.pending(self.campaign_id):
            if command.command_id in self.state.applied_commands:
                self.inbox.applied(command.command_id, None)  # logged before a crash; mark it now
                continue
            logged = next((r for r in self.state.refusals if r.command_id == command.command_id), None)
            if logged is not None:
                self.inbox.refused(command.command_id, logged.why)  # refused before a crash; mark it now
                continue
            if not self.inbox.claim(command.command_id):
                continue  # its author withdrew it (Ctrl-C on `closedloop approve`): never applied
            try:
                events = events_for(self.state, command, self.writer.fields)
            except ClosedLoopError as exc:
                log.warning("refused %s command from %s: %s", command.kind, command.by, exc)
                # In the log too, so `history` and `status` show it wherever it was given.
                self.writer.append(refusal(self.state, command, str(exc), self.writer.fields))
                self.inbox.refused(command.command_id, str(exc))
                continue
            self.writer.append(*events)
            self.inbox.applied(command.command_id, self.state.last_seq)
            self._after_decision(events)

    def _scripted(self) -> None:
        # A replay's people: their commands go through the same checks as a person's.
        if self.script is None:
            return
        for command in self.script.due(self.state):
            if command.command_id in self._script_refused:
                continue
            try:
                events = events_for(self.state, command, self.writer.fields)
            except ClosedLoopError as exc:
                log.warning("replay: the source's %s (%s) does not apply here: %s", command.kind, command.command_id, exc)
                self._script_refused.add(command.command_id)
                continue
            self.writer.append(*events)
            self._after_decision(events)

    def _after_decision(self, events: list[EventBase]) -> None:
        for e in events:
            if isinstance(e, ApprovalGiven | ApprovalRejected) and self.notifier is not None:
                self.notifier.close(e.approval_id)
        self._rebuild()

    def _notify(self, approval_id: str) -> None:
        request = self.state.open_approvals.get(approval_id)
        if self.notifier is None or request is None:
            return
        trials = [{"trial_id": t, "parameters": dict(self.state.trials[t].parameters)} for t in request.trial_ids]
        self.notifier.open(approval_id, trials, request.why, self._answer_with(approval_id),
                           view=approval_view(self.state, request))

    def _answer_with(self, approval_id: str) -> str:
        return answer_with(self.campaign_id, approval_id)

    def _ask(self, suggested: list[SuggestedTrial]) -> None:
        spec = self._spec()
        first = len(self.state.trials) - self.state.prior_count - len(suggested)  # the campaign's own trials
        need = [s.trial_id for i, s in enumerate(suggested) if spec.approval.needs_approval(s.parameters, first + i)]
        if not need:
            return
        policy = spec.approval
        why = {"every_batch": "every batch needs approval",
               "first_n": f"the first {policy.first_n} trials need approval",
               "when": f"approval needed when {policy.when}"}.get(policy.mode, policy.mode)
        approval_id = f"a{need[0]}"
        deadline = None if policy.timeout_s is None else self.wallclock() + timedelta(seconds=policy.timeout_s)
        self.writer.append(ApprovalRequested(**self.writer.fields("orchestrator"), approval_id=approval_id,  # type: ignore[arg-type]
                                             trial_ids=need, why=why, deadline=deadline,
                                             parameters={t: dict(self.state.trials[t].parameters) for t in need},
                                             on_timeout=policy.on_timeout, answer_with=self._answer_with(approval_id)))
        log.warning("approval %s waits for a person: trials %s (%s)", approval_id, ", ".join(need), why)
        self._notify(approval_id)

    def _expire_approvals(self) -> None:
        now = self.wallclock()
        for request in list(self.state.open_approvals.values()):
            if request.deadline is None or now < request.deadline or request.on_timeout == "keep_waiting":
                continue
            fields = self.writer.fields("orchestrator")
            reason = f"nobody answered by {request.deadline:%Y-%m-%d %H:%M} UTC: on_timeout is {request.on_timeout}"
            event: EventBase
            if request.on_timeout == "approve":
                event = ApprovalGiven(**fields, approval_id=request.approval_id, approved=request.trial_ids,  # type: ignore[arg-type]
                                      reason=reason, via="timeout")
            else:
                event = ApprovalRejected(**fields, approval_id=request.approval_id, rejected=request.trial_ids,  # type: ignore[arg-type]
                                         reason=reason, via="timeout")
            self.writer.append(event)
            self._after_decision([event])

    def _hours_used(self) -> float:
        # The wall-clock budget counts from the campaign's creation, across runs and pauses.
        created = self.state.created_at
        return 0.0 if created is None else (self.wallclock() - created).total_seconds() / 3600.0

    # -- sending -----------------------------------------------------------------------------

    def _free_devices(self, spec: CampaignSpec) -> list[str]:
        # Idle, or still "busy" from the trial it has just answered: protocol v1 devices say
        # busy -> result -> idle, and queue a request that comes before their idle, so the
        # next trial goes out with the result's insert instead of a message later.
        # A device whose status does not announce a metric the campaign needs gets nothing.
        statuses = self.hub.devices()
        busy = self.state.busy_devices()
        needed = self._needed(spec)
        return [
            d.id for d in spec.devices
            if d.id not in busy and (s := statuses.get(d.id)) is not None
            and (s.state == "idle" or (s.state == "busy" and d.id in self._answered))
            and (all(m in s.measures for m in needed) or self._suits(d.id, s.measures, spec))
        ]

    def _dispatch(self, spec: CampaignSpec) -> list[TrialRecord]:
        """Stage a finished suggestion (flushed before any of its trials is published), start
        the next, stage the dispatches; return the trials to send."""
        suggested = self._worker.collect()
        if suggested:
            self.writer.stage(TrialsSuggested(**self.writer.fields("optimizer"), trials=suggested))  # type: ignore[arg-type]
            self._ask(suggested)
        queue = [t.trial_id for t in self.state.undispatched]
        # Which devices are free matters only with trials to send, or to size an async suggestion.
        wants_free = bool(queue) or (spec.dispatch != "batch" and not self._worker.computing)
        free = self._free_devices(spec) if wants_free else []
        n = self._wanted(spec, len(free), len(queue))
        if n > 0:
            # Computed in the worker thread, after every result told to the optimizer so far;
            # the loop goes on meanwhile and is woken when it is ready.
            self._worker.suggest(n, lambda optimizer, k: optimizer.suggest(k))
        sent = []
        for device_id, trial_id in zip(free, queue, strict=False):
            trial = self.state.trials[trial_id]
            # Unique across every campaign that may share the device (its instance, not its name).
            request_id = new_request_id(self.campaign_id, self.state.instance or "", trial_id, trial.attempts + 1)
            self.writer.stage(TrialDispatched(**self.writer.fields("orchestrator"),  # type: ignore[arg-type]
                                              trial_id=trial_id, device_id=device_id, request_id=request_id))
            sent.append(trial)
        return sent

    def _wanted(self, spec: CampaignSpec, free: int, queued: int) -> int:
        room = spec.budget.max_trials - self.state.budget_used
        if self._worker.computing or room <= 0 or self.state.open_approvals:
            return 0
        if spec.dispatch == "batch":
            # Batch-synchronous: the next batch once the whole last one has finished.
            return 0 if self.state.in_flight or queued else min(spec.batch_size, room)
        ahead = self.options.suggest_ahead
        if ahead is None:
            ahead = max(1, -(-len(spec.devices) // 5))
        wanted = max(0, min(free + ahead - queued, spec.batch_size, room))
        if spec.approval.mode == "every_batch":
            # A person is asked once per batch, not once per freed device: the loop gathers a
            # whole batch (batch_size, or what the budget has left) before suggesting it. It
            # suggests it once the free devices and the look-ahead can take it all, or once
            # nothing runs nor waits to run (the devices would idle for nothing); so the wait
            # lasts at most until the running trials end (each by its result or its timeout).
            full = min(spec.batch_size, room)
            return full if wanted >= full or (not self.state.in_flight and not queued) else 0
        return wanted

    def _publish(self, t: TrialRecord, since: float | None = None) -> None:
        assert t.device_id is not None and t.request_id is not None
        spec = self.state.spec
        assert spec is not None
        self.writer.flush()  # intent before side effect
        self._deadlines[t.trial_id] = (self.clock() if since is None else since) + spec.trial_timeout_s
        self._watch.sent_to.add(t.device_id)
        self._last_resend[t.trial_id] = self.clock()
        request = RunTrial(request_id=t.request_id, campaign_id=self.campaign_id, trial_id=t.trial_id,
                           parameters=dict(t.parameters))
        try:
            self.hub.dispatch(t.device_id, request, timeout_s=self.options.dispatch_timeout_s)
        except BrokerError as exc:
            # The intent is logged; the request is re-sent when the broker is back, or the
            # trial times out.
            log.warning("publishing trial %s to %s failed: %s", t.trial_id, t.device_id, exc)

    def _resend(self, t: TrialRecord, reason: str, *, force: bool = False, since: float | None = None) -> None:
        if t.device_id is None or t.request_id is None:
            return
        if not force and self.clock() - self._last_resend.get(t.trial_id, -1e9) < self.options.resend_min_interval_s:
            return
        self.writer.append(RequestResent(**self.writer.fields("orchestrator"), trial_id=t.trial_id,  # type: ignore[arg-type]
                                         device_id=t.device_id, request_id=t.request_id, reason=reason))
        self._publish(t, since)
