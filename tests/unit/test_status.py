"""`closedloop status --json` of a campaign with two objectives: no single "best" chosen by the
first objective (issue 17), but the Pareto front and each objective's own best."""

from __future__ import annotations

from flows.cli.report import status_dict
from tests.unit.test_html_report import _campaign


def test_two_objectives_report_the_front_and_each_objective_s_best_not_one_best() -> None:
    _, state = _campaign("two-objectives", two=True)
    out = status_dict(state)
    done = [t for t in state.trials.values() if t.status == "completed"]
    assert out["best"] is None
    assert sorted(t["trial_id"] for t in out["pareto_front"]) == sorted(t.trial_id for t in state.pareto_front())
    for name in ("branin", "currin"):
        lowest = min(t.measurements[name].mean for t in done)
        assert out["best_by_objective"][name]["measurements"][name] == lowest
    # Each objective's best is on the front (nothing beats it on that objective).
    assert {out["best_by_objective"][n]["trial_id"] for n in ("branin", "currin")} <= {
        t["trial_id"] for t in out["pareto_front"]}


def test_one_objective_keeps_its_best() -> None:
    _, state = _campaign("one-objective", two=False)
    out = status_dict(state)
    assert out["best"]["trial_id"] == state.best().trial_id and "pareto_front" not in out
