"""Driver errors → closedloop errors: transient ones a caller retries, permanent ones it reports.

``StorageUnavailableError`` means "the server cannot be reached or answer right now": the
connection dropped, no server was selectable within the timeout, the server is shutting down
or stepping down, or an operation timed out. The caller waits and retries. Anything else
(permissions, a malformed command) stays a plain ``StorageError``: retrying will not help.
A full disk and a damaged database file are ``StorageError``s that say so, and what to do:
the embedded server (SQLite) reports them in words, MongoDB by code (OutOfDiskSpace).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from campaigns.errors import ClosedLoopError, StorageError, StorageUnavailableError
from storage._uri import redact_uri, scrub

__all__ = ["UNREACHABLE_HINT", "driver_errors", "is_transient", "local_data_dir", "short"]

UNREACHABLE_HINT = (
    "check that MongoDB is running and the URI (CLOSEDLOOP_MONGODB_URI) is right, "
    "or unset it to use the embedded server; closedloop retries when it returns"
)

# Server error codes that say "not now" rather than "never": shutdown, step-down, network,
# time limits (https://github.com/mongodb/mongo/blob/master/src/mongo/base/error_codes.yml).
_TRANSIENT_CODES = frozenset(
    {6, 7, 50, 89, 91, 189, 202, 262, 9001, 10107, 11600, 11602, 13435, 13436}
)


# What SQLite (through nx-27017) says about a disk that is full (SQLITE_FULL) or refuses
# writes (SQLITE_IOERR), and about a file that is not a sound database (SQLITE_NOTADB,
# SQLITE_CORRUPT); MongoDB's own OutOfDiskSpace code.
_FULL_WORDS = ("database or disk is full", "disk i/o error", "no space left on device")
_DAMAGED_WORDS = ("file is not a database", "database disk image is malformed")
_OUT_OF_DISK_SPACE = 14031

#: The data directory of each embedded server this process uses, by URI (named in messages).
local_data_dir: dict[str, Path] = {}


def _disk_problem(exc: PyMongoError, uri: str, campaign_id: str | None) -> StorageError | None:
    """A full disk or a damaged database file, as the one error that says so; else None."""
    details = getattr(exc, "details", None) or {}
    words = " ".join([str(exc), *(str(e.get("errmsg", "")) for e in details.get("writeErrors", []))]).lower()
    codes = {getattr(exc, "code", None), *(e.get("code") for e in details.get("writeErrors", []))}
    data = local_data_dir.get(uri)
    holder = str(data) if data is not None else f"the database of {redact_uri(uri)}"
    resume = f"`closedloop resume {campaign_id}`" if campaign_id else "`closedloop resume`"
    if _OUT_OF_DISK_SPACE in codes or any(w in words for w in _FULL_WORDS):
        said = next((w for w in _FULL_WORDS if w in words), "out of disk space")
        return StorageError(
            f"the disk holding {holder} is full or refuses writes ({said})",
            f"free space on it, then {resume}: every result acknowledged so far is in the log",
            campaign_id=campaign_id,
        )
    if any(w in words for w in _DAMAGED_WORDS):
        said = next(w for w in _DAMAGED_WORDS if w in words)
        files = f"a database file in {data}" if data is not None else f"the database of {redact_uri(uri)}"
        return StorageError(
            f"{files} is damaged ({said})",
            "restore it from a backup (or move it aside to start an empty log); "
            "closedloop cannot read a campaign from it",
            campaign_id=campaign_id,
        )
    return None


def is_transient(exc: PyMongoError) -> bool:
    """Whether a driver error means "the server cannot answer now" (worth a retry).

    Args:
        exc: A pymongo error.

    Returns:
        True for lost connections, server-selection and network timeouts, shutdown and
        step-down codes, and errors the server labels retryable.
    """
    if isinstance(exc, ConnectionFailure) or exc.timeout:
        return True
    if isinstance(exc, OperationFailure):
        return exc.code in _TRANSIENT_CODES or exc.has_error_label("RetryableWriteError")
    return False


def short(exc: BaseException, uri: str) -> str:
    """The first useful clause of a driver message, scrubbed of credentials.

    Args:
        exc: The driver error.
        uri: The URI whose password must not appear.

    Returns:
        One line of at most 200 characters.
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    for cut in (" (configured timeouts", ", Timeout:", ", Topology Description", ", full error:"):
        text = text.split(cut, 1)[0]
    if len(text) > 200:
        text = text[:197] + "..."
    return scrub(text, uri)


@contextmanager
def driver_errors(uri: str, action: str, what: str, campaign_id: str | None) -> Iterator[None]:
    """Turn pymongo errors raised inside the block into one-line closedloop errors.

    Args:
        uri: The server's URI (only its redacted form appears in messages).
        action: A verb phrase, e.g. ``"append to"``.
        what: The object of the action, e.g. ``"the event log of campaign 'c-1'"``.
        campaign_id: The campaign concerned, if any.

    Raises:
        StorageUnavailableError: The error is transient (see ``is_transient``).
        StorageError: Any other driver error.
    """
    where = redact_uri(uri)
    try:
        yield
    except ClosedLoopError:
        raise
    except PyMongoError as exc:
        if is_transient(exc):
            raise StorageUnavailableError(
                f"cannot reach MongoDB at {where}: {short(exc, uri)}",
                UNREACHABLE_HINT,
                campaign_id=campaign_id,
            ) from None
        disk = _disk_problem(exc, uri, campaign_id)
        if disk is not None:
            raise disk from None
        if isinstance(exc, OperationFailure):
            raise StorageError(
                f"MongoDB at {where} refused to {action} {what}: {short(exc, uri)}",
                "check the user's permissions on the database, then retry",
                campaign_id=campaign_id,
            ) from None
        raise StorageError(
            f"could not {action} {what} at {where}: {short(exc, uri)}",
            "retry; if it was an append, re-read the log first to see which events landed",
            campaign_id=campaign_id,
        ) from None
