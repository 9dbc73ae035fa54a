"""Best-so-far curves of campaigns, side by side: a table, a PNG and a self-contained HTML page.

The curve follows a single-objective campaign's objective, and a multi-objective campaign's
hypervolume (``optimizer.hypervolume``; the campaigns compared share one reference point),
over its completed trials that satisfy its outcome constraints, in the order their results
were logged (beside it, the best by the model: ``optimizer.model_best``); time is counted
from the campaign's first dispatched trial (so a replay and its source compare fairly however long after each other they ran). Identical curves stay visible:
each campaign has its own dash style and marker.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

from campaigns import CampaignNotFoundError, CampaignState, TrialRecord, UsageError
from campaigns.state import in_result_order, running_best
from flows.cli.report import engine_counts, engines_text, model_of
from flows.cli.tables import table

__all__ = ["Curve", "best_so_far", "best_so_far_curves", "compare_table", "write_compare"]


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
        trial_ids: The id of the trial of each result (the best's is "best at trial").
        by_model: The best by the model: ``"0.41 ± 0.05 (trial 9)"``, with several objectives
            the size of its Pareto set, ``"-"`` without one.
    """

    campaign_id: str
    metric: str
    minimize: bool
    trials: list[int]
    seconds: list[float]
    best: list[float]
    engines: dict[str, int] = field(default_factory=dict)
    best_engine: str | None = None
    trial_ids: list[str] = field(default_factory=list)
    by_model: str = "-"

    @property
    def final(self) -> float | None:
        """The best value reached (``None`` with no completed trial)."""
        return self.best[-1] if self.best else None


def best_so_far(state: CampaignState, reference: list[float] | None = None) -> Curve:
    """The best-so-far curve of a folded campaign log: its objective's, or with several
    objectives its hypervolume's (above ``reference``, or one inferred from this campaign).

    Raises:
        ClosedLoopError: the campaign has no spec.
    """
    if state.spec is None or state.campaign_id is None:
        raise CampaignNotFoundError("no such campaign", "see `closedloop list`")
    names = [o.name for o in state.spec.objectives]
    done = in_result_order(t for t in state.trials.values()
                           if t.status == "completed" and all(n in t.measurements for n in names) and state.feasible(t))
    dispatched = [t.dispatched_at for t in state.trials.values() if t.dispatched_at is not None]
    start = min(dispatched) if dispatched else state.created_at
    seconds = [0.0 if start is None or t.finished_at is None else (t.finished_at - start).total_seconds() for t in done]
    if len(names) > 1:
        values = _hypervolumes(state, done, reference)
        metric, minimize = f"hypervolume({', '.join(names)})", False
    else:
        metric, minimize = names[0], state.spec.objectives[0].minimize
        values = [t.measurements[metric].mean for t in done]
    best = running_best(values, minimize)
    # The trial that set the final best: the first to reach it (the best changes on improvement only).
    best_engine = done[best.index(best[-1])].engine if best else None
    return Curve(state.campaign_id, metric, minimize, list(range(1, len(done) + 1)), seconds, best,
                 engines=engine_counts(state), best_engine=best_engine, trial_ids=[t.trial_id for t in done],
                 by_model=_by_model(state))


def _by_model(state: CampaignState) -> str:
    """The compare table's cell of the model-based best."""
    model = model_of(state)
    if model is None or state.spec is None:
        return "-"
    if len(state.spec.objectives) > 1:
        return f"front of {len(model.front)}" if model.front else "-"
    if model.pick is None:
        return "-"
    e = model.pick.metrics[state.spec.objectives[0].name]
    return f"{e.mean:.4g} ± {e.sd:.2g} (trial {model.pick.trial_id})"


def _vectors(state: CampaignState, trials: list[TrialRecord]) -> list[list[float]]:
    assert state.spec is not None
    return [[t.measurements[o.name].mean for o in state.spec.objectives] for t in trials]


def _hypervolumes(state: CampaignState, done: list[TrialRecord], reference: list[float] | None) -> list[float]:
    from optimizer.hypervolume import hypervolume_trace, reference_point

    assert state.spec is not None
    minimize = [o.minimize for o in state.spec.objectives]
    if reference is None:
        reference = reference_point(_vectors(state, done), minimize, [o.threshold for o in state.spec.objectives])
    return hypervolume_trace(_vectors(state, done), minimize, reference)


def best_so_far_curves(states: list[CampaignState]) -> list[Curve]:
    """Each campaign's curve; multi-objective campaigns of the same objectives share one reference
    point for their hypervolumes (from every campaign's feasible completed trials)."""
    from collections import defaultdict

    groups: dict[tuple[tuple[str, bool], ...], list[CampaignState]] = defaultdict(list)
    for s in states:
        if s.spec is not None and len(s.spec.objectives) > 1:
            groups[tuple((o.name, o.minimize) for o in s.spec.objectives)].append(s)
    references: dict[tuple[tuple[str, bool], ...], list[float]] = {}
    for key, members in groups.items():
        from optimizer.hypervolume import reference_point

        spec = members[0].spec
        assert spec is not None
        points = [v for s in members for v in _vectors(s, [t for t in s.trials.values() if t.status == "completed"
                                                            and all(n in t.measurements for n, _ in key)
                                                            and s.feasible(t)])]
        references[key] = reference_point(points, [m for _, m in key], [o.threshold for o in spec.objectives])
    return [best_so_far(s, references.get(tuple((o.name, o.minimize) for o in s.spec.objectives)) if s.spec else None)
            for s in states]


_HEADERS = ("campaign", "metric", "trials", "best", "best at trial", "best after s", "total s", "by the model",
            "best by", "engines")


def _rows(curves: list[Curve]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for c in curves:
        engines = engines_text(c.engines)
        if not c.best:
            rows.append((c.campaign_id, c.metric, "0", "-", "-", "-", "-", c.by_model, "-", engines))
            continue
        at = c.best.index(c.best[-1])
        rows.append((c.campaign_id, f"{c.metric} ({'min' if c.minimize else 'max'})", str(c.trials[-1]),
                     f"{c.best[-1]:.6g}", c.trial_ids[at] if c.trial_ids else str(c.trials[at]), f"{c.seconds[at]:.1f}", f"{c.seconds[-1]:.1f}",
                     c.by_model, c.best_engine or "-", engines))
    return rows


def compare_table(curves: list[Curve]) -> str:
    """A plain-text table: campaign, completed trials, best value, trials and time to reach it."""
    return table(_HEADERS, _rows(curves))


def _figure(curves: list[Curve]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (by_trial, by_time) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "x"]
    for i, c in enumerate(curves):
        # Identical campaigns draw identical curves: the dash and marker tell them apart.
        look = {"linestyle": styles[i % len(styles)], "marker": markers[i % len(markers)], "markersize": 4,
                "alpha": 0.85, "label": c.campaign_id}
        by_trial.step(c.trials, c.best, where="post", **look)
        by_time.step(c.seconds, c.best, where="post", **look)
    by_trial.xaxis.set_major_locator(MaxNLocator(integer=True))
    metrics = sorted({c.metric for c in curves})
    for ax, xlabel in ((by_trial, "completed trials"), (by_time, "seconds since the first dispatch")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"best {', '.join(metrics)} so far" if len(", ".join(metrics)) < 40 else "best so far")
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
    cells = lambda row, tag: "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row)
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
