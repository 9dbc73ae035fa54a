"""How many rejected device messages reach the log: the first few in full, the rest counted.

Anyone who can publish on the broker can send garbage, and each rejection used to become a
permanent event. Here rejections are grouped in buckets of (device, kind of reason): the
first :data:`FULL_PER_BUCKET` of a bucket are logged in full (``MessageRejected``); the rest
are counted and logged as ``MessagesRejected`` summaries when a bucket's count doubles
(6, 12, 24, ...), when a count has waited :data:`SUMMARY_INTERVAL_S`, and when the run ends.
At most :data:`MAX_EVENTS_PER_RUN` such events are written during a run; after that only the
run's end writes one summary per bucket. Buckets are bounded too: a device not in the spec
(or no device at all) counts in one bucket, and kinds are a closed list. So a run writes at
most ``MAX_EVENTS_PER_RUN + (devices + 1) * len(KINDS)`` rejection events however much is
sent, and every rejected message is counted in exactly one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["FULL_PER_BUCKET", "KINDS", "MAX_EVENTS_PER_RUN", "SUMMARY_INTERVAL_S", "RejectionBudget",
           "Summary", "kind_of"]

FULL_PER_BUCKET = 3
MAX_EVENTS_PER_RUN = 32
SUMMARY_INTERVAL_S = 60.0

KINDS: tuple[str, ...] = ("not_utf8", "not_json", "not_object", "too_large", "invalid_result", "invalid_status",
                          "bad_topic", "unknown_request", "wrong_device", "duplicate", "other")

# The hub's reasons, by how they start (devices.messages and devices.topics write them).
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("payload is not UTF-8", "not_utf8"),
    ("payload is not JSON", "not_json"),
    ("payload is a JSON", "not_object"),
    ("payload is ", "too_large"),
    ("invalid trial_result", "invalid_result"),
    ("invalid status", "invalid_status"),
    ("topic ", "bad_topic"),
    ("invalid device id", "bad_topic"),
)


def kind_of(reason: str) -> str:
    """The kind of a rejection reason written by the device hub (``other`` if unknown)."""
    for prefix, kind in _PREFIXES:
        if reason.startswith(prefix):
            return kind
    return "other"


@dataclass(frozen=True)
class Summary:
    """Rejections counted and not yet logged: what one ``MessagesRejected`` says."""

    device_id: str | None
    kind: str
    count: int
    first_time: datetime
    last_time: datetime
    example: str


@dataclass
class _Bucket:
    total: int = 0
    pending: int = 0
    first: datetime | None = None
    last: datetime | None = None
    example: str = ""
    since: float = 0.0  # monotonic time of the first pending one
    next_power: int = 2 * FULL_PER_BUCKET


@dataclass
class RejectionBudget:
    """Decides, per rejected message, whether it is logged in full or counted (one run's worth).

    Args:
        clock: Monotonic seconds, injected for tests.
    """

    clock: Callable[[], float]
    written: int = 0
    capped: bool = False
    _buckets: dict[tuple[str | None, str], _Bucket] = field(default_factory=dict)

    def admit(self, device_id: str | None, kind: str, at: datetime, reason: str) -> bool:
        """Count one rejection; return whether it is to be logged in full now."""
        kind = kind if kind in KINDS else "other"
        bucket = self._buckets.setdefault((device_id, kind), _Bucket())
        bucket.total += 1
        if bucket.total <= FULL_PER_BUCKET and self.written < MAX_EVENTS_PER_RUN:
            self.written += 1
            return True
        if bucket.pending == 0:
            bucket.first, bucket.since = at, self.clock()
        bucket.pending += 1
        bucket.last, bucket.example = at, reason[:200]
        return False

    def due(self, final: bool = False) -> list[Summary]:
        """The summaries to log now (all pending ones when ``final``: the run ends)."""
        out = []
        now = self.clock()
        for (device_id, kind), b in self._buckets.items():
            if b.pending == 0:
                continue
            if not final:
                if self.written >= MAX_EVENTS_PER_RUN:
                    self.capped = True
                    continue
                if b.total < b.next_power and now - b.since < SUMMARY_INTERVAL_S:
                    continue
                self.written += 1
            while b.next_power <= b.total:
                b.next_power *= 2
            assert b.first is not None and b.last is not None
            out.append(Summary(device_id, kind, b.pending, b.first, b.last, b.example))
            b.pending = 0
        return out
