"""The campaign's single writer: each event gets the next seq, is appended, then folded in.

Events may also be *staged*: folded in at once, appended with the next :meth:`EventWriter.flush`
in one ordered insert with every other staged event. The loop stages what one pass decides
(the results of a batch of device messages; a suggestion and its dispatches) and flushes before
any side effect (a publish, an acknowledgement), so one round trip to the database carries
them all and still nothing happens whose intent is not in the log.

Appends ride out database outages: a `StorageUnavailableError` is retried with back-off
(the very same events, which the store recognises if the lost attempt did land), so nothing
whose intent is not logged ever happens, and nothing is lost while the database is away.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from campaigns import CampaignState, EventBase, StorageUnavailableError, apply
from campaigns.waiting import backoff
from flows.engine.ports import EventLog

__all__ = ["EventWriter"]

log = logging.getLogger("closedloop.writer")


def next_fields(state: CampaignState, actor: str, offset: int = 0) -> dict[str, Any]:
    """The common fields of the next event of ``state``'s log (``offset`` for the n-th of several)."""
    return {"campaign_id": state.campaign_id, "seq": state.last_seq + 1 + offset, "actor": actor}


class EventWriter:
    """Appends events for one campaign and keeps ``state`` equal to ``fold(log)``.

    Args:
        store: The event log.
        state: The folded log so far (advanced in place).
        max_backoff_s: Longest wait between two attempts while the database is down.
        give_up_after_s: Raise the `StorageUnavailableError` after so long (None: never).
        sleep: Injected for tests.
        clock: Monotonic clock, injected for tests.
    """

    def __init__(
        self,
        store: EventLog,
        state: CampaignState,
        *,
        max_backoff_s: float = 10.0,
        give_up_after_s: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.state = store, state
        self.max_backoff_s, self.give_up_after_s = max_backoff_s, give_up_after_s
        self._sleep, self._clock = sleep, clock
        self.outages = 0
        self._staged: list[EventBase] = []
        self._written_to: int | None = None  # the seq of the last event this writer appended

    def fields(self, actor: str, offset: int = 0) -> dict[str, Any]:
        """The common fields of the next event (``offset`` for the n-th of several)."""
        return next_fields(self.state, actor, offset)

    @property
    def staged(self) -> int:
        """How many events are folded into ``state`` but not yet in the log."""
        return len(self._staged)

    def stage(self, *events: EventBase) -> None:
        """Fold events into ``state`` now; they reach the log with the next :meth:`flush`.

        Until then nothing may act on them (no publish, no acknowledgement): ``state`` is the
        log plus what is staged.
        """
        for e in events:
            apply(self.state, e)
        self._staged.extend(events)

    def flush(self) -> None:
        """Append every staged event, in one ordered insert (retrying through outages)."""
        if self._staged:
            self._write(self._staged)
            self._staged = []

    def append(self, *events: EventBase) -> None:
        """Append the staged events and these in one insert (retrying through outages), then
        apply these to ``state``."""
        self._write([*self._staged, *events])
        self._staged = []
        for e in events:
            apply(self.state, e)

    def _write(self, events: list[EventBase]) -> None:
        started: float | None = None
        delays = backoff(0.25, self.max_backoff_s)
        if not events:
            return
        # Our own last append is the predecessor: the store need not check for a gap.
        own = self._written_to is not None and self._written_to == events[0].seq - 1
        while True:
            try:
                self.store.append(events, after_own_write=own)
                break
            except StorageUnavailableError as exc:
                now = self._clock()
                if started is None:
                    started = now
                    self.outages += 1
                    log.warning("database unreachable; retrying (nothing is dispatched meanwhile): %s", exc)
                if self.give_up_after_s is not None and now - started > self.give_up_after_s:
                    raise
                self._sleep(next(delays))
        if started is not None:
            log.warning("database is back after %.1f s", self._clock() - started)
        self._written_to = events[-1].seq
