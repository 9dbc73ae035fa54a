"""Simulator models and behaviour options: values, noise, durations, failures, drift, seeds."""

from __future__ import annotations

import random
import statistics
from collections import Counter
from pathlib import Path

import pytest

from campaigns import load_spec
from flows.engine.catalog import check_spec_devices
from simulators import (
    SIMULATORS,
    ColourMixingModel,
    ColourMixingOptions,
    SimInstrument,
    SimulatorOptions,
    plot_spectra,
    run_random,
    simulate,
)
from devices import MqttSettings

ROOT = Path(__file__).resolve().parents[2]
TARGET = {"R": 0.55, "G": 0.30, "B": 0.70}


class Paraboloid:
    """A model served by an instrument without being in the catalog (as an emulator would be)."""

    inputs = ["u"]
    metrics = ["y"]

    def evaluate(self, parameters: dict[str, float]) -> dict[str, float]:
        return {"y": (float(parameters["u"]) - 0.25) ** 2}


def _run(name: str, options: dict[str, object], parameters: dict[str, object], n: int = 0,
         trial: str = "7", **kw: float):  # type: ignore[no-untyped-def]
    """One run of a catalog simulator, or of the paraboloid (``name="paraboloid"``: no torch)."""
    if name == "paraboloid":
        validated = SimulatorOptions.model_validate(options)
        model = Paraboloid()
    else:
        validated = SIMULATORS[name].options(options)
        model = SIMULATORS[name].build(validated)
    return simulate(model, validated, parameters, run_random(validated.seed or 0, trial, ":7:1", n), **kw)


# -- colour mixing --------------------------------------------------------------------------


def test_colour_distance_is_zero_at_the_target_and_grows_away_from_it() -> None:
    model = ColourMixingModel()
    at_target = model.evaluate(TARGET)
    assert at_target["colour_distance"] == 0.0
    assert all(at_target[c] > 0 for c in model.channels)
    distances = [model.evaluate({"R": 0.55 + s, "G": 0.30 + s, "B": 0.70 - s})["colour_distance"]
                 for s in (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)]
    assert distances == sorted(distances) and distances[-1] > 0.2
    # the sensor's noise leaves about 1 % at the target
    noisy = _run("colour_mixing", {"seed": 3}, TARGET).values
    assert noisy is not None and 0.0 < noisy["colour_distance"] < 0.03


def test_colour_channels_follow_the_leds() -> None:
    model = ColourMixingModel(ColourMixingOptions(ambient=0.0))
    red = model.evaluate({"R": 1.0, "G": 0.0, "B": 0.0})
    blue = model.evaluate({"R": 0.0, "G": 0.0, "B": 1.0})
    assert max(model.channels, key=red.__getitem__) == "ch630"
    assert max(model.channels, key=blue.__getitem__) == "ch480"
    half = model.evaluate({"R": 0.5, "G": 0.0, "B": 0.0})["ch630"]
    assert 0.5 * red["ch630"] < half < 0.6 * red["ch630"]  # efficiency droop: a little more than half


def test_spectra_plot_is_a_png(tmp_path: Path) -> None:
    path = plot_spectra(tmp_path / "spectra.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- reaction yield -------------------------------------------------------------------------


def test_reaction_yield_stays_in_percent_and_needs_known_choices() -> None:
    model = SIMULATORS["reaction_yield"].model({})
    rng = random.Random(1)
    for _ in range(300):
        values = model.evaluate({"temperature": rng.uniform(20, 140), "time": rng.uniform(5, 240),
                                 "concentration": rng.uniform(0.05, 2.0), "solvent": rng.choice(["toluene", "thf", "dmf", "ethanol"]),
                                 "catalyst": rng.choice(["pd_pph3", "pd_dppf", "pd_xphos"])})
        assert 0.0 <= values["yield_pct"] <= 100.0 and 0.0 <= values["impurity_pct"] <= 100.0
        assert values["yield_pct"] + values["impurity_pct"] <= 100.0 + 1e-9
    best = model.evaluate({"temperature": 55, "time": 140, "concentration": 0.45, "solvent": "toluene", "catalyst": "pd_xphos"})
    assert best["yield_pct"] == pytest.approx(93.9, abs=0.1) and best["impurity_pct"] == pytest.approx(5.1, abs=0.1)
    bad = _run("reaction_yield", {}, {"temperature": 55, "time": 140, "concentration": 0.45, "solvent": "water", "catalyst": "pd_xphos"})
    assert bad.values is None and bad.error is not None and "solvent" in bad.error


def test_example_campaigns_validate() -> None:
    for name in ("colour_mixing", "reaction_yield"):
        check_spec_devices(load_spec(ROOT / "campaigns" / "examples" / f"{name}.yaml"))


# -- behaviour ------------------------------------------------------------------------------


def test_runs_are_reproducible_from_seed_trial_and_attempt() -> None:
    options = {"noise_sd": 0.5, "duration": {"dist": "lognormal", "median_s": 2.0}, "seed": 4}
    first = _run("paraboloid", options, {"u": 1.0})
    assert first == _run("paraboloid", options, {"u": 1.0})
    again = _run("paraboloid", options, {"u": 1.0}, n=1)  # the same request run a second time
    other = _run("paraboloid", {**options, "seed": 5}, {"u": 1.0})
    assert len({first.values["y"], again.values["y"], other.values["y"]}) == 3  # type: ignore[index]


def test_noise_is_homoscedastic_or_proportional_and_reported_as_sem() -> None:
    flat = _run("paraboloid", {"noise_sd": 0.3}, {"u": 1.0})
    assert flat.sems == {"y": 0.3}
    rel = _run("paraboloid", {"noise_rel": 0.1}, {"u": 1.0})
    mean = Paraboloid().evaluate({"u": 1.0})["y"]
    assert rel.sems == {"y": pytest.approx(0.1 * mean)}
    draws = [_run("paraboloid", {"noise_rel": 0.1}, {"u": 1.0}, trial=str(i)).values["y"]  # type: ignore[index]
             for i in range(400)]
    assert statistics.stdev(draws) == pytest.approx(0.1 * mean, rel=0.15)
    assert _run("paraboloid", {}, {"u": 1.0}).sems == {"y": None}


def test_duration_distributions() -> None:
    def durations(spec: dict[str, object]) -> list[float]:
        return [_run("paraboloid", {"duration": spec}, {"u": 0.0}, trial=str(i)).duration_s for i in range(300)]

    assert set(durations({"dist": "fixed", "seconds": 1.5})) == {1.5}
    assert all(2 <= d <= 3 for d in durations({"dist": "uniform", "low": 2, "high": 3}))
    assert statistics.median(durations({"dist": "lognormal", "median_s": 4.0, "sigma": 0.3})) == pytest.approx(4.0, rel=0.1)
    capped = durations({"dist": "exponential", "mean_s": 2.0, "max_s": 3.0})
    assert max(capped) == 3.0 and 1.0 < statistics.mean(capped) < 2.0
    assert all(0.1 <= d <= 0.2 for d in durations({"dist": "uniform", "low": 0.1, "high": 0.2}))
    assert {_run("paraboloid", {"duration_s": [0.5, 0.5]}, {"u": 0.0}).duration_s} == {0.5}


def test_each_failure_mode_happens_at_its_rate() -> None:
    options = {"failures": {"error": 0.1, "drop": 0.2, "garbage": 0.15, "offline": 0.05}, "seed": 9}
    fates = Counter(_run("paraboloid", options, {"u": 0.0}, trial=str(i)).fate for i in range(4000))
    for fate, p in (("error", 0.1), ("drop", 0.2), ("garbage", 0.15), ("offline", 0.05), ("ok", 0.5)):
        assert fates[fate] / 4000 == pytest.approx(p, abs=0.025), fates
    failed = _run("paraboloid", {"failure_rate": 1.0}, {"u": 0.0})
    assert (failed.fate, failed.values, failed.error) == ("error", None, "simulated instrument failure")
    for fate in ("drop", "garbage", "offline"):  # these still measure: the instrument decides what to send
        assert _run("paraboloid", {"failures": {fate: 1.0}}, {"u": 0.0}).values is not None


def test_drift_per_trial_is_deterministic() -> None:
    x = {"u": 1.0}
    base = _run("paraboloid", {}, x).values["y"]  # type: ignore[index]
    assert _run("paraboloid", {"drift": {"per_trial": 0.5}}, x, trials_before=10).values["y"] == pytest.approx(base + 5.0)  # type: ignore[index]
    gain = _run("paraboloid", {"drift": {"per_hour": 0.1, "relative": True}}, x, hours=2.0).values["y"]  # type: ignore[index]
    assert gain == pytest.approx(base * 1.2)


@pytest.mark.parametrize(("options", "message"), [
    ({"failure_rate": 0.5, "failures": {"error": 0.1}}, "not both"),
    ({"failures": {"drop": 0.6, "garbage": 0.6}}, "more than 1"),
    ({"duration_s": [1, 2], "duration": {"dist": "fixed", "seconds": 1}}, "not both"),
    ({"duration": {"dist": "gamma", "mean_s": 1}}, "does not match any of the expected tags"),
    ({"noise": 0.1}, "Extra inputs are not permitted"),
])
def test_bad_behaviour_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimulatorOptions.model_validate(options)


def test_an_instrument_serves_any_model() -> None:
    settings = MqttSettings(url="mqtt://127.0.0.1:1", prefix="p")  # not started: no connection needed
    instrument = SimInstrument("emu-1", Paraboloid(), {"noise_sd": 0.1}, settings)
    assert instrument.measures == ["y"]
    assert SimInstrument("cm-1", SIMULATORS["colour_mixing"], {}, settings).measures[-1] == "colour_distance"
