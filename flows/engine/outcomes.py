"""What comes back from devices, and what does not: results, failures, rejections, timeouts.

A mixin of ``flows.engine.loop.CampaignLoop``. Everything here is *staged* in the loop's writer and
marks the pass *urgent*: the loop flushes it to the log in the same pass (before it
acknowledges the messages that caused it), so an outcome is in the log as soon as it is
decided. The optimizer hears of outcomes through the loop's optimizer thread, in order.

What a result means and what a failed attempt leads to are decided by the pure functions of
``flows.engine.verdicts`` (whose value is it); this mixin stages their events, tells the
optimizer, and keeps the run's bookkeeping. Rejected messages are bounded
(``flows.engine.rejections``), and a run in which no device answered anything pauses with the likely
causes instead of finishing as if all were well.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from campaigns import (
    BrokerDisconnected,
    BrokerReconnected,
    CampaignPaused,
    CampaignSpec,
    CampaignState,
    DeviceOffline,
    DeviceOnline,
    DeviceSkipped,
    EventBase,
    MessagesRejected,
    TrialFailed,
    TrialRecord,
    TrialRetried,
    utcnow,
)
from campaigns import MessageRejected as MessageRejectedEvent
from devices.events import (
    ConnectionLost,
    ConnectionRestored,
    MessageRejected,
    ResultReceived,
    StatusChanged,
)
from flows.engine.rejections import RejectionBudget, kind_of
from flows.engine.verdicts import failure_events, judge_result
from flows.engine.writer import EventWriter

if TYPE_CHECKING:
    from flows.engine.ahead import OptimizerThread
    from flows.engine.ports import DeviceHub

__all__ = ["Outcomes"]

log = logging.getLogger("closedloop.loop")

# A device whose status keeps changing its metrics is named at most this often per run.
_SKIPS_PER_DEVICE = 3
# A running trial is re-sent on its device's "idle" status at most this often per run.
_IDLE_RESENDS = 5
# A device's online/offline transitions are logged at most this often per run.
_PRESENCE_PER_DEVICE = 10


@dataclass
class _RunWatch:
    """What this run has heard from devices: a run whose trials all time out with no answer
    from anyone is a broker, ACL or prefix problem, not bad luck."""

    sent_to: set[str] = field(default_factory=set)
    timed_out: set[str] = field(default_factory=set)
    timeouts: int = 0
    heard: bool = False  # a result (any status, on time or late) from the device it was asked of

    def silent(self) -> bool:
        """Every device this run sent to lost a trial to timeout, at least two in all, and no
        device answered anything."""
        return not self.heard and self.timeouts >= 2 and self.sent_to <= self.timed_out


class Outcomes:
    """Results, failures, rejected messages and timeouts (mixed into ``CampaignLoop``)."""

    state: CampaignState
    writer: EventWriter
    hub: DeviceHub
    clock: Callable[[], float]
    _deadlines: dict[str, float]
    _answered: set[str]
    _worker: OptimizerThread[Any]
    _resend: Callable[..., None]  # CampaignLoop's
    _urgent: bool = False
    _rejections: RejectionBudget
    _watch: _RunWatch
    _skipped: dict[str, set[tuple[str, ...]]]
    _idle_resends: dict[str, int]
    _needed_for: tuple[CampaignSpec, tuple[str, ...]] | None = None
    _presence: dict[str, list[Any]]  # device -> [online (None: no status yet this run), transitions logged]

    def _start_outcomes(self) -> None:
        """Per-run bookkeeping: rejection budget, what was heard, devices named as skipped."""
        self._urgent = False
        self._rejections = RejectionBudget(self.clock)
        self._watch = _RunWatch()
        self._skipped = {}
        self._idle_resends = {}
        self._presence = {}

    def _end_run(self) -> None:
        """The run ends normally: every rejection still only counted goes to the log now."""
        self._summarize_rejections(final=True)
        self.writer.flush()
        self._urgent = False

    def _stage(self, *events: EventBase) -> None:
        self.writer.stage(*events)
        self._urgent = True

    # -- timeouts and failures ------------------------------------------------------------

    def _expire(self, spec: CampaignSpec) -> None:
        now = self.clock()
        for t in self.state.in_flight:
            deadline = self._deadlines.setdefault(t.trial_id, now + spec.trial_timeout_s)
            if now >= deadline:
                if t.device_id is not None:
                    self._watch.timed_out.add(t.device_id)
                self._watch.timeouts += 1
                self._fail(t, "timeout", f"no result within {spec.trial_timeout_s:g} s")
                self._pause_if_silent(spec)

    def _pause_if_silent(self, spec: CampaignSpec, ending: bool = False) -> bool:
        """Pause (once) when nothing came back in this run; ``ending``: the run would finish
        now, and one timeout with no answer at all is enough. Returns whether it paused."""
        w = self._watch
        if self.state.paused_reason is not None or not (w.silent() or (ending and w.timeouts and not w.heard)):
            return False
        prefix = self.hub.topics.prefix
        devices = ", ".join(sorted(w.timed_out)) or "its devices"
        detail = (f"no device answered in this run: {w.timeouts} trial(s) timed out on {devices} "
                  f"(trial_timeout_s {spec.trial_timeout_s:g}) and no result came back. Likely causes: the "
                  f"broker's ACL denies the devices publishing to {prefix}/devices/+/results (or this "
                  f"orchestrator reading it, or the devices reading {prefix}/devices/+/requests); the "
                  f"devices use another topic prefix than {prefix!r}; the devices are not subscribed to "
                  f"their requests topic; or a trial takes longer than trial_timeout_s")
        log.warning("pausing: %s", detail)
        self._stage(CampaignPaused(**self.writer.fields("orchestrator"), reason="no_results", detail=detail))  # type: ignore[arg-type]
        return True

    def _fail(self, t: TrialRecord, reason: str, detail: str) -> None:
        self._stage_failure(t.trial_id, failure_events(self.state, t, reason, detail))

    def _stage_failure(self, trial_id: str, events: list[EventBase]) -> None:
        """Stage a failed attempt's events (``failure_events``); the optimizer hears of a trial
        that failed for good, not of one retried."""
        self._deadlines.pop(trial_id, None)
        self._stage(*events)
        failed = events[0]
        if isinstance(failed, TrialFailed):
            reason = failed.reason
            self._worker.tell(lambda optimizer: optimizer.fail(trial_id, reason))

    # -- rejections -----------------------------------------------------------------------

    def _reject(self, device_id: str | None, topic: str, reason: str, excerpt: str = "",
                kind: str | None = None, at: datetime | None = None) -> None:
        """Count a rejected message; log it in full only while its bucket and the run allow."""
        spec = self.state.spec
        owner = device_id if spec is not None and any(d.id == device_id for d in spec.devices) else None
        if not self._rejections.admit(owner, kind or kind_of(reason), at or utcnow(), reason):
            return
        log.warning("rejected message from %s on %s: %s", device_id or "?", topic[:200], reason[:300])
        actor = f"device:{owner}" if owner else "orchestrator"
        self._stage(MessageRejectedEvent(**self.writer.fields(actor), device_id=owner,  # type: ignore[arg-type]
                                         topic=topic[:200], reason=reason[:500], excerpt=excerpt[:200]))

    def _summarize_rejections(self, final: bool = False) -> None:
        """Stage the counted rejections that are due (all of them when the run ends)."""
        was_capped = self._rejections.capped
        for s in self._rejections.due(final):
            log.warning("rejected %d more message(s) from %s (%s) between %s and %s, e.g. %s", s.count,
                        s.device_id or "devices not in the campaign", s.kind, f"{s.first_time:%H:%M:%S}",
                        f"{s.last_time:%H:%M:%S}", s.example[:200])
            self._stage(MessagesRejected(**self.writer.fields("orchestrator"), device_id=s.device_id,  # type: ignore[arg-type]
                                         reason=s.kind, count=s.count, first_time=s.first_time,
                                         last_time=s.last_time, example=s.example))
        if self._rejections.capped and not was_capped:
            log.warning("many rejected messages: from now on they are only counted, and logged when this run ends")

    # -- device events --------------------------------------------------------------------

    def _handle(self, event: object, spec: CampaignSpec) -> None:
        # What an event causes is staged; the caller flushes, then acknowledges the message.
        if isinstance(event, MessageRejected):
            self._reject(event.device_id, event.topic, event.reason, event.excerpt, at=event.received_at)
        elif isinstance(event, ResultReceived):
            self._result(event, spec)
        elif isinstance(event, StatusChanged):
            self._answered.discard(event.device_id)
            self._note_presence(event.device_id, event.status.state, event.status.measures)
            if event.status.state == "idle":
                # A device that is idle while the log says it runs a trial lost the request or
                # restarted: ask again (it answers from its store if it did run it) — a few
                # times per trial and run: a status that keeps flapping must not grow the log.
                for t in self.state.in_flight:
                    if t.device_id == event.device_id and self._idle_resends.get(t.trial_id, 0) < _IDLE_RESENDS:
                        before = t.resends
                        self._resend(t, "device_idle")
                        if t.resends > before:
                            self._idle_resends[t.trial_id] = self._idle_resends.get(t.trial_id, 0) + 1
        elif isinstance(event, ConnectionLost):
            self._stage(BrokerDisconnected(**self.writer.fields("orchestrator"), detail=event.detail))  # type: ignore[arg-type]
        elif isinstance(event, ConnectionRestored):
            self._stage(BrokerReconnected(**self.writer.fields("orchestrator"), down_s=event.down_s))  # type: ignore[arg-type]
            for t in self.state.in_flight:
                self._resend(t, "broker_reconnected", force=True)

    def _needed(self, spec: CampaignSpec) -> tuple[str, ...]:
        """``spec.metrics``, computed once per spec (it parses the outcome constraints)."""
        if self._needed_for is None or self._needed_for[0] is not spec:
            self._needed_for = (spec, tuple(spec.metrics))
        return self._needed_for[1]

    def _note_presence(self, device_id: str, state: str, measures: list[str]) -> None:
        """Log a device coming online (first status, or back from offline) or going offline, so
        a timeout's cause is in the log; a few times per device and run at most."""
        seen = self._presence.setdefault(device_id, [None, 0])
        online = state != "offline"
        if seen[0] is not None and seen[0] == online:
            return
        seen[0] = online
        seen[1] += 1
        if seen[1] > _PRESENCE_PER_DEVICE:
            return
        fields = self.writer.fields("orchestrator")
        self._stage(DeviceOnline(**fields, device_id=device_id, state=state, measures=list(measures)) if online  # type: ignore[arg-type]
                    else DeviceOffline(**fields, device_id=device_id))  # type: ignore[arg-type]

    def _suits(self, device_id: str, measures: list[str], spec: CampaignSpec) -> bool:
        """Whether a device's status announces every metric the campaign needs; names it (once
        per run and set of missing metrics) when it does not."""
        missing = tuple(m for m in self._needed(spec) if m not in measures)
        if not missing:
            return True
        named = self._skipped.setdefault(device_id, set())
        if missing not in named and len(named) < _SKIPS_PER_DEVICE:
            named.add(missing)
            log.warning("device %s gets no trials: its status announces %s, not %s, which the campaign needs",
                        device_id, measures or "no metric", ", ".join(missing))
            self._stage(DeviceSkipped(**self.writer.fields("orchestrator"), device_id=device_id,  # type: ignore[arg-type]
                                      missing=list(missing), measures=list(measures)))
        return False

    def _result(self, event: ResultReceived, spec: CampaignSpec) -> None:
        device_id = event.device_id
        status = self.hub.devices().get(device_id)
        v = judge_result(self.state, self._needed(spec), device_id, event.result,
                         None if status is None else status.measures)
        self._watch.heard |= v.heard
        if v.refused is not None:
            reason, kind = v.refused
            self._reject(device_id, self.hub.topics.results(device_id), reason, kind=kind, at=event.received_at)
            return
        if v.frees_device:
            self._answered.add(device_id)  # done with our trial: ready for the next (see CampaignLoop)
        trial_id = v.trial_id
        assert trial_id is not None  # a verdict that is not a refusal names its trial
        if isinstance(v.events[0], (TrialFailed, TrialRetried)):
            self._stage_failure(trial_id, v.events)
            return
        self._note_ignored(device_id, v.ignored)
        self._stage(*v.events)
        self._deadlines.pop(trial_id, None)
        if v.completed is not None:
            measurements = v.completed
            self._worker.tell(lambda optimizer: optimizer.complete(trial_id, measurements))

    @staticmethod
    def _note_ignored(device_id: str, ignored: list[str]) -> None:
        # Once per recorded result at most: a line per trial, never per message.
        if ignored:
            log.warning("ignored metric(s) %s from %s: not announced in its status", ", ".join(ignored)[:200], device_id)
