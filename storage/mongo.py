"""``MongoEventStore``: the campaign event log in one MongoDB collection, through pymongo.

One document per event (``campaigns.events.event_to_doc``) in the ``events`` collection, with
a unique index on ``(campaign_id, seq)``. That index is what makes appending conditional: a
second writer, or a replayed write, gets a duplicate-key error instead of forking history.
Nothing is ever updated or deleted.

The same code talks to MongoDB / Atlas in production and to the embedded nx-27017 server
(``storage.embedded``), so it uses only what both honour: ``insert_one``, ordered
``insert_many``, ``find`` with a sort, and ``find_one``.

Every pymongo failure leaves this module as a ``StorageError`` (one line, a hint, the URI with
its password redacted), never as a driver traceback. A server that cannot be reached now (down,
restarting, a dropped connection, a timeout) gives its subclass ``StorageUnavailableError``: the
caller waits and retries the same call, and the pymongo client reconnects by itself when the
server is back. Appends are safe to retry (see ``MongoEventStore.append``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self

from pydantic import ValidationError
from pymongo import ASCENDING, DESCENDING, MongoClient, WriteConcern
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, ConfigurationError, DuplicateKeyError

from campaigns.errors import AppendConflictError, StorageError
from campaigns.events import Event, EventBase, event_to_doc, one_append, read_stored_event
from campaigns.summary import CampaignSummary
from storage._errors import driver_errors, short
from storage._query import _eq
from storage._uri import redact_uri

__all__ = ["CampaignSummary", "MongoEventStore"]

_COLLECTION = "events"
_INDEX_NAME = "campaign_id_seq_unique"
_DUPLICATE_KEY = 11000
_SOCKET_TIMEOUT_MS = 30_000
_CONFLICT_HINT = "another closedloop process is writing this campaign; re-read the log"


class MongoEventStore:
    """The append-only event log of every campaign, in a MongoDB database.

    Args:
        uri: A MongoDB connection URI (``mongodb://...`` or ``mongodb+srv://...``).
        database: The database holding the ``events`` collection.
        timeout_s: How long to look for a reachable server before raising
            ``StorageUnavailableError``.

    Raises:
        StorageError: The URI is malformed.

    Writes use ``WriteConcern(w="majority", j=True)``: on a replica set an acknowledged event
    survives a failover and a crash. A standalone server treats it as ``w=1`` with journaling;
    nx-27017 accepts and ignores it (its durability is SQLite WAL with ``synchronous=NORMAL``).
    """

    def __init__(self, uri: str, *, database: str = "closedloop", timeout_s: float = 5.0) -> None:
        self._uri = uri
        self._where = redact_uri(uri)
        self._database = database
        self._index_ready = False
        self._index_lock = threading.Lock()
        ms = max(1, int(timeout_s * 1000))
        try:
            self._client: MongoClient[dict[str, Any]] = MongoClient(
                uri,
                serverSelectionTimeoutMS=ms,
                connectTimeoutMS=ms,
                # A server that vanishes without closing the connection (a cut network, a frozen
                # host) still gives StorageUnavailableError, after this long.
                socketTimeoutMS=max(ms, _SOCKET_TIMEOUT_MS),
                appname="closedloop",
            )
        except (ConfigurationError, ValueError) as exc:  # pymongo: ValueError for a bad port
            raise StorageError(
                f"invalid MongoDB URI {self._where}: {short(exc, self._uri)}",
                "write it as mongodb://[user:password@]host[:port]/ (escape the password)",
            ) from None
        self._events: Collection[dict[str, Any]] = self._client.get_database(database).get_collection(
            _COLLECTION, write_concern=WriteConcern(w="majority", j=True)
        )

    # -- writing ---------------------------------------------------------------------------

    def append(self, events: Sequence[EventBase], *, after_own_write: bool = False) -> None:
        """Append events to one campaign's log, if their seqs are still free.

        The first event's ``seq`` must follow the campaign's last one (``1`` for a new
        campaign), and the seqs of one call must be contiguous.

        Several events go in one ordered ``insert_many``: the server writes them in order and
        stops at the first failure. So a failure mid-batch (a lost connection, a server crash)
        leaves a prefix written and the rest not, and the log stays contiguous.

        Calling ``append`` again with the very same events is safe, and is what to do after a
        ``StorageUnavailableError``: an append whose acknowledgement was lost may have been
        written, in whole or in part. Events carry their own ``time``, so a retry writes
        identical documents; where a seq is taken by an identical document, that is our
        earlier write and it counts as done, and the events after it are appended.

        Args:
            events: Events of one campaign with contiguous seqs. An empty sequence is a no-op.
            after_own_write: The caller itself appended the event just before these (and it
                was acknowledged), so the gap check — one more round trip — is skipped; the
                unique index still refuses a seq taken by anyone else.

        Raises:
            ValueError: The events mix campaigns, their seqs are not contiguous, or the first
                seq would leave a gap after the campaign's last event (a programming error).
            AppendConflictError: Another writer already appended a different event at one of
                these seqs; nothing of this call from that seq on is written.
            StorageUnavailableError: The database cannot be reached now; retry the same call.
            StorageError: The database refused the write.
        """
        if not events:
            return
        campaign_id, first = one_append(events)
        docs = [event_to_doc(e) for e in events]
        with self._errors("append to", campaign_id):
            events_coll = self._collection()
            # The predecessor never disappears (nothing is deleted), so checking it here and
            # relying on the unique index at insert time keeps every log gap-free.
            predecessor = {"campaign_id": _eq(campaign_id), "seq": _eq(first - 1)}
            if first > 1 and not after_own_write and events_coll.find_one(predecessor, {"_id": 1}) is None:
                raise ValueError(
                    f"campaign {campaign_id!r}: appending seq {first} would leave a gap"
                    f" (seq {first - 1} is not in the log)"
                )
            done = 0  # docs[:done] are in the log
            while done < len(docs):
                inserted = self._insert(events_coll, docs[done:])
                if inserted is None:
                    return
                done += inserted
                # docs[done] hit a taken seq: our own earlier write, or another writer's event.
                same = self._already_there(events_coll, campaign_id, docs[done:], first)
                if same == 0:  # the seq is reported taken yet holds nothing: do not spin
                    raise self._conflict(campaign_id, first + done, done)
                done += same

    @staticmethod
    def _insert(coll: Collection[dict[str, Any]], docs: list[dict[str, Any]]) -> int | None:
        """Insert ``docs`` in order; None if all went in, else how many did before a duplicate."""
        fresh = [{k: v for k, v in d.items() if k != "_id"} for d in docs]  # pymongo adds _id in place
        try:
            if len(fresh) == 1:
                coll.insert_one(fresh[0])
            else:
                coll.insert_many(fresh, ordered=True)
        except DuplicateKeyError:
            return 0
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if errors and errors[0].get("code") == _DUPLICATE_KEY:
                return int(errors[0].get("index", 0))
            raise
        return None

    @staticmethod
    def _stored(
        coll: Collection[dict[str, Any]], campaign_id: str, docs: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The stored documents (minus ``_id``) at the seqs of ``docs``, in seq order."""
        lo, hi = docs[0]["seq"], docs[-1]["seq"]
        query = {"campaign_id": _eq(campaign_id), "seq": {"$gte": lo, "$lte": hi}}
        return list(coll.find(query, {"_id": 0}).sort("seq", ASCENDING))

    def _already_there(
        self, coll: Collection[dict[str, Any]], campaign_id: str, docs: list[dict[str, Any]], call_first: int
    ) -> int:
        """How many of ``docs``, from the first, are stored exactly as they are (an earlier write).

        Raises:
            AppendConflictError: The first stored document that is not ours differs from ours.
        """
        stored = {d.get("seq"): d for d in self._stored(coll, campaign_id, docs)}
        same = 0
        for doc in docs:
            there = stored.get(doc["seq"])
            if there is None:
                break
            if there != doc:
                raise self._conflict(campaign_id, doc["seq"], doc["seq"] - call_first)
            same += 1
        return same

    def _conflict(self, campaign_id: str, seq: int, written: int) -> AppendConflictError:
        landed = f" (the {written} event(s) before it were written)" if written else ""
        return AppendConflictError(
            f"campaign {campaign_id!r}: seq {seq} is already in the log{landed}",
            _CONFLICT_HINT,
            campaign_id=campaign_id,
        )

    # -- reading ---------------------------------------------------------------------------

    def read(self, campaign_id: str, after_seq: int = 0, limit: int = 0) -> list[Event]:
        """The campaign's events with ``seq > after_seq``, in seq order.

        Args:
            campaign_id: The campaign.
            after_seq: Return only events after this seq (0: the whole log).
            limit: Return at most this many (0: all), e.g. 1 for the ``CampaignCreated``.

        Returns:
            The events; an empty list for an unknown campaign.

        Raises:
            StorageError: The database cannot be reached, or a stored document no longer
                parses as an event (the message names campaign and seq).
        """
        with self._errors("read", campaign_id):
            cursor = self._collection().find(
                {"campaign_id": _eq(campaign_id), "seq": {"$gt": after_seq}}, {"_id": 0}
            ).sort("seq", ASCENDING).limit(limit)
            docs = list(cursor)
        return [self._parse(campaign_id, doc) for doc in docs]

    def _parse(self, campaign_id: str, doc: dict[str, Any]) -> Event:
        return read_stored_event(campaign_id, doc)

    def last_seq(self, campaign_id: str) -> int:
        """The seq of the campaign's last event; 0 if it has none.

        Raises:
            StorageError: The database cannot be reached.
        """
        with self._errors("read", campaign_id):
            doc = self._collection().find_one(
                {"campaign_id": _eq(campaign_id)}, {"_id": 0, "seq": 1}, sort=[("seq", DESCENDING)]
            )
        return int(doc["seq"]) if doc is not None else 0

    def exists(self, campaign_id: str) -> bool:
        """Whether the campaign has at least one event.

        Raises:
            StorageError: The database cannot be reached.
        """
        with self._errors("read", campaign_id):
            return self._collection().find_one({"campaign_id": _eq(campaign_id)}, {"_id": 1}) is not None

    def list_campaigns(self) -> list[CampaignSummary]:
        """Every campaign in the database, oldest first.

        Uses plain finds (no aggregation) so nx-27017 and MongoDB answer alike: the
        ``CampaignCreated`` events, then per campaign its last event and whether it finished.

        Raises:
            StorageError: The database cannot be reached, or a ``CampaignCreated`` document
                lacks its name or time.
        """
        out: list[CampaignSummary] = []
        with self._errors("list campaigns in", None):
            coll = self._collection()
            fields = {"_id": 0, "campaign_id": 1, "seq": 1, "time": 1, "spec": 1}
            created = list(coll.find({"kind": _eq("CampaignCreated")}, fields))
            for doc in created:
                cid = doc.get("campaign_id")
                last = coll.find_one({"campaign_id": _eq(cid)}, {"_id": 0, "seq": 1}, sort=[("seq", DESCENDING)])
                finish = coll.find_one({"campaign_id": _eq(cid), "kind": _eq("CampaignFinished")}, {"_id": 1})
                spec = doc.get("spec")
                try:
                    out.append(
                        CampaignSummary.model_validate(
                            {
                                "campaign_id": cid,
                                "name": spec.get("name") if isinstance(spec, dict) else None,
                                "created_at": doc.get("time"),
                                "last_seq": last["seq"] if last is not None else doc.get("seq"),
                                "finished": finish is not None,
                            }
                        )
                    )
                except ValidationError:
                    raise StorageError(
                        f"campaign {cid!r}: the CampaignCreated event at seq {doc.get('seq')} cannot be read",
                        "the document was edited by hand or written by a newer closedloop; restore it or upgrade",
                        campaign_id=cid if isinstance(cid, str) else None,
                    ) from None
        return sorted(out, key=lambda s: (s.created_at, s.campaign_id))

    # -- plumbing --------------------------------------------------------------------------

    def _collection(self) -> Collection[dict[str, Any]]:
        """The events collection, with its unique index created on first use."""
        if not self._index_ready:
            with self._index_lock:
                if not self._index_ready:
                    self._events.create_index(
                        [("campaign_id", ASCENDING), ("seq", ASCENDING)], unique=True, name=_INDEX_NAME
                    )
                    self._index_ready = True
        return self._events

    @contextmanager
    def _errors(self, action: str, campaign_id: str | None) -> Iterator[None]:
        """Driver errors as one-line ``StorageError``s (``StorageUnavailableError`` if transient)."""
        what = f"the event log{f' of campaign {campaign_id!r}' if campaign_id else ''}"
        with driver_errors(self._uri, action, what, campaign_id):
            yield

    @property
    def uri(self) -> str:
        """The connection URI, credentials included: pass it on, never print it (see `redact_uri`)."""
        return self._uri

    @property
    def database(self) -> str:
        """The name of the database holding the log."""
        return self._database

    def __repr__(self) -> str:
        return f"MongoEventStore({self._where!r}, database={self._database!r})"

    def close(self) -> None:
        """Close the connections. The store cannot be used afterwards."""
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
