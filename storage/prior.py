"""Reading prior data from a MongoDB collection: the documents a user's filter selects, and the
values at the field paths the campaign file maps to parameters and metrics.

The filter comes from a campaign file as JSON text (``PriorCollection.filter_text``) and is read
as MongoDB Extended JSON (``{"$date": ...}``, ``{"$oid": ...}``). It is sent to the server as
written: the server judges its operators, and a filter it refuses is one line saying why
(``PriorQueryError``). What the documents hold is judged above (``campaigns.prior``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bson import json_util
from bson.errors import BSONError
from pymongo import MongoClient
from pymongo.errors import ConfigurationError, OperationFailure, PyMongoError

from campaigns.errors import SpecError, StorageError
from storage._errors import driver_errors, short
from storage._uri import redact_uri

if TYPE_CHECKING:
    from storage.mongo import MongoEventStore

__all__ = ["MISSING", "PriorDocument", "read_documents"]

#: The value of a field path a document does not have.
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()


@dataclass(frozen=True)
class PriorDocument:
    """One selected document: its ``_id`` as text, and the value at each field path asked for
    (``MISSING`` where it has none)."""

    id: str
    values: dict[str, Any]


def _at(doc: Mapping[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return MISSING
        value = value[part]
    return value


def read_documents(
    source: MongoEventStore | str,
    database: str,
    collection: str,
    filter_text: str,
    paths: list[str],
    *,
    limit: int,
    where: str,
    timeout_s: float = 5.0,
) -> list[PriorDocument]:
    """The documents ``filter_text`` selects in ``database.collection``, in ``_id`` order.

    Args:
        source: The campaign store (its own MongoDB), or a MongoDB URI.
        database: The database name.
        collection: The collection name.
        filter_text: The filter, as JSON text (MongoDB Extended JSON).
        paths: The dotted field paths to read from each document.
        limit: The most documents taken; one more raises (the filter is too wide).
        where: Where the filter stands in the campaign file (``prior_data[1]``), for messages.
        timeout_s: How long to look for a server (a URI only).

    Raises:
        SpecError: the filter is not JSON, the server refuses it, or it selects more than
            ``limit`` documents.
        StorageError: the database cannot be reached or refused the read.
    """
    named = f"{where}: {database}.{collection}"
    try:
        query = json_util.loads(filter_text)
    except (ValueError, TypeError, BSONError) as exc:
        raise SpecError(f"{named}: the filter is not MongoDB Extended JSON: {exc}",
                        'write a query document, e.g. {"status": "done"}') from None
    if isinstance(source, str):
        uri, own = source, True
        ms = max(1, int(timeout_s * 1000))
        try:
            client: MongoClient[dict[str, Any]] = MongoClient(source, serverSelectionTimeoutMS=ms,
                                                              connectTimeoutMS=ms, appname="closedloop")
        except (ConfigurationError, ValueError) as exc:
            raise StorageError(f"invalid MongoDB URI {redact_uri(source)}: {short(exc, source)}",
                               "fix CLOSEDLOOP_PRIOR_MONGODB_URI") from None
    else:
        uri, own, client = source._uri, False, source._client
    # The top-level fields only: nx-27017 returns a projected dotted path flattened
    # ({"a.b": 1} -> {"a.b": ...}), MongoDB nested; the whole sub-document reads the same in both.
    projection = {p.split(".")[0]: 1 for p in paths}
    try:
        with driver_errors(uri, "read", f"{database}.{collection}", None):
            try:
                cursor = client[database][collection].find(query, projection).sort("_id", 1).limit(limit + 1)
                docs = list(cursor)
            except OperationFailure as exc:
                if exc.code in (2, 9) or "operator" in str(exc).lower():  # BadValue, FailedToParse
                    raise SpecError(f"{named}: the server refused the filter: {short(exc, uri)}",
                                    "write a MongoDB query document (field: value, $eq, $gt, $in, ...)") from None
                raise
    except PyMongoError as exc:  # pragma: no cover - driver_errors maps every driver error
        raise StorageError(f"{named}: {short(exc, uri)}") from None
    finally:
        if own:
            client.close()
    if len(docs) > limit:
        raise SpecError(f"{named}: the filter selects more than {limit} documents",
                        "narrow the filter; prior data is read once, into the campaign's log")
    return [PriorDocument(str(d.get("_id")), {p: _at(d, p) for p in paths}) for d in docs]
