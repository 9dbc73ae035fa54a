"""When Ax's SQL store is written: at the end of every run of a campaign, and on request.

The store (``optimizer.ax_store``) is derived from the log: a `run`/`resume` process and a
deployed flow run rewrite it from the log when they end (finished, stopped, paused; not when
interrupted: Ctrl-C and SIGTERM stop at once), and `closedloop ax-store` does on request.
Writing loads Ax (~3 s of CPU). A store that cannot be written is one warning line at the end
of a run: the log, the campaign and the run's exit code are untouched.
``CLOSEDLOOP_AX_DB_URL=off`` keeps none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from campaigns import (
    CampaignNotFoundError,
    ClosedLoopError,
    EventBase,
    UsageError,
    fold,
)
from flows.app.settings import Settings

__all__ = ["StoreWritten", "keep_ax_store", "write_ax_store"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreWritten:
    """Where a campaign's Ax experiment was written, and how to open it.

    Attributes:
        url: The database, its password hidden.
        experiment: The experiment's name in it (the campaign id).
        trials: How many trials it holds.
    """

    url: str
    experiment: str
    trials: int

    def line(self) -> str:
        """One line for a person: where, and the name to give ``Client.load_from_database``."""
        return (f"campaign {self.experiment}: Ax experiment {self.experiment!r} ({self.trials} trial(s)) written to "
                f"{self.url} — open it with Client.load_from_database({self.experiment!r}, "
                f"storage_config=StorageConfig(url={self.url!r}))")


def write_ax_store(settings: Settings, campaign_id: str, events: Sequence[EventBase],
                   url: str | None = None) -> StoreWritten:
    """(Re)write the campaign's Ax experiment from its log, named by the campaign id.

    Args:
        settings: Where the store is (``Settings.ax_store_url``), unless ``url`` is given.
        campaign_id: The campaign.
        events: Its log.
        url: A SQLAlchemy URL instead of the settings' (already checked).

    Raises:
        CampaignNotFoundError: the log has no campaign.
        ClosedLoopError: Ax refuses the log's experiment, or the store cannot be written.
    """
    from optimizer.ax_store import shown_url, write_experiment

    state = fold(events)
    if state.spec is None:
        raise CampaignNotFoundError(f"no campaign {campaign_id!r}", "see `closedloop list`", campaign_id=campaign_id)
    target = url or settings.ax_store_url()
    if target is None:
        raise UsageError("Ax's SQL store is off (CLOSEDLOOP_AX_DB_URL=off)",
                         "give --url, or unset CLOSEDLOOP_AX_DB_URL for the store under home")
    if url is None and settings.ax_db_url is None:  # the default: a file under home
        settings.home.mkdir(parents=True, exist_ok=True)
    write_experiment(target, campaign_id, state.spec, state.trials.values(), created_at=state.created_at)
    return StoreWritten(shown_url(target), campaign_id, len(state.trials))


def keep_ax_store(settings: Settings, read: Callable[[str], Sequence[EventBase]], campaign_id: str,
                  warn: Callable[[str], None]) -> None:
    """Rewrite the store at the end of a run (unless it is off); a failure is one line through
    ``warn``, never raised."""
    if settings.ax_store_url() is None:
        return
    try:
        written = write_ax_store(settings, campaign_id, read(campaign_id))
    except ClosedLoopError as exc:
        warn(f"warning: campaign {campaign_id}: Ax's SQL store not updated: {exc} "
             f"(`closedloop ax-store {campaign_id}` writes it from the log)")
    else:
        _log.info(written.line())
