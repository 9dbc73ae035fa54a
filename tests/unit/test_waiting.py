"""One way to wait: until a check holds or the deadline, with back-off; time injected, never slept."""

from __future__ import annotations

from itertools import islice

import pytest

from campaigns.waiting import backoff, wait_for


class ManualClock:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_backoff_doubles_up_to_its_ceiling_or_stays_steady() -> None:
    assert list(islice(backoff(0.25, 2.0), 6)) == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert list(islice(backoff(0.3), 3)) == [0.3, 0.3, 0.3]


def test_wait_for_returns_the_first_truthy_look() -> None:
    clock, looks = ManualClock(), iter([None, "", "applied", "never seen"])
    assert wait_for(lambda: next(looks), 30, interval_s=0.3, clock=clock, sleep=clock.sleep) == "applied"
    assert clock.sleeps == [0.3, 0.3]


def test_wait_for_gives_up_at_the_deadline_after_a_last_look() -> None:
    clock, looks = ManualClock(), []
    assert wait_for(lambda: looks.append(clock.now), 1.0, interval_s=0.3, clock=clock, sleep=clock.sleep) is None
    assert looks == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.0])


def test_wait_for_backs_off_between_looks() -> None:
    clock = ManualClock()
    assert wait_for(lambda: clock.now >= 5, None, interval_s=0.5, max_interval_s=2, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [0.5, 1.0, 2.0, 2.0]
