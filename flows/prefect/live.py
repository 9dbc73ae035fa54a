"""The campaign, live in the Prefect UI while its flow run runs: name, tags, logs, artifacts.

- The flow run is named after the campaign (``branin``; ``branin · resume 2`` for its third
  run) and tagged ``closedloop``, ``campaign:<id>`` and ``engine:<optimizer.method>``, however
  it was started (`closedloop run`/`resume`, a deployment, an automation).
- What the orchestrator logs through its loggers (``closedloop.*``, ``devices.*``,
  ``flows.*``: approvals waiting, refused commands, pauses, warnings) goes to the flow run's
  logs as well as wherever it went before, from any thread (the MQTT thread, the optimizer's):
  :class:`RunLogs` is a handler that hands records to Prefect's API log handler with the flow
  run's id, and prints nothing.
- The facts of the log itself (a run started, trials completed or failed, approvals decided,
  changes, pauses, resumes, the finish) are told in the flow run's logs as one line each, from the events appended.
- :class:`LiveCampaign` folds every event the loop appends (the loop's event log is wrapped
  by :class:`ObservedLog`: the engine knows nothing of Prefect) and publishes the artifacts of
  ``flows.prefect.artifacts`` from a thread of its own: after a change, at most every
  ``interval_s``, and once more at the end.

Prefect being down never stops a campaign: a failed publication costs one warning, and is
tried again every ``interval_s``.
"""

from __future__ import annotations

import contextvars
import copy
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Self
from uuid import UUID

from campaigns import (
    ApprovalGiven,
    ApprovalRejected,
    CampaignChanged,
    CampaignFinished,
    CampaignPaused,
    CampaignResumed,
    CampaignState,
    EventBase,
    RunStarted,
    TrialCompleted,
    TrialFailed,
    TrialRetried,
    apply,
    fold,
)
from flows.engine.ports import EventLog
from flows.prefect.artifacts import ArtifactPublisher

__all__ = ["FORWARDED_LOGGERS", "LiveCampaign", "ObservedLog", "RunLogs", "label_flow_run", "run_labels", "tell"]

log = logging.getLogger("closedloop.prefect")

#: The loggers whose records also go to the flow run's logs.
FORWARDED_LOGGERS = ("closedloop", "devices", "flows")


def run_labels(state: CampaignState) -> tuple[str, list[str]]:
    """The name and tags of the flow run about to run the campaign ``state`` (its log so far):
    ``<campaign>`` for its first run, ``<campaign> · resume N`` for the run after N others."""
    cid = state.campaign_id or "campaign"
    tags = ["closedloop", f"campaign:{cid}"]
    if state.spec is not None:
        tags.append(f"engine:{state.spec.optimizer.method}")
    return (cid if state.runs == 0 else f"{cid} · resume {state.runs}"), tags


def label_flow_run(flow_run: Any, name: str, tags: list[str]) -> None:
    """Name and tag the flow run (the tags it has, a deployment's, are kept)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, name=name, tags=list(dict.fromkeys([*(flow_run.tags or []), *tags])))


class RunLogs(logging.Handler):
    """Hands log records to Prefect's API log handler, marked with the flow run's id (so they
    reach its logs from any thread); prints nothing."""

    def __init__(self, flow_run_id: UUID) -> None:
        from prefect.logging.handlers import APILogHandler

        super().__init__()
        self.flow_run_id = str(flow_run_id)
        self._api = APILogHandler()

    def emit(self, record: logging.LogRecord) -> None:
        copy = logging.makeLogRecord(record.__dict__)
        copy.flow_run_id = self.flow_run_id
        self._api.handle(copy)

    def say(self, line: str, level: int = logging.INFO) -> None:
        """One line in the flow run's logs only (not on any terminal)."""
        self.emit(logging.LogRecord("closedloop.campaign", level, __file__, 0, line, None, None))

    @contextmanager
    def attached(self, names: Sequence[str] = FORWARDED_LOGGERS) -> Iterator[RunLogs]:
        """Forward these loggers' records while the block runs."""
        loggers = [logging.getLogger(n) for n in names]
        for lg in loggers:
            lg.addHandler(self)
        try:
            yield self
        finally:
            for lg in loggers:
                lg.removeHandler(self)


def tell(event: EventBase) -> str | None:
    """The line a flow run's logs get for a decision or outcome of the log (``None``: none).

    An approval request is told by the loop's own warning (forwarded), not twice."""
    who = event.actor
    if isinstance(event, ApprovalGiven):
        return f"approval {event.approval_id} decided by {who} via {event.via}: {event.decision()} — {event.reason}"
    if isinstance(event, ApprovalRejected):
        return (f"approval {event.approval_id} decided by {who} via {event.via}: rejected "
                f"{', '.join(event.rejected)} — {event.reason}")
    if isinstance(event, CampaignChanged):
        return f"changed by {who}: {event.change.describe()} — {event.reason}"
    if isinstance(event, CampaignPaused):
        return f"paused ({event.reason}) by {who}: {event.detail}"
    if isinstance(event, CampaignResumed):
        return f"resumed by {who}: {event.reason}"
    if isinstance(event, CampaignFinished):
        return f"finished ({event.reason})" + (f": {event.detail}" if event.detail else "")
    if isinstance(event, RunStarted):
        return f"run started on {event.host} (pid {event.pid})"
    if isinstance(event, TrialCompleted):
        values = ", ".join(f"{k}={m.mean:.6g}" for k, m in event.measurements.items())
        return f"trial {event.trial_id} completed on {event.device_id}: {values or 'no value'}"
    if isinstance(event, TrialFailed):
        return f"trial {event.trial_id} failed ({event.reason})" + (f": {event.detail}" if event.detail else "")
    if isinstance(event, TrialRetried):
        return f"trial {event.trial_id} retried after {event.reason}"
    return None


class ObservedLog:
    """An event log that tells ``on_append`` of the events once they are in the log."""

    def __init__(self, store: EventLog, on_append: Callable[[Sequence[EventBase]], None]) -> None:
        self.store, self.on_append = store, on_append

    def append(self, events: Sequence[EventBase], *, after_own_write: bool = False) -> None:
        """Append, then tell (a failed append tells nothing)."""
        self.store.append(events, after_own_write=after_own_write)
        self.on_append(events)

    def read(self, campaign_id: str, after_seq: int = 0, limit: int = 0) -> list[Any]:
        """The wrapped log's ``read``."""
        return self.store.read(campaign_id, after_seq=after_seq, limit=limit)


class LiveCampaign:
    """Keeps a campaign's artifacts and logs in Prefect up to date while its flow run runs.

    Args:
        events: The log so far.
        publisher: Sends the artifacts (``publish(state)``).
        say: Writes a line to the flow run's logs.
        interval_s: At most one publication per so many seconds.
        first: Called once in the publishing thread before the first publication (the flow
            run's name and tags), failing as a publication may.
    """

    def __init__(self, events: Sequence[EventBase], publisher: ArtifactPublisher | Any,
                 say: Callable[[str, int], None], interval_s: float = 5.0,
                 first: Callable[[], None] | None = None) -> None:
        self.state = fold(events)
        self.publisher, self.say, self.interval_s = publisher, say, interval_s
        self.first = first
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._failing = False
        # With the flow run's context (its Prefect settings: the API it reports to).
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,),
                                        name="closedloop-prefect-artifacts", daemon=True)

    def __enter__(self) -> Self:
        self._changed.set()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._changed.set()
        self._thread.join(timeout=10)  # a Prefect that does not answer delays the end no more

    def appended(self, events: Sequence[EventBase]) -> None:
        """Fold the events the loop appended (its thread) and tell its decisions."""
        with self._lock:
            for e in events:
                if e.seq <= self.state.last_seq:
                    continue  # a retried append
                apply(self.state, e)
                line = tell(e)
                if line is not None:
                    self.say(line, logging.WARNING if isinstance(e, TrialFailed | CampaignPaused) else logging.INFO)
        self._changed.set()

    def _run(self) -> None:
        last = -1e9
        while True:
            self._changed.wait()
            if self._stop.is_set():
                self._publish()  # the end: what the log says last
                return
            # Throttled: what comes meanwhile rides with this publication.
            if self._stop.wait(max(0.0, last + self.interval_s - time.monotonic())):
                continue
            self._changed.clear()
            last = time.monotonic()
            self._publish()

    def _publish(self) -> None:
        with self._lock:  # a copy the loop's thread does not advance while it is sent
            snapshot = copy.deepcopy(self.state)
        try:
            if self.first is not None:
                self.first()
                self.first = None
            self.publisher.publish(snapshot)
        except Exception as exc:
            if not self._failing:
                log.warning("Prefect's view of campaign %s not updated (%s: %s); the campaign goes on, "
                            "and it is tried again every %g s", self.state.campaign_id,
                            type(exc).__name__, " ".join(str(exc).split())[:200], self.interval_s)
            self._failing = True
            self._changed.set()  # tried again after the interval, events or not
        else:
            self._failing = False
