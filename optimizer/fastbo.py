"""The ``fast`` engine: ``FastGP`` models, analytic acquisition, greedy batches, in NumPy.

Serves float, int and choice parameters and linear parameter constraints (``optimizer.mixed``
encodes the space and optimizes the acquisition over it; what goes to Ax instead:
``campaigns.spec.fast_obstacle``) from the optimizer's own records. The choices are Ax's defaults (one GP per metric with
BoTorch's priors after Ax's winsorization; log noisy expected improvement, or log expected
hypervolume improvement with several objectives, plus the log probability that each outcome
constraint holds; candidates one at a time, earlier ones pending; the noisy EI's baseline the
trials that may be the best) but for one: raw samples are also drawn around that baseline. Without GPyTorch's
and Ax's per-call overhead it is many times faster (figures in ``benchmarks/README.md``).
Every random draw comes from ``seed``, so a batch is a function of the records and the seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch

from campaigns.events import ParameterValue, Prediction
from campaigns.spec import CampaignSpec, fast_obstacle
from optimizer.acquisition import (
    Acquisition,
    LogEHVI,
    LogNEI,
    baseline,
    hypercells,
    maximize,
)
from optimizer.fastgp import FastGP
from optimizer.mixed import Space, maximize_mixed
from optimizer.records import TrialEntry
from optimizer.robust import metric_bounds, safety_cutoffs

__all__ = ["FAST_ERRORS", "FAST_SETTINGS", "Candidate", "fast_generate", "fit_models", "supports_fast"]

#: What a failed fit or acquisition optimization raises (e.g. a kernel matrix that is not
#: positive definite: ``torch.linalg.LinAlgError`` is a ``RuntimeError``; an overflow: an
#: ``ArithmeticError``). The numerical ones make ``AxOptimizer`` fall back to Sobol points.
FAST_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, ValueError, ArithmeticError, np.linalg.LinAlgError)

#: The acquisition optimizer per candidate: raw Sobol samples, starts picked from them by
#: BoTorch's ``initialize_q_batch``, L-BFGS-B iterations from each start, which stop once an
#: iteration improves the log acquisition by less than ``factr`` x 2.2e-16 relative (2.2e-6;
#: scipy's default 1e7 gives 2.2e-9: the same candidates to ~1e-4 of the range, ~25% more
#: time). ``around_best`` raw samples more are drawn around the best trial, normal with
#: ``around_sd`` (unit cube; BoTorch's ``sample_around_best`` uses 1e-3; why 0.01:
#: ``benchmarks/README.md``).
FAST_SETTINGS: dict[str, float] = {"num_restarts": 10, "raw_samples": 512, "maxiter": 200, "factr": 1e10,
                                   "around_best": 512, "around_sd": 0.01}


class Candidate(NamedTuple):
    """A proposed point, and each modelled metric's predicted mean and sd there."""

    parameters: dict[str, ParameterValue]
    prediction: dict[str, Prediction]


def supports_fast(spec: CampaignSpec) -> bool:
    """Whether the fast engine can serve the spec (``campaigns.spec.fast_obstacle``)."""
    return fast_obstacle(spec) is None


def fast_generate(
    spec: CampaignSpec,
    trained: Sequence[TrialEntry],
    pending: Sequence[TrialEntry],
    n: int,
    seed: int,
    fixed: Mapping[str, ParameterValue],
    settings: Mapping[str, float] = FAST_SETTINGS,
) -> list[Candidate]:
    """``n`` candidates for a continuous campaign, in order (not yet trials), each with the
    fitted models' posterior mean and sd of every metric at it (no pending trial believed).

    Args:
        spec: The campaign (``supports_fast(spec)``).
        trained: Completed trials to fit on (every metric of the optimization config measured
            by at least one of them).
        pending: Suggested or running trials (their results will come).
        n: How many candidates.
        seed: Seeds every random draw of the call.
        fixed: Parameters every candidate must carry.
        settings: ``num_restarts``, ``raw_samples``, ``maxiter``, ``factr``, ``around_best``,
            ``around_sd`` of the acquisition optimizer.
    """
    space = Space(spec)
    generator = torch.Generator().manual_seed(seed)
    models = {m: _fit(spec, space, trained, m) for m in spec.metrics if any(m in t.measurements for t in trained)}
    fitted = dict(models)  # as fitted on the data: what a person is shown, before any belief
    # Every condition as (metric, sign, bound): sign * metric >= sign * bound.
    conditions = [(c.metric, 1.0 if c.op == ">=" else -1.0, c.bound) for c in spec.parsed_outcome_constraints]

    # The Kriging believer for the constraint models and for several objectives; a single
    # objective's model stays as fitted (LogNEI draws at pending points from it).
    believed = {c.metric for c in spec.parsed_outcome_constraints}
    if len(spec.objectives) > 1:
        believed |= {o.name for o in spec.objectives}

    def believe(X: np.ndarray) -> None:  # each believed model takes its mean at X as data
        for name in believed:
            mean, _ = models[name].predict(X, grad=False)
            models[name] = models[name].condition_on(torch.from_numpy(X), torch.from_numpy(mean))

    pending_x = [space.to_unit(t.parameters) for t in pending]
    tried = [space.to_unit(t.parameters) for t in trained]
    out_x: list[list[float]] = []
    if pending:
        believe(np.array(pending_x, dtype=float))
    d, names = space.d, {p.name for p in space.params}
    fixed_unit = space.fixed_columns(fixed)
    out: list[dict[str, ParameterValue]] = []
    warm: np.ndarray | None = None  # where the previous candidate's starts ended
    for _ in range(n):
        cons = [(models[m], s, b) for m, s, b in conditions]
        objectives = [(models[o.name], -1.0 if o.minimize else 1.0) for o in spec.objectives]
        if len(objectives) == 1:
            objective = objectives[0]
            B = baseline(objective, cons, int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            if B is None:  # no trial feasible by posterior means: the constraints alone
                acquisition = Acquisition(objective, None, cons)
            else:
                P = np.array(pending_x + out_x, dtype=float).reshape(-1, d)
                acquisition = LogNEI(objective, B, P, cons, generator)
        else:
            acquisition = LogEHVI(objectives, hypercells(spec, objectives, cons), cons)
        taken = np.array(tried + pending_x + out_x, dtype=float).reshape(-1, d)
        start_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        if space.discrete or len(space.b):  # ints, choices or linear constraints: optimizer.mixed
            x, ends = maximize_mixed(acquisition, space, fixed_unit, settings, start_seed, warm, taken)
        else:
            x, ends = maximize(acquisition, d, fixed_unit, settings, start_seed, warm)
        x = _untried(x, ends, taken)
        warm = ends[np.abs(ends - x).max(1) > 1e-6]  # not the candidate itself: it is pending now
        out.append(space.from_unit(x) | {k: v for k, v in fixed.items() if k in names})
        out_x.append(x.tolist())
        believe(x[None, :])
    return [Candidate(p, prediction) for p, prediction in zip(out, _predict(fitted, np.array(out_x)), strict=True)]


def _predict(models: Mapping[str, FastGP], X: np.ndarray) -> list[dict[str, Prediction]]:
    """Each model's posterior mean and sd at the rows of ``X`` (unit cube); nearly free."""
    out: list[dict[str, Prediction]] = [{} for _ in range(len(X))]
    if not len(X):
        return out
    for name, model in models.items():
        mean, var = model.predict(X, grad=False)
        for row, m, v in zip(out, mean.tolist(), var.tolist(), strict=True):
            if math.isfinite(m) and math.isfinite(v):
                row[name] = Prediction(mean=m, sd=math.sqrt(max(v, 0.0)))
    return out


def _untried(x: np.ndarray, ends: np.ndarray, taken: np.ndarray) -> np.ndarray:
    """``x``, or if it is a trial already (or pending, or an earlier candidate), the best end
    point of the acquisition optimizer that is not: with the noise it infers, the model can
    favour re-running a tried point, often a corner of the space, on a function whose
    measurements repeat. ``x`` if every end point is taken (``AxOptimizer`` drops it).
    """
    for candidate in (x, *ends):
        if not len(taken) or np.abs(taken - candidate).max(1).min() > 1e-9:
            return candidate
    return x


def fit_models(
    spec: CampaignSpec, trained: Sequence[TrialEntry], *, noisy_start: bool = False
) -> tuple[Callable[[Mapping[str, ParameterValue]], list[float]], dict[str, FastGP]]:
    """The fast engine's models as ``fast_generate`` fits them (one ``FastGP`` per metric that
    ``trained`` measured), and the map of a trial's parameters to the models' unit cube; for
    readers of the model that propose nothing (``optimizer.model_best``). ``noisy_start``:
    each fit also from a noisy start, the better MAP kept (``FastGP``)."""
    space = Space(spec)
    return space.to_unit, {m: _fit(spec, space, trained, m, noisy_start)
                           for m in spec.metrics if any(m in t.measurements for t in trained)}


def _fit(spec: CampaignSpec, space: Space, trained: Sequence[TrialEntry], metric: str, noisy_start: bool = False) -> FastGP:
    """A GP of one metric on the trials that measured it (known noise if every sem is given).

    The values are winsorized as Ax does, then clipped to ``optimizer.robust.safety_cutoffs``
    (which ordinary data never reaches) so that an extreme but finite reading cannot overflow
    the model; a standard error is capped at the width of that range.
    """
    rows = [t for t in trained if metric in t.measurements]
    ms = [t.measurements[metric] for t in rows]
    X = torch.tensor([space.to_unit(t.parameters) for t in rows], dtype=torch.float64)
    y = np.array([m.mean for m in ms], dtype=float)
    low, high = safety_cutoffs(y, metric_bounds(spec, metric))
    yvar = None
    if all(m.sem is not None for m in ms):
        widest = high - low
        yvar = torch.tensor([min(float(m.sem), widest) ** 2 for m in ms], dtype=torch.float64)  # type: ignore[arg-type]
    y = np.clip(y, low, high)
    return FastGP(X, torch.from_numpy(np.clip(y, *winsorization_cutoffs(spec, metric, y))), yvar, noisy_start=noisy_start)


def winsorization_cutoffs(spec: CampaignSpec, metric: str, y: np.ndarray) -> tuple[float, float]:
    """Ax's automatic winsorization of a metric (``ax.adapter.transforms.winsorize``).

    Only the bad side is clipped, Tukey-style, so that a few very bad results do not flatten
    the model where it matters: a lone objective above ``q3 + 1.5 IQR`` (minimized) or below
    ``q1 - 1.5 IQR`` (maximized); a metric with outcome constraints (or an objective with a
    threshold, among several) on the infeasible side, beyond ``max(q3, bound) + 1.5
    (max(q3, bound) - q1)`` for ``<=`` (mirrored for ``>=``).
    """
    q1 = float(np.percentile(y, 25, method="lower"))
    q3 = float(np.percentile(y, 75, method="higher"))
    objective = next((o for o in spec.objectives if o.name == metric), None)
    bounds: list[tuple[str, float]] = [(c.op, c.bound) for c in spec.parsed_outcome_constraints if c.metric == metric]
    if objective is not None:
        if len(spec.objectives) == 1 or objective.threshold is None:
            iqr = q3 - q1
            return (-math.inf, q3 + 1.5 * iqr) if objective.minimize else (q1 - 1.5 * iqr, math.inf)
        bounds = [("<=" if objective.minimize else ">=", objective.threshold)]
    low, high = -math.inf, math.inf
    for op, bound in bounds:
        if op == "<=":
            high = max(q3, bound) + 1.5 * (max(q3, bound) - q1)
        else:
            low = min(q1, bound) - 1.5 * (q3 - min(q1, bound))
    return low, high
