"""In-memory backends of the engine's ports: an event log, a command inbox and a manual clock.

Real classes, not mocks: they keep the same contracts as ``storage.MongoEventStore`` and
``storage.MongoCommandInbox`` (tests/integration/test_storage_contract.py runs one suite on
both), so the loop's logic is tested, and benchmarked, without a database. The device hub that
drives simulated instruments in-process is ``flows.engine.memory_hub.MemoryDeviceHub``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from campaigns import (
    AppendConflictError,
    EventBase,
    StorageError,
    StorageUnavailableError,
    utcnow,
)
from campaigns.command import Command, CommandKind
from campaigns.events import Event, event_to_doc, one_append, read_stored_event
from campaigns.summary import CampaignSummary

__all__ = ["ManualClock", "MemoryCommandInbox", "MemoryEventLog"]

_CONFLICT_HINT = "another closedloop process is writing this campaign; re-read the log"
_Entry = EventBase | dict[str, Any]  # an appended event, or a document inserted as it is


class MemoryEventLog:
    """The append-only log of every campaign, in this process's memory (thread-safe).

    Same semantics as ``MongoEventStore``: contiguous seqs, a conflict for a taken seq, the
    very same events again a silent no-op (a retry), a document that no longer parses a
    ``StorageError`` when read.
    """

    def __init__(self) -> None:
        self._logs: dict[str, dict[int, _Entry]] = {}
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()
        self._outage: list[bool] = []

    def go_down(self, appends: int, *, land: bool = False) -> None:
        """The next ``appends`` appends raise ``StorageUnavailableError``, as a database that is
        away does; ``land``: each is written first (its acknowledgement was lost)."""
        with self._lock:
            self._outage = [land] * appends

    # -- writing ---------------------------------------------------------------------------

    def append(self, events: Sequence[EventBase], *, after_own_write: bool = False) -> None:
        """Append events to one campaign's log, if their seqs are still free (see ``MongoEventStore.append``).

        Raises:
            ValueError: The events mix campaigns, their seqs are not contiguous, or the first
                seq would leave a gap.
            AppendConflictError: Another event is at one of these seqs; the events before it
                are written, none from it on.
        """
        if not events:
            return
        campaign_id, first = one_append(events)
        with self._lock:
            down = self._outage.pop(0) if self._outage else None
            if down is False:
                raise StorageUnavailableError("the (in-memory) database is away", "retry the same append")
            log = self._logs.setdefault(campaign_id, {})
            if first > 1 and not after_own_write and (first - 1) not in log:
                raise ValueError(f"campaign {campaign_id!r}: appending seq {first} would leave a gap"
                                 f" (seq {first - 1} is not in the log)")
            for event in events:
                there = log.get(event.seq)
                if there is None:
                    log[event.seq] = event
                    self._last[campaign_id] = max(self._last.get(campaign_id, 0), event.seq)
                elif there is not event and _doc(there) != event_to_doc(event):
                    written = event.seq - first
                    before = f" (the {written} event(s) before it were written)" if written else ""
                    raise AppendConflictError(f"campaign {campaign_id!r}: seq {event.seq} is already in the log{before}",
                                              _CONFLICT_HINT, campaign_id=campaign_id)
            if down:
                raise StorageUnavailableError("the (in-memory) database went away before acknowledging",
                                              "retry the same append")

    def insert_document(self, doc: dict[str, Any]) -> None:
        """Store a document as it is, as another tool or a hand edit would write the collection.

        Raises:
            AppendConflictError: Its ``(campaign_id, seq)`` is taken (the unique index).
        """
        campaign_id, seq = str(doc["campaign_id"]), int(doc["seq"])
        with self._lock:
            log = self._logs.setdefault(campaign_id, {})
            if seq in log:
                raise AppendConflictError(f"campaign {campaign_id!r}: seq {seq} is already in the log", _CONFLICT_HINT,
                                          campaign_id=campaign_id)
            log[seq] = dict(doc)
            self._last[campaign_id] = max(self._last.get(campaign_id, 0), seq)

    # -- reading ---------------------------------------------------------------------------

    def read(self, campaign_id: str, after_seq: int = 0, limit: int = 0) -> list[Event]:
        """The campaign's events with ``seq > after_seq``, in seq order (at most ``limit``; 0: all).

        Raises:
            StorageError: A stored document no longer parses as an event.
        """
        with self._lock:
            log = self._logs.get(campaign_id, {})
            last = self._last.get(campaign_id, 0)
            if len(log) == last:  # contiguous from 1: no sort needed
                entries = [log[s] for s in range(max(after_seq, 0) + 1, last + 1)]
            else:
                entries = [log[s] for s in sorted(log) if s > after_seq]
        if limit:
            entries = entries[:limit]
        return [_parse(campaign_id, e) for e in entries]

    def documents(self, campaign_id: str) -> list[dict[str, Any]]:
        """The campaign's stored documents in seq order, as MongoDB would hold them."""
        with self._lock:
            log = dict(self._logs.get(campaign_id, {}))
        return [_doc(log[s]) for s in sorted(log)]

    def last_seq(self, campaign_id: str) -> int:
        """The seq of the campaign's last event; 0 if it has none."""
        with self._lock:
            return self._last.get(campaign_id, 0)

    def exists(self, campaign_id: str) -> bool:
        """Whether the campaign has at least one event."""
        with self._lock:
            return bool(self._logs.get(campaign_id))

    def list_campaigns(self) -> list[CampaignSummary]:
        """Every campaign (a log with a ``CampaignCreated``), oldest first.

        Raises:
            StorageError: A ``CampaignCreated`` document lacks its name or time.
        """
        with self._lock:
            logs = {cid: dict(log) for cid, log in self._logs.items()}
        out = []
        for cid, log in logs.items():
            for seq in sorted(log):
                doc = _doc(log[seq])
                if doc.get("kind") != "CampaignCreated":
                    continue
                spec = doc.get("spec")
                finished = any(_doc(e).get("kind") == "CampaignFinished" for e in log.values())
                try:
                    out.append(CampaignSummary.model_validate({
                        "campaign_id": cid, "name": spec.get("name") if isinstance(spec, dict) else None,
                        "created_at": doc.get("time"), "last_seq": max(log), "finished": finished}))
                except ValidationError:
                    raise StorageError(
                        f"campaign {cid!r}: the CampaignCreated event at seq {seq} cannot be read",
                        "the document was edited by hand or written by a newer closedloop; restore it or upgrade",
                        campaign_id=cid,
                    ) from None
        return sorted(out, key=lambda s: (s.created_at, s.campaign_id))

    def close(self) -> None:
        """Nothing to release (the log stays readable)."""


def _doc(entry: _Entry) -> dict[str, Any]:
    return entry if isinstance(entry, dict) else event_to_doc(entry)  # type: ignore[arg-type]


def _parse(campaign_id: str, entry: _Entry) -> Event:
    if not isinstance(entry, dict):
        return entry  # type: ignore[return-value]  # frozen: shared safely
    return read_stored_event(campaign_id, entry)


class MemoryCommandInbox:
    """People's commands for campaigns, in memory (thread-safe); the contract of ``MongoCommandInbox``.

    Args:
        now: UTC clock stamping ``submitted_at``.
    """

    def __init__(self, now: Callable[[], datetime] = utcnow) -> None:
        self._now = now
        self._commands: dict[str, Command] = {}
        self._lock = threading.Lock()

    def submit(self, campaign_id: str, kind: CommandKind, payload: dict[str, Any], *, by: str, reason: str,
               command_id: str | None = None) -> Command:
        """Queue a command; returns it (with its id: ``command_id``, or a new one).

        Raises:
            StorageError: A command with that id was submitted before.
        """
        now = self._now()
        command = Command(command_id=command_id or uuid.uuid4().hex, campaign_id=campaign_id, kind=kind,
                          payload=payload, by=by, reason=reason,
                          submitted_at=now.replace(microsecond=now.microsecond // 1000 * 1000))
        with self._lock:
            if command.command_id in self._commands:
                raise StorageError(f"command {command.command_id!r} was already submitted", "submit it with a new id",
                                   campaign_id=campaign_id)
            self._commands[command.command_id] = command
        return command

    def pending(self, campaign_id: str) -> list[Command]:
        """Commands not yet applied, refused nor withdrawn (claimed ones too), in the order they
        were submitted (the dict's: a claim replaces a command in its place)."""
        with self._lock:
            return [c for c in self._commands.values()
                    if c.campaign_id == campaign_id and c.state in ("pending", "claimed")]

    def get(self, command_id: str) -> Command | None:
        """A command by id."""
        with self._lock:
            return self._commands.get(command_id)

    def claim(self, command_id: str) -> bool:
        """Take a command to apply it; False if its author withdrew it first."""
        return self._move(command_id, ("pending", "claimed"), state="claimed")

    def withdraw(self, command_id: str) -> bool:
        """Withdraw a command while it is still pending; False once claimed, done, or never submitted."""
        return self._move(command_id, ("pending",), state="withdrawn")

    def applied(self, command_id: str, seq: int | None) -> None:
        """Mark a command applied (its events end at ``seq``; None if it was applied before)."""
        self._move(command_id, None, state="applied", seq=seq)

    def refused(self, command_id: str, error: str) -> None:
        """Mark a command refused, with the one-line reason the submitter will see."""
        self._move(command_id, None, state="refused", error=error)

    def _move(self, command_id: str, allowed: tuple[str, ...] | None, **update: Any) -> bool:
        with self._lock:
            command = self._commands.get(command_id)
            if command is None or (allowed is not None and command.state not in allowed):
                return False
            self._commands[command_id] = command.model_copy(update=update)
            return True

    def close(self) -> None:
        """Nothing to release."""


class ManualClock:
    """Monotonic seconds and UTC time that move only when told to (:meth:`advance`).

    Args:
        start: The UTC time at monotonic 0 of this clock (default: now, to the millisecond).
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._start = start or utcnow()
        self._seconds = 1000.0
        self._origin = self._seconds
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        """Seconds, as far as the clock was advanced."""
        return self._seconds

    def now(self) -> datetime:
        """The start time plus the seconds advanced, to the millisecond."""
        at = self._start + timedelta(seconds=self._seconds - self._origin)
        return at.replace(microsecond=at.microsecond // 1000 * 1000)

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds`` (>= 0)."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._seconds += seconds

    def sleep(self, seconds: float) -> None:
        """Waiting is advancing: nothing else happens meanwhile."""
        self.advance(max(0.0, seconds))

    def advance_to(self, monotonic: float) -> None:
        """Move forward to ``monotonic`` seconds (no-op if it is already past)."""
        with self._lock:
            self._seconds = max(self._seconds, monotonic)
