"""Data a device may legally send never stops the optimizer; people change its method (issue 14).

Real Ax and BoTorch, no mocks: campaigns are driven through ``AxOptimizer`` as the loop drives
it (suggest, complete, rebuild from the folded log after a change).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from campaigns import (
    CampaignChange,
    CampaignChanged,
    CampaignCreated,
    Measurement,
    SpecError,
    TrialCompleted,
    TrialDispatched,
    TrialsSuggested,
    apply_change,
    fold,
    load_spec,
    parse_spec,
)
from campaigns.events import EventBase
from campaigns.state import TrialRecord
from optimizer import AxOptimizer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::pandas.errors.Pandas4Warning")

ROOT = Path(__file__).parents[2]
BRANIN = load_spec(ROOT / "campaigns" / "examples" / "branin.yaml")  # minimized; x1 in [-5, 10], x2 in [0, 15]


def branin(p: dict) -> float:
    x1, x2 = float(p["x1"]), float(p["x2"])
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


class Campaign:
    """The events the loop appends for a live optimizer, and its rebuild from the fold."""

    def __init__(self, spec=BRANIN) -> None:  # type: ignore[no-untyped-def]
        self.events: list[EventBase] = [CampaignCreated(campaign_id="c", seq=1, actor="user:t", spec=spec)]
        self.opt = AxOptimizer(spec, threads=1)

    def add(self, kind: type[EventBase], **fields: object) -> None:
        self.events.append(kind(campaign_id="c", seq=len(self.events) + 1, **fields))

    def batch(self, n: int, value=lambda t: branin(t.parameters), sem=None) -> list[str]:  # type: ignore[no-untyped-def]
        trials = self.opt.suggest(n)
        self.add(TrialsSuggested, actor="optimizer", trials=trials)
        for t in trials:
            m = Measurement(mean=value(t), sem=None if sem is None else sem(t))
            self.opt.complete(t.trial_id, {"branin": m})
            self.add(TrialDispatched, actor="orchestrator", trial_id=t.trial_id, device_id="d", request_id=f"r{t.trial_id}")
            self.add(TrialCompleted, actor="device:d", trial_id=t.trial_id, device_id="d", request_id=f"r{t.trial_id}",
                     measurements={"branin": m})
        return [t.generator for t in trials]

    def rebuild(self) -> None:
        state = fold(self.events)
        assert state.spec is not None and state.anomalies == 0
        self.opt = AxOptimizer.rebuild(state.spec, state.trials.values(), threads=1)


@pytest.mark.parametrize("extreme", [-1e200, -1e300])
def test_an_extreme_reading_leaves_the_model_suggesting(extreme: float) -> None:
    """Issue 14 item 7: one huge (finite) reading among normal Branin ones made every later
    suggestion fail in the optimizer (main: "probability tensor contains either inf, nan");
    now the default method goes on suggesting from its model, live and after a rebuild."""
    c = Campaign()
    for _ in range(3):
        c.batch(2)
    c.batch(2, value=lambda t: extreme if t.trial_id == "6" else branin(t.parameters))
    assert c.batch(2) == ["botorch", "botorch"]
    c.rebuild()
    assert c.batch(2) == ["botorch", "botorch"]


def test_change_method_sobol_is_recorded_and_applies_from_the_next_suggestion() -> None:
    """Issue 14 item 7: a person can change the optimizer's method mid-campaign, on the record
    (main had no such change); the rebuilt optimizer suggests Sobol points from then on."""
    c = Campaign()
    for _ in range(4):
        c.batch(2)
    assert c.batch(2) == ["botorch", "botorch"]
    change = CampaignChange(method="sobol")
    c.add(CampaignChanged, actor="user:ana", change=change, reason="the model chases an outlier")
    state = fold(c.events)
    assert state.spec is not None and state.spec.optimizer.method == "sobol"
    assert change.describe() == "method=sobol"
    c.rebuild()
    assert c.batch(2) == ["sobol", "sobol"]


def test_noise_that_overflowed_the_fit_no_longer_stops_the_optimizer() -> None:
    """Issue 14 item 8: Hartmann3 with Gaussian noise of sd 0.2, batches of 4 (spec seed 258):
    at 16 completed trials main's default optimizer raised ``OverflowError: math range error``
    in ``FastGP.loss_and_gradient`` (the log noise unbounded), again on every rebuild. Now
    the fit is bounded and the next batch comes from the model."""
    data = json.loads((ROOT / "tests" / "data" / "issue14_hartmann3_overflow.json").read_text())
    spec = parse_spec({
        "name": "h3-258", "seed": data["seed"],
        "parameters": [{"name": f"x{i}", "type": "float", "bounds": [0.0, 1.0]} for i in range(3)],
        "objectives": [{"name": "y", "minimize": True}], "budget": {"max_trials": 40}, "batch_size": 4,
        "devices": [{"id": "d", "measures": ["y"]}],
    })
    now = datetime.now(UTC)
    records = [
        TrialRecord(t["trial_id"], int(t["trial_id"]), t["parameters"], t["generator"], t["sobol_position"], now,
                    status="completed", measurements={"y": Measurement(mean=t["y"])})
        for t in data["trials"]
    ]
    batch = AxOptimizer.rebuild(spec, records, threads=1).suggest(4)
    assert len(batch) == 4
    assert all(t.generator == "botorch" or t.generator.startswith("sobol (fallback: ") for t in batch)
    assert all(0.0 <= float(v) <= 1.0 for t in batch for v in t.parameters.values())


@pytest.mark.filterwarnings("ignore::botorch.exceptions.warnings.OptimizationWarning")
def test_a_fit_that_fails_falls_back_to_sobol_points_named_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 14 item 8: a fit that fails must not stop the campaign. A standard error of
    1e300 (finite, legal) on one trial makes Ax's model fit fail (``ModelFittingError``): main
    raised an OptimizerError at this suggestion and at every resume. Now the batch comes from
    the Sobol sequence, a warning says why, the generator names the fallback, a rebuilt
    optimizer makes the same choice, and the next fallback moves on along the sequence."""
    data = BRANIN.model_dump(mode="json")
    data["parameters"][0] = {"name": "x1", "type": "int", "bounds": [-5, 10]}
    data["optimizer"] = {"method": "ax"}  # Ax's BoTorch generator (an int space is the fast engine's by default)
    c = Campaign(parse_spec(data))
    for _ in range(3):
        c.batch(2, sem=lambda t: 1e300 if t.trial_id == "3" else 0.1)
    with caplog.at_level("WARNING", logger="closedloop.optimizer"):
        live = c.opt.suggest(2)
    assert all(t.generator.startswith("sobol (fallback: ModelFittingError") for t in live), live
    assert "the model failed (ModelFittingError" in caplog.text
    assert [t.sobol_position for t in live] == [5, 6]  # the centre, then positions 0-4 of the opening
    c.rebuild()
    assert c.opt.suggest(2) == live  # the same log, the same choice
    c.rebuild()
    c.add(TrialsSuggested, actor="optimizer", trials=c.opt.suggest(2))
    for t in live:
        m = Measurement(mean=branin(t.parameters), sem=0.1)
        c.add(TrialDispatched, actor="orchestrator", trial_id=t.trial_id, device_id="d", request_id=f"r{t.trial_id}")
        c.add(TrialCompleted, actor="device:d", trial_id=t.trial_id, device_id="d", request_id=f"r{t.trial_id}",
              measurements={"branin": m})
    c.rebuild()  # as a resume: the next fallback takes the next positions
    assert [t.sobol_position for t in c.opt.suggest(2)] == [7, 8]


def test_a_numerical_failure_is_named_and_other_errors_are_not() -> None:
    """Issue 14 item 8: only numerical failures (overflow, not positive definite, NaN) turn
    into a fallback, named in one line; a bug's KeyError or TypeError is not one."""
    from optimizer.robust import numerical_failure, safety_cutoffs

    assert numerical_failure(OverflowError("math range error")) == "OverflowError: math range error"
    wrapped = RuntimeError("fit failed")
    wrapped.__cause__ = ValueError("probability tensor contains either `inf`, `nan` or element < 0")
    assert numerical_failure(wrapped) is not None and numerical_failure(wrapped).startswith("ValueError: ")  # type: ignore[union-attr]
    assert numerical_failure(KeyError("x1")) is None and numerical_failure(TypeError("bad")) is None
    # Ordinary data is never clipped; a 1e200 reading is brought within reach of the model.
    low, high = safety_cutoffs([1.0, 2.0, 3.0, 4.0, 5.0, 1e200])
    assert low <= 1.0 and 5.0 <= high < 1e10


def test_every_parameter_fixed_suggests_the_fixed_point_as_replicates() -> None:
    """Issue 14 item 10: ``change --fix`` of every parameter was accepted, then every
    suggestion failed ("no new point satisfying the parameter constraints"). Now each trial is
    the fixed point (repeated measurements), live and after a rebuild."""
    c = Campaign()
    for _ in range(3):
        c.batch(2)
    c.add(CampaignChanged, actor="user:ana", change=CampaignChange(fix={"x1": 1.0, "x2": 2.0}), reason="replicates")
    c.rebuild()
    for _ in range(2):
        trials = c.opt.suggest(3)
        assert [t.parameters for t in trials] == [{"x1": 1.0, "x2": 2.0}] * 3
        assert [t.generator for t in trials] == ["fixed"] * 3
        for t in trials:
            c.opt.complete(t.trial_id, {"branin": Measurement(mean=branin(t.parameters))})


def test_a_spec_that_fixes_every_parameter_runs_replicates() -> None:
    """Issue 14 item 10: a spec whose parameters are all fixed suggests its one point."""
    data = BRANIN.model_dump(mode="json") | {"fixed_parameters": {"x1": 3.0, "x2": 4.0}}
    opt = AxOptimizer(parse_spec(data), threads=1)
    assert [t.parameters for t in opt.suggest(4)] == [{"x1": 3.0, "x2": 4.0}] * 4


def test_change_set_bounds_obeys_the_spec_bound_rule() -> None:
    """Issue 14 item 11: ``change --set-bounds`` cannot give a parameter bounds the stack
    cannot hold (main accepted x1=-1e308:1e308)."""
    with pytest.raises(SpecError, match=r"1e15"):
        apply_change(BRANIN, CampaignChange(set_bounds={"x1": (-1e308, 1e308)}))
    with pytest.raises(SpecError, match="finite"):
        apply_change(BRANIN, CampaignChange(set_bounds={"x1": (0.0, math.inf)}))
