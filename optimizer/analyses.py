"""Ax's analyses of a campaign's experiment, as plain data for a report page.

The experiment is the one the log holds (``optimizer.replay.experiment_client``); the model
behind the modelled analyses is the campaign's own BoTorch node (``botorch_strategy``), fitted
once on every completed trial and shared by every analysis. Which analyses: those Ax's
``OverviewAnalysis`` picks for a campaign like ours (results, insights, diagnostics, health
checks), each computed on its own so that the page can say, for each one it lacks, why: not
applicable here (one objective, no outcome constraint), too few trials for a model, or the
error Ax raised, in one line. A card is returned as data — a plotly figure as a JSON-able
dict, a table as rows of text, a note — so that callers outside ``optimizer`` never touch Ax.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ax.analysis.analysis import Analysis
from ax.analysis.best_trials import BestTrials
from ax.analysis.healthcheck.constraints_feasibility import (
    ConstraintsFeasibilityAnalysis,
)
from ax.analysis.healthcheck.healthcheck_analysis import (
    HealthcheckAnalysisCard,
    HealthcheckStatus,
)
from ax.analysis.insights import OutcomeConstraintsAnalysis
from ax.analysis.markdown.markdown_analysis import MarkdownAnalysisCard
from ax.analysis.plotly.arm_effects import ArmEffectsPlot
from ax.analysis.plotly.cross_validation import CrossValidationPlot
from ax.analysis.plotly.parallel_coordinates import ParallelCoordinatesPlot
from ax.analysis.plotly.plotly_analysis import PlotlyAnalysisCard
from ax.analysis.plotly.scatter import ScatterPlot
from ax.analysis.plotly.top_surfaces import TopSurfacesAnalysis
from ax.analysis.plotly.utility_progression import UtilityProgressionAnalysis
from ax.analysis.summary import Summary
from ax.core.analysis_card import (
    AnalysisCard,
    AnalysisCardBase,
    AnalysisCardGroup,
    ErrorAnalysisCard,
    NotApplicableStateAnalysisCard,
)

from campaigns.spec import CampaignSpec
from campaigns.state import TrialRecord
from optimizer.ax_setup import quiet_ax
from optimizer.generation import botorch_strategy
from optimizer.replay import experiment_client

__all__ = ["Absent", "Analyses", "Card", "campaign_analyses", "min_model_trials"]

#: Ax's loggers that print a traceback for an analysis that failed; the page says it in one line.
_TRACEBACK_LOGGERS = ("ax.analysis.analysis", "ax.analysis.utils")


@dataclass(frozen=True)
class Card:
    """One of Ax's analysis cards, as data.

    Attributes:
        analysis: The analysis that made it (``"Cross-validation"``), as the page lists them.
        title: Ax's title of the card.
        subtitle: Ax's explanation of the card.
        figure: A plotly figure (``{"data": [...], "layout": {...}}``) or ``None``.
        columns: A table's header (empty when the card is no table).
        rows: A table's rows, as text.
        note: A health check's verdict (``"pass"``, ``"warning"``, ...) or Markdown text.
    """

    analysis: str
    title: str
    subtitle: str
    figure: dict[str, Any] | None = None
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""


@dataclass(frozen=True)
class Absent:
    """An analysis the page does not show, and why (one line)."""

    analysis: str
    reason: str


@dataclass(frozen=True)
class Analyses:
    """What ``campaign_analyses`` computed: the cards, the analyses left out, the time it took."""

    cards: list[Card]
    absent: list[Absent]
    seconds: float


def min_model_trials(spec: CampaignSpec) -> int:
    """How many completed trials the modelled analyses wait for: one more than the parameters,
    and at least 3 (a GP on fewer says nothing worth a plot, and cross-validation needs them)."""
    return max(3, len(spec.parameters) + 1)


def _one_line(text: str, limit: int = 240) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _table(df: Any) -> tuple[list[str], list[list[str]]]:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.6g}" if math.isfinite(v) else ("" if math.isnan(v) else str(v))  # NaN: an empty cell
        return str(v)

    return [str(c) for c in df.columns], [[cell(v) for v in row] for row in df.itertuples(index=False)]


def _leaves(analysis: str, card: AnalysisCardBase, absent: list[Absent]) -> Iterator[Card]:
    """The cards of an Ax card (a group's children, depth first); a card that says the analysis
    could not be made goes to ``absent``."""
    if isinstance(card, AnalysisCardGroup):
        for child in card.children:
            yield from _leaves(analysis, child, absent)
        return
    if isinstance(card, NotApplicableStateAnalysisCard):
        absent.append(Absent(analysis, f"not applicable yet: {_one_line(card.blob)}"))
        return
    if isinstance(card, ErrorAnalysisCard):
        absent.append(Absent(analysis, f"Ax failed: {_one_line(card.subtitle)}"))
        return
    assert isinstance(card, AnalysisCard)
    if isinstance(card, PlotlyAnalysisCard):
        yield Card(analysis, card.title, card.subtitle, figure=json.loads(card.blob))
    elif isinstance(card, HealthcheckAnalysisCard):
        yield Card(analysis, card.title, card.subtitle, note=HealthcheckStatus(card.get_status()).name.lower())
    elif isinstance(card, MarkdownAnalysisCard):
        yield Card(analysis, card.title, card.subtitle, note=card.get_markdown())
    else:
        columns, rows = _table(card.df)
        yield Card(analysis, card.title, card.subtitle, columns=columns, rows=rows)


@contextmanager
def _quiet() -> Iterator[None]:
    """Ax's warnings and the tracebacks it logs for a failed analysis off, while it computes."""
    loggers = [logging.getLogger(name) for name in _TRACEBACK_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _plan(spec: CampaignSpec, modelled: bool, why_no_model: str) -> tuple[list[tuple[str, Analysis]], list[Absent]]:
    """The analyses that apply to the campaign, and those that do not with the reason."""
    objectives = [o.name for o in spec.objectives]
    constraints = [c.metric for c in spec.parsed_outcome_constraints]
    metrics = objectives + [m for m in constraints if m not in objectives]
    plan: list[tuple[str, Analysis]] = [("Summary", Summary()), ("Best trials", BestTrials())]
    absent: list[Absent] = []
    plan += [("Arm effects (observed)", ArmEffectsPlot(metric_name=m, use_model_predictions=False)) for m in metrics]
    plan += [("Parallel coordinates", ParallelCoordinatesPlot(metric_name=m)) for m in objectives]
    plan.append(("Utility progression", UtilityProgressionAnalysis()))
    plan.append(("Constraints feasibility", ConstraintsFeasibilityAnalysis()))
    model_plan: list[tuple[str, Analysis]] = []
    model_plan += [("Arm effects (modelled)", ArmEffectsPlot(metric_name=m, use_model_predictions=True)) for m in metrics]
    if len(objectives) > 1:
        model_plan += [("Pareto frontier", ScatterPlot(x_metric_name=a, y_metric_name=b, show_pareto_frontier=True))
                       for i, a in enumerate(objectives) for b in objectives[i + 1:]]
    else:
        absent.append(Absent("Pareto frontier", "one objective"))
    if constraints:
        model_plan += [("Objectives vs constraints", ScatterPlot(x_metric_name=o, y_metric_name=c))
                       for o in objectives for c in constraints]
    else:
        absent.append(Absent("Objectives vs constraints", "no outcome constraint"))
    if len(objectives) == 1 and constraints:
        model_plan.append(("Outcome constraints (probability of feasibility)", OutcomeConstraintsAnalysis()))
    else:
        absent.append(Absent("Outcome constraints (probability of feasibility)",
                             "no outcome constraint" if not constraints else "Ax's analysis is for one objective"))
    model_plan += [("Sensitivity, slices and contours", TopSurfacesAnalysis(metric_name=m, top_k=3, order="total")) for m in metrics]
    model_plan.append(("Cross-validation", CrossValidationPlot(metric_names=metrics)))
    if modelled:
        plan += model_plan
    else:
        absent += [Absent(name, why_no_model) for name in dict.fromkeys(name for name, _ in model_plan)]
    absent += [
        Absent("Predictable metrics", "the cross-validation cards show how well the model predicts each metric (R²)"),
        Absent("Progression plots, early stopping", "a device reports one value per metric and trial (no curves)"),
        Absent("Baseline improvement, relativized effects", "the campaign has no status-quo (control) arm"),
        Absent("Bandit rollout, marginal effects", "not a bandit experiment (Ax shows them for batch trials)"),
    ]
    return plan, absent


def campaign_analyses(spec: CampaignSpec, trials: Iterable[TrialRecord], *, verbose: bool = False) -> Analyses:
    """Ax's analyses of the campaign's experiment (the effective spec and the folded trials).

    Raises:
        OptimizerError: Ax refuses the campaign's experiment (as the optimizer would).
    """
    start = time.monotonic()
    records = list(trials)
    quiet_ax(verbose)
    client = experiment_client(spec, records)
    completed = sum(1 for t in records if t.status == "completed")
    need = min_model_trials(spec)
    modelled = completed >= need
    why = f"no model: {completed} completed trial(s), the model waits for {need}"
    experiment = client._experiment  # Ax 1.3.1's Client has no public accessor for it
    strategy = botorch_strategy(spec)
    plan, absent = _plan(spec, modelled, why)
    cards: list[Card] = []
    with _quiet():
        quiet_ax(verbose)
        for name, analysis in plan:
            card = analysis.compute_or_error_card(experiment=experiment, generation_strategy=strategy)
            cards += _leaves(name, card, absent)
    return Analyses(cards, absent, time.monotonic() - start)
