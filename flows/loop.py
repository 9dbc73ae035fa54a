"""The closed loop itself: log → fold → optimizer → devices → log, until the budget is spent.

The loop is the campaign's single writer. Every decision is appended to the event log before
it takes effect (``TrialDispatched`` before the MQTT publish) and every outcome after it
arrives; the in-memory state is always ``fold(log)``, advanced one appended event at a time.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from campaigns import (
    CampaignFinished,
    CampaignNotFoundError,
    CampaignSpec,
    CampaignState,
    EventBase,
    Measurement,
    RunStarted,
    SuggestedTrial,
    TrialCompleted,
    TrialDispatched,
    TrialFailed,
    TrialRecord,
    TrialsSuggested,
    apply,
    fold,
    utcnow,
)
from campaigns import MessageRejected as MessageRejectedEvent
from campaigns.errors import BrokerError
from devices import MessageRejected, MqttDeviceHub, ResultReceived, RunTrial, StatusChanged, TrialResult
from optimizer import AxOptimizer
from storage import MongoEventStore

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


class CampaignLoop:
    """Runs one campaign from its log until the budget is spent (or ``max_runtime_s`` passes).

    Args:
        campaign_id: The campaign to run; it must exist in ``store``.
        store: The event log.
        hub: Connected MQTT device hub.
        make_optimizer: ``(spec, trials) -> Optimizer``, rebuilding the optimizer from the log.
        options: Loop tuning.
        clock: Monotonic clock (seconds) for trial deadlines, injected for tests.
        wallclock: UTC clock for the campaign's ``max_hours``, injected for tests.
        flow_run_id: The Prefect flow run driving this loop, recorded in ``RunStarted``.
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
        flow_run_id: str | None = None,
    ) -> None:
        self.campaign_id = campaign_id
        self.store = store
        self.hub = hub
        self.options = options or LoopOptions()
        self.clock = clock
        self.wallclock = wallclock
        self.flow_run_id = flow_run_id
        self._make_optimizer = make_optimizer
        self.state = CampaignState()
        self._deadlines: dict[str, float] = {}

    # -- writing the log -------------------------------------------------------------------

    def _append(self, *events: EventBase) -> None:
        self.store.append(events)
        for e in events:
            apply(self.state, e)

    def _next(self) -> dict[str, object]:
        return {"campaign_id": self.campaign_id, "seq": self.state.last_seq + 1}

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> CampaignState:
        """Run until the campaign finishes (or ``max_runtime_s``); returns the final state."""
        self.state = fold(self.store.read(self.campaign_id))
        spec = self.state.spec
        if spec is None:
            raise CampaignNotFoundError(
                f"campaign {self.campaign_id!r} does not exist", "start it with `closedloop run SPEC.yaml`",
                campaign_id=self.campaign_id,
            )
        if self.state.status == "finished":
            return self.state
        optimizer = self._make_optimizer(spec, list(self.state.trials.values()))
        self._append(RunStarted(**self._next(), actor="orchestrator", host=socket.gethostname(),  # type: ignore[arg-type]
                                pid=os.getpid(), flow_run_id=self.flow_run_id))
        started = self.clock()
        for t in self.state.in_flight:
            # Trials in flight when the last run stopped get a fresh deadline from now.
            self._deadlines[t.trial_id] = started + spec.trial_timeout_s
        while True:
            for event in self.hub.next_events(self.options.poll_s):
                self._handle(event, spec, optimizer)
            self._expire(spec, optimizer)
            out_of_time = spec.budget.max_hours is not None and self._hours_used() >= spec.budget.max_hours
            out_of_trials = len(self.state.trials) >= spec.budget.max_trials
            if not out_of_time:
                self._dispatch(spec, optimizer, suggest_more=not out_of_trials)
            if (out_of_time or out_of_trials) and not self.state.in_flight and (
                out_of_time or not self.state.undispatched
            ):
                reason = "max_hours" if out_of_time and not out_of_trials else "budget_exhausted"
                self._append(CampaignFinished(**self._next(), actor="orchestrator", reason=reason))  # type: ignore[arg-type]
                return self.state
            if self.options.max_runtime_s is not None and self.clock() - started > self.options.max_runtime_s:
                return self.state

    def _hours_used(self) -> float:
        # The wall-clock budget counts from the campaign's creation, across runs and pauses.
        created = self.state.created_at
        return 0.0 if created is None else (self.wallclock() - created).total_seconds() / 3600.0

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
            room = spec.budget.max_trials - len(self.state.trials)
            n = min(len(free) - len(queue), spec.batch_size, room)
            if n > 0:
                suggested = optimizer.suggest(n)
                self._append(TrialsSuggested(**self._next(), actor="optimizer", trials=suggested))  # type: ignore[arg-type]
                queue += [s.trial_id for s in suggested]
        for device_id, trial_id in zip(free, queue, strict=False):
            trial = self.state.trials[trial_id]
            request_id = f"{self.campaign_id}:{trial_id}:1"
            self._append(TrialDispatched(**self._next(), actor="orchestrator",  # type: ignore[arg-type]
                                         trial_id=trial_id, device_id=device_id, request_id=request_id))
            self._deadlines[trial_id] = self.clock() + spec.trial_timeout_s
            request = RunTrial(request_id=request_id, campaign_id=self.campaign_id, trial_id=trial_id,
                               parameters=dict(trial.parameters))
            try:
                self.hub.dispatch(device_id, request, timeout_s=self.options.dispatch_timeout_s)
            except BrokerError as exc:
                # The intent is logged; if the request never arrives the trial times out.
                log.warning("dispatch of trial %s to %s failed: %s", trial_id, device_id, exc)

    def _expire(self, spec: CampaignSpec, optimizer: Optimizer) -> None:
        now = self.clock()
        for t in self.state.in_flight:
            deadline = self._deadlines.setdefault(t.trial_id, now + spec.trial_timeout_s)
            if now >= deadline:
                self._fail(optimizer, t, "timeout", f"no result within {spec.trial_timeout_s:g} s")

    def _fail(self, optimizer: Optimizer, t: TrialRecord, reason: str, detail: str) -> None:
        self._append(TrialFailed(**self._next(), actor="orchestrator", trial_id=t.trial_id,  # type: ignore[arg-type]
                                 reason=reason, detail=detail, device_id=t.device_id, request_id=t.request_id))
        self._deadlines.pop(t.trial_id, None)
        optimizer.fail(t.trial_id, reason)

    def _reject(self, device_id: str | None, topic: str, reason: str, excerpt: str = "") -> None:
        log.warning("rejected message from %s on %s: %s", device_id or "?", topic, reason)
        self._append(MessageRejectedEvent(**self._next(), actor=f"device:{device_id}" if device_id else "orchestrator",  # type: ignore[arg-type]
                                          device_id=device_id, topic=topic, reason=reason, excerpt=excerpt[:200]))

    def _handle(self, event: object, spec: CampaignSpec, optimizer: Optimizer) -> None:
        if isinstance(event, MessageRejected):
            self._reject(event.device_id, event.topic, event.reason, event.excerpt)
        elif isinstance(event, ResultReceived):
            self._result(event.device_id, event.result, spec, optimizer)
        elif isinstance(event, StatusChanged):
            log.debug("device %s is %s", event.device_id, event.status.state)

    def _result(self, device_id: str, result: TrialResult, spec: CampaignSpec, optimizer: Optimizer) -> None:
        topic = f"devices/{device_id}/results"
        t = self.state.trial_by_request(result.request_id)
        if t is None or t.trial_id != result.trial_id:
            self._reject(device_id, topic, f"result for unknown request {result.request_id!r} / trial {result.trial_id!r}")
            return
        if t.terminal:
            self._reject(device_id, topic, f"duplicate result for trial {t.trial_id} (already {t.status})")
            return
        if t.device_id != device_id:
            self._reject(device_id, topic, f"trial {t.trial_id} was sent to {t.device_id}, not {device_id}")
            return
        if result.status == "failed":
            self._fail(optimizer, t, "device_error", result.error or "device reported failure")
            return
        measurements = {k: Measurement(mean=m.mean, sem=m.sem) for k, m in result.measurements.items()}
        missing = [m for m in spec.metrics if m not in measurements]
        if missing:
            self._fail(optimizer, t, "invalid_result", f"result lacks metric {missing[0]!r}")
            return
        self._append(TrialCompleted(**self._next(), actor=f"device:{device_id}", trial_id=t.trial_id,  # type: ignore[arg-type]
                                    device_id=device_id, request_id=result.request_id, measurements=measurements))
        self._deadlines.pop(t.trial_id, None)
        optimizer.complete(t.trial_id, measurements)
