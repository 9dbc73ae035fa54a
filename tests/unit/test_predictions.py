"""The model's prediction of each proposed trial, logged with the suggestion (what a person approving it sees)."""

from __future__ import annotations

from typing import Any

import pytest

from campaigns import CampaignSpec, Measurement, parse_spec
from optimizer import AxOptimizer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::pandas.errors.Pandas4Warning")


def f(x: float) -> float:
    return (x - 0.3) ** 2 + 1.0


def spec(method: str) -> CampaignSpec:
    data: dict[str, Any] = {
        "name": "p", "seed": 5, "parameters": [{"name": "x", "type": "float", "bounds": [0.0, 1.0]}],
        "objectives": [{"name": "y", "minimize": True}], "budget": {"max_trials": 30},
        "devices": [{"id": "d", "measures": ["y"]}], "optimizer": {"method": method},
    }
    return parse_spec(data)


@pytest.mark.parametrize("method", ["fast", "ax"])
def test_a_model_trial_carries_the_models_mean_and_sd_of_the_objective_there(method: str) -> None:
    opt = AxOptimizer(spec(method), threads=1)
    sobol = opt.suggest(8)
    assert all(t.prediction is None for t in sobol)  # no model chose them
    for t in sobol:
        opt.complete(t.trial_id, {"y": Measurement(mean=f(float(t.parameters["x"])), sem=0.001)})
    proposed = opt.suggest(2)
    assert [t.engine for t in proposed] == [method] * 2
    for t in proposed:
        assert t.prediction is not None and set(t.prediction) == {"y"}
        p = t.prediction["y"]
        # Eight exact values of a smooth function on [0, 1]: the GP knows it near anywhere.
        assert p.mean == pytest.approx(f(float(t.parameters["x"])), abs=0.02)
        assert 0.0 <= p.sd < 0.05
