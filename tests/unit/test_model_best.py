"""The best trial by the model beside the best observed (issue 18): a noisy result can make a
trial look best by chance; the model's posterior mean weighs every result.

Campaigns run in process (``tests.unit.engine_rig``: the loop, simulated instruments, a manual
clock), Sobol trials only so that each takes a fraction of a second; every view (``status``
text and JSON, the progress line, ``compare``, the report page, the exports) is checked on the
same noisy campaign.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest

from campaigns import CampaignState, fold, parse_spec
from campaigns.spec import ChoiceParameter
from flows.cli.compare import best_so_far
from flows.cli.html_report import report_page
from flows.cli.progress import ModelCache, detail_line
from flows.cli.report import model_columns, model_of, status_dict, status_text
from optimizer.model_best import Z95, model_best
from simulators.catalog import SIMULATORS
from storage.export import write_csv, write_json
from tests.unit.engine_rig import Rig


def _campaign(seed: int, noise_sd: float, trials: int = 20, *, simulator: str = "branin",
              **spec: Any) -> tuple[Rig, CampaignState]:
    """A Sobol campaign on one simulated instrument with Gaussian noise of ``noise_sd``."""
    device = {"id": "bench", "simulator": simulator, "options": {"duration_s": [5, 20], "seed": seed,
                                                                 "noise_sd": noise_sd}}
    unit = simulator != "branin"
    campaign = parse_spec({
        "name": "noisy", "seed": seed,
        "parameters": [{"name": "x1", "type": "float", "bounds": [0, 1] if unit else [-5, 10]},
                       {"name": "x2", "type": "float", "bounds": [0, 1] if unit else [0, 15]}],
        "objectives": [{"name": "branin", "minimize": True}], "budget": {"max_trials": trials},
        "trial_timeout_s": 120, "optimizer": {"method": "sobol"}, "devices": [device], **spec,
    })
    rig = Rig(campaign, campaign_id="noisy")
    rig.hub.instrument("bench", simulator, device["options"])
    state = rig.run()
    assert state.status == "finished" and state.count("completed") == trials
    return rig, state


def _true_branin(parameters: dict[str, Any]) -> float:
    """Branin without the instrument's noise."""
    return SIMULATORS["branin"].model({}).evaluate(parameters)["branin"]


@pytest.fixture(scope="module")
def noisy() -> tuple[Rig, CampaignState]:
    # Seed 5, noise sd 4: a case where one lucky reading makes a trial the best observed.
    return _campaign(seed=5, noise_sd=4.0)


def test_with_noise_the_model_s_best_and_the_observed_best_can_differ(noisy: Any) -> None:
    _, state = noisy
    model = model_of(state)
    assert model is not None and model.pick is not None and model.why is None
    done = [t for t in state.trials.values() if t.status == "completed"]
    observed = {t.trial_id: t.measurements["branin"].mean for t in done}
    means = {t: e.metrics["branin"].mean for t, e in model.trials.items()}
    assert set(means) == set(observed)  # in-sample: a prediction at every completed trial
    # The best observed is the lowest reading; the model's best has the lowest posterior mean.
    assert state.best().trial_id == min(observed, key=observed.__getitem__)
    assert model.pick.trial_id == min(means, key=means.__getitem__)
    # In this seeded case they differ, and the model's pick is truly the better trial.
    best_observed = state.best()
    assert model.pick.trial_id != best_observed.trial_id
    assert observed[best_observed.trial_id] < observed[model.pick.trial_id]
    assert _true_branin(model.pick.parameters) < _true_branin(best_observed.parameters)
    # mean ± sd, the 95% interval, and what was measured there.
    e = model.pick.metrics["branin"]
    assert e.sd > 0 and (e.low, e.high) == pytest.approx((e.mean - Z95 * e.sd, e.mean + Z95 * e.sd))
    assert e.observed == observed[model.pick.trial_id]


def test_status_shows_both_bests_in_text_and_json(noisy: Any) -> None:
    _, state = noisy
    model = model_of(state)
    assert model is not None and model.pick is not None
    out = json.loads(json.dumps(status_dict(state, model)))
    assert out["best"]["trial_id"] == state.best().trial_id  # observed, as before
    picked = out["model_best"]
    assert out["model_best_why"] is None and picked["trial_id"] == model.pick.trial_id
    assert picked["parameters"] == state.trials[picked["trial_id"]].parameters
    branin = picked["objectives"]["branin"]
    assert set(branin) == {"mean", "sd", "low", "high", "observed"}
    assert branin["low"] < branin["mean"] < branin["high"]
    assert branin["observed"] == state.trials[picked["trial_id"]].measurements["branin"].mean
    assert "model_best" not in status_dict(state)  # `list --json` fits no model
    e = model.pick.metrics["branin"]
    line = f"best by the model: trial {model.pick.trial_id} (branin {e.mean:.4g} ± {e.sd:.2g}; observed {e.observed:.4g})"
    text = status_text(state, model).splitlines()
    assert text[text.index(line) - 1].startswith(f"best branin = {state.best().measurements['branin'].mean:.6g} "
                                                 f"(trial {state.best().trial_id})")


def test_the_progress_line_shows_it_and_refits_only_when_results_change(noisy: Any) -> None:
    rig, state = noisy
    now = [0.0]
    cache = ModelCache(every_s=10.0, clock=lambda: now[0])
    first = cache.get(state)
    assert first is not None and first.pick is not None
    assert f"model #{first.pick.trial_id} " in detail_line(state, model=first)
    events = rig.events()
    last = max(i for i, e in enumerate(events) if e.kind == "TrialCompleted")
    earlier = fold(events[:last])  # one result fewer: the completed trials changed
    now[0] = 5.0
    assert cache.get(earlier) is first  # within 10 s of the last fit: the last one is shown
    now[0] = 10.0
    refitted = cache.get(earlier)
    assert refitted is not None and refitted is not first and len(refitted.trials) == len(first.trials) - 1
    now[0] = 600.0
    assert cache.get(earlier) is refitted  # nothing new: no fit, however long after


def test_exports_say_which_trial_the_model_picks_and_its_mean_and_sd_at_each(noisy: Any) -> None:
    _, state = noisy
    model = model_of(state)
    assert model is not None and model.pick is not None and state.spec is not None
    columns = model_columns(state.spec, model)
    out = io.StringIO()
    write_csv(state, out, columns)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["trial_id"] for r in rows if r["model.pick"] == "True"] == [model.pick.trial_id]
    means = {r["trial_id"]: float(r["model.branin.mean"]) for r in rows if r["model.branin.mean"]}
    assert min(means, key=means.__getitem__) == model.pick.trial_id
    assert all(float(r["model.branin.sd"]) > 0 for r in rows if r["model.branin.sd"])
    document = io.StringIO()
    write_json(state, document, columns)
    parsed = json.loads(document.getvalue())
    assert parsed["model"] == {"picked": [model.pick.trial_id], "why": None}
    assert [t["trial_id"] for t in parsed["trials"] if t["model.pick"]] == [model.pick.trial_id]


def test_compare_and_the_report_page_show_it(noisy: Any) -> None:
    rig, state = noisy
    model = model_of(state)
    assert model is not None and model.pick is not None
    assert best_so_far(state).by_model.endswith(f"(trial {model.pick.trial_id})")
    page = report_page(rig.events(), skipped="--no-analyses")
    section = page[page.index("<h2 id='model'>"):page.index("<h2 id='timeline'>")]
    assert f"<td>{model.pick.trial_id}</td><td>best by the model</td>" in section
    assert f"<td>{state.best().trial_id}</td><td>best observed</td>" in section


def test_without_noise_both_agree_on_an_obvious_minimum() -> None:
    _, state = _campaign(seed=4, noise_sd=0.0)
    model = model_of(state)
    assert model is not None and model.pick is not None
    observed = {t.trial_id: t.measurements["branin"].mean for t in state.trials.values()}
    ranked = sorted(observed.values())
    assert ranked[1] - ranked[0] > 2.0  # the minimum stands out
    assert model.pick.trial_id == state.best().trial_id


def test_outcome_constraints_hold_by_the_model_s_means() -> None:
    _, state = _campaign(seed=2, noise_sd=0.5, trials=12, simulator="branin_currin",
                         outcome_constraints=["currin <= 7"])
    model = model_of(state)
    assert model is not None and model.pick is not None
    assert model.pick.metrics["currin"].mean <= 7
    branin = {t: e.metrics["branin"].mean for t, e in model.trials.items()}
    better = [t for t, m in branin.items() if m < branin[model.pick.trial_id]]
    assert better  # the constraint made the difference here
    assert all(model.trials[t].metrics["currin"].mean > 7 for t in better)
    assert status_dict(state, model)["model_best"]["constraints"]["currin"]["mean"] <= 7


def test_several_objectives_give_the_model_s_pareto_set() -> None:
    _, state = _campaign(seed=1, noise_sd=0.2, trials=10, simulator="branin_currin",
                         objectives=[{"name": "branin", "minimize": True}, {"name": "currin", "minimize": True}])
    model = model_of(state)
    assert model is not None and model.pick is None and model.front
    loss = {t: (e.metrics["branin"].mean, e.metrics["currin"].mean) for t, e in model.trials.items()}

    def dominated(t: str) -> bool:
        return any(u != t and all(a <= b for a, b in zip(loss[u], loss[t], strict=True)) for u in loss)

    assert {t.trial_id for t in model.front} == {t for t in loss if not dominated(t)}
    out = status_dict(state, model)
    assert out["model_best"] is None and "several objectives" in out["model_best_why"]
    assert [t["trial_id"] for t in out["model_pareto_front"]] == [t.trial_id for t in model.front]
    assert set(out["model_pareto_front"][0]["objectives"]) == {"branin", "currin"}


def test_where_the_model_does_not_apply_it_says_why_instead_of_guessing() -> None:
    _, state = _campaign(seed=3, noise_sd=1.0, trials=6)
    assert state.spec is not None
    few = model_best(state.spec, [t for t in state.trials.values() if int(t.trial_id) < 2])
    assert few.pick is None and few.why == "2 completed trial(s) with data; a model needs 3"
    # A space the fast engine does not serve: more choice combinations than it enumerates.
    solvent = ChoiceParameter(name="solvent", type="choice", values=[f"s{i}" for i in range(40)])
    choice = state.spec.model_copy(update={"parameters": [*state.spec.parameters, solvent]})
    answer = model_best(choice, state.trials.values())
    assert answer.pick is None and "40 combinations of choice values" in (answer.why or ""), answer.why
    out = status_dict(state, answer)
    assert out["model_best"] is None and "combinations of choice values" in out["model_best_why"]
    assert status_text(state, answer).splitlines()[3].startswith("best by the model: - (no model-based best")
