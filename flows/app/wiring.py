"""What a campaign run is wired with, handed explicitly from the CLI to the flow in this process.

`closedloop run` resolves its settings once (the broker and database it started or joined)
and runs the campaign flow inside :func:`wired`; the flow takes them with
:func:`current_wiring`. Nothing goes through ``os.environ`` and no credential becomes a flow
parameter (Prefect stores those). A flow run started elsewhere (a Prefect worker) has no
wiring handed to it: it reads its settings from its own environment (:class:`Settings`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from pydantic import SecretStr

from flows.app.lease import Leases
from flows.app.settings import Settings

__all__ = ["Wiring", "current_wiring", "wired"]


@dataclass(frozen=True)
class Wiring:
    """A run's settings (broker and database resolved) and the leases its process holds.

    Attributes:
        settings: What the run connects to.
        leases: The leases held for the run, re-used by the flow (one writer per campaign).
    """

    settings: Settings
    leases: Leases = field(default_factory=Leases)

    def connected_to(self, *, mqtt_url: str, mongodb_uri: str) -> Wiring:
        """The same wiring with the broker and database a run started or joined."""
        settings = self.settings.model_copy(update={"mqtt_url": SecretStr(mqtt_url),
                                                    "mongodb_uri": SecretStr(mongodb_uri)})
        return Wiring(settings, self.leases)


# The handle itself is per context (a thread, a task), never shared process state.
_CURRENT: ContextVar[Wiring | None] = ContextVar("closedloop_wiring", default=None)


@contextmanager
def wired(wiring: Wiring) -> Iterator[Wiring]:
    """Hand ``wiring`` to what runs inside (the campaign flow, in this thread)."""
    token = _CURRENT.set(wiring)
    try:
        yield wiring
    finally:
        _CURRENT.reset(token)


def current_wiring() -> Wiring:
    """The wiring handed over by :func:`wired`, or one from this process's environment."""
    wiring = _CURRENT.get()
    return wiring if wiring is not None else Wiring(Settings())
