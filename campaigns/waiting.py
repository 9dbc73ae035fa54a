"""Waiting: "until this holds, or the deadline", and back-off between attempts, written once.

Every layer waits for something (a server to answer, a command to be applied, a thread to
end) and retries something (an append while the database is down). They all wait through
:func:`wait_for` and back off through :func:`backoff`, with the clock and the sleep injectable
so that a test drives time itself instead of sleeping. Pure stdlib, so every layer may use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

__all__ = ["backoff", "wait_for"]

T = TypeVar("T")


def backoff(initial_s: float, max_s: float | None = None, factor: float = 2.0) -> Iterator[float]:
    """The waits between attempts: ``initial_s``, then each ``factor`` times the last, up to ``max_s``.

    Without ``max_s`` (or with ``factor`` 1) every wait is ``initial_s``: a steady poll.
    """
    delay = initial_s
    while True:
        yield delay
        delay = delay if max_s is None else min(delay * factor, max_s)


def wait_for(
    check: Callable[[], T],
    timeout_s: float | None,
    *,
    interval_s: float,
    max_interval_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> T | None:
    """Call ``check`` until it returns something truthy, and return that; None once ``timeout_s`` passed.

    ``check`` runs at once, then after each wait (``interval_s``, growing to ``max_interval_s``
    when given), and a last time at the deadline, so a condition met just in time counts.

    Args:
        check: Looks once; returns a falsy value while the wait goes on.
        timeout_s: How long to wait; None: for ever.
        interval_s: The first wait between two looks.
        max_interval_s: Back off up to this wait (None: always ``interval_s``).
        clock: Monotonic clock, injectable for tests.
        sleep: Waits so many seconds (``time.sleep``, or an event's ``wait`` to end early).
    """
    deadline = None if timeout_s is None else clock() + timeout_s
    for delay in backoff(interval_s, max_interval_s):
        value = check()
        if value:
            return value
        if deadline is not None:
            left = deadline - clock()
            if left <= 0:
                return None
            delay = min(delay, left)
        sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover - backoff never ends
