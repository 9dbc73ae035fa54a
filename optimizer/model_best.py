"""The best trial by the model: the completed trial whose posterior mean is best, beside the
best observed one.

A noisy measurement that happens to come out low makes its trial the best observed, though the
trials around it say otherwise; the model weighs every result. As Ax's
``get_best_parameterization`` does with its model predictions, the pick is in-sample: among the
completed trials, the one whose posterior mean of the objective is best, with the outcome
constraints held by posterior means; several objectives give the Pareto set of the posterior
means instead of one pick. The model is the fast engine's (``optimizer.fastbo.fit_models``: one
``FastGP`` per metric, Ax's transforms), fitted on the trials it would be fitted on to suggest,
and also from a noisy start, the better fit kept (``FastGP``'s ``noisy_start``: from the
priors' modes alone, noisy data are often fitted by a model that interpolates the noise, and its
best mean is then a lucky reading; figures in ``benchmarks/README.md``);
the mean and sd are of the metric itself (the latent function), not of one more noisy reading.
Mixed and constrained spaces are encoded as the fast engine encodes them (``optimizer.mixed``);
where that engine does not serve a space (too many choice combinations), or the data are too
few, the result says why instead of guessing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from campaigns.errors import OptimizerError
from campaigns.events import ParameterValue
from campaigns.spec import CampaignSpec, fast_obstacle
from campaigns.state import TrialRecord
from optimizer.engines import default_initialization_trials
from optimizer.records import TrialEntry, ordered_trials, training_entries

__all__ = ["MIN_TRIALS", "Z95", "Estimate", "ModelBest", "TrialEstimate", "as_json", "entries_best", "model_best"]

#: The fewest completed trials with data a model-based best is given for (and at least as many
#: as the engine's own model waits for: half the opening, rounded up).
MIN_TRIALS = 3

#: The normal quantile of a two-sided 95% interval.
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    """The model's posterior of one metric at one trial, and what was measured there.

    Attributes:
        mean: Posterior mean, in the metric's units.
        sd: Posterior standard deviation of the mean (not of one noisy reading).
        observed: The trial's measured mean, or None if it did not measure the metric.
    """

    mean: float
    sd: float
    observed: float | None

    @property
    def low(self) -> float:
        """The lower end of the 95% interval, ``mean - 1.96 sd``."""
        return self.mean - Z95 * self.sd

    @property
    def high(self) -> float:
        """The upper end of the 95% interval, ``mean + 1.96 sd``."""
        return self.mean + Z95 * self.sd

    def as_dict(self) -> dict[str, float | None]:
        """``{"mean", "sd", "low", "high", "observed"}``: JSON-ready."""
        return {"mean": self.mean, "sd": self.sd, "low": self.low, "high": self.high, "observed": self.observed}


@dataclass(frozen=True)
class TrialEstimate:
    """A completed trial as the model sees it: each modelled metric's estimate there.

    Attributes:
        trial_id: The trial.
        parameters: Its parameters.
        metrics: Metric name -> estimate, for every metric of the spec the model covers.
        feasible: Whether every outcome constraint holds by the posterior means.
    """

    trial_id: str
    parameters: dict[str, ParameterValue]
    metrics: dict[str, Estimate]
    feasible: bool


@dataclass(frozen=True)
class ModelBest:
    """What the model says is best among the completed trials.

    Attributes:
        pick: The trial with the best posterior mean (one objective), feasible by the means;
            None with several objectives, or when there is none (``why`` says why).
        front: Several objectives: the Pareto set of the posterior means among the trials
            feasible by the means, in trial order; empty otherwise.
        why: Why there is no pick (or no front), else None.
        trials: Every completed trial the model predicts, by id (exports show them).
        fitted_on: How many trials the models were fitted on.
    """

    pick: TrialEstimate | None
    front: list[TrialEstimate] = field(default_factory=list)
    why: str | None = None
    trials: dict[str, TrialEstimate] = field(default_factory=dict)
    fitted_on: int = 0


def model_best(spec: CampaignSpec, trials: Iterable[TrialRecord]) -> ModelBest:
    """The model-based best of a campaign's completed trials (or why there is none).

    Args:
        spec: The campaign's effective spec (``state.spec``).
        trials: Its trials (``state.trials.values()``); only completed ones with data count.

    Returns:
        ``ModelBest``: ``pick`` for one objective, ``front`` for several, ``why`` otherwise.
    """
    obstacle = fast_obstacle(spec)
    if obstacle is not None:
        return _not_served(obstacle)
    try:
        entries = ordered_trials(spec, trials)
    except OptimizerError as exc:
        return ModelBest(None, why=f"the log's trials do not fit the spec: {exc.message}")
    return entries_best(spec, entries)


def entries_best(spec: CampaignSpec, entries: Iterable[TrialEntry]) -> ModelBest:
    """``model_best`` of the optimizer's own records (``AxOptimizer``'s entries; benchmarks)."""
    obstacle = fast_obstacle(spec)
    if obstacle is not None:
        return _not_served(obstacle)
    done = [e for e in entries if e.status == "completed" and e.measurements]
    needed = max(MIN_TRIALS, math.ceil(default_initialization_trials(spec) / 2))
    if len(done) < needed:
        return ModelBest(None, why=f"{len(done)} completed trial(s) with data; a model needs {needed}")
    unmeasured = [m for m in spec.metrics if not any(m in e.measurements for e in done)]
    if unmeasured:
        return ModelBest(None, why=f"no completed trial measured {unmeasured[0]!r} yet")
    return _estimate(spec, done)


def _not_served(obstacle: str) -> ModelBest:
    return ModelBest(None, why=f"no model-based best for this space ({obstacle}): it uses the fast "
                               "engine's model, which does not serve it")


def _estimate(spec: CampaignSpec, done: list[TrialEntry]) -> ModelBest:
    import numpy as np

    from optimizer.fastbo import FAST_ERRORS, fit_models

    trained = training_entries(spec, done)
    try:
        to_unit, models = fit_models(spec, trained, noisy_start=True)
        X = np.array([to_unit(e.parameters) for e in done], dtype=float)
        predicted = {name: model.predict(X, grad=False) for name, model in models.items()}
    except FAST_ERRORS as exc:
        return ModelBest(None, why=f"the model could not be fitted: {str(exc).splitlines()[0] if str(exc) else exc!r}")
    constraints = spec.parsed_outcome_constraints
    estimates: dict[str, TrialEstimate] = {}
    for i, e in enumerate(done):
        metrics: dict[str, Estimate] = {}
        for name, (mean, var) in predicted.items():
            m, v = float(mean[i]), float(var[i])
            if math.isfinite(m) and math.isfinite(v):
                observed = e.measurements.get(name)
                metrics[name] = Estimate(m, math.sqrt(max(v, 0.0)), None if observed is None else observed.mean)
        feasible = all(c.metric in metrics and c.holds(metrics[c.metric].mean) for c in constraints)
        estimates[e.trial_id] = TrialEstimate(e.trial_id, dict(e.parameters), metrics, feasible)
    objectives = spec.objectives
    candidates = [t for t in estimates.values() if t.feasible and all(o.name in t.metrics for o in objectives)]
    if not candidates:
        why = ("no completed trial satisfies the outcome constraints by the model's means"
               if constraints else "the model's predictions are not finite")
        return ModelBest(None, why=why, trials=estimates, fitted_on=len(trained))
    losses = {t.trial_id: tuple((1.0 if o.minimize else -1.0) * t.metrics[o.name].mean for o in objectives)
              for t in candidates}
    if len(objectives) == 1:
        pick = min(candidates, key=lambda t: (losses[t.trial_id], int(t.trial_id)))
        return ModelBest(pick, trials=estimates, fitted_on=len(trained))
    front = [t for t in candidates if not any(_dominates(losses[u.trial_id], losses[t.trial_id]) for u in candidates)]
    return ModelBest(None, front=front, why="several objectives: no single best; the Pareto set by the model's means",
                     trials=estimates, fitted_on=len(trained))


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


def as_json(estimate: TrialEstimate, spec: CampaignSpec) -> dict[str, object]:
    """A trial's estimate as ``status --json`` shows it: ``{trial_id, parameters, objectives:
    {name: {mean, sd, low, high, observed}}}``, plus ``constraints`` (their metrics) if any."""
    names = [o.name for o in spec.objectives]
    out: dict[str, object] = {
        "trial_id": estimate.trial_id,
        "parameters": estimate.parameters,
        "objectives": {n: estimate.metrics[n].as_dict() for n in names if n in estimate.metrics},
    }
    others = {m: e.as_dict() for m, e in estimate.metrics.items() if m not in names}
    if others:
        out["constraints"] = others
    return out

