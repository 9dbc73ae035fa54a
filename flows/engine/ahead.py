"""``OptimizerThread``: every call on the campaign's optimizer, in order, in one worker thread.

The loop hands the optimizer its results (``complete``/``fail``) and asks it for suggestions
without waiting: the calls run one after another in a single worker thread, in the order the
loop made them, so the optimizer (not thread-safe) is only ever touched by that thread, and a
suggestion knows every result the loop had logged when it asked (the others are pending in
it). Meanwhile the loop goes on handling results and commands, and sends the trials it already
has; when a suggestion is ready the worker wakes the loop (``wake``).

An optimizer replaced by a rebuild (a person's decision or change) is retired: calls queued
for it are skipped, a suggestion it was computing is discarded unlogged (it was made under
the old spec), and :meth:`OptimizerThread.use` returns only once the worker has let go of it.

``threaded=False`` runs every call at once in the caller's thread, in the same order and with
the same error and retirement rules: a run on a manual clock is then deterministic.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

from campaigns import SuggestedTrial

__all__ = ["OptimizerThread"]

O = TypeVar("O")
R = TypeVar("R")


class OptimizerThread(Generic[O]):
    """Runs calls on one optimizer at a time in a single worker thread, in submission order.

    Args:
        wake: Called (from the worker thread) when a suggestion is ready.
        threaded: False: run each call at once in the caller's thread instead.
    """

    def __init__(self, wake: Callable[[], None], *, threaded: bool = True) -> None:
        self._wake = wake
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="closedloop-optimizer") if threaded else None
        self._optimizer: O | None = None
        self._generation = 0
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._suggestion: Future[list[SuggestedTrial] | None] | None = None
        self.computing = 0
        """How many trials the suggestion being computed will hold (0: none is computed)."""

    @property
    def optimizer(self) -> O:
        """The optimizer in use (touch it only through this class while the loop runs)."""
        assert self._optimizer is not None
        return self._optimizer

    def use(self, optimizer: O) -> None:
        """Retire the current optimizer and use ``optimizer`` from now on.

        Calls queued for the old one are skipped and its suggestion, if any, is dropped; this
        returns once the worker no longer touches the old one (at most one call's time).
        """
        with self._lock:
            self._generation += 1
        self._suggestion, self.computing = None, 0
        self._submit(lambda: None, self._generation).result()  # the queue is FIFO: a barrier
        self._optimizer = optimizer

    def tell(self, call: Callable[[O], object]) -> None:
        """Queue a call on the optimizer (``complete``/``fail``); its error surfaces in :meth:`check`."""
        optimizer, generation = self.optimizer, self._generation
        self._submit(lambda: call(optimizer), generation)

    def suggest(self, n: int, suggest: Callable[[O, int], list[SuggestedTrial]]) -> None:
        """Start computing ``n`` trials (after every call queued before); one suggestion at a time."""
        assert self._suggestion is None, "one suggestion at a time"
        optimizer, generation = self.optimizer, self._generation

        def run() -> list[SuggestedTrial] | None:
            try:
                return suggest(optimizer, n)
            finally:
                self._wake()

        self._suggestion, self.computing = self._submit(run, generation), n

    def collect(self, wait: bool = False) -> list[SuggestedTrial] | None:
        """The suggestion, once computed (``wait``: block for it); None while it is not ready.

        Raises:
            Exception: What the optimizer raised, in this thread or in an earlier call.
        """
        self.check()
        future = self._suggestion
        if future is None or (not wait and not future.done()):
            return None
        self._suggestion, self.computing = None, 0
        trials = future.result()
        self.check()
        return trials

    def check(self) -> None:
        """Raise, here, the first error an optimizer call raised in the worker."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Drop queued calls and stop the worker (waits for the call it is running, if any)."""
        with self._lock:
            self._generation += 1
        self._suggestion, self.computing = None, 0
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, call: Callable[[], R], generation: int) -> Future[R | None]:
        # The caller's context (e.g. Prefect's flow run) goes with the call, so a suggestion
        # run as a Prefect task belongs to the flow run.
        context = contextvars.copy_context()

        def guarded() -> R | None:
            with self._lock:
                if generation != self._generation:
                    return None  # for a retired optimizer
            try:
                return context.run(call)
            except Exception as exc:  # raised again in the loop's thread by check()
                with self._lock:
                    if self._error is None and generation == self._generation:
                        self._error = exc  # a retired optimizer's error concerns nobody
                return None

        if self._pool is not None:
            return self._pool.submit(guarded)
        done: Future[R | None] = Future()
        done.set_result(guarded())
        return done
