"""The optimizer's BoTorch methods: Ax's defaults kept as ``botorch_default``; the bounded training set."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from campaigns import CampaignSpec, Measurement, TrialRecord, load_spec, utcnow
from optimizer import AxOptimizer, SobolSampler
from optimizer.generation import training_trials

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::pandas.errors.Pandas4Warning")

EXAMPLES = Path(__file__).parents[2] / "campaigns" / "examples"
BRANIN = load_spec(EXAMPLES / "branin.yaml")
TWO = load_spec(EXAMPLES / "two_objectives.yaml")


def branin(x1: float, x2: float) -> float:
    return (x2 - 5.1 / (4 * math.pi**2) * x1**2 + 5 / math.pi * x1 - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10


def with_optimizer(spec: CampaignSpec, **settings: object) -> CampaignSpec:
    return spec.model_copy(update={"optimizer": spec.optimizer.model_copy(update=settings)})


def completed(spec: CampaignSpec, n: int, values: list[dict[str, float]] | None = None) -> list[TrialRecord]:
    points = SobolSampler(spec).next_points(0, n)
    out = []
    for i, p in enumerate(points):
        x1, x2 = float(p.parameters["x1"]), float(p.parameters["x2"])
        v = values[i] if values else {"branin": branin(x1, x2)}
        out.append(TrialRecord(trial_id=str(i), index=i, parameters=p.parameters, generator="sobol",
                               sobol_position=p.position, suggested_at=utcnow(), status="completed",
                               measurements={m: Measurement(mean=y) for m, y in v.items()}))
    return out


def test_axs_defaults_are_kept_as_botorch_default() -> None:
    spec = with_optimizer(BRANIN, method="botorch_default")
    opt = AxOptimizer.rebuild(spec, completed(spec, 6), threads=1)
    batch = opt.suggest(2)
    assert [t.generator for t in batch] == ["botorch", "botorch"] and batch[0].parameters != batch[1].parameters
    assert AxOptimizer.rebuild(spec, completed(spec, 6), threads=1).suggest(2) == batch


def test_a_long_campaign_is_fitted_on_a_bounded_deterministic_subset() -> None:
    spec = with_optimizer(BRANIN, max_training_points=20)
    records = completed(spec, 60)
    opt = AxOptimizer.rebuild(spec, records, threads=1)
    data = opt._client._experiment.lookup_data()
    assert training_trials(spec, data, 60) is None  # all trials fit: Ax uses them all
    subset = training_trials(spec, data, 20)
    assert subset is not None
    chosen = sorted(subset.trial_indices)
    assert len(chosen) == 20 and chosen == sorted(training_trials(spec, data, 20).trial_indices)  # type: ignore[union-attr]
    best = sorted(records, key=lambda r: r.measurements["branin"].mean)
    best_half = {int(r.trial_id) for r in best[:10]}
    assert best_half <= set(chosen)  # the best half
    recent = [i for i in range(59, -1, -1) if i not in best_half][:5]
    assert set(recent) <= set(chosen)  # then the 5 most recent others
    assert min(chosen) < 30  # and a spread of the older ones
    batch = opt.suggest(2)
    assert [t.generator for t in batch] == ["botorch", "botorch"]
    assert AxOptimizer.rebuild(spec, records, threads=1).suggest(2) == batch


def test_two_objectives_keep_the_pareto_front_in_the_subset() -> None:
    # A front of 6 points (x, 6 - x) and 30 dominated ones.
    values = [{"branin": float(i), "currin": 6.0 - i} for i in range(6)]
    values += [{"branin": 10.0 + i, "currin": 10.0 + (i % 7)} for i in range(30)]
    spec = with_optimizer(TWO, max_training_points=20)
    records = completed(spec, 36, values)
    opt = AxOptimizer.rebuild(spec, records, threads=1)
    subset = training_trials(spec, opt._client._experiment.lookup_data(), 20)
    assert subset is not None and len(subset.trial_indices) == 20
    assert set(range(6)) <= subset.trial_indices
