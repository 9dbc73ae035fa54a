"""``fold(events) -> CampaignState``: the campaign's state, derived from its log alone.

``fold`` is pure and total: any sequence of events gives a state, never an exception.
Events that make no sense where they stand (a result for a trial never suggested, a second
result for a finished trial) are counted in ``anomalies`` and otherwise ignored, so a damaged
or hand-edited log can still be read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from campaigns.changes import apply_change
from campaigns.errors import SpecError
from campaigns.events import (
    AnswerRefused,
    ApprovalGiven,
    ApprovalRejected,
    ApprovalRequested,
    BrokerDisconnected,
    BrokerReconnected,
    CampaignChanged,
    CampaignCreated,
    CampaignFinished,
    CampaignPaused,
    CampaignResumed,
    DeviceOffline,
    DeviceOnline,
    EventBase,
    LateResultRecorded,
    Measurement,
    MessageRejected,
    MessagesRejected,
    ParameterValue,
    Prediction,
    PriorTrialsAdded,
    ReplaySource,
    RequestResent,
    RunStarted,
    TrialCompleted,
    TrialDispatched,
    TrialEngine,
    TrialFailed,
    TrialRetried,
    TrialsSuggested,
)
from campaigns.identity import fallback_instance
from campaigns.spec import CampaignSpec, PriorData

__all__ = ["CampaignState", "OpenApproval", "TrialRecord", "TrialStatus", "apply", "fold", "in_result_order", "running_best"]

TrialStatus = Literal["suggested", "running", "completed", "failed", "rejected"]


@dataclass
class TrialRecord:
    """One trial, as the log tells it."""

    trial_id: str
    index: int
    parameters: dict[str, ParameterValue]
    generator: str
    sobol_position: int | None
    suggested_at: datetime
    engine: TrialEngine = "unknown"  # which engine chose it
    status: TrialStatus = "suggested"
    device_id: str | None = None
    request_id: str | None = None
    dispatched_at: datetime | None = None
    first_dispatch_seq: int | None = None  # where its first attempt was dispatched: the order trials ran in
    finished_at: datetime | None = None
    measurements: dict[str, Measurement] = field(default_factory=dict)
    failure_reason: str | None = None
    failure_detail: str = ""
    attempts: int = 0
    resends: int = 0
    late_measurements: dict[str, Measurement] = field(default_factory=dict)
    requests: dict[str, str] = field(default_factory=dict)  # every attempt: request id -> device
    awaiting_approval: str | None = None
    suggested_parameters: dict[str, ParameterValue] | None = None
    decided_by: str | None = None
    prediction: dict[str, Prediction] | None = None  # the model's, when it was suggested
    #: Prior data (``PriorTrialsAdded``): where it came from, e.g. ``campaign branin-week1 trial 7``
    #: or ``lab.runs _id 65f0c...``; None for the campaign's own trials.
    prior: str | None = None

    @property
    def terminal(self) -> bool:
        """Whether the trial has an outcome (completed, failed, or rejected by a person)."""
        return self.status in ("completed", "failed", "rejected")


@dataclass
class OpenApproval:
    """An approval request nobody has answered yet."""

    approval_id: str
    trial_ids: list[str]
    requested_at: datetime
    deadline: datetime | None
    on_timeout: str
    why: str
    number: int = 0  # 0-based: the how-manieth approval request of the campaign this is


@dataclass
class CampaignState:
    """Everything the log says about one campaign."""

    campaign_id: str | None = None
    spec: CampaignSpec | None = None
    original_spec: CampaignSpec | None = None
    source: ReplaySource | None = None
    created_at: datetime | None = None
    instance: str | None = None  # what tells this campaign from others of its name (campaigns.identity)
    updated_at: datetime | None = None
    last_seq: int = 0
    trials: dict[str, TrialRecord] = field(default_factory=dict)
    finished_reason: str | None = None
    runs: int = 0
    #: The last run's Prefect flow run, if a deployment started it (``RunStarted.deployment``):
    #: people's commands wake that flow run when it is suspended.
    deployed_flow_run: str | None = None
    rejected_messages: int = 0  # device messages rejected: logged one by one, or counted in summaries
    anomalies: int = 0
    paused_reason: str | None = None
    paused_detail: str = ""
    window_completed: int = 0
    window_failed: int = 0
    broker_down_since: datetime | None = None
    broker_outages: int = 0
    devices: dict[str, str] = field(default_factory=dict)  # device -> last state logged (DeviceOnline/Offline)
    open_approvals: dict[str, OpenApproval] = field(default_factory=dict)
    applied_commands: set[str] = field(default_factory=set)
    #: People's answers the orchestrator refused (``AnswerRefused``), in order.
    refusals: list[AnswerRefused] = field(default_factory=list)
    changes: int = 0
    approvals_requested: int = 0
    #: The sources of the campaign's prior trials (``PriorTrialsAdded.sources``), as read.
    prior_sources: list[PriorData] = field(default_factory=list)
    # Indexes kept by apply(), so that a long campaign's loop pays per live trial, not per trial:
    # the trials without an outcome yet (in suggestion order), the rejected count, request ids.
    _live: dict[str, TrialRecord] = field(default_factory=dict, repr=False, compare=False)
    _rejected: int = field(default=0, repr=False, compare=False)
    _prior: int = field(default=0, repr=False, compare=False)
    _by_request: dict[str, TrialRecord] = field(default_factory=dict, repr=False, compare=False)

    @property
    def status(self) -> Literal["empty", "running", "paused", "finished"]:
        """``empty`` (no CampaignCreated yet), ``running``, ``paused`` or ``finished``."""
        if self.spec is None:
            return "empty"
        if self.finished_reason is not None:
            return "finished"
        return "paused" if self.paused_reason is not None else "running"

    def count(self, status: TrialStatus) -> int:
        """How many of the campaign's own trials have this status (prior data not counted)."""
        return sum(1 for t in self.trials.values() if t.status == status and t.prior is None)

    @property
    def prior_count(self) -> int:
        """How many trials are prior data the campaign started from (``PriorTrialsAdded``)."""
        return self._prior

    @property
    def in_flight(self) -> list[TrialRecord]:
        """Trials dispatched to a device and not yet answered."""
        return [t for t in self._live.values() if t.status == "running"]

    @property
    def undispatched(self) -> list[TrialRecord]:
        """Trials ready to be sent to a device: suggested, not waiting for approval."""
        return [t for t in self._live.values() if t.status == "suggested" and t.awaiting_approval is None]

    @property
    def budget_used(self) -> int:
        """Trials that count against ``max_trials``: every suggested trial but rejected ones
        (prior data is not suggested: it never counts)."""
        return len(self.trials) - self._rejected - self._prior

    def failure_rate_exceeded(self, extra_failures: int = 0) -> str | None:
        """Why the failure policy says pause (failures since the last resume, and
        ``extra_failures`` about to be logged), or None."""
        if self.spec is None:
            return None
        policy = self.spec.failure_policy
        failed = self.window_failed + extra_failures
        done = self.window_completed + failed
        if failed >= policy.min_failures and failed > policy.max_failure_rate * done:
            return (f"{failed} of {done} trials failed, more than the tolerated "
                    f"{policy.max_failure_rate:.0%} (failure_policy.max_failure_rate)")
        return None

    def busy_devices(self) -> set[str]:
        """Devices that hold a running trial."""
        return {t.device_id for t in self.in_flight if t.device_id is not None}

    def trial_by_request(self, request_id: str) -> TrialRecord | None:
        """The trial dispatched with this request id (any of its attempts), if any."""
        return self._by_request.get(request_id)

    def feasible(self, trial: TrialRecord) -> bool:
        """Whether a completed trial satisfies every outcome constraint (a constraint whose
        metric it lacks counts as broken)."""
        if self.spec is None:
            return False
        return all(c.metric in trial.measurements and c.holds(trial.measurements[c.metric].mean)
                   for c in self.spec.parsed_outcome_constraints)

    def best(self) -> TrialRecord | None:
        """The best completed trial for the first objective (the only one, when single-objective)
        among those that satisfy the outcome constraints; ``None`` when none does."""
        if self.spec is None:
            return None
        return self.best_for(self.spec.objectives[0].name)

    def best_for(self, objective: str) -> TrialRecord | None:
        """The best completed trial for ``objective`` alone, among those that satisfy the outcome
        constraints; ``None`` when none does (or the campaign has no such objective)."""
        if self.spec is None:
            return None
        obj = next((o for o in self.spec.objectives if o.name == objective), None)
        if obj is None:
            return None
        done = [t for t in self.trials.values()
                if t.status == "completed" and obj.name in t.measurements and self.feasible(t)]
        if not done:
            return None
        sign = 1.0 if obj.minimize else -1.0
        return min(done, key=lambda t: (sign * t.measurements[obj.name].mean, t.index))

    def pareto_front(self) -> list[TrialRecord]:
        """Completed trials not dominated on all objectives (single objective: the best trial)."""
        if self.spec is None:
            return []
        objs = self.spec.objectives
        done = [t for t in self.trials.values() if t.status == "completed" and all(o.name in t.measurements for o in objs)]

        def vec(t: TrialRecord) -> tuple[float, ...]:
            return tuple((1 if o.minimize else -1) * t.measurements[o.name].mean for o in objs)

        front = []
        for t in done:
            v = vec(t)
            if not any(all(a <= b for a, b in zip(vec(u), v, strict=True)) and vec(u) != v for u in done):
                front.append(t)
        return front


def in_result_order(trials: Iterable[TrialRecord]) -> list[TrialRecord]:
    """The trials in the order their results were logged (``finished_at``; none yet: last),
    ties by index: the x axis of every best-so-far curve."""
    return sorted(trials, key=lambda t: (t.finished_at is None, t.finished_at, t.index))


def running_best(values: Iterable[float], minimize: bool) -> list[float]:
    """The best of ``values`` so far, after each one."""
    out: list[float] = []
    for v in values:
        out.append(v if not out or (v < out[-1] if minimize else v > out[-1]) else out[-1])
    return out


def apply(state: CampaignState, event: EventBase) -> CampaignState:
    """Advance ``state`` by one event, in place, and return it. Never raises."""
    state.last_seq = max(state.last_seq, event.seq)
    state.updated_at = event.time
    if state.campaign_id is None:
        state.campaign_id = event.campaign_id
    if isinstance(event, CampaignCreated):
        if state.spec is None:
            state.spec = state.original_spec = event.spec
            state.source = event.source
            state.created_at = event.time
            state.instance = event.instance or fallback_instance(event.campaign_id, event.time, event.actor)
        else:
            state.anomalies += 1
    elif isinstance(event, RunStarted):
        state.runs += 1
        state.deployed_flow_run = event.flow_run_id if event.deployment else None
    elif isinstance(event, PriorTrialsAdded):
        _add_prior(state, event)
    elif isinstance(event, TrialsSuggested):
        for s in event.trials:
            if s.trial_id in state.trials:
                state.anomalies += 1
                continue
            state.trials[s.trial_id] = state._live[s.trial_id] = TrialRecord(
                trial_id=s.trial_id,
                index=len(state.trials),
                parameters=dict(s.parameters),
                generator=s.generator,
                sobol_position=s.sobol_position,
                suggested_at=event.time,
                engine=s.engine,
                prediction=None if s.prediction is None else dict(s.prediction),
            )
    elif isinstance(event, TrialDispatched):
        t = state.trials.get(event.trial_id)
        if t is None or t.terminal:
            state.anomalies += 1
        else:
            t.status, t.device_id, t.request_id, t.dispatched_at = "running", event.device_id, event.request_id, event.time
            if t.first_dispatch_seq is None:
                t.first_dispatch_seq = event.seq
            t.requests[event.request_id] = event.device_id
            state._by_request[event.request_id] = t
            t.attempts += 1
    elif isinstance(event, RequestResent):
        t = state.trials.get(event.trial_id)
        if t is None or t.status != "running" or t.request_id != event.request_id:
            state.anomalies += 1
        else:
            t.resends += 1
    elif isinstance(event, TrialRetried):
        t = state.trials.get(event.trial_id)
        if t is None or t.status != "running":
            state.anomalies += 1
        else:
            t.status, t.device_id, t.request_id, t.dispatched_at = "suggested", None, None, None
    elif isinstance(event, LateResultRecorded):
        t = state.trials.get(event.trial_id)
        if t is None or t.status != "failed":
            state.anomalies += 1
        else:
            t.late_measurements = dict(event.measurements)
    elif isinstance(event, TrialCompleted):
        t = state.trials.get(event.trial_id)
        if t is None or t.terminal:
            state.anomalies += 1
        else:
            t.status, t.finished_at, t.measurements = "completed", event.time, dict(event.measurements)
            t.device_id, t.request_id = event.device_id, event.request_id
            state.window_completed += 1
            state._live.pop(t.trial_id, None)
    elif isinstance(event, TrialFailed):
        t = state.trials.get(event.trial_id)
        if t is None or t.terminal:
            state.anomalies += 1
        else:
            t.status, t.finished_at = "failed", event.time
            t.failure_reason, t.failure_detail = event.reason, event.detail
            state.window_failed += 1
            state._live.pop(t.trial_id, None)
    elif isinstance(event, MessageRejected):
        state.rejected_messages += 1
    elif isinstance(event, MessagesRejected):
        state.rejected_messages += event.count
    elif isinstance(event, BrokerDisconnected):
        if state.broker_down_since is None:
            state.broker_down_since = event.time
            state.broker_outages += 1
    elif isinstance(event, BrokerReconnected):
        state.broker_down_since = None
    elif isinstance(event, DeviceOnline | DeviceOffline):
        state.devices[event.device_id] = event.state
    elif isinstance(event, ApprovalRequested):
        _request_approval(state, event)
    elif isinstance(event, ApprovalGiven | ApprovalRejected):
        _decide(state, event)
    elif isinstance(event, CampaignChanged):
        _note_command(state, event.command_id)
        if state.spec is not None:
            try:
                state.spec = apply_change(state.spec, event.change)
                state.changes += 1
            except SpecError:
                state.anomalies += 1  # a change that no longer fits: ignored, the log still reads
    elif isinstance(event, CampaignPaused):
        _note_command(state, event.command_id)
        state.paused_reason, state.paused_detail = event.reason, event.detail
    elif isinstance(event, CampaignResumed):
        _note_command(state, event.command_id)
        # The failure-rate window restarts: a person looked at the failures and resumed.
        state.paused_reason, state.paused_detail = None, ""
        state.window_completed = state.window_failed = 0
    elif isinstance(event, AnswerRefused):
        state.refusals.append(event)
    elif isinstance(event, CampaignFinished):
        _note_command(state, event.command_id)
        if state.finished_reason is None:
            state.finished_reason = event.reason
    return state


def _add_prior(state: CampaignState, event: PriorTrialsAdded) -> None:
    """Prior trials open a campaign: after its creation, before any trial of its own (their ids
    are the first trial indices), else the event is an anomaly and ignored."""
    if state.spec is None or state.trials:
        state.anomalies += 1
        return
    state.prior_sources = list(event.sources)
    for p in event.trials:
        if p.trial_id in state.trials:
            state.anomalies += 1
            continue
        source = event.sources[p.source]
        origin = (f"campaign {source.campaign} trial {p.origin}" if source.mongodb is None
                  else f"{source.mongodb.database}.{source.mongodb.collection} _id {p.origin}")
        state.trials[p.trial_id] = TrialRecord(
            trial_id=p.trial_id, index=len(state.trials), parameters=dict(p.parameters), generator="prior",
            sobol_position=None, suggested_at=event.time, engine="prior", status="completed",
            finished_at=event.time, measurements=dict(p.measurements), prior=origin,
        )
        state._prior += 1


def _note_command(state: CampaignState, command_id: str | None) -> None:
    if command_id is not None:
        state.applied_commands.add(command_id)


def _request_approval(state: CampaignState, event: ApprovalRequested) -> None:
    if event.approval_id in state.open_approvals:
        state.anomalies += 1
        return
    waiting = []
    for trial_id in event.trial_ids:
        t = state.trials.get(trial_id)
        if t is None or t.status != "suggested" or t.awaiting_approval is not None:
            state.anomalies += 1
            continue
        t.awaiting_approval = event.approval_id
        waiting.append(trial_id)
    if waiting:
        state.open_approvals[event.approval_id] = OpenApproval(
            event.approval_id, waiting, event.time, event.deadline, event.on_timeout, event.why,
            state.approvals_requested,
        )
        state.approvals_requested += 1


def _decide(state: CampaignState, event: ApprovalGiven | ApprovalRejected) -> None:
    _note_command(state, event.command_id)
    request = state.open_approvals.pop(event.approval_id, None)
    if request is None:
        state.anomalies += 1
        return
    approved = getattr(event, "approved", [])
    edited = getattr(event, "edited", {})
    for trial_id in request.trial_ids:
        t = state.trials[trial_id]
        t.awaiting_approval, t.decided_by = None, event.actor
        if trial_id in event.rejected or (trial_id not in approved and trial_id not in edited):
            t.status, t.finished_at, t.failure_reason = "rejected", event.time, event.reason
            state._live.pop(trial_id, None)
            state._rejected += 1
        elif trial_id in edited:
            t.suggested_parameters = dict(t.parameters)
            t.parameters = {**t.parameters, **edited[trial_id]}
            t.generator = "human"


def fold(events: Iterable[EventBase]) -> CampaignState:
    """The state a sequence of events describes. Pure: a new state every call."""
    state = CampaignState()
    for event in events:
        apply(state, event)
    return state
