"""What the engine needs of the world: an event log, a device hub, a command inbox and a clock.

Protocols, so the loop runs on any backend that keeps their contracts: MongoDB, MQTT and the
system clock in production (``storage.MongoEventStore``, ``devices.MqttDeviceHub``,
``storage.MongoCommandInbox``, :class:`SystemClock`), in-memory classes for tests and
benchmarks (``flows.engine.memory``). Each lists only what the engine calls; the contract
suites (tests/integration/test_storage_contract.py, test_hub_contract.py) say how they behave.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from campaigns import EventBase, utcnow
from campaigns.command import Command
from campaigns.events import Event
from devices.events import HubEvent
from devices.messages import DeviceStatus, RunTrial
from devices.topics import Topics

__all__ = ["Clock", "CommandInbox", "DeviceHub", "EventLog", "SystemClock"]


class EventLog(Protocol):
    """The append-only log of campaigns (``storage.MongoEventStore`` is the real one)."""

    def append(self, events: Sequence[EventBase], *, after_own_write: bool = False) -> None:
        """Append events with contiguous seqs after the campaign's last one; the very same
        events again are a no-op (a retry), another event at a taken seq an ``AppendConflictError``;
        ``StorageUnavailableError``: retry the same call."""
        ...

    def read(self, campaign_id: str, after_seq: int = 0, limit: int = 0) -> list[Event]:
        """The campaign's events with ``seq > after_seq`` in seq order (at most ``limit``; 0: all)."""
        ...


class DeviceHub(Protocol):
    """The devices, seen from the orchestrator (``devices.MqttDeviceHub`` is the real one)."""

    @property
    def topics(self) -> Topics:
        """The topics of the hub's prefix (named in rejections and diagnoses)."""
        ...

    @property
    def connected(self) -> bool:
        """Whether requests can be sent now."""
        ...

    def devices(self) -> dict[str, DeviceStatus]:
        """The latest status of every device seen, by id."""
        ...

    def dispatch(self, device_id: str, request: RunTrial, timeout_s: float | None = 10) -> None:
        """Send a request to a device (at least once); ``BrokerError`` if it could not be handed over."""
        ...

    def ack(self, event: HubEvent) -> None:
        """Acknowledge a received message once what it caused is logged (an un-acked result comes again)."""
        ...

    def next_events(self, timeout_s: float) -> list[HubEvent]:
        """Wait up to ``timeout_s`` for an event or a :meth:`wake`, then return every queued event."""
        ...

    def wake(self) -> None:
        """Make a waiting :meth:`next_events` return now (from any thread)."""
        ...


class CommandInbox(Protocol):
    """Where people's commands reach the running loop (``storage.MongoCommandInbox`` is the real one)."""

    def pending(self, campaign_id: str) -> list[Command]:
        """Commands neither applied, refused nor withdrawn, oldest first."""
        ...

    def claim(self, command_id: str) -> bool:
        """Take a command to apply it; False if its author withdrew it first."""
        ...

    def applied(self, command_id: str, seq: int | None) -> None:
        """Mark a command applied (its events end at ``seq``)."""
        ...

    def refused(self, command_id: str, error: str) -> None:
        """Mark a command refused, with the one-line reason."""
        ...


class Clock(Protocol):
    """Time, injected: monotonic seconds for deadlines, UTC for the campaign's ``max_hours``."""

    def monotonic(self) -> float:
        """Seconds that never go back."""
        ...

    def now(self) -> datetime:
        """The current UTC time."""
        ...

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass (a back-off while the database is away)."""
        ...


class SystemClock:
    """The machine's clocks."""

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def now(self) -> datetime:
        """The current UTC time, at millisecond precision (what the log stores)."""
        return utcnow()

    def sleep(self, seconds: float) -> None:
        """``time.sleep``."""
        time.sleep(seconds)
