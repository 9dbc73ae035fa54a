"""The command inbox: how a person's decision reaches a campaign that another process runs.

The running orchestrator is the campaign's only writer (it holds the lease), so `closedloop
approve`, `change`, `pause` and `stop` do not append to the log themselves while it runs: they
submit a command here, and the orchestrator validates it, appends the events it means (each
carrying the ``command_id``, so a command is applied once even across a crash) and marks the
command done, or refused with the reason. The log stays the only truth; the inbox only carries
requests.

A command moves ``pending`` → ``claimed`` (the orchestrator is applying it) → ``applied`` or
``refused``; its author may withdraw it (``withdrawn``) only while it is still ``pending``. Both
moves out of ``pending`` are conditional updates, so a withdrawn command is never applied and a
claimed one is never reported withdrawn.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, MongoClient, ReturnDocument, WriteConcern

from campaigns.command import Command, CommandKind
from storage._errors import driver_errors
from storage._query import _eq

__all__ = ["Command", "MongoCommandInbox"]


class MongoCommandInbox:
    """Commands for campaigns, in MongoDB beside the event log.

    Args:
        uri: MongoDB URI.
        database: Database holding the log.
        timeout_s: How long to wait for the server.
        now: UTC clock stamping ``submitted_at``.
    """

    def __init__(self, uri: str, *, database: str = "closedloop", timeout_s: float = 5.0,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._uri = uri
        self._now = now
        ms = max(1, int(timeout_s * 1000))
        self._client: MongoClient[dict[str, Any]] = MongoClient(
            uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, appname="closedloop"
        )
        db = self._client.get_database(database)
        self._commands = db.get_collection("commands", write_concern=WriteConcern(w="majority", j=True))
        self._counters = db.get_collection("command_counters", write_concern=WriteConcern(w="majority", j=True))
        self._indexed = False

    def _index(self) -> None:
        if not self._indexed:
            self._commands.create_index([("campaign_id", ASCENDING), ("order", ASCENDING), ("submitted_at", ASCENDING)])
            self._indexed = True

    def submit(self, campaign_id: str, kind: CommandKind, payload: dict[str, Any], *, by: str, reason: str,
               command_id: str | None = None) -> Command:
        """Queue a command; returns it (with its id: ``command_id``, or a new one)."""
        now = self._now()
        command = Command(command_id=command_id or uuid.uuid4().hex, campaign_id=campaign_id, kind=kind, payload=payload,
                          by=by, reason=reason, submitted_at=now.replace(microsecond=now.microsecond // 1000 * 1000))
        with driver_errors(self._uri, "submit a command to", f"campaign {campaign_id!r}", campaign_id):
            self._index()
            # The order of submission, drawn atomically per campaign: ``submitted_at`` has millisecond
            # precision, and two commands of one millisecond came back in either order.
            counter = self._counters.find_one_and_update({"_id": str(campaign_id)}, {"$inc": {"n": 1}}, upsert=True,
                                                         return_document=ReturnDocument.AFTER)
            self._commands.insert_one({"_id": command.command_id, **command.model_dump(mode="json"),
                                       "order": int(counter["n"])})
        return command

    def pending(self, campaign_id: str) -> list[Command]:
        """Commands not yet applied, refused nor withdrawn, in the order they were submitted
        (claimed ones too: the orchestrator that claimed one may have stopped before applying it).
        Commands stored by earlier versions, without ``order``, come first, by ``submitted_at``."""
        with driver_errors(self._uri, "read the commands of", f"campaign {campaign_id!r}", campaign_id):
            docs = self._commands.find({"campaign_id": _eq(campaign_id),
                                        "state": {"$in": ["pending", "claimed"]}}).sort(
                [("order", ASCENDING), ("submitted_at", ASCENDING)])
            return [Command.model_validate(d) for d in docs]

    def get(self, command_id: str) -> Command | None:
        """A command by id."""
        with driver_errors(self._uri, "read", f"command {command_id!r}", None):
            doc = self._commands.find_one({"_id": _eq(command_id)})
        return None if doc is None else Command.model_validate(doc)

    def claim(self, command_id: str) -> bool:
        """Take a command to apply it; False if its author withdrew it first."""
        with driver_errors(self._uri, "update", f"command {command_id!r}", None):
            result = self._commands.update_one({"_id": _eq(command_id), "state": {"$in": ["pending", "claimed"]}},
                                               {"$set": {"state": "claimed"}})
        return result.matched_count == 1

    def withdraw(self, command_id: str) -> bool:
        """Withdraw a command while it is still pending; False once claimed, done, or never submitted."""
        with driver_errors(self._uri, "update", f"command {command_id!r}", None):
            result = self._commands.update_one({"_id": _eq(command_id), "state": _eq("pending")},
                                               {"$set": {"state": "withdrawn"}})
        return result.matched_count == 1

    def applied(self, command_id: str, seq: int | None) -> None:
        """Mark a command applied (its events end at ``seq``; None if it was applied before)."""
        with driver_errors(self._uri, "update", f"command {command_id!r}", None):
            self._commands.update_one({"_id": _eq(command_id)}, {"$set": {"state": "applied", "seq": seq}})

    def refused(self, command_id: str, error: str) -> None:
        """Mark a command refused, with the one-line reason the submitter will see."""
        with driver_errors(self._uri, "update", f"command {command_id!r}", None):
            self._commands.update_one({"_id": _eq(command_id)}, {"$set": {"state": "refused", "error": error}})

    def close(self) -> None:
        """Close the connections."""
        self._client.close()

    def __enter__(self) -> MongoCommandInbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
