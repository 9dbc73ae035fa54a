"""The closed loop itself: log → fold → optimizer → devices → log, until the budget is spent.

The loop is the campaign's single writer (it holds the campaign's lease). Every decision is
appended to the event log before it takes effect (``TrialDispatched`` before the MQTT
publish) and every outcome after it arrives; a device message is acknowledged to the broker
only once what it caused is in the log, so a crash in between makes the broker deliver it
again. The in-memory state is always ``fold(log)``, advanced one appended event at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from campaigns import (
    ApprovalGiven,
    ApprovalRejected,
    ApprovalRequested,
    BrokerDisconnected,
    BrokerReconnected,
    CampaignFinished,
    CampaignNotFoundError,
    CampaignPaused,
    CampaignSpec,
    CampaignState,
    ClosedLoopError,
    EventBase,
    LateResultRecorded,
    Measurement,
    RequestResent,
    RunStarted,
    SuggestedTrial,
    TrialCompleted,
    TrialDispatched,
    TrialFailed,
    TrialRecord,
    TrialRetried,
    TrialsSuggested,
    fold,
    utcnow,
)
from campaigns import MessageRejected as MessageRejectedEvent
from campaigns.errors import BrokerError
from devices import (
    ConnectionLost,
    ConnectionRestored,
    MessageRejected,
    MqttDeviceHub,
    ResultReceived,
    RunTrial,
    StatusChanged,
    TrialResult,
)
from optimizer import AxOptimizer
from storage import Command, MongoCommandInbox, MongoEventStore

from flows.commands import events_for
from flows.writer import EventWriter

__all__ = ["CampaignLoop", "LoopOptions", "Optimizer"]

log = logging.getLogger("closedloop.loop")


class Optimizer(Protocol):
    """What the loop needs of an optimizer (``optimizer.AxOptimizer`` is the real one)."""

    def suggest(self, n: int) -> list[SuggestedTrial]: ...
    def complete(self, trial_id: str, measurements: dict[str, Measurement]) -> None: ...
    def fail(self, trial_id: str, reason: str) -> None: ...


@dataclass(frozen=True)
class LoopOptions:
    """Knobs of the loop that are not part of the campaign spec."""

    poll_s: float = 0.05
    dispatch_timeout_s: float = 10.0
    max_runtime_s: float | None = None
    resend_min_interval_s: float = 5.0
    command_poll_s: float = 0.5


class ApprovalNotifier(Protocol):
    """Shows approval requests somewhere else too (e.g. the Prefect UI); answers come back as commands."""

    def open(self, approval_id: str, trials: list[dict[str, object]], why: str, answer_with: str) -> None: ...
    def close(self, approval_id: str) -> None: ...


class CommandScript(Protocol):
    """Commands that fall due as the campaign goes (a replay's people: ``flows.replay.ReplayScript``)."""

    def due(self, state: CampaignState) -> list[Command]: ...


class CampaignLoop:
    """Runs one campaign from its log until it finishes or pauses (or ``max_runtime_s`` passes).

    Args:
        campaign_id: The campaign to run; it must exist in ``store``.
        store: The event log.
        hub: Connected MQTT device hub (persistent session, stable client id).
        make_optimizer: ``(spec, trials) -> Optimizer``, rebuilding the optimizer from the log.
        options: Loop tuning.
        clock: Monotonic clock (seconds) for trial deadlines, injected for tests.
        wallclock: UTC clock for the campaign's ``max_hours``, injected for tests.
        run_info: ``host``, ``pid`` and ``flow_run_id`` recorded in ``RunStarted``.
        lease_lost: Returns the exception to stop on once the campaign's lease was lost.
        inbox: Where people's commands (approve, change, pause, stop) arrive.
        notifier: Also shows approval requests elsewhere (the Prefect UI).
        script: For a counterfactual replay: the source's people (``flows.replay.ReplayScript``),
            whose commands are applied as they fall due, as a person's would be.
    """

    def __init__(
        self,
        campaign_id: str,
        store: MongoEventStore,
        hub: MqttDeviceHub,
        make_optimizer: Callable[[CampaignSpec, Iterable[TrialRecord]], Optimizer] = AxOptimizer.rebuild,
        options: LoopOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], datetime] = utcnow,
        run_info: dict[str, object] | None = None,
        lease_lost: Callable[[], BaseException | None] = lambda: None,
        inbox: MongoCommandInbox | None = None,
        notifier: ApprovalNotifier | None = None,
        script: CommandScript | None = None,
    ) -> None:
        self.campaign_id = campaign_id
        self.store, self.hub = store, hub
        self.options = options or LoopOptions()
        self.clock, self.wallclock = clock, wallclock
        self.run_info = run_info or {}
        self._lease_lost = lease_lost
        self._make_optimizer = make_optimizer
        self.state = CampaignState()
        self.writer = EventWriter(store, self.state)
        self._deadlines: dict[str, float] = {}
        self._last_resend: dict[str, float] = {}
        self.inbox, self.notifier = inbox, notifier
        self.script = script
        self._script_refused: set[str] = set()
        self._next_command_poll = 0.0
        self._optimizer: Optimizer | None = None

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> CampaignState:
        """Run until the campaign finishes or pauses (or ``max_runtime_s``); returns the state."""
        self.state = fold(self.store.read(self.campaign_id))
        self.writer = EventWriter(self.store, self.state)
        spec = self.state.spec
        if spec is None:
            raise CampaignNotFoundError(
                f"campaign {self.campaign_id!r} does not exist", "start it with `closedloop run SPEC.yaml`",
                campaign_id=self.campaign_id,
            )
        if self.state.status in ("finished", "paused"):
            return self.state
        self._rebuild()
        self.writer.append(RunStarted(**self.writer.fields("orchestrator"), **self.run_info))  # type: ignore[arg-type]
        started = self.clock()
        # Trials in flight when the last run stopped: ask their devices again, with the same
        # request id (a v1 device answers a request it has run from its store), and give them
        # a fresh deadline from now.
        for t in self.state.in_flight:
            self._resend(t, "resume", force=True)
        for approval in self.state.open_approvals.values():
            self._notify(approval.approval_id)
        while True:
            lost = self._lease_lost()
            if lost is not None:
                raise lost
            for event in self.hub.next_events(self.options.poll_s):
                self._handle(event, self._spec(), self._opt())
            self._commands()
            self._scripted()
            spec = self._spec()
            self._expire(spec, self._opt())
            self._expire_approvals()
            if self.state.status in ("paused", "finished"):
                return self.state
            out_of_time = spec.budget.max_hours is not None and self._hours_used() >= spec.budget.max_hours
            out_of_trials = self.state.budget_used >= spec.budget.max_trials
            if not out_of_time and self.hub.connected:
                self._dispatch(spec, self._opt(), suggest_more=not out_of_trials and not self.state.open_approvals)
            if (out_of_time or out_of_trials) and not self.state.in_flight and (
                out_of_time or (not self.state.undispatched and not self.state.open_approvals)
            ):
                reason = "max_hours" if out_of_time and not out_of_trials else "budget_exhausted"
                self.writer.append(CampaignFinished(**self.writer.fields("orchestrator"), reason=reason))  # type: ignore[arg-type]
                return self.state
            if self.options.max_runtime_s is not None and self.clock() - started > self.options.max_runtime_s:
                return self.state

    def _spec(self) -> CampaignSpec:
        assert self.state.spec is not None
        return self.state.spec  # the effective spec: mid-campaign changes applied

    def _opt(self) -> Optimizer:
        assert self._optimizer is not None
        return self._optimizer

    def _rebuild(self) -> None:
        # Decisions and changes reshape the optimizer: it is rebuilt from the log (cheap),
        # exactly as a resume would rebuild it.
        self._optimizer = self._make_optimizer(self._spec(), list(self.state.trials.values()))

    # -- people ------------------------------------------------------------------------------

    def _commands(self) -> None:
        if self.inbox is None or self.clock() < self._next_command_poll:
            return
        self._next_command_poll = self.clock() + self.options.command_poll_s
        for command in self.inbox.pending(self.campaign_id):
            if command.command_id in self.state.applied_commands:
                self.inbox.applied(command.command_id, None)  # logged before a crash; mark it now
                continue
            try:
                events = events_for(self.state, command, self.writer.fields)
            except ClosedLoopError as exc:
                log.warning("refused %s command from %s: %s", command.kind, command.by, exc)
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
        self.notifier.open(approval_id, trials, request.why, self._answer_with(approval_id))

    def _answer_with(self, approval_id: str) -> str:
        return (f"closedloop approve {self.campaign_id} --approval {approval_id} "
                f"[--trial ID ...] [--edit ID name=value ...] [--reject ID ...] --reason \"...\"")

    def _ask(self, suggested: list[SuggestedTrial]) -> None:
        spec = self._spec()
        first = len(self.state.trials) - len(suggested)
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
        statuses = self.hub.devices()
        busy = self.state.busy_devices()
        return [
            d.id for d in spec.devices
            if d.id not in busy and (s := statuses.get(d.id)) is not None and s.state == "idle"
        ]

    def _dispatch(self, spec: CampaignSpec, optimizer: Optimizer, *, suggest_more: bool) -> None:
        free = self._free_devices(spec)
        if not free:
            return
        queue = [t.trial_id for t in self.state.undispatched]
        if len(queue) < len(free) and suggest_more:
            room = spec.budget.max_trials - self.state.budget_used
            n = min(len(free) - len(queue), spec.batch_size, room)
            if n > 0:
                suggested = optimizer.suggest(n)
                self.writer.append(TrialsSuggested(**self.writer.fields("optimizer"), trials=suggested))  # type: ignore[arg-type]
                self._ask(suggested)
                queue = [t.trial_id for t in self.state.undispatched]
        for device_id, trial_id in zip(free, queue, strict=False):
            trial = self.state.trials[trial_id]
            request_id = f"{self.campaign_id}:{trial_id}:{trial.attempts + 1}"
            self.writer.append(TrialDispatched(**self.writer.fields("orchestrator"),  # type: ignore[arg-type]
                                               trial_id=trial_id, device_id=device_id, request_id=request_id))
            self._publish(self.state.trials[trial_id])

    def _publish(self, t: TrialRecord) -> None:
        assert t.device_id is not None and t.request_id is not None
        spec = self.state.spec
        assert spec is not None
        self._deadlines[t.trial_id] = self.clock() + spec.trial_timeout_s
        self._last_resend[t.trial_id] = self.clock()
        request = RunTrial(request_id=t.request_id, campaign_id=self.campaign_id, trial_id=t.trial_id,
                           parameters=dict(t.parameters))
        try:
            self.hub.dispatch(t.device_id, request, timeout_s=self.options.dispatch_timeout_s)
        except BrokerError as exc:
            # The intent is logged; the request is re-sent when the broker is back, or the
            # trial times out.
            log.warning("publishing trial %s to %s failed: %s", t.trial_id, t.device_id, exc)

    def _resend(self, t: TrialRecord, reason: str, *, force: bool = False) -> None:
        if t.device_id is None or t.request_id is None:
            return
        if not force and self.clock() - self._last_resend.get(t.trial_id, -1e9) < self.options.resend_min_interval_s:
            return
        self.writer.append(RequestResent(**self.writer.fields("orchestrator"), trial_id=t.trial_id,  # type: ignore[arg-type]
                                         device_id=t.device_id, request_id=t.request_id, reason=reason))
        self._publish(t)

    # -- outcomes ------------------------------------------------------------------------------

    def _expire(self, spec: CampaignSpec, optimizer: Optimizer) -> None:
        now = self.clock()
        for t in self.state.in_flight:
            deadline = self._deadlines.setdefault(t.trial_id, now + spec.trial_timeout_s)
            if now >= deadline:
                self._fail(optimizer, t, "timeout", f"no result within {spec.trial_timeout_s:g} s")

    def _fail(self, optimizer: Optimizer, t: TrialRecord, reason: str, detail: str) -> None:
        spec = self.state.spec
        assert spec is not None
        self._deadlines.pop(t.trial_id, None)
        common = {"trial_id": t.trial_id, "reason": reason, "detail": detail,
                  "device_id": t.device_id, "request_id": t.request_id}
        if t.attempts <= spec.failure_policy.retries:
            self.writer.append(TrialRetried(**self.writer.fields("orchestrator"), attempt=t.attempts, **common))  # type: ignore[arg-type]
            return
        self.writer.append(TrialFailed(**self.writer.fields("orchestrator"), **common))  # type: ignore[arg-type]
        optimizer.fail(t.trial_id, reason)
        why = self.state.failure_rate_exceeded()
        if why is not None:
            self.writer.append(CampaignPaused(**self.writer.fields("orchestrator"), reason="failure_rate", detail=why))  # type: ignore[arg-type]

    def _reject(self, device_id: str | None, topic: str, reason: str, excerpt: str = "") -> None:
        log.warning("rejected message from %s on %s: %s", device_id or "?", topic, reason)
        actor = f"device:{device_id}" if device_id else "orchestrator"
        self.writer.append(MessageRejectedEvent(**self.writer.fields(actor), device_id=device_id,  # type: ignore[arg-type]
                                                topic=topic, reason=reason, excerpt=excerpt[:200]))

    def _handle(self, event: object, spec: CampaignSpec, optimizer: Optimizer) -> None:
        if isinstance(event, MessageRejected):
            self._reject(event.device_id, event.topic, event.reason, event.excerpt)
            self.hub.ack(event)
        elif isinstance(event, ResultReceived):
            self._result(event.device_id, event.result, spec, optimizer)
            self.hub.ack(event)  # only now: what the result caused is in the log
        elif isinstance(event, StatusChanged):
            if event.status.state == "idle":
                # A device that is idle while the log says it runs a trial lost the request or
                # restarted: ask again (it answers from its store if it did run it).
                for t in self.state.in_flight:
                    if t.device_id == event.device_id:
                        self._resend(t, "device_idle")
        elif isinstance(event, ConnectionLost):
            self.writer.append(BrokerDisconnected(**self.writer.fields("orchestrator"), detail=event.detail))  # type: ignore[arg-type]
        elif isinstance(event, ConnectionRestored):
            self.writer.append(BrokerReconnected(**self.writer.fields("orchestrator"), down_s=event.down_s))  # type: ignore[arg-type]
            for t in self.state.in_flight:
                self._resend(t, "broker_reconnected", force=True)

    def _result(self, device_id: str, result: TrialResult, spec: CampaignSpec, optimizer: Optimizer) -> None:
        topic = f"devices/{device_id}/results"
        # Any attempt's request id: a result for an earlier attempt of a retried trial measures
        # the same parameters, and the first valid result wins.
        t = self.state.trial_by_request(result.request_id)
        if t is None or t.trial_id != result.trial_id:
            self._reject(device_id, topic, f"result for unknown request {result.request_id!r} / trial {result.trial_id!r}")
            return
        measurements = {k: Measurement(mean=m.mean, sem=m.sem) for k, m in result.measurements.items()}
        if t.status == "failed" and result.status == "completed" and not t.late_measurements:
            self.writer.append(LateResultRecorded(**self.writer.fields(f"device:{device_id}"),  # type: ignore[arg-type]
                                                  trial_id=t.trial_id, device_id=device_id,
                                                  request_id=result.request_id, measurements=measurements))
            return
        if t.terminal:
            self._reject(device_id, topic, f"duplicate result for trial {t.trial_id} (already {t.status})")
            return
        if t.requests.get(result.request_id) != device_id:
            self._reject(device_id, topic, f"request {result.request_id} was sent to "
                                           f"{t.requests.get(result.request_id)}, not {device_id}")
            return
        if result.status == "failed":
            self._fail(optimizer, t, "device_error", result.error or "device reported failure")
            return
        missing = [m for m in spec.metrics if m not in measurements]
        if missing:
            self._fail(optimizer, t, "invalid_result", f"result lacks metric {missing[0]!r}")
            return
        self.writer.append(TrialCompleted(**self.writer.fields(f"device:{device_id}"), trial_id=t.trial_id,  # type: ignore[arg-type]
                                          device_id=device_id, request_id=result.request_id, measurements=measurements))
        self._deadlines.pop(t.trial_id, None)
        optimizer.complete(t.trial_id, measurements)
