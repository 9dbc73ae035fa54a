"""The emulator built from a recorded campaign: accuracy on held-out points, noise, errors.

The recorded campaigns are event logs as the loop writes them (``CampaignCreated``, then per
batch ``TrialsSuggested``, ``TrialDispatched`` and ``TrialCompleted``), folded with
``campaigns.fold``. Their points are either a scrambled Sobol design (``torch.quasirandom``) or
the trials of real campaigns: ``tests/data/hartmann6_ax_campaigns.json`` holds five 60-trial
campaigns the Ax optimizer ran on ``campaigns/examples/hartmann6.yaml`` (noise-free; spec seeds
11-15), written by ``benchmarks/emulator.py --save-campaigns``.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from botorch.test_functions import Branin, Hartmann
from torch.quasirandom import SobolEngine

from campaigns import (
    CampaignCreated,
    CampaignSpec,
    Measurement,
    SuggestedTrial,
    TrialCompleted,
    TrialDispatched,
    TrialsSuggested,
    fold,
    load_spec,
    parse_spec,
)
from campaigns.events import EventBase
from simulators.emulator import Emulator, EmulatorError, r2_score

EXAMPLES = Path(__file__).parents[2] / "campaigns" / "examples"
HARTMANN6 = load_spec(EXAMPLES / "hartmann6.yaml")
BRANIN = load_spec(EXAMPLES / "branin.yaml")


def recorded_log(spec: CampaignSpec, points: list[dict[str, float | int | str]],
                 values: list[dict[str, float]], sem: float | None = None) -> list[EventBase]:
    """The log of a campaign that ran ``points`` in batches of ``spec.batch_size`` and measured ``values``."""
    events: list[EventBase] = [CampaignCreated(campaign_id=spec.name, seq=1, actor="user:test", spec=spec)]

    def add(event_type: type[EventBase], **fields: object) -> None:
        events.append(event_type(campaign_id=spec.name, seq=len(events) + 1, **fields))

    for start in range(0, len(points), spec.batch_size):
        batch = range(start, min(start + spec.batch_size, len(points)))
        add(TrialsSuggested, actor="optimizer", trials=[
            SuggestedTrial(trial_id=str(i), parameters=points[i], generator="sobol", sobol_position=i) for i in batch])
        for i in batch:
            device = spec.devices[i % len(spec.devices)].id
            add(TrialDispatched, actor="orchestrator", trial_id=str(i), device_id=device, request_id=f"r{i}")
            add(TrialCompleted, actor=f"device:{device}", trial_id=str(i), device_id=device, request_id=f"r{i}",
                measurements={k: Measurement(mean=v, sem=sem) for k, v in values[i].items()})
    return events


def sobol_points(spec: CampaignSpec, n: int, seed: int) -> list[dict[str, float | int | str]]:
    names = [p.name for p in spec.parameters]
    lows = torch.tensor([p.bounds[0] for p in spec.parameters], dtype=torch.float64)  # type: ignore[union-attr]
    highs = torch.tensor([p.bounds[1] for p in spec.parameters], dtype=torch.float64)  # type: ignore[union-attr]
    x = lows + (highs - lows) * SobolEngine(len(names), scramble=True, seed=seed).draw(n, dtype=torch.float64)
    return [dict(zip(names, map(float, row), strict=True)) for row in x.tolist()]


def hartmann6(points: list[dict[str, float | int | str]]) -> list[float]:
    x = torch.tensor([[float(p[f"x{j}"]) for j in range(1, 7)] for p in points], dtype=torch.float64)
    return Hartmann(dim=6)(x).tolist()


def branin(points: list[dict[str, float | int | str]]) -> list[float]:
    return Branin()(torch.tensor([[float(p["x1"]), float(p["x2"])] for p in points], dtype=torch.float64)).tolist()


def uniform_points(n: int, seed: int) -> list[dict[str, float | int | str]]:
    x = torch.rand(n, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return [{f"x{j + 1}": float(v) for j, v in enumerate(row)} for row in x.tolist()]


def emulate_hartmann6(n: int, seed: int = 0) -> Emulator:
    spec = HARTMANN6.model_copy(update={"budget": HARTMANN6.budget.model_copy(update={"max_trials": n})})
    points = sobol_points(spec, n, seed)
    state = fold(recorded_log(spec, points, [{"hartmann6": v} for v in hartmann6(points)]))
    assert state.count("completed") == n
    assert state.spec is not None
    return Emulator.fit(state.spec, state.trials.values(), seed=seed)


def ax_campaigns() -> dict[str, list[dict[str, object]]]:
    doc = json.loads((Path(__file__).parents[1] / "data" / "hartmann6_ax_campaigns.json").read_text(encoding="utf-8"))
    return doc["campaigns"]  # type: ignore[no-any-return]


def test_hartmann6_emulator_of_a_real_60_trial_campaign() -> None:
    """Fitted on the 60 trials of one real Ax campaign (spec seed 11).

    The 0.8 target is NOT met away from the campaign's own points. Measured
    (benchmarks/emulator.py, five campaigns): leave-one-out R² on the campaign's own trials
    0.85-0.97; R² on 500 uniform points 0.13-0.55; R² on the 240 trials of the four other
    campaigns -0.15-0.65 (they converge to other local minima). For this campaign: 0.90,
    0.37, 0.40. The asserts are floors below what holds.
    """
    campaigns = ax_campaigns()
    source = campaigns.pop("11")
    points = [t["parameters"] for t in source]
    state = fold(recorded_log(HARTMANN6, points, [{"hartmann6": t["hartmann6"]} for t in source]))  # type: ignore[misc]
    assert state.spec is not None and state.count("completed") == 60
    emulator = Emulator.fit(state.spec, state.trials.values())
    assert emulator.loo_r2["hartmann6"] >= 0.85
    held_out = [t["parameters"] for trials in campaigns.values() for t in trials]
    assert len(held_out) == 240
    r2 = r2_score(hartmann6(held_out), emulator.predict(held_out)["hartmann6"][0])  # type: ignore[arg-type]
    assert r2 >= 0.3, f"R² {r2:.3f} on the 240 trials of four other campaigns"


def test_hartmann6_60_trials_predicts_held_out_trials_of_the_campaign() -> None:
    """5-fold cross-validation on the real Ax campaign of spec seed 11: each fifth of its 60
    trials is held out, the emulator refitted on the other 48 predicts it; the values are the
    noise-free true function. Measured on the five campaigns (seeds 11-15): 0.851, 0.913, 0.856,
    0.915, 0.935. (On uniform points over the whole box it is 0.4-0.6: see the test above.)"""
    source = ax_campaigns()["11"]
    points = [t["parameters"] for t in source]
    truth = [float(t["hartmann6"]) for t in source]  # type: ignore[arg-type]
    order = list(range(len(points)))
    random.Random(0).shuffle(order)
    predicted = [0.0] * len(points)
    for k in range(5):
        held_out = sorted(order[k::5])
        kept = [i for i in range(len(points)) if i not in held_out]
        state = fold(recorded_log(HARTMANN6, [points[i] for i in kept],  # type: ignore[misc]
                                  [{"hartmann6": truth[i]} for i in kept]))
        assert state.spec is not None
        means = Emulator.fit(state.spec, state.trials.values()).predict([points[i] for i in held_out])  # type: ignore[misc]
        for i, m in zip(held_out, means["hartmann6"][0], strict=True):
            predicted[i] = m
    r2 = r2_score(truth, predicted)
    assert r2 >= 0.8, f"5-fold held-out R² {r2:.3f}"


@pytest.fixture(scope="module")
def hartmann6_60() -> Emulator:
    return emulate_hartmann6(60)


def test_hartmann6_after_60_trials_predicts_held_out_points(hartmann6_60: Emulator) -> None:
    """The issue's target, R² >= 0.8 after 60 trials, is NOT met on uniform held-out points.

    Measured on 500 uniform points (benchmarks/emulator.py): R² 0.50-0.58 over three Sobol
    seeds (this one: 0.50). 60 points do not pin down Hartmann6's four narrow bumps in 6-D;
    see the 300-trial test for where 0.8 is reached. This asserts a floor below what holds.
    """
    held_out = uniform_points(500, seed=1000)
    r2 = r2_score(hartmann6(held_out), hartmann6_60.predict(held_out)["hartmann6"][0])
    assert hartmann6_60.inputs == [f"x{j}" for j in range(1, 7)] and hartmann6_60.metrics == ["hartmann6"]
    assert hartmann6_60.points == {"hartmann6": 60}
    assert r2 >= 0.4, f"R² {r2:.3f} on 500 uniform held-out points"
    assert "60 points" in hartmann6_60.describe() and "\n" not in hartmann6_60.describe()


def test_hartmann6_after_300_trials_reaches_r2_08() -> None:
    held_out = uniform_points(300, seed=1001)
    emulator = emulate_hartmann6(300, seed=1)
    r2 = r2_score(hartmann6(held_out), emulator.predict(held_out)["hartmann6"][0])
    assert r2 >= 0.8, f"R² {r2:.3f} on 300 uniform held-out points"


def test_serves_a_new_campaign(hartmann6_60: Emulator) -> None:
    """A new campaign measured by the emulator: a valid log whose values track the true function."""
    spec = HARTMANN6.model_copy(update={"name": "hartmann6-emulated"})
    points = uniform_points(24, seed=7)
    rng = random.Random(3)
    values = [hartmann6_60.measure(p, rng) for p in points]
    sem = hartmann6_60.noise_sd(points[0])["hartmann6"]
    state = fold(recorded_log(spec, points, values, sem=sem))
    assert state.count("completed") == 24 and state.anomalies == 0
    measured = [t.measurements["hartmann6"].mean for t in state.trials.values()]
    means = [hartmann6_60.evaluate(p)["hartmann6"] for p in points]
    assert all(abs(m - e) < 5 * sem for m, e in zip(measured, means, strict=True))
    assert r2_score(hartmann6(points), measured) > 0.3


def test_noise_free_data_gives_small_noise_and_exact_predictions_on_average() -> None:
    points = sobol_points(BRANIN, 60, seed=0)
    truth = branin(points)
    emulator = Emulator.fit(BRANIN, fold(recorded_log(BRANIN, points, [{"branin": v} for v in truth])).trials.values())
    spread = math.sqrt(sum((v - sum(truth) / 60) ** 2 for v in truth) / 59)
    noise = emulator.noise_sd({"x1": 0.0, "x2": 0.0})["branin"]
    assert noise < 0.03 * spread  # measured 0.87 against a spread of 51
    assert emulator.loo_r2["branin"] > 0.95
    assert abs(emulator.evaluate(points[5])["branin"] - truth[5]) < 3 * noise


def test_noisy_data_gives_the_true_noise() -> None:
    points = sobol_points(BRANIN, 60, seed=0)
    rng = random.Random(0)
    noisy = [{"branin": v + rng.gauss(0.0, 5.0)} for v in branin(points)]
    fitted = Emulator.fit(BRANIN, fold(recorded_log(BRANIN, points, noisy)).trials.values())
    assert 0.6 * 5.0 < fitted.noise_sd(points[0])["branin"] < 1.4 * 5.0
    recorded = Emulator.fit(BRANIN, fold(recorded_log(BRANIN, points, noisy, sem=5.0)).trials.values())
    assert recorded.noise_sd(points[0])["branin"] == pytest.approx(5.0)
    draws = [recorded.measure(points[0], rng)["branin"] for _ in range(400)]
    mean = sum(draws) / len(draws)
    assert mean == pytest.approx(recorded.evaluate(points[0])["branin"], abs=1.0)
    assert math.sqrt(sum((d - mean) ** 2 for d in draws) / 399) == pytest.approx(5.0, rel=0.15)


def test_mixed_parameters_and_save_load(tmp_path: Path) -> None:
    """Choice, log-scale and int parameters; a saved emulator loads as the same model."""
    spec = parse_spec({
        "name": "mixed", "parameters": [
            {"name": "conc", "type": "float", "bounds": [0.01, 1.0], "log_scale": True},
            {"name": "steps", "type": "int", "bounds": [1, 10]},
            {"name": "solvent", "type": "choice", "values": ["water", "ethanol", "dmso"]}],
        "objectives": [{"name": "yield_"}], "outcome_constraints": ["cost <= 3"],
        "budget": {"max_trials": 40}, "devices": [{"id": "bench", "measures": ["yield_", "cost"]}]})
    rng = random.Random(1)
    offset = {"water": 0.0, "ethanol": 1.0, "dmso": -1.0}
    points: list[dict[str, float | int | str]] = [
        {"conc": math.exp(rng.uniform(math.log(0.01), 0.0)), "steps": rng.randint(1, 10),
         "solvent": rng.choice(list(offset))} for _ in range(40)]

    def truth(p: dict[str, float | int | str]) -> dict[str, float]:
        return {"yield_": math.log(float(p["conc"])) + offset[str(p["solvent"])], "cost": 0.3 * float(p["steps"])}

    log = recorded_log(spec, points, [truth(p) for p in points])
    emulator = Emulator.fit(spec, fold(log).trials.values(), warp="none")
    assert emulator.metrics == ["yield_", "cost"]
    probe = {"conc": 0.1, "steps": 4, "solvent": "ethanol"}
    assert emulator.evaluate(probe) == pytest.approx(truth(probe), abs=0.15)
    emulator.save(tmp_path / "mixed.json")
    again = Emulator.load(tmp_path / "mixed.json")
    assert again.predict([probe, points[0]]) == emulator.predict([probe, points[0]])
    assert again.describe() == emulator.describe()
    with pytest.raises(EmulatorError, match="not one of its values"):
        emulator.evaluate({**probe, "solvent": "acetone"})
    with pytest.raises(EmulatorError, match="no value for parameter 'steps'"):
        emulator.evaluate({"conc": 0.1, "solvent": "water"})


def test_too_few_trials_and_unknown_metric_are_one_line_errors() -> None:
    points = sobol_points(BRANIN, 4, seed=0)
    values = [{"branin": v} for v in branin(points)]
    trials = fold(recorded_log(BRANIN, points[:2], values[:2])).trials.values()
    with pytest.raises(EmulatorError) as few:
        Emulator.fit(BRANIN, trials)
    assert "2 completed trial(s)" in str(few.value) and "run more trials" in str(few.value)
    with pytest.raises(EmulatorError, match="no completed trial"):
        Emulator.fit(BRANIN, [])
    trials = fold(recorded_log(BRANIN, points, values)).trials.values()
    with pytest.raises(EmulatorError) as unknown:
        Emulator.fit(BRANIN, trials, metrics=["yield"])
    assert str(unknown.value) == ("metric 'yield' was never measured in campaign 'branin' — "
                                  "choose among the measured metrics: branin")
    with pytest.raises(EmulatorError, match="not a usable number"):
        Emulator.fit(BRANIN, trials).evaluate({"x1": float("nan"), "x2": 1.0})


def test_r2_score() -> None:
    assert r2_score([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0
    assert r2_score([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]) == 0.0
    assert r2_score([1.0, 1.0], [1.0, 2.0]) == 0.0
    with pytest.raises(ValueError):
        r2_score([1.0], [1.0, 2.0])
