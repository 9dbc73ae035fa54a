"""The bulk replay builds the Ax experiment the per-trial replay builds, and suggests the same.

``AxOptimizer.rebuild`` replays a log in one pass (``replay="bulk"``); the reference is the
per-trial replay through Ax's ``Client`` (``replay="per_trial"``), the calls the live
optimizer makes. Both are compared on what Ax generates from: the data frame, the trials'
statuses, arms and failure reasons, the metrics; and then on the next suggestion.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from campaigns import (
    CampaignCreated,
    CampaignSpec,
    Measurement,
    SuggestedTrial,
    TrialCompleted,
    TrialDispatched,
    TrialFailed,
    TrialsSuggested,
    fold,
    load_spec,
)
from campaigns.events import EventBase
from optimizer import AxOptimizer, SobolSampler, default_initialization_trials

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::pandas.errors.Pandas4Warning")

BRANIN = load_spec(Path(__file__).parents[2] / "campaigns" / "examples" / "branin.yaml")


def branin(x1: float, x2: float) -> float:
    """The Branin function."""
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return float((x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * np.cos(x1) + 10)


def synthetic_log(spec: CampaignSpec, n: int) -> list[EventBase]:
    """``n`` trials as the loop logs them: Sobol points, then seeded random "botorch" points.

    Every 7th trial fails, every 9th is suggested and never dispatched, every 10th is
    dispatched and never answered; trial 2 completes without measurements; every 3rd
    completed trial also reports ``cost`` (a metric the spec does not name).
    """
    init = default_initialization_trials(spec)
    points = [(p.parameters, "sobol", p.position) for p in SobolSampler(spec).next_points(0, init)]
    rng = np.random.default_rng(5)
    points += [({"x1": float(rng.uniform(-5, 10)), "x2": float(rng.uniform(0, 15))}, "botorch", None)
               for _ in range(n - init)]
    events: list[EventBase] = [CampaignCreated(campaign_id="c", seq=1, actor="user:t", spec=spec)]

    def add(event_type: type[EventBase], **fields: Any) -> None:
        events.append(event_type(campaign_id="c", seq=len(events) + 1, **fields))

    for i, (parameters, generator, position) in enumerate(points):
        tid = str(i)
        add(TrialsSuggested, actor="optimizer", trials=[
            SuggestedTrial(trial_id=tid, parameters=parameters, generator=generator, sobol_position=position)
        ])
        if i % 9 == 8:
            continue
        add(TrialDispatched, actor="orchestrator", trial_id=tid, device_id="d", request_id=f"r{i}")
        if i % 7 == 6:
            add(TrialFailed, actor="orchestrator", trial_id=tid, reason="timeout" if i % 2 else "device_error")
        elif i % 10 != 9:
            measurements = {"branin": Measurement(mean=branin(float(parameters["x1"]), float(parameters["x2"])), sem=0.05)}
            if i % 3 == 0:
                measurements["cost"] = Measurement(mean=1.0 + i / n)
            add(TrialCompleted, actor="device:d", trial_id=tid, device_id="d", request_id=f"r{i}",
                measurements={} if i == 2 else measurements)
    return events


def ax_view(opt: AxOptimizer) -> dict[str, Any]:
    """What Ax generates from: the experiment's data, trials and metrics (Ax internals, read only)."""
    experiment = opt._client._experiment
    return {
        "metrics": list(experiment.metrics),
        "trials": {
            index: (trial.status, trial.status_reason, trial.arm.name, trial.arm.parameters,  # type: ignore[attr-defined]
                    trial.generator_runs[0].generator_run_type, trial._properties)
            for index, trial in experiment.trials.items()
        },
    }


@pytest.mark.parametrize("n", [30])
def test_bulk_and_per_trial_replays_build_the_same_experiment(n: int) -> None:
    state = fold(synthetic_log(BRANIN, n))
    assert state.spec is not None and state.anomalies == 0
    records = list(state.trials.values())
    assert {r.status for r in records} == {"suggested", "running", "completed", "failed"}

    bulk = AxOptimizer.rebuild(state.spec, records, threads=1)
    per_trial = AxOptimizer.rebuild(state.spec, records, threads=1, replay="per_trial")

    bulk_df = bulk._client._experiment.lookup_data().full_df
    pd.testing.assert_frame_equal(bulk_df, per_trial._client._experiment.lookup_data().full_df)
    completed = sum(1 for r in records if r.status == "completed")
    assert len(bulk_df) == completed - 1 + sum(1 for r in records if "cost" in r.measurements)
    assert ax_view(bulk) == ax_view(per_trial)
    assert (bulk.num_trials, bulk.phase, bulk.next_sobol_position) == (n, "botorch", 5)
    assert (per_trial.num_trials, per_trial.phase, per_trial.next_sobol_position) == (n, "botorch", 5)

    nxt = bulk.suggest(2)
    assert nxt == per_trial.suggest(2)
    assert [t.trial_id for t in nxt] == [str(n), str(n + 1)] and all(t.generator == "botorch" for t in nxt)
