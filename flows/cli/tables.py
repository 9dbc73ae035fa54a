"""Every table the CLI prints, formatted one way (``tabulate``'s ``simple`` format).

Cells are shown as given (numbers are formatted by the caller, never re-parsed), so what a
table says is exactly what ``--json`` or ``export`` would say, and a column of ids keeps its
text alignment.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from campaigns import CampaignState

__all__ = ["ago", "campaign_row", "campaigns_table", "table"]


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, indent: str = "") -> str:
    """The rows under their headers, columns aligned, a dashed line under the headers.

    Args:
        headers: One per column.
        rows: The cells; ``None`` shows as ``-``.
        indent: Put before every line (a table under a heading).
    """
    # imported on first use: `status` and most commands print no table
    from tabulate import tabulate

    text = tabulate([["-" if c is None else c for c in row] for row in rows], headers=list(headers),
                    tablefmt="simple", disable_numparse=True)
    return "\n".join(indent + line.rstrip() for line in text.splitlines())


def ago(when: datetime | None, now: datetime) -> str:
    """A past time as a person reads it: ``just now``, ``3 min ago``, ``5 h ago``, then the local
    date and minute (``2024-05-01 14:03``); ``-`` for none."""
    if when is None:
        return "-"
    seconds = (now - when).total_seconds()
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    return f"{when.astimezone():%Y-%m-%d %H:%M}"


def _best_cell(state: CampaignState) -> str:
    spec = state.spec
    if spec is None:
        return "-"
    if len(spec.objectives) > 1:
        front = state.pareto_front()
        return f"Pareto front: {len(front)} trial(s)" if front else "-"
    best = state.best()
    if best is None:
        return "-"
    name = spec.objectives[0].name
    return f"{name} {best.measurements[name].mean:.6g} (trial {best.trial_id})"


def campaign_row(state: CampaignState, now: datetime) -> tuple[str, str, str, str, str]:
    """`closedloop list`'s row of a campaign: id, status, trials completed/budget, best, last activity."""
    status: str = state.status
    if state.finished_reason is not None:
        status = f"finished ({state.finished_reason})"
    elif state.paused_reason is not None:
        status = f"paused ({state.paused_reason})"
    elif state.open_approvals:
        status = "waiting for approval"
    budget = "?" if state.spec is None else state.spec.budget.max_trials
    trials = f"{state.count('completed')}/{budget}"
    if state.count("failed"):
        trials += f" ({state.count('failed')} failed)"
    return (state.campaign_id or "?", status, trials, _best_cell(state), ago(state.updated_at, now))


def campaigns_table(states: Iterable[CampaignState], now: datetime) -> str:
    """`closedloop list`: one row per campaign (:func:`campaign_row`)."""
    return table(["campaign", "status", "trials", "best", "last activity"], [campaign_row(s, now) for s in states])
