"""``MongoLease``: one writer per campaign, through a lease document in MongoDB.

The ``leases`` collection holds one document per campaign being run::

    {_id: campaign_id, owner: "host:pid", token: <random per MongoLease>,
     acquired_at, heartbeat_at, expires_at}          # times as epoch seconds (floats)

A process takes the lease before it appends anything, and renews it (a heartbeat) well
within ``ttl_s``. A lease whose ``expires_at`` has passed belongs to a dead owner and may be
taken over. Epoch floats compare alike on MongoDB and nx-27017 (no dates in documents).

Taking the lease is two atomic single-document steps, a formulation both servers honour:

1. ``insert_one`` of a new lease: the unique ``_id`` lets exactly one of two racing
   acquirers in; the other gets a duplicate-key error.
2. Otherwise ``find_one_and_update`` with the filter "this campaign, and expired or already
   ours": of two processes racing for a stale lease, the first update makes the lease live
   again, so the second no longer matches.

nx-27017 answers an ``upsert`` that collides on ``_id`` with "no document" instead of a
duplicate-key error, so a single upserting ``find_one_and_update`` cannot tell "took a free
lease" from "someone holds it" there; hence the explicit insert. After a step that did not
match, the lease is read back to name its holder.

The lease is advisory for the loop and the log stays the final guard: if a writer lost its
lease without noticing (the database was down for longer than ``ttl_s`` and another process
took over), its next append collides on ``seq`` and raises ``AppendConflictError`` rather than
forking history. Owners' clocks must agree to well within ``ttl_s`` (NTP does).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self

from pydantic import BaseModel, ConfigDict
from pymongo import MongoClient, ReturnDocument, WriteConcern
from pymongo.errors import ConfigurationError, DuplicateKeyError

from campaigns.errors import CampaignLockedError, StorageError, StorageUnavailableError
from storage._errors import driver_errors, short
from storage._query import _eq
from storage._uri import redact_uri

__all__ = ["LeaseInfo", "MongoLease"]

_COLLECTION = "leases"
_ATTEMPTS = 3
_RETRY_S = 1.0  # heartbeat retry pace while the database is unreachable
_LOST_HINT = "stop writing to this campaign; re-read the log before acquiring it again"


class LeaseInfo(BaseModel):
    """The lease as ``acquire`` took it, and whose stale lease it replaced (the lead logs it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    campaign_id: str
    owner: str
    token: str
    acquired_at: float
    expires_at: float
    taken_over_from: str | None = None
    """The owner of the expired lease this one replaced; None if the lease was free or ours."""
    previous_heartbeat_at: float | None = None
    """The last heartbeat of that owner (epoch seconds)."""

    @property
    def taken_over(self) -> bool:
        """Whether a stale lease of another (presumably dead) owner was taken over."""
        return self.taken_over_from is not None


class MongoLease:
    """The lease that makes a process the only writer of one campaign.

    Args:
        uri: A MongoDB connection URI.
        campaign_id: The campaign to run.
        owner: Who holds the lease, for humans: ``"host:pid"``.
        database: The database holding the ``leases`` collection.
        ttl_s: How long a lease lives without a heartbeat; a dead owner's lease is free after it.
        timeout_s: How long to look for a reachable server before ``StorageUnavailableError``.
        clock: Epoch seconds now (injected in tests).

    Raises:
        StorageError: The URI is malformed.
        ValueError: ``ttl_s`` or ``timeout_s`` is not positive, or ``owner`` is empty.

    Use it as a context manager (acquire on entry; stop the heartbeat and release on exit)::

        with MongoLease(uri, campaign_id, owner=f"{host}:{pid}") as lease:
            lease.start_heartbeat(on_lost=stop_the_loop)
            ...
    """

    def __init__(
        self,
        uri: str,
        campaign_id: str,
        *,
        owner: str,
        database: str = "closedloop",
        ttl_s: float = 30.0,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl_s <= 0 or timeout_s <= 0:
            raise ValueError(f"ttl_s and timeout_s must be positive, got {ttl_s} and {timeout_s}")
        if not owner:
            raise ValueError("owner must name the process, e.g. 'host:pid'")
        self._uri = uri
        self.campaign_id = campaign_id
        self.owner = owner
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._clock = clock
        self.token = uuid.uuid4().hex
        self._held_until: float | None = None
        self._beat: tuple[threading.Thread, threading.Event] | None = None
        ms = max(1, int(timeout_s * 1000))
        try:
            self._client: MongoClient[dict[str, Any]] = MongoClient(
                uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=ms, appname="closedloop"
            )
        except (ConfigurationError, ValueError) as exc:  # pymongo: ValueError for a bad port
            raise StorageError(
                f"invalid MongoDB URI {redact_uri(uri)}: {short(exc, uri)}",
                "write it as mongodb://[user:password@]host[:port]/ (escape the password)",
            ) from None
        self._leases = self._client.get_database(database).get_collection(
            _COLLECTION, write_concern=WriteConcern(w="majority", j=True)
        )

    @property
    def held_until(self) -> float | None:
        """``expires_at`` of the last successful acquire or renew (by ``clock``); None if not held.

        While the database is unreachable, a writer that sees ``clock() >= held_until`` can no
        longer be sure it is the only one.
        """
        return self._held_until

    # -- acquire / renew / release -----------------------------------------------------------

    def acquire(self, *, dead_owner: str | None = None) -> LeaseInfo:
        """Take the lease if it is free, expired (its owner died), or already ours.

        Args:
            dead_owner: An owner the caller knows to be dead (e.g. a process of this host that
                no longer exists): its lease is taken over at once instead of after its ttl.

        Returns:
            The lease taken; ``taken_over_from`` names the owner of a stale lease replaced.

        Raises:
            CampaignLockedError: Another owner holds a live lease (the message names it).
            StorageUnavailableError: The database cannot be reached; retry.
            StorageError: The database refused the write.
        """
        cid = self.campaign_id
        with self._errors("acquire"):
            for _ in range(_ATTEMPTS):
                now = self._clock()
                fields = {"owner": self.owner, "token": self.token, "acquired_at": now,
                          "heartbeat_at": now, "expires_at": now + self.ttl_s}
                try:
                    self._leases.insert_one({"_id": cid, **fields})
                    return self._took(fields, None)
                except DuplicateKeyError:
                    pass  # a lease exists: take it only if it expired or is ours
                either: list[dict[str, Any]] = [{"expires_at": {"$lt": now}}, {"token": _eq(self.token)}]
                if dead_owner is not None:
                    either.append({"owner": _eq(dead_owner)})
                takeable = {"_id": _eq(cid), "$or": either}
                before = self._leases.find_one_and_update(
                    takeable, {"$set": fields}, return_document=ReturnDocument.BEFORE
                )
                if before is not None:
                    return self._took(fields, before)
                current = self._leases.find_one({"_id": _eq(cid)})
                if current is not None and current.get("token") != self.token:
                    raise self._locked(current, now)
                # Released meanwhile (or, on nx-27017, an update that failed silently): again.
        raise StorageError(
            f"could not take the lease of campaign {cid!r}: it changed hands {_ATTEMPTS} times while trying",
            "retry in a few seconds",
            campaign_id=cid,
        )

    def _took(self, fields: dict[str, Any], before: dict[str, Any] | None) -> LeaseInfo:
        self._held_until = float(fields["expires_at"])
        stale = before is not None and before.get("token") != self.token
        return LeaseInfo(
            campaign_id=self.campaign_id,
            owner=self.owner,
            token=self.token,
            acquired_at=float(fields["acquired_at"]),
            expires_at=float(fields["expires_at"]),
            taken_over_from=str(before.get("owner")) if stale and before is not None else None,
            previous_heartbeat_at=_float(before.get("heartbeat_at")) if stale and before is not None else None,
        )

    def _locked(self, current: dict[str, Any], now: float) -> CampaignLockedError:
        beat, expires = _float(current.get("heartbeat_at")), _float(current.get("expires_at"))
        age = now - beat if beat is not None else 0.0
        ttl = round(expires - beat, 3) if beat is not None and expires is not None else self.ttl_s  # the holder's
        return CampaignLockedError(
            f"campaign {self.campaign_id!r} is being run by {current.get('owner')} (last heartbeat {age:.0f} s ago)",
            f"wait for it to finish or stop it; a dead owner's lease expires after {ttl:g} s",
            campaign_id=self.campaign_id,
            owner=None if current.get("owner") is None else str(current.get("owner")),
        )

    def renew(self) -> None:
        """Heartbeat: push ``expires_at`` to ``clock() + ttl_s``, if the lease is still ours.

        A lease that expired but that nobody took over is still ours and is renewed. If the
        database stays unreachable for longer than ``ttl_s``, another process may take the
        lease over meanwhile; the first renew after the database returns then raises
        ``CampaignLockedError``.

        Raises:
            CampaignLockedError: The lease is no longer ours (taken over after it expired, or
                released): the writer must stop.
            StorageUnavailableError: The database cannot be reached; keep trying.
            StorageError: The database refused the write.
        """
        cid = self.campaign_id
        with self._errors("renew"):
            now = self._clock()
            expires = now + self.ttl_s
            after = self._leases.find_one_and_update(
                {"_id": _eq(cid), "token": _eq(self.token)},
                {"$set": {"heartbeat_at": now, "expires_at": expires}},
                return_document=ReturnDocument.AFTER,
            )
            if after is not None:
                self._held_until = expires
                return
            current = self._leases.find_one({"_id": _eq(cid)})
        self._held_until = None
        if current is None:
            raise CampaignLockedError(
                f"the lease of campaign {cid!r} is no longer held by {self.owner}: it was released", _LOST_HINT,
                campaign_id=cid,
            )
        if current.get("token") == self.token:
            raise StorageError(
                f"MongoDB did not renew the lease of campaign {cid!r} of {self.owner}", "retry",
                campaign_id=cid,
            )
        raise CampaignLockedError(
            f"campaign {cid!r} was taken over by {current.get('owner')}: the lease of {self.owner} expired or was released",
            _LOST_HINT,
            campaign_id=cid,
        )

    def release(self) -> None:
        """Stop the heartbeat and give the lease up, if it is still ours. Idempotent.

        Raises:
            StorageUnavailableError: The database cannot be reached (the lease then expires by
                itself after ``ttl_s``).
            StorageError: The database refused the write.
        """
        self.stop_heartbeat()
        with self._errors("release"):
            self._leases.delete_one({"_id": _eq(self.campaign_id), "token": _eq(self.token)})
        self._held_until = None

    # -- heartbeat ---------------------------------------------------------------------------

    def start_heartbeat(
        self, interval_s: float | None = None, *, on_lost: Callable[[BaseException], None]
    ) -> None:
        """Renew the lease from a daemon thread every ``interval_s`` (default ``ttl_s / 3``).

        Through a database outage the thread retries every second (at most every
        ``interval_s``); if the outage outlasts ``ttl_s`` the lease may be taken over, which the
        first renew after it finds. ``on_lost`` is then called once, from the heartbeat
        thread, with the ``CampaignLockedError`` (or with any other error that leaves the lease
        unprovable, e.g. a refused write), and the heartbeat ends.

        Args:
            interval_s: Seconds between renewals; None for ``ttl_s / 3``.
            on_lost: Called once when the lease is lost; it should stop the writer.

        Raises:
            RuntimeError: A heartbeat is already running.
        """
        if self._beat is not None:
            raise RuntimeError(f"the heartbeat of the lease of {self.campaign_id!r} is already running")
        interval = interval_s if interval_s is not None else self.ttl_s / 3
        stop = threading.Event()
        thread = threading.Thread(
            target=self._heartbeat, args=(interval, on_lost, stop), name=f"lease:{self.campaign_id}", daemon=True
        )
        self._beat = (thread, stop)
        thread.start()

    def _heartbeat(self, interval: float, on_lost: Callable[[BaseException], None], stop: threading.Event) -> None:
        wait = interval
        while not stop.wait(wait):
            try:
                self.renew()
            except StorageUnavailableError:
                wait = min(interval, _RETRY_S)
                continue
            except Exception as exc:  # noqa: BLE001 - handed to on_lost, not swallowed
                if not stop.is_set():
                    on_lost(exc)
                return
            wait = interval

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat thread, if any, and wait for it (at most ``timeout_s`` + 1 s)."""
        beat, self._beat = self._beat, None
        if beat is None:
            return
        thread, stop = beat
        stop.set()
        if thread is not threading.current_thread():  # on_lost may call release()
            thread.join(timeout=self.timeout_s + 1.0)

    # -- plumbing ----------------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        with driver_errors(self._uri, action, f"the lease of campaign {self.campaign_id!r}", self.campaign_id):
            yield

    def close(self) -> None:
        """Stop the heartbeat and close the connections (the lease itself is left as it is)."""
        self.stop_heartbeat()
        self._client.close()

    def __enter__(self) -> Self:
        try:
            self.acquire()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.release()
        except StorageUnavailableError:
            pass  # the database is down: the lease expires by itself after ttl_s
        finally:
            self.close()

    def __repr__(self) -> str:
        return f"MongoLease({redact_uri(self._uri)!r}, {self.campaign_id!r}, owner={self.owner!r})"


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None
