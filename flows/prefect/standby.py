"""A deployed campaign's standby flow run: Prefect's scheduler starts it if the running one dies.

Prefect's automation restarts a crashed flow run, but a busy Prefect server on SQLite can lose the
event its trigger needs. So a flow run that runs a campaign keeps a *scheduled* flow run of its
deployment ``standby_s`` ahead (``CLOSEDLOOP_STANDBY_S``, default 120 s), pushes it ahead every
sixth of that while it lives, and deletes it when it stops running the campaign (finished,
suspended for a person, failed). Killed, it pushes no more, and the scheduler starts the standby:
it resumes the campaign from the log as any restart does, or ends at once, writing nothing, if
another flow run took over meanwhile (`flows.prefect.flow`). A scheduled flow run is a row that a
worker's poll reads, not an event a trigger must catch.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any, Self
from uuid import UUID

__all__ = ["STANDBY_OF", "STANDBY_TAG", "Standby", "standby_of"]

log = logging.getLogger("closedloop.prefect")

#: The tag of a standby flow run.
STANDBY_TAG = "closedloop:standby"
#: The tag that names the flow run a standby stands in for.
STANDBY_OF = "standby-of:"


def standby_of(tags: list[str] | None) -> str | None:
    """The flow run a standby flow run stands in for (None: not a standby)."""
    return next((t.removeprefix(STANDBY_OF) for t in tags or [] if t.startswith(STANDBY_OF)), None)


class Standby:
    """The standby flow run of a deployed campaign's running flow run (a context manager)."""

    def __init__(self, deployment_id: UUID, campaign_id: str, flow_run_id: str, *, ahead_s: float) -> None:
        self._deployment_id, self._campaign_id, self._ahead_s = deployment_id, campaign_id, ahead_s
        self._of = flow_run_id
        self._id: UUID | None = None
        self._stop = threading.Event()
        # With the flow run's context (its Prefect settings: the API it reports to).
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._push,),
                                        name="closedloop-standby", daemon=True)
        self._failing = False

    def __enter__(self) -> Self:
        from prefect.deployments import run_deployment

        try:
            run = run_deployment(self._deployment_id, scheduled_time=self._due(), timeout=0, as_subflow=False,
                                 flow_run_name=self._campaign_id,
                                 tags=["closedloop", f"campaign:{self._campaign_id}", STANDBY_TAG,
                                       f"{STANDBY_OF}{self._of}"])
            self._id = run.id
        except Exception as exc:  # the crash automation remains
            log.warning("campaign %s: could not schedule its standby flow run: %s", self._campaign_id, exc)
            return self
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._id is None:
            return
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._failing = False  # said whatever came before: a standby left scheduled is said too
        self._call(lambda client: client.delete_flow_run(self._id), "delete")

    def _due(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self._ahead_s)

    def _push(self) -> None:
        from prefect.states import Scheduled

        def push(client: Any) -> None:
            # A standby a worker has started already (this run's pushes were late) is left alone:
            # it waits for this run's lease, or takes over if this run dies meanwhile.
            if (state := client.read_flow_run(self._id).state) is None or not state.is_scheduled():
                self._stop.set()
                return
            client.set_flow_run_state(self._id, Scheduled(scheduled_time=self._due()), force=True)

        while not self._stop.wait(self._ahead_s / 6):
            self._call(push, "push ahead")

    def _call(self, call: Any, what: str) -> None:
        from prefect.client.orchestration import get_client

        try:
            with get_client(sync_client=True) as client:
                call(client)
        except Exception as exc:  # said once; tried again at the next push
            if not self._failing:
                log.warning("campaign %s: could not %s its standby flow run %s: %s",
                            self._campaign_id, what, self._id, exc)
            self._failing = True
        else:
            self._failing = False
