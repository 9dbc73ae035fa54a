"""The campaign's single writer: each event gets the next seq, is appended, then folded in.

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
from storage import MongoEventStore

__all__ = ["EventWriter"]

log = logging.getLogger("closedloop.writer")


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
        store: MongoEventStore,
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

    def fields(self, actor: str, offset: int = 0) -> dict[str, Any]:
        """The common fields of the next event (``offset`` for the n-th of several)."""
        return {"campaign_id": self.state.campaign_id, "seq": self.state.last_seq + 1 + offset, "actor": actor}

    def append(self, *events: EventBase) -> None:
        """Append (retrying through outages), then apply to ``state``."""
        started: float | None = None
        delay = 0.25
        while True:
            try:
                self.store.append(events)
                break
            except StorageUnavailableError as exc:
                now = self._clock()
                if started is None:
                    started = now
                    self.outages += 1
                    log.warning("database unreachable; retrying (nothing is dispatched meanwhile): %s", exc)
                if self.give_up_after_s is not None and now - started > self.give_up_after_s:
                    raise
                self._sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
        if started is not None:
            log.warning("database is back after %.1f s", self._clock() - started)
        for e in events:
            apply(self.state, e)
