"""What a device's result means, and what a failed attempt leads to: pure functions of the folded
log and the message, returning the events to log.

Whose value is it: a result counts only from the device its request went to (on time or late),
and only for metrics that device announces in its retained status; a metric sent as ``null``
was not measured and has no value. No clock, no I/O, no optimizer here (the loop in
``flows.engine.outcomes`` stages the events, tells the optimizer and logs warnings), so each
rule is tested on a state and a message alone, as ``flows.engine.commands`` does for people.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from campaigns import (
    CampaignPaused,
    CampaignState,
    EventBase,
    LateResultRecorded,
    Measurement,
    TrialCompleted,
    TrialFailed,
    TrialRecord,
    TrialRetried,
)
from devices.messages import TrialResult
from flows.engine.writer import next_fields

__all__ = ["ResultVerdict", "failure_events", "judge_result"]

RefusalKind = Literal["unknown_request", "wrong_device", "duplicate"]


@dataclass(frozen=True)
class ResultVerdict:
    """One device result, judged.

    Attributes:
        events: What to log, in order (none when the message is refused).
        refused: ``(reason, kind)`` when the message is no value for any trial.
        heard: The device the request went to answered it (whatever it said).
        frees_device: It answered the attempt under way: the device is ready for the next trial.
        trial_id: The trial concerned, once the message is known to be for it.
        completed: The trial's measurements, when it completed (for the optimizer).
        ignored: Metrics left out of what was logged: not announced in the device's status.
    """

    events: list[EventBase] = field(default_factory=list)
    refused: tuple[str, RefusalKind] | None = None
    heard: bool = False
    frees_device: bool = False
    trial_id: str | None = None
    completed: dict[str, Measurement] | None = None
    ignored: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """The trial failed for good (the optimizer hears of it); not for a retry."""
        return bool(self.events) and isinstance(self.events[0], TrialFailed)


def judge_result(state: CampaignState, needed: Sequence[str], device_id: str, result: TrialResult,
                 announced: Sequence[str] | None) -> ResultVerdict:
    """What ``result``, received from ``device_id``, means for the campaign.

    Args:
        state: The folded log (with what is staged).
        needed: The metrics the campaign needs (``spec.metrics``).
        device_id: The device whose results topic carried the message.
        result: The message.
        announced: The metrics the device's retained status announces; None while its status is
            unknown (a result that overtook the status after a restart: every metric is kept).
    """
    # Any attempt's request id: a result for an earlier attempt of a retried trial measures the
    # same parameters, and the first valid result wins.
    t = state.trial_by_request(result.request_id)
    if t is None or t.trial_id != result.trial_id:
        return ResultVerdict(refused=(f"result for unknown request {result.request_id[:100]!r} / "
                                      f"trial {result.trial_id[:100]!r}", "unknown_request"))
    sent_to = t.requests.get(result.request_id)
    if sent_to != device_id:
        # On time or late: only the device the request went to answers for it.
        return ResultVerdict(refused=(f"result for request {result.request_id!r} came from {device_id[:100]!r}; "
                                      f"the request went to {sent_to!r}", "wrong_device"))
    kept = {k: Measurement(mean=m.mean, sem=m.sem) for k, m in result.measured.items()
            if announced is None or k in announced}
    ignored = sorted(set(result.measured) - set(kept))
    actor = f"device:{device_id}"
    if t.status == "failed" and result.status == "completed" and not t.late_measurements and kept:
        late = LateResultRecorded(**next_fields(state, actor), trial_id=t.trial_id, device_id=device_id,
                                  request_id=result.request_id, measurements=kept)
        return ResultVerdict(events=[late], heard=True, trial_id=t.trial_id, ignored=ignored)
    if t.terminal:
        return ResultVerdict(heard=True, refused=(f"duplicate result for trial {t.trial_id} (already {t.status}) "
                                                  f"for request {result.request_id!r}", "duplicate"))
    current = t.status == "running" and t.request_id == result.request_id
    failure = _failure(result, kept, ignored, needed)
    if failure is not None:
        if not current:
            # An earlier attempt's failure says nothing of the attempt now under way.
            return ResultVerdict(heard=True, refused=(f"{failure[0]} for an earlier attempt of trial {t.trial_id} "
                                                      f"(request {result.request_id!r})", "duplicate"))
        events = failure_events(state, t, *failure)
        return ResultVerdict(events=events, heard=True, frees_device=True, trial_id=t.trial_id)
    not_measured = [m for m in result.not_measured if announced is None or m in announced]
    done = TrialCompleted(**next_fields(state, actor), trial_id=t.trial_id, device_id=device_id,
                          request_id=result.request_id, measurements=kept, not_measured=not_measured)
    return ResultVerdict(events=[done], heard=True, frees_device=current, trial_id=t.trial_id, completed=kept,
                         ignored=ignored)


def failure_events(state: CampaignState, t: TrialRecord, reason: str, detail: str) -> list[EventBase]:
    """A failed attempt (a device's failure, a timeout): retried while the failure policy allows,
    else failed, and the campaign paused (once) when failures exceed the policy's rate."""
    assert state.spec is not None
    common = {"trial_id": t.trial_id, "reason": reason, "detail": detail,
              "device_id": t.device_id, "request_id": t.request_id}
    fields = next_fields(state, "orchestrator")
    if t.attempts <= state.spec.failure_policy.retries:
        return [TrialRetried(**fields, attempt=t.attempts, **common)]
    out: list[EventBase] = [TrialFailed(**fields, **common)]
    why = state.failure_rate_exceeded(extra_failures=1)
    if why is not None and state.paused_reason is None:  # one pause, not one per later failure
        out.append(CampaignPaused(**next_fields(state, "orchestrator", 1), reason="failure_rate", detail=why))
    return out


def _failure(result: TrialResult, measurements: dict[str, Measurement], ignored: list[str],
             needed: Sequence[str]) -> tuple[str, str] | None:
    """``(reason, detail)`` when a result does not complete its trial: the device failed, or a
    metric the campaign needs is null (not measured), missing or not announced."""
    if result.status == "failed":
        return "device_error", result.error or "device reported failure"
    unmeasured = [m for m in needed if m in result.not_measured]
    if unmeasured:
        return "not_measured", f"the device reported {unmeasured[0]!r} as null (not measured); the campaign needs it"
    missing = [m for m in needed if m not in measurements]
    if missing:
        why = " (not among the metrics its status announces)" if missing[0] in ignored else ""
        return "invalid_result", f"result lacks metric {missing[0]!r}{why}"
    return None
