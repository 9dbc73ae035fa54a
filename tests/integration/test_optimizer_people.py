"""People in the loop and mid-campaign changes, as the optimizer sees them (real Ax, no mocks).

The loop rebuilds the optimizer from the log after every decision or change, with the
campaign's effective spec (``fold(events).spec``). These tests do the same: a live optimizer
suggests and completes trials while the events the loop would append are kept, a decision or
a change is appended, and the optimizer is replaced by ``AxOptimizer.rebuild(state.spec,
state.trials.values())``. Each test ends by checking that a fresh rebuild of the whole log
(bulk and per trial) makes the live optimizer's next suggestion.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from campaigns import (
    ApprovalGiven,
    ApprovalRejected,
    ApprovalRequested,
    CampaignChange,
    CampaignChanged,
    CampaignCreated,
    CampaignSpec,
    CampaignState,
    Measurement,
    OptimizerError,
    SuggestedTrial,
    TrialCompleted,
    TrialDispatched,
    TrialsSuggested,
    apply_change,
    fold,
    load_spec,
)
from campaigns.events import EventBase
from optimizer import AxOptimizer, SobolSampler

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::pandas.errors.Pandas4Warning")

EXAMPLES = Path(__file__).parents[2] / "campaigns" / "examples"
BRANIN = load_spec(EXAMPLES / "branin.yaml")  # x1 in [-5, 10], x2 in [0, 15]; 5 Sobol trials


def branin(x1: float, x2: float) -> float:
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return float((x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * np.cos(x1) + 10)


class Loop:
    """A live optimizer, the events the loop appends for it, and the loop's rebuild after decisions."""

    def __init__(self, spec: CampaignSpec) -> None:
        self.events: list[EventBase] = [CampaignCreated(campaign_id="c", seq=1, actor="user:t", spec=spec)]
        self.opt = AxOptimizer(spec, threads=1)

    def add(self, event_type: type[EventBase], **fields: Any) -> None:
        self.events.append(event_type(campaign_id="c", seq=len(self.events) + 1, **fields))

    @property
    def state(self) -> CampaignState:
        state = fold(self.events)
        assert state.spec is not None and state.anomalies == 0
        return state

    def rebuild(self) -> AxOptimizer:
        """What the loop does after a decision or a change (and a resume does)."""
        state = self.state
        assert state.spec is not None
        self.opt = AxOptimizer.rebuild(state.spec, state.trials.values(), threads=1)
        return self.opt

    def suggest(self, n: int, *, approval: str | None = None) -> list[SuggestedTrial]:
        trials = self.opt.suggest(n)
        self.add(TrialsSuggested, actor="optimizer", trials=trials)
        if approval is not None:
            self.add(ApprovalRequested, actor="orchestrator", approval_id=approval,
                     trial_ids=[t.trial_id for t in trials], why="every batch", answer_with="closedloop approve")
        return trials

    def run(self, trial_id: str, **extra: float) -> None:
        """Dispatch a trial and complete it with its Branin value, a ``cost`` and ``extra`` metrics."""
        p = self.state.trials[trial_id].parameters
        measurements = {"branin": Measurement(mean=branin(float(p["x1"]), float(p["x2"]))),
                        "cost": Measurement(mean=1.0 + float(p["x2"]) / 15)}
        measurements.update({name: Measurement(mean=value) for name, value in extra.items()})
        self.add(TrialDispatched, actor="orchestrator", trial_id=trial_id, device_id="d", request_id=f"r{trial_id}")
        self.opt.complete(trial_id, measurements)
        self.add(TrialCompleted, actor="device:d", trial_id=trial_id, device_id="d", request_id=f"r{trial_id}",
                 measurements=measurements)

    def round(self, n: int) -> list[SuggestedTrial]:
        trials = self.suggest(n)
        for t in trials:
            self.run(t.trial_id)
        return trials

    def change(self, **change: Any) -> AxOptimizer:
        self.add(CampaignChanged, actor="user:ana", change=CampaignChange(**change), reason="test")
        return self.rebuild()

    def check_rebuilds_agree(self, n: int = 2) -> list[SuggestedTrial]:
        """A fresh rebuild of the whole log, bulk and per trial, makes the live next suggestion."""
        state = self.state
        assert state.spec is not None
        bulk = AxOptimizer.rebuild(state.spec, state.trials.values(), threads=1)
        per_trial = AxOptimizer.rebuild(state.spec, state.trials.values(), threads=1, replay="per_trial")
        assert ax_view(bulk) == ax_view(per_trial) == ax_view(self.opt)
        live = self.suggest(n)
        assert bulk.suggest(n) == per_trial.suggest(n) == live
        return live


def ax_view(opt: AxOptimizer) -> dict[str, Any]:
    """The Ax experiment's trials, data and optimization config (Ax internals, read only)."""
    experiment = opt._client._experiment
    df = experiment.lookup_data().df
    return {
        "metrics": sorted(experiment.metrics),
        "config": str(experiment.optimization_config),
        "search_space": str(experiment.search_space),
        "data": sorted(zip(df["trial_index"], df["metric_name"], df["mean"], strict=True)),
        "trials": {
            index: (trial.status, trial.status_reason, trial.arm.parameters, trial.run_metadata)  # type: ignore[attr-defined]
            for index, trial in experiment.trials.items()
        },
    }


def x(trials: list[SuggestedTrial], name: str) -> list[float]:
    return [float(t.parameters[name]) for t in trials]


# --------------------------------------------------------------------------------- bounds
def test_narrowed_bounds_hold_in_the_sobol_and_bo_phases_and_old_trials_keep_their_data() -> None:
    from ax.core.base_trial import TrialStatus
    loop = Loop(BRANIN)
    before = loop.round(2)  # the centre, Sobol position 0
    outside = [t.trial_id for t in before if not 0 <= float(t.parameters["x1"]) <= 2]
    assert outside, "the test wants an earlier trial outside the new bounds"

    opt = loop.change(set_bounds={"x1": (0, 2)})
    assert opt.phase == "sobol" and opt.next_sobol_position == 1  # the sequence goes on
    sobol = loop.suggest(2) + loop.suggest(2)  # no data yet: two Sobol batches
    assert [t.sobol_position for t in sobol] == [1, 2, 3, 4]
    for t in sobol:
        loop.run(t.trial_id)
    # Position 1 under the old bounds would have landed elsewhere: the sampler maps onto today's.
    assert SobolSampler(BRANIN).point_at(1) != sobol[0].parameters

    bo = loop.round(2) + loop.suggest(2)
    # The model of the last BoTorch call was trained on the trials outside the new bounds too.
    assert set(loop.opt.last_fit_trials) >= set(outside)
    for t in bo[2:]:
        loop.run(t.trial_id)
    assert [t.generator for t in bo] == ["botorch"] * 4
    for t in sobol + bo:
        assert 0.0 <= float(t.parameters["x1"]) <= 2.0, t

    # The earlier trials are still in the experiment, with their data.
    experiment = loop.opt._client._experiment
    for tid in outside:
        trial = experiment.trials[int(tid)]
        assert trial.status == TrialStatus.COMPLETED
        assert trial.arm.parameters == loop.state.trials[tid].parameters  # type: ignore[attr-defined]
        assert set(experiment.lookup_data(trial_indices=[int(tid)]).df["metric_name"]) == {"branin", "cost"}
    lo, hi = experiment.search_space.parameters["x1"].lower, experiment.search_space.parameters["x1"].upper  # type: ignore[attr-defined]
    assert (lo, hi) == (0.0, 2.0)

    after = loop.check_rebuilds_agree(2)
    assert all(0.0 <= v <= 2.0 for v in x(after, "x1"))


def test_widened_bounds_are_searched() -> None:
    spec = apply_change(BRANIN, CampaignChange(set_bounds={"x1": (-5, 0)}))
    loop = Loop(spec)
    loop.round(3)
    opt = loop.change(set_bounds={"x1": (-5, 10)})
    later = loop.round(2) + loop.round(2)
    assert opt.next_sobol_position == 4  # the centre and Sobol positions 0-3, then BoTorch
    assert max(x(later, "x1")) > 0  # the widened part is used


# ---------------------------------------------------------------------------- fix / free
def test_a_fixed_parameter_is_in_every_suggestion_and_a_freed_one_varies_again() -> None:
    loop = Loop(BRANIN)
    loop.round(2)
    loop.change(fix={"x2": 3.0})
    fixed = loop.round(2) + loop.round(2) + loop.round(2)
    assert [t.generator for t in fixed] == ["sobol"] * 3 + ["botorch"] * 3
    assert [t.sobol_position for t in fixed[:3]] == [1, 2, 3]
    assert all(t.parameters["x2"] == 3.0 for t in fixed)
    assert len(set(x(fixed, "x1"))) == len(fixed)  # x1 still varies
    assert all(t.parameters["x2"] == 3.0 for t in loop.check_rebuilds_agree(2))

    opt = loop.change(free=["x2"])
    freed = loop.round(3)
    assert all(t.generator == "botorch" for t in freed)
    assert len(set(x(freed, "x2"))) == len(freed) and 3.0 not in x(freed, "x2")
    assert opt._client._experiment.search_space.parameters["x2"].upper == 15.0  # type: ignore[attr-defined]
    loop.check_rebuilds_agree(1)


def test_fixing_and_freeing_keeps_the_sobol_positions() -> None:
    fixed = apply_change(BRANIN, CampaignChange(fix={"x2": 3}))  # an int for a float parameter
    plain, held = SobolSampler(BRANIN).next_points(0, 8), SobolSampler(fixed).next_points(0, 8)
    assert [p.position for p in held] == list(range(8))
    assert [p.parameters["x1"] for p in held] == [p.parameters["x1"] for p in plain]
    assert all(p.parameters["x2"] == 3.0 and isinstance(p.parameters["x2"], float) for p in held)
    freed = apply_change(fixed, CampaignChange(free=["x2"]))
    assert [p.parameters for p in SobolSampler(freed).next_points(0, 8)] == [p.parameters for p in plain]


# ------------------------------------------------------------------------ approvals
def test_a_rejected_trial_is_abandoned_never_pending_and_never_suggested_again() -> None:
    from ax.core.base_trial import TrialStatus
    from ax.core.utils import extract_pending_observations
    loop = Loop(BRANIN)
    first = loop.suggest(2, approval="a1")
    loop.add(ApprovalGiven, actor="user:ana", approval_id="a1", approved=["0"], rejected=["1"], reason="too hot")
    opt = loop.rebuild()
    assert loop.state.trials["1"].status == "rejected"

    experiment = opt._client._experiment
    trial = experiment.trials[1]
    assert trial.status == TrialStatus.ABANDONED and trial.status_reason == "too hot"
    assert experiment.trials[0].status == TrialStatus.RUNNING  # approved: pending a result
    assert [t.index for t in experiment.trials_by_status[TrialStatus.RUNNING]] == [0]
    with pytest.raises(OptimizerError, match="trial 1 is already rejected"):
        opt.complete("1", {"branin": Measurement(mean=1.0)})
    # Ax's generation strategy deduplicates against the abandoned arm, and its model sees it
    # as a point not to propose again.
    assert trial.arm.signature in experiment.arms_by_signature_for_deduplication  # type: ignore[attr-defined]
    pending = extract_pending_observations(experiment) or {}
    assert any(f.trial_index == 1 for f in pending["branin"])

    loop.run("0")
    second = loop.suggest(3, approval="a2")
    loop.add(ApprovalRejected, actor="user:ana", approval_id="a2", rejected=["2", "3", "4"], reason="no")
    loop.rebuild()
    # Rejected trials do not count toward the 5 initialization trials: still Sobol, on from position 4.
    third = loop.round(2) + loop.round(2)
    assert [t.sobol_position for t in third] == [4, 5, 6, 7]
    assert [t.generator for t in third] == ["sobol"] * 4
    more = loop.round(2) + loop.round(1)
    assert [t.generator for t in more] == ["botorch"] * 3
    rejected = {tuple(t.parameters.items()) for t in [first[1], *second]}
    assert not rejected & {tuple(t.parameters.items()) for t in third + more}
    statuses = [t.status for t in loop.opt._client._experiment.trials.values()]
    assert statuses.count(TrialStatus.ABANDONED) == 4

    nxt = loop.check_rebuilds_agree(2)
    assert not rejected & {tuple(t.parameters.items()) for t in nxt}


def test_a_rejected_bo_trial_is_not_suggested_again() -> None:
    loop = Loop(BRANIN)
    for _ in range(3):
        loop.round(2)  # 5 Sobol trials and one BoTorch trial, completed
    proposed = loop.suggest(1, approval="a1")[0]
    assert proposed.generator == "botorch"
    loop.add(ApprovalRejected, actor="user:ana", approval_id="a1", rejected=[proposed.trial_id], reason="no")
    loop.rebuild()
    nxt = loop.round(2)
    assert proposed.parameters not in [t.parameters for t in nxt]
    loop.check_rebuilds_agree(1)


def test_an_edited_trial_runs_with_the_edited_parameters_as_a_human_choice() -> None:
    from ax.core.base_trial import TrialStatus
    loop = Loop(BRANIN)
    batch = loop.suggest(2, approval="a1")
    loop.add(ApprovalGiven, actor="user:ana", approval_id="a1", approved=["1"],
             edited={"0": {"x1": 1.5}}, reason="closer to the known optimum")
    opt = loop.rebuild()
    record = loop.state.trials["0"]
    assert record.generator == "human" and record.parameters["x1"] == 1.5

    trial = opt._client._experiment.trials[0]
    assert trial.status == TrialStatus.RUNNING
    assert trial.arm.parameters == {"x1": 1.5, "x2": batch[0].parameters["x2"]}  # type: ignore[attr-defined]
    assert trial.run_metadata == {"chosen_by": "human", "decided_by": "user:ana",
                                  "suggested_parameters": batch[0].parameters}

    loop.run("0")
    loop.run("1")
    trial = loop.opt._client._experiment.trials[0]
    assert trial.status == TrialStatus.COMPLETED
    assert loop.opt._client._experiment.lookup_data(trial_indices=[0]).df["mean"].tolist()[0] == pytest.approx(
        branin(1.5, float(batch[0].parameters["x2"])))
    # The edited trial was the centre; the Sobol sequence goes on after trial 1's position.
    assert batch[0].generator == "center"
    assert loop.opt.next_sobol_position == 1
    loop.round(2)
    nxt = loop.check_rebuilds_agree(2)  # 4 completed of 5: one Sobol, one BoTorch
    assert [t.generator for t in nxt] == ["sobol", "botorch"]


def test_an_edited_trial_outside_narrowed_bounds_is_kept() -> None:
    from ax.core.base_trial import TrialStatus
    loop = Loop(BRANIN)
    loop.suggest(2, approval="a1")
    loop.add(ApprovalGiven, actor="user:ana", approval_id="a1", approved=["1"], edited={"0": {"x1": 9.5}}, reason="r")
    loop.rebuild()
    loop.run("0")
    loop.run("1")
    loop.change(set_bounds={"x1": (0, 2)})
    trial = loop.opt._client._experiment.trials[0]
    assert trial.status == TrialStatus.COMPLETED and trial.arm.parameters["x1"] == 9.5  # type: ignore[attr-defined]
    nxt = loop.round(2) + loop.check_rebuilds_agree(2)
    assert all(0.0 <= v <= 2.0 for v in x(nxt, "x1"))


# ---------------------------------------------------------------- constraints, thresholds
def test_an_added_outcome_constraint_is_in_axs_optimization_config_and_used() -> None:
    from ax.core.types import ComparisonOp
    loop = Loop(BRANIN)
    loop.round(3)
    opt = loop.change(add_outcome_constraints=["cost <= 1.5"])
    config = opt._client._experiment.optimization_config
    assert config is not None
    [constraint] = config.outcome_constraints
    assert (constraint.metric_names, constraint.op, constraint.bound, constraint.relative) == (
        ["cost"], ComparisonOp.LEQ, 1.5, False)
    loop.round(2)
    later = loop.round(2)
    assert all(t.generator == "botorch" for t in later)
    loop.check_rebuilds_agree(1)


def test_a_changed_objective_threshold_is_in_axs_optimization_config() -> None:
    from ax.core.types import ComparisonOp
    spec = load_spec(EXAMPLES / "two_objectives.yaml")
    changed = apply_change(spec, CampaignChange(objective_thresholds={"currin": 9.5}))
    config = AxOptimizer(changed)._client._experiment.optimization_config
    thresholds = {tuple(t.metric_names): (t.op, t.bound) for t in config.objective_thresholds}  # type: ignore[union-attr]
    assert thresholds == {("branin",): (ComparisonOp.LEQ, 150.0), ("currin",): (ComparisonOp.LEQ, 9.5)}


def test_a_constraint_on_a_metric_without_data_keeps_the_sobol_phase_until_it_is_measured() -> None:
    loop = Loop(BRANIN)
    loop.round(3)
    loop.round(2)  # the 5 initialization trials
    assert loop.opt.phase == "botorch"
    opt = loop.change(add_outcome_constraints=["purity >= 0.9"])
    assert opt.unobserved_metrics == ["purity"] and opt.phase == "sobol"  # Ax cannot model it yet
    waiting = loop.suggest(2)
    assert [(t.generator, t.sobol_position) for t in waiting] == [("sobol", 4), ("sobol", 5)]
    loop.run(waiting[0].trial_id, purity=0.95)
    loop.run(waiting[1].trial_id)
    assert loop.opt.unobserved_metrics == [] and loop.opt.phase == "botorch"
    assert [t.generator for t in loop.check_rebuilds_agree(1)] == ["botorch"]


def test_a_batch_never_repeats_a_point_when_the_space_is_small() -> None:
    # With x2 fixed and x1 narrowed to [0, 2], Branin's best is the corner x1 = 2, and on this
    # 30-trial log the model proposes it for both candidates of a batch of 2 (Ax deduplicates
    # against the experiment's trials only). The batch holds it once and is topped up.
    from tests.integration.test_optimizer_rebuild import synthetic_log

    events = synthetic_log(BRANIN, 30)
    events.append(CampaignChanged(campaign_id="c", seq=len(events) + 1, actor="user:ana", reason="r",
                                  change=CampaignChange(set_bounds={"x1": (0, 2)}, fix={"x2": 3.0})))
    state = fold(events)
    assert state.spec is not None
    bulk = AxOptimizer.rebuild(state.spec, state.trials.values(), threads=1)
    per_trial = AxOptimizer.rebuild(state.spec, state.trials.values(), threads=1, replay="per_trial")
    batch = bulk.suggest(2)
    assert batch == per_trial.suggest(2)
    assert batch[0].generator == "botorch" and batch[0].parameters == {"x1": 2.0, "x2": 3.0}
    assert batch[1].parameters != batch[0].parameters
    assert all(t.parameters["x2"] == 3.0 and 0 <= float(t.parameters["x1"]) <= 2 for t in batch)
