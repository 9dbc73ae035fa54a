"""Best-so-far curves of campaigns, side by side: a table, a PNG and a self-contained HTML page.

The curve follows a campaign's first objective (its only one when single-objective) over its
completed trials that satisfy its outcome constraints, in the order their results were logged; time is counted from the
campaign's first dispatched trial (so a replay and its source compare fairly however long
after each other they ran).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

from campaigns import CampaignNotFoundError, CampaignState, UsageError
from flows.cli.report import engine_counts, engines_text
from flows.cli.tables import table

__all__ = ["Curve", "best_so_far", "compare_table", "write_compare"]


@dataclass(frozen=True)
class Curve:
    """A campaign's best-so-far curve.

    Attributes:
        campaign_id: The campaign.
        metric: The objective followed.
        minimize: Its direction.
        trials: 1, 2, ... (completed trials so far).
        seconds: Time of each result since the campaign's first trial was dispatched.
        best: Best value so far after each result.
        engines: How many trials each engine chose (``TrialsSuggested``'s ``engine``).
        best_engine: The engine that chose the best trial.
    """

    campaign_id: str
    metric: str
    minimize: bool
    trials: list[int]
    seconds: list[float]
    best: list[float]
    engines: dict[str, int] = field(default_factory=dict)
    best_engine: str | None = None

    @property
    def final(self) -> float | None:
        """The best value reached (``None`` with no completed trial)."""
        return self.best[-1] if self.best else None


def best_so_far(state: CampaignState) -> Curve:
    """The best-so-far curve of a folded campaign log.

    Raises:
        ClosedLoopError: the campaign has no spec.
    """
    if state.spec is None or state.campaign_id is None:
        raise CampaignNotFoundError("no such campaign", "see `closedloop list`")
    objective = state.spec.objectives[0]
    done = [t for t in state.trials.values()
            if t.status == "completed" and objective.name in t.measurements and state.feasible(t)]
    done.sort(key=lambda t: (t.finished_at is None, t.finished_at, t.index))
    dispatched = [t.dispatched_at for t in state.trials.values() if t.dispatched_at is not None]
    start = min(dispatched) if dispatched else state.created_at
    trials, seconds, best = [], [], []
    current: float | None = None
    best_engine: str | None = None
    for i, t in enumerate(done, start=1):
        v = t.measurements[objective.name].mean
        if current is None or (v < current if objective.minimize else v > current):
            current, best_engine = v, t.engine
        trials.append(i)
        seconds.append(0.0 if start is None or t.finished_at is None else (t.finished_at - start).total_seconds())
        best.append(current)
    return Curve(state.campaign_id, objective.name, objective.minimize, trials, seconds, best,
                 engines=engine_counts(state), best_engine=best_engine)


_HEADERS = ("campaign", "metric", "trials", "best", "best at trial", "best after s", "total s", "best by", "engines")


def _rows(curves: list[Curve]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for c in curves:
        engines = engines_text(c.engines)
        if not c.best:
            rows.append((c.campaign_id, c.metric, "0", "-", "-", "-", "-", "-", engines))
            continue
        at = c.best.index(c.best[-1])
        rows.append((c.campaign_id, f"{c.metric} ({'min' if c.minimize else 'max'})", str(c.trials[-1]),
                     f"{c.best[-1]:.6g}", str(c.trials[at]), f"{c.seconds[at]:.1f}", f"{c.seconds[-1]:.1f}",
                     c.best_engine or "-", engines))
    return rows


def compare_table(curves: list[Curve]) -> str:
    """A plain-text table: campaign, completed trials, best value, trials and time to reach it."""
    return table(_HEADERS, _rows(curves))


def _figure(curves: list[Curve]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_trial, by_time) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for c in curves:
        by_trial.step(c.trials, c.best, where="post", label=c.campaign_id)
        by_time.step(c.seconds, c.best, where="post", label=c.campaign_id)
    metrics = sorted({c.metric for c in curves})
    for ax, xlabel in ((by_trial, "completed trials"), (by_time, "seconds since the first dispatch")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"best {', '.join(metrics)} so far")
        ax.grid(alpha=0.3)
    by_trial.set_title("best so far vs completed trials")
    by_time.set_title("best so far vs wall time")
    by_trial.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_compare(curves: list[Curve], out: Path) -> tuple[Path, Path]:
    """Write ``out.png`` and ``out.html`` (the plot inline, and the table); returns both paths."""
    if not curves:
        raise UsageError("nothing to compare", "name one campaign or more")
    png = _figure(curves)
    out.parent.mkdir(parents=True, exist_ok=True)
    png_path, html_path = out.with_suffix(".png"), out.with_suffix(".html")
    png_path.write_bytes(png)
    head, body = _HEADERS, _rows(curves)
    cells = lambda row, tag: "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row)  # noqa: E731
    rows = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in body)
    page = (
        "<!doctype html><meta charset='utf-8'><title>closedloop compare</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style>"
        f"<h1>closedloop compare: {html.escape(', '.join(c.campaign_id for c in curves))}</h1>"
        f"<img alt='best so far' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        f"<table><tr>{cells(head, 'th')}</tr>{rows}</table>"
    )
    html_path.write_text(page, encoding="utf-8")
    return png_path, html_path
