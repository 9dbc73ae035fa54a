"""The optimizer is derived state: rebuilt from the log, it makes the live optimizer's next move.

Real Ax, real BoTorch, no mocks. The log is built from the events the loop would append
(CampaignCreated, TrialsSuggested, TrialDispatched, TrialCompleted / TrialFailed) and folded
with ``campaigns.state.fold``, exactly as a resume does. ``rebuild`` replays in bulk (its
default); the largest log is also replayed trial by trial, the reference.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
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
from optimizer import AxOptimizer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::pandas.errors.Pandas4Warning")

EXAMPLES = Path(__file__).parents[2] / "campaigns" / "examples"
BRANIN = load_spec(EXAMPLES / "branin.yaml")
BRANIN_OPTIMUM = 0.397887


def branin(x1: float, x2: float) -> float:
    """The Branin function (minimum 0.397887 at three points)."""
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return float((x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * np.cos(x1) + 10)


class Loop:
    """A live optimizer and the events the loop appends for it, side by side."""

    def __init__(self, spec: CampaignSpec) -> None:
        self.spec = spec
        self.opt = AxOptimizer(spec, threads=1)
        self.events: list[EventBase] = [CampaignCreated(campaign_id="c", seq=1, actor="user:t", spec=spec)]

    def _next(self) -> int:
        return len(self.events) + 1

    def suggest(self, n: int) -> list[SuggestedTrial]:
        trials = self.opt.suggest(n)
        self.events.append(TrialsSuggested(campaign_id="c", seq=self._next(), actor="optimizer", trials=trials))
        for t in trials:
            self.events.append(TrialDispatched(
                campaign_id="c", seq=self._next(), actor="orchestrator", trial_id=t.trial_id,
                device_id="dev-1", request_id=f"r{t.trial_id}",
            ))
        return trials

    def complete(self, trial: SuggestedTrial) -> float:
        value = branin(float(trial.parameters["x1"]), float(trial.parameters["x2"]))
        measurements = {"branin": Measurement(mean=value)}
        self.opt.complete(trial.trial_id, measurements)
        self.events.append(TrialCompleted(
            campaign_id="c", seq=self._next(), actor="device:dev-1", trial_id=trial.trial_id,
            device_id="dev-1", request_id=f"r{trial.trial_id}", measurements=measurements,
        ))
        return value

    def fail(self, trial: SuggestedTrial) -> None:
        self.opt.fail(trial.trial_id, "timeout")
        self.events.append(TrialFailed(
            campaign_id="c", seq=self._next(), actor="orchestrator", trial_id=trial.trial_id, reason="timeout",
        ))

    def rebuilt(self) -> AxOptimizer:
        state = fold(self.events)
        assert state.spec is not None and state.anomalies == 0
        return AxOptimizer.rebuild(state.spec, state.trials.values(), threads=1)


def test_rebuilt_optimizer_continues_the_sobol_sequence() -> None:
    loop = Loop(BRANIN)
    first = loop.suggest(2)
    loop.complete(first[0])
    loop.fail(first[1])
    second = loop.suggest(2)  # second[*] stay pending: dispatched, no answer yet

    rebuilt = loop.rebuilt()
    assert rebuilt.phase == loop.opt.phase == "sobol"
    # The centre first (trial 0, no position), then Sobol positions 0, 1, 2.
    assert rebuilt.next_sobol_position == loop.opt.next_sobol_position == 3

    nxt_rebuilt, nxt_live = rebuilt.suggest(2), loop.opt.suggest(2)
    assert nxt_rebuilt == nxt_live
    assert [t.trial_id for t in nxt_live] == ["4", "5"]
    assert [t.sobol_position for t in nxt_live] == [3, 4]
    assert [t.generator for t in first + second + nxt_live] == ["center"] + ["sobol"] * 5


def test_rebuilt_optimizer_makes_the_live_optimizers_next_bo_suggestion() -> None:
    loop = Loop(BRANIN)
    late: list[SuggestedTrial] = []
    pending: list[SuggestedTrial] = []
    for batch in range(6):  # 12 trials in batches of 2; results arrive out of order
        trials = loop.suggest(2)
        for t in reversed(trials):
            if batch == 5 or t.trial_id == "6":
                pending.append(t)  # dispatched, never answered
            elif t.trial_id == "3":
                loop.fail(t)
            elif t.trial_id == "7":
                late.append(t)  # answered after trials 8 and 9
            else:
                loop.complete(t)
        if batch == 4:
            loop.complete(late.pop())
    assert sorted(t.trial_id for t in pending) == ["10", "11", "6"] and not late
    assert loop.opt.phase == "botorch"

    rebuilt = loop.rebuilt()
    assert rebuilt.num_trials == 12 and rebuilt.phase == "botorch"
    # Not a fresh Sobol phase: the rebuilt optimizer knows the positions already used.
    assert rebuilt.next_sobol_position == loop.opt.next_sobol_position == 4

    nxt_rebuilt = rebuilt.suggest(2)
    nxt_live = loop.opt.suggest(2)
    assert nxt_rebuilt == nxt_live
    assert [t.trial_id for t in nxt_live] == ["12", "13"]
    assert all(t.generator == "botorch" for t in nxt_live)
    # Pending trials are known to Ax: the new points are not repeats of them.
    pending_points = {tuple(t.parameters.values()) for t in pending}
    assert not pending_points & {tuple(t.parameters.values()) for t in nxt_live}


def test_bo_phase_waits_for_data_without_idling_devices() -> None:
    loop = Loop(BRANIN)  # 5 initialization trials, BO once 3 are completed
    trials = loop.suggest(4) + loop.suggest(4)  # nothing completed yet: still Sobol, 8 trials
    assert [t.generator for t in trials] == ["center"] + ["sobol"] * 7
    assert [t.sobol_position for t in trials] == [None, *range(7)]
    for t in trials[:3]:
        loop.complete(t)
    assert loop.opt.phase == "botorch"
    rebuilt = loop.rebuilt()
    assert rebuilt.phase == "botorch"
    assert rebuilt.suggest(1) == loop.opt.suggest(1)


@pytest.mark.parametrize("seed", [7])
def test_thirty_trials_of_branin_get_within_0_1_of_the_optimum(seed: int) -> None:
    spec = BRANIN.model_copy(update={"seed": seed})
    loop = Loop(spec)
    best = math.inf
    for _ in range(15):  # 30 trials in batches of 2
        for t in loop.suggest(2):
            best = min(best, loop.complete(t))
    assert loop.opt.num_trials == 30
    assert best - BRANIN_OPTIMUM < 0.1, f"seed {seed}: best {best:.4f} after 30 trials"


def test_rebuilt_optimizer_of_a_sixty_trial_log_makes_the_live_next_suggestion() -> None:
    # 48 Sobol trials keep the test short; the last 12 come from BoTorch, live.
    loop = Loop(BRANIN.model_copy(update={"optimizer": BRANIN.optimizer.model_copy(update={"initialization_trials": 48})}))
    pending: list[SuggestedTrial] = []
    waiting: list[SuggestedTrial] = []  # answered one batch late, out of order
    for batch in range(15):  # 60 trials in batches of 4
        trials = loop.suggest(4)
        for t in reversed(waiting):
            loop.complete(t)
        waiting = []
        for t in trials:
            number = int(t.trial_id)
            if number % 11 == 3:
                loop.fail(t)
            elif number % 13 == 5 or batch == 14:
                pending.append(t)  # dispatched, never answered
            elif number % 4 == 1:
                waiting.append(t)
            else:
                loop.complete(t)
    failed = [e for e in loop.events if isinstance(e, TrialFailed)]
    assert loop.opt.num_trials == 60 and len(failed) == 6 and len(pending) == 7 and not waiting

    state = fold(loop.events)
    assert state.spec is not None
    records = sorted(state.trials.values(), key=lambda r: r.index)
    assert [r.generator for r in records] == ["center"] + ["sobol"] * 47 + ["botorch"] * 12
    statuses = [r.status for r in records]
    assert statuses.count("completed") == 47 and statuses.count("failed") == 6 and statuses.count("running") == 7

    rebuilt = loop.rebuilt()  # the bulk replay
    per_trial = AxOptimizer.rebuild(state.spec, state.trials.values(), threads=1, replay="per_trial")
    assert rebuilt.num_trials == per_trial.num_trials == 60
    assert rebuilt.phase == per_trial.phase == "botorch"
    nxt_rebuilt, nxt_per_trial, nxt_live = rebuilt.suggest(3), per_trial.suggest(3), loop.opt.suggest(3)
    assert nxt_rebuilt == nxt_per_trial == nxt_live
    assert [t.trial_id for t in nxt_live] == ["60", "61", "62"]
    assert all(t.generator == "botorch" for t in nxt_live)
