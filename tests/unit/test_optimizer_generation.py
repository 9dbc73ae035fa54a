"""The optimizer's BoTorch methods: the fast method on continuous spaces, Ax's defaults kept as
``botorch_default``; the bounded training set; Ax's winsorization."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from campaigns import CampaignSpec, Measurement, TrialRecord, load_spec, utcnow
from optimizer import AxOptimizer, SobolSampler
from optimizer.fastbo import winsorization_cutoffs

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::pandas.errors.Pandas4Warning")

EXAMPLES = Path(__file__).parents[2] / "campaigns" / "examples"
BRANIN = load_spec(EXAMPLES / "branin.yaml")
TWO = load_spec(EXAMPLES / "two_objectives.yaml")


def branin(x1: float, x2: float) -> float:
    return (x2 - 5.1 / (4 * math.pi**2) * x1**2 + 5 / math.pi * x1 - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10


def with_optimizer(spec: CampaignSpec, **settings: object) -> CampaignSpec:
    # Validated, as a spec file is (earlier method names read as today's).
    return CampaignSpec.model_validate({**spec.model_dump(), "optimizer": {**spec.optimizer.model_dump(), **settings}})


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
    assert opt.last_fit_trials == [str(i) for i in range(6)]  # Ax's generation fitted on every trial
    assert AxOptimizer.rebuild(spec, completed(spec, 6), threads=1).suggest(2) == batch


def test_a_long_campaign_is_fitted_on_a_bounded_deterministic_subset() -> None:
    from optimizer.generation import training_trials
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
    from optimizer.generation import training_trials
    values = [{"branin": float(i), "currin": 6.0 - i} for i in range(6)]
    values += [{"branin": 10.0 + i, "currin": 10.0 + (i % 7)} for i in range(30)]
    spec = with_optimizer(TWO, max_training_points=20)
    records = completed(spec, 36, values)
    opt = AxOptimizer.rebuild(spec, records, threads=1)
    subset = training_trials(spec, opt._client._experiment.lookup_data(), 20)
    assert subset is not None and len(subset.trial_indices) == 20
    assert set(range(6)) <= subset.trial_indices


def test_the_fast_method_serves_a_continuous_campaign_from_its_records() -> None:
    records = completed(BRANIN, 8)
    for r in records[6:]:  # two trials still running
        object.__setattr__(r, "status", "running")
        object.__setattr__(r, "measurements", {})
    opt = AxOptimizer.rebuild(BRANIN, records, threads=1)
    batch = opt.suggest(3)
    assert [t.generator for t in batch] == ["botorch"] * 3
    assert sorted(opt.last_fit_trials, key=int) == [str(i) for i in range(6)]  # the completed ones
    points = [(float(t.parameters["x1"]), float(t.parameters["x2"])) for t in batch]
    running = [(float(r.parameters["x1"]), float(r.parameters["x2"])) for r in records[6:]]
    # No candidate repeats another or a running trial (their results are pending).
    for i, p in enumerate(points):
        assert all(math.dist(p, q) > 1e-3 for q in points[i + 1 :] + running)
        assert -5.0 <= p[0] <= 10.0 and 0.0 <= p[1] <= 15.0
    assert AxOptimizer.rebuild(BRANIN, records, threads=1).suggest(3) == batch  # rebuilt: the same


def test_the_fast_method_keeps_fixed_parameters_log_scales_and_constraints() -> None:
    raw = BRANIN.model_dump()
    raw["parameters"][1] |= {"bounds": (0.1, 15.0), "log_scale": True}
    raw["outcome_constraints"] = ["cost <= 12"]
    raw["fixed_parameters"] = {"x1": 2.5}
    for device in raw["devices"]:
        device["measures"] = ["branin", "cost"]
    spec = CampaignSpec.model_validate(raw)
    points = SobolSampler(spec).next_points(0, 8)
    values = [{"branin": branin(float(p.parameters["x1"]), float(p.parameters["x2"])),
               "cost": float(p.parameters["x1"]) + float(p.parameters["x2"])} for p in points]
    opt = AxOptimizer.rebuild(spec, completed(spec, 8, values), threads=1)
    batch = opt.suggest(2)
    assert [t.generator for t in batch] == ["botorch", "botorch"]
    assert all(t.parameters["x1"] == 2.5 and 0.1 <= float(t.parameters["x2"]) <= 15.0 for t in batch)
    # cost = x1 + x2 <= 12 means x2 <= 9.5: the model of cost steers the candidates there.
    assert all(float(t.parameters["x2"]) < 9.5 + 1.0 for t in batch)


def test_winsorization_clips_only_the_bad_side_as_ax_does() -> None:
    y = np.array([0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 300.0])
    low, high = winsorization_cutoffs(BRANIN, "branin", y)  # minimized: large values clipped
    assert low == -math.inf and 5.0 < high < 300.0
    maximized = BRANIN.model_copy(update={"objectives": [BRANIN.objectives[0].model_copy(update={"minimize": False})]})
    low, high = winsorization_cutoffs(maximized, "branin", -y)
    assert high == math.inf and -300.0 < low < -5.0
    constrained = BRANIN.model_copy(update={"outcome_constraints": ["cost <= 100"]})
    assert winsorization_cutoffs(constrained, "cost", y)[1] > 100.0  # never makes a point feasible
    assert winsorization_cutoffs(BRANIN, "other", y) == (-math.inf, math.inf)
