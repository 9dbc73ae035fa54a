"""An instrument's record on disk: results it answered, and runs it started.

``<record>`` holds one :class:`~devices.TrialResult` per finished run (JSON lines), written
and fsynced before the result is published; ``<record>.started`` holds one
``{"request_id", "trial_id", "request"}`` line per run, written and fsynced before the run
begins, ``request`` being the request's fingerprint (:func:`request_fingerprint`; absent in
journals of older versions). A run killed midway is in the second and not the first, and runs
again when its request returns.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from devices import RunTrial

__all__ = [
    "append_line",
    "executions_path",
    "read_completions",
    "read_executions",
    "read_fingerprints",
    "request_fingerprint",
]


def request_fingerprint(request: RunTrial) -> str:
    """What a request asks for, as a hash: its campaign id, trial id and parameters.

    Two requests with the same ``request_id`` are the same request (a repeat, answered from
    the store) only when their fingerprints are equal too.
    """
    content = json.dumps([request.campaign_id, request.trial_id, request.parameters], sort_keys=True)
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def append_line(path: Path, line: bytes) -> None:
    """Append one line to ``path`` (creating its folder) and fsync it, so it survives a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as handle:
        handle.write(line + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def executions_path(record_path: Path) -> Path:
    """Return the journal of started runs kept next to a record file (``<record>.started``)."""
    return record_path.with_name(record_path.name + ".started")


def _count(path: Path, field: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    if not path.exists():
        return counts
    for line in path.read_bytes().splitlines():
        try:
            key = json.loads(line)[field]
        except (ValueError, KeyError, TypeError):  # a line cut short by a crash
            continue
        if isinstance(key, str):
            counts[key] = counts.get(key, 0) + 1
    return counts


def read_executions(record_path: Path) -> dict[str, int]:
    """Count the runs *started* per ``request_id``, over every process that used the record.

    A run killed before it finished counts here but not in :func:`read_completions`.

    Args:
        record_path: The instrument's record file (the journal sits next to it).

    Returns:
        ``request_id`` → number of runs started; empty when there is no journal.
    """
    return _count(executions_path(record_path), "request_id")


def read_completions(record_path: Path) -> dict[str, int]:
    """Count the runs *finished* (result recorded, completed or failed) per ``request_id``.

    Args:
        record_path: The instrument's record file.

    Returns:
        ``request_id`` → number of recorded results (1 for every finished request).
    """
    return _count(record_path, "request_id")


def read_fingerprints(record_path: Path) -> dict[str, str]:
    """The fingerprint of the first run of each ``request_id`` in the journal (older lines have none).

    Args:
        record_path: The instrument's record file (the journal sits next to it).

    Returns:
        ``request_id`` → :func:`request_fingerprint` of the request first run under it.
    """
    found: dict[str, str] = {}
    path = executions_path(record_path)
    if not path.exists():
        return found
    for line in path.read_bytes().splitlines():
        try:
            entry = json.loads(line)
            key, fingerprint = entry["request_id"], entry["request"]
        except (ValueError, KeyError, TypeError):  # a line cut short, or written by an older version
            continue
        if isinstance(key, str) and isinstance(fingerprint, str):
            found.setdefault(key, fingerprint)
    return found
