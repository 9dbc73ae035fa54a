"""Holding a campaign's lease for the life of a run: one writer per campaign.

The CLI takes the lease before it starts anything for a run (simulators included), and the
flow takes it if nobody holds it yet through the same :class:`Leases` (a flow run started some
other way). Through one ``Leases`` (the run's wiring holds one) the lease is re-entrant: the
flow reuses the CLI's.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from campaigns import CampaignLockedError, StorageUnavailableError
from storage import MongoLease

__all__ = ["HeldLease", "Leases", "hold_lease", "owner_name"]

log = logging.getLogger("closedloop.lease")


def owner_name() -> str:
    """How this process is named as a lease owner: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _dead_local_owner(owner: str | None) -> str | None:
    """The lease's owner, if it is a process of this host that no longer runs.

    A SIGKILLed orchestrator leaves a live-looking lease for up to its ttl; on the same host we
    can tell at once that its process is gone and take over without waiting.
    """
    host, _, pid_text = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return owner
    except PermissionError:
        return None  # alive, someone else's
    return None


#: Beyond a lease's ttl, for its owner's last heartbeat and clocks that disagree a little.
_WAIT_MARGIN_S = 15.0


def _acquire(lease: MongoLease, wait: bool = False) -> str | None:
    deadline = time.monotonic() + (lease.ttl_s + _WAIT_MARGIN_S if wait else 0.0)
    while True:
        try:
            return lease.acquire().taken_over_from
        except CampaignLockedError as exc:
            dead = _dead_local_owner(exc.owner)
            if dead is not None:
                log.warning("the lease's owner %s is not running any more: taking over", dead)
                return lease.acquire(dead_owner=dead).taken_over_from or dead
            if time.monotonic() >= deadline:
                raise
            time.sleep(1.0)  # a dead owner elsewhere: its lease expires within its ttl


@dataclass
class HeldLease:
    """A lease this process holds, and what it learned if it lost it."""

    lease: MongoLease
    lost: list[BaseException] = field(default_factory=list)
    users: int = 0

    def lost_error(self) -> BaseException | None:
        """The error to stop on once the lease was taken by someone else, else None."""
        return self.lost[0] if self.lost else None


class Leases:
    """The campaign leases held through this object, so that a nested hold re-uses the outer one."""

    def __init__(self) -> None:
        self._held: dict[str, HeldLease] = {}
        self._lock = threading.Lock()

    def held(self, campaign_id: str) -> HeldLease | None:
        """The lease held for a campaign, if any."""
        with self._lock:
            return self._held.get(campaign_id)


@contextmanager
def hold_lease(uri: str, database: str, campaign_id: str,
               on_takeover: Callable[[str], None] | None = None, *,
               leases: Leases | None = None, wait: bool = False) -> Iterator[HeldLease]:
    """Acquire (or re-use, when ``leases`` already holds it) the campaign's lease, heartbeat it, release it.

    Args:
        uri: The database.
        database: Its name.
        campaign_id: The campaign.
        on_takeover: Told the previous owner when a stale lease was taken over.
        leases: Where this hold is registered (None: a hold of its own, never shared).
        wait: Wait out a lease another owner holds, for up to its ttl: a flow run that a worker
            started after a crash elsewhere takes over once the dead owner's lease expires.
            False: refuse at once.

    Raises:
        CampaignLockedError: another live process holds it (the message names the owner).
    """
    leases = Leases() if leases is None else leases
    with leases._lock:
        held = leases._held.get(campaign_id)
        if held is None:
            lease = MongoLease(uri, campaign_id, owner=owner_name(), database=database)
            try:
                previous = _acquire(lease, wait)
            except BaseException:
                lease.close()
                raise
            if previous and on_takeover is not None:
                on_takeover(previous)
            held = HeldLease(lease)
            lease.start_heartbeat(on_lost=held.lost.append)
            leases._held[campaign_id] = held
        held.users += 1
    try:
        yield held
    finally:
        with leases._lock:
            held.users -= 1
            if held.users == 0:
                del leases._held[campaign_id]
                held.lease.stop_heartbeat()
                try:
                    held.lease.release()
                except StorageUnavailableError:
                    log.warning("could not release the lease (database down); it expires after %g s", held.lease.ttl_s)
                finally:
                    held.lease.close()
