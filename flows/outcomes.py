"""What comes back from devices, and what does not: results, failures, rejections, timeouts.

A mixin of ``flows.loop.CampaignLoop``. Everything here is *staged* in the loop's writer;
the loop flushes it to the log before acknowledging the messages that caused it. The
optimizer hears of outcomes through the loop's optimizer thread, in order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from campaigns import (
    BrokerDisconnected,
    BrokerReconnected,
    CampaignPaused,
    CampaignState,
    CampaignSpec,
    LateResultRecorded,
    Measurement,
    TrialCompleted,
    TrialFailed,
    TrialRecord,
    TrialRetried,
)
from campaigns import MessageRejected as MessageRejectedEvent
from devices import (
    ConnectionLost,
    ConnectionRestored,
    MessageRejected,
    MqttDeviceHub,
    ResultReceived,
    StatusChanged,
    TrialResult,
)

from flows.writer import EventWriter

if TYPE_CHECKING:
    from flows.ahead import OptimizerThread

__all__ = ["Outcomes"]

log = logging.getLogger("closedloop.loop")


class Outcomes:
    """Results, failures, rejected messages and timeouts (mixed into ``CampaignLoop``)."""

    state: CampaignState
    writer: EventWriter
    hub: MqttDeviceHub
    clock: Callable[[], float]
    _deadlines: dict[str, float]
    _answered: set[str]
    _worker: OptimizerThread[Any]
    _resend: Callable[..., None]  # CampaignLoop's

    def _expire(self, spec: CampaignSpec) -> None:
        now = self.clock()
        for t in self.state.in_flight:
            deadline = self._deadlines.setdefault(t.trial_id, now + spec.trial_timeout_s)
            if now >= deadline:
                self._fail(t, "timeout", f"no result within {spec.trial_timeout_s:g} s")

    def _fail(self, t: TrialRecord, reason: str, detail: str) -> None:
        spec = self.state.spec
        assert spec is not None
        self._deadlines.pop(t.trial_id, None)
        common = {"trial_id": t.trial_id, "reason": reason, "detail": detail,
                  "device_id": t.device_id, "request_id": t.request_id}
        if t.attempts <= spec.failure_policy.retries:
            self.writer.stage(TrialRetried(**self.writer.fields("orchestrator"), attempt=t.attempts, **common))  # type: ignore[arg-type]
            return
        self.writer.stage(TrialFailed(**self.writer.fields("orchestrator"), **common))  # type: ignore[arg-type]
        trial_id = t.trial_id
        self._worker.tell(lambda optimizer: optimizer.fail(trial_id, reason))
        why = self.state.failure_rate_exceeded()
        if why is not None and self.state.paused_reason is None:  # one pause, not one per later failure
            self.writer.stage(CampaignPaused(**self.writer.fields("orchestrator"), reason="failure_rate", detail=why))  # type: ignore[arg-type]

    def _reject(self, device_id: str | None, topic: str, reason: str, excerpt: str = "") -> None:
        log.warning("rejected message from %s on %s: %s", device_id or "?", topic, reason)
        actor = f"device:{device_id}" if device_id else "orchestrator"
        self.writer.stage(MessageRejectedEvent(**self.writer.fields(actor), device_id=device_id,  # type: ignore[arg-type]
                                                topic=topic, reason=reason, excerpt=excerpt[:200]))

    def _handle(self, event: object, spec: CampaignSpec) -> None:
        # What an event causes is staged; the caller flushes, then acknowledges the message.
        if isinstance(event, MessageRejected):
            self._reject(event.device_id, event.topic, event.reason, event.excerpt)
        elif isinstance(event, ResultReceived):
            self._result(event.device_id, event.result, spec)
        elif isinstance(event, StatusChanged):
            self._answered.discard(event.device_id)
            if event.status.state == "idle":
                # A device that is idle while the log says it runs a trial lost the request or
                # restarted: ask again (it answers from its store if it did run it).
                for t in self.state.in_flight:
                    if t.device_id == event.device_id:
                        self._resend(t, "device_idle")
        elif isinstance(event, ConnectionLost):
            self.writer.stage(BrokerDisconnected(**self.writer.fields("orchestrator"), detail=event.detail))  # type: ignore[arg-type]
        elif isinstance(event, ConnectionRestored):
            self.writer.stage(BrokerReconnected(**self.writer.fields("orchestrator"), down_s=event.down_s))  # type: ignore[arg-type]
            for t in self.state.in_flight:
                self._resend(t, "broker_reconnected", force=True)

    def _result(self, device_id: str, result: TrialResult, spec: CampaignSpec) -> None:
        topic = f"devices/{device_id}/results"
        # Any attempt's request id: a result for an earlier attempt of a retried trial measures
        # the same parameters, and the first valid result wins.
        t = self.state.trial_by_request(result.request_id)
        if t is None or t.trial_id != result.trial_id:
            self._reject(device_id, topic, f"result for unknown request {result.request_id!r} / trial {result.trial_id!r}")
            return
        measurements = {k: Measurement(mean=m.mean, sem=m.sem) for k, m in result.measurements.items()}
        if t.status == "failed" and result.status == "completed" and not t.late_measurements:
            self.writer.stage(LateResultRecorded(**self.writer.fields(f"device:{device_id}"),  # type: ignore[arg-type]
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
        if t.status == "running" and t.device_id == device_id:
            self._answered.add(device_id)  # done with our trial: ready for the next (see CampaignLoop)
        if result.status == "failed":
            self._fail(t, "device_error", result.error or "device reported failure")
            return
        missing = [m for m in spec.metrics if m not in measurements]
        if missing:
            self._fail(t, "invalid_result", f"result lacks metric {missing[0]!r}")
            return
        self.writer.stage(TrialCompleted(**self.writer.fields(f"device:{device_id}"), trial_id=t.trial_id,  # type: ignore[arg-type]
                                         device_id=device_id, request_id=result.request_id, measurements=measurements))
        self._deadlines.pop(t.trial_id, None)
        trial_id = t.trial_id
        self._worker.tell(lambda optimizer: optimizer.complete(trial_id, measurements))
