"""A colour-mixing lab modelled on CLSLab:Light (the self-driving-lab demo of S. G. Baird).

The real kit drives one NeoPixel RGB LED (three duty cycles) in front of an AS7341 spectral
sensor (eight channels F1–F8 centred at 415, 445, 480, 515, 555, 590, 630 and 680 nm) and
looks for the duty cycles that reproduce a target colour. The model:

- each LED die emits a Gaussian band (red 628 nm, 18 nm FWHM; green 522 nm, 33 nm;
  blue 468 nm, 24 nm) whose radiant power grows with its duty cycle ``d`` (0–1, the kit's
  0–255 divided by 255) with a little efficiency droop, ``d * (1 - k * d)``;
- each sensor channel is a Gaussian passband (FWHM 26–52 nm, responsivity rising towards the
  red as silicon's does), reading counts of a 16-bit converter (saturating at 65535), plus a
  dim, flat ambient light;
- the sensor's noise is shot noise (``shot_noise * sqrt(counts)``) and read noise, in
  quadrature;
- ``colour_distance`` is the relative distance between the measured 8-channel spectrum
  and the (noise-free) spectrum of the target mix, ``|m - t| / |t|``: 0.05 is a spectrum
  within 5 % of the target's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import Field, model_validator

from .behaviour import SimulatorOptions
from .model import ParameterValue, number

__all__ = ["CHANNELS", "LEDS", "ColourMixingModel", "ColourMixingOptions", "describe_lines", "plot_spectra"]

CHANNELS: tuple[tuple[str, float, float, float], ...] = (
    # (metric, centre nm, FWHM nm, peak responsivity)
    ("ch415", 415.0, 26.0, 0.45), ("ch445", 445.0, 30.0, 0.55), ("ch480", 480.0, 36.0, 0.65),
    ("ch515", 515.0, 39.0, 0.75), ("ch555", 555.0, 39.0, 0.85), ("ch590", 590.0, 40.0, 0.92),
    ("ch630", 630.0, 50.0, 1.00), ("ch680", 680.0, 52.0, 0.97),
)
"""The AS7341's visible channels F1–F8: metric name, centre, width and relative responsivity."""

LEDS: tuple[tuple[str, float, float, float, float], ...] = (
    # (die, peak nm, FWHM nm, radiant power at full drive (relative), droop k)
    ("red", 628.0, 18.0, 1.00, 0.12), ("green", 522.0, 33.0, 0.75, 0.18), ("blue", 468.0, 24.0, 1.25, 0.10),
)
"""The NeoPixel's three dies: name, peak, width, relative radiant power, efficiency droop."""

FULL_SCALE = 65535.0
_WAVELENGTHS = [380.0 + i for i in range(401)]  # 380–780 nm, 1 nm steps
_GAIN = 30000.0  # counts of the brightest channel with every die at full drive (before droop)


def _gauss(x: float, centre: float, fwhm: float) -> float:
    s = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    return math.exp(-0.5 * ((x - centre) / s) ** 2)


def led_spectrum(die: int, wavelengths: Sequence[float] = _WAVELENGTHS) -> list[float]:
    """Spectral power of one die at full drive (area = its relative radiant power)."""
    _, peak, fwhm, power, _ = LEDS[die]
    s = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    return [power * _gauss(w, peak, fwhm) / (s * math.sqrt(2.0 * math.pi)) for w in wavelengths]


def channel_response(channel: int, wavelengths: Sequence[float] = _WAVELENGTHS) -> list[float]:
    """Responsivity of one sensor channel against wavelength."""
    _, centre, fwhm, peak = CHANNELS[channel]
    return [peak * _gauss(w, centre, fwhm) for w in wavelengths]


def _mixing_matrix() -> list[list[float]]:
    # counts[channel] per unit drive of each die: the overlap of emission and passband.
    raw = [[sum(e * r for e, r in zip(led_spectrum(k), channel_response(j), strict=True)) for k in range(3)]
           for j in range(len(CHANNELS))]
    white = max(sum(row) for row in raw)
    return [[_GAIN * v / white for v in row] for row in raw]


_MATRIX = _mixing_matrix()
_AMBIENT_SHAPE = [peak * fwhm / 52.0 for _, _, fwhm, peak in CHANNELS]  # flat light through each passband


class ColourMixingOptions(SimulatorOptions):
    """Options of the ``colour_mixing`` simulator (besides the behaviour options).

    Attributes:
        inputs: Names of the red, green and blue duty-cycle parameters (each in [0, 1]).
        target: Duty cycles of the target colour; its noise-free spectrum is the target.
        ambient: Counts the ambient light adds to the reddest channel (less to the others).
        shot_noise: Shot noise scale: standard deviation ``shot_noise * sqrt(counts)``.
        read_noise: Read noise standard deviation, in counts.
    """

    inputs: list[str] = Field(default_factory=lambda: ["R", "G", "B"])
    target: tuple[float, float, float] = (0.55, 0.30, 0.70)
    ambient: float = Field(default=100.0, ge=0.0)
    shot_noise: float = Field(default=1.0, ge=0.0)
    read_noise: float = Field(default=3.0, ge=0.0)

    @model_validator(mode="after")
    def _colour(self) -> ColourMixingOptions:
        if len(self.inputs) != 3 or len(set(self.inputs)) != 3 or not all(self.inputs):
            raise ValueError("inputs must be three distinct names (red, green, blue)")
        if not all(0.0 <= t <= 1.0 for t in self.target):
            raise ValueError("target duty cycles must be in [0, 1]")
        return self


class ColourMixingModel:
    """CLSLab:Light as a :class:`~simulators.SimModel`: 3 duty cycles in, 8 channels and a distance out.

    Args:
        options: The simulator's options.
    """

    derived = ["colour_distance"]

    def __init__(self, options: ColourMixingOptions | None = None) -> None:
        self.options = options or ColourMixingOptions()
        self.inputs = list(self.options.inputs)
        self.channels = [c[0] for c in CHANNELS]
        self.metrics = [*self.channels, "colour_distance"]
        self.target_counts = self.counts(self.options.target)

    def counts(self, duty: Sequence[float]) -> list[float]:
        """Noise-free channel readings for red, green, blue duty cycles (clipped to [0, 1])."""
        drive = []
        for d, (_, _, _, _, droop) in zip(duty, LEDS, strict=True):
            d = min(1.0, max(0.0, d))
            drive.append(d * (1.0 - droop * d))
        out = []
        for row, ambient in zip(_MATRIX, _AMBIENT_SHAPE, strict=True):
            value = sum(m * e for m, e in zip(row, drive, strict=True)) + self.options.ambient * ambient
            out.append(min(FULL_SCALE, value))
        return out

    def _duty(self, parameters: Mapping[str, ParameterValue]) -> list[float]:
        return [number(parameters, name) for name in self.inputs]

    def evaluate(self, parameters: Mapping[str, ParameterValue]) -> dict[str, float]:
        """Noise-free channel readings and their distance to the target."""
        values = dict(zip(self.channels, self.counts(self._duty(parameters)), strict=True))
        return {**values, **self.derive(values)}

    def noise_sd(self, parameters: Mapping[str, ParameterValue]) -> dict[str, float]:
        """Sensor noise of each channel: shot noise and read noise in quadrature."""
        counts = self.counts(self._duty(parameters))
        o = self.options
        return {c: math.sqrt(o.shot_noise ** 2 * max(v, 0.0) + o.read_noise ** 2)
                for c, v in zip(self.channels, counts, strict=True)}

    def derive(self, measured: Mapping[str, float]) -> dict[str, float]:
        """``colour_distance`` of (possibly noisy) channel readings: ``|m - t| / |t|``."""
        diff = math.sqrt(sum((measured[c] - t) ** 2 for c, t in zip(self.channels, self.target_counts, strict=True)))
        norm = math.sqrt(sum(t * t for t in self.target_counts))
        return {"colour_distance": diff / norm}


def describe_lines(options: ColourMixingOptions) -> list[str]:
    """``closedloop sim colour_mixing --describe``: inputs with their range, metrics with their unit, the optimum."""
    lines = [f"  input  {name}  in [0, 1]: duty cycle of the {die} LED (the kit's 0-255 / 255)"
             for name, (die, *_rest) in zip(options.inputs, LEDS, strict=True)]
    lines += [f"  metric {name}  counts (0-{FULL_SCALE:.0f}): AS7341 channel F{j + 1}, {centre:g} nm"
              for j, (name, centre, *_rest) in enumerate(CHANNELS)]
    lines.append("  metric colour_distance  |m - t| / |t| to the target's spectrum (no unit; minimize)")
    target = ", ".join(f"{name}={t:g}" for name, t in zip(options.inputs, options.target, strict=True))
    lines.append(f"  optimum colour_distance 0 at the target {target} (noise-free; a reading adds sensor noise)")
    return lines


def plot_spectra(path: Path, options: ColourMixingOptions | None = None, *, seed: int = 0) -> Path:
    """Draw the model to a PNG: LED emissions and channel responses, and the readings of a few mixes.

    Args:
        path: The PNG file to write.
        options: The simulator's options (target, ambient light, noise).
        seed: Seed of the noisy readings drawn.

    Returns:
        ``path``.
    """
    import random

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = ColourMixingModel(options)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 8), constrained_layout=True)
    colours = {"red": "tab:red", "green": "tab:green", "blue": "tab:blue"}
    peak = max(max(led_spectrum(k)) for k in range(3))
    for k, (die, *_rest) in enumerate(LEDS):
        top.plot(_WAVELENGTHS, [v / peak for v in led_spectrum(k)], color=colours[die], label=f"LED {die}")
    for j, (name, *_rest) in enumerate(CHANNELS):
        top.plot(_WAVELENGTHS, channel_response(j), color="0.4", linestyle="--", linewidth=0.8,
                 label="sensor channels" if j == 0 else None)
        top.annotate(f"F{j + 1}", (CHANNELS[j][1], CHANNELS[j][3] + 0.02), ha="center", fontsize=8)
    top.set(xlabel="wavelength (nm)", ylabel="relative emission / responsivity",
            title="NeoPixel emission (full drive) and AS7341 channel responses")
    top.legend(fontsize=8, loc="upper left")
    rng = random.Random(seed)
    centres = [c[1] for c in CHANNELS]
    mixes: dict[str, tuple[Sequence[float], str]] = {
        "target": (model.options.target, "black"), "red": ((1, 0, 0), "tab:red"), "green": ((0, 1, 0), "tab:green"),
        "blue": ((0, 0, 1), "tab:blue"), "white": ((1, 1, 1), "0.55"), "dim grey": ((0.2, 0.2, 0.2), "0.8"),
    }
    for label, (duty, colour) in mixes.items():
        params = dict(zip(model.inputs, duty, strict=True))
        mean = model.evaluate(params)
        sd = model.noise_sd(params)
        noisy = [mean[c] + rng.gauss(0.0, sd[c]) for c in model.channels]
        bottom.plot(centres, noisy, marker="o", color=colour, linewidth=2.5 if label == "target" else 1.2,
                    label=f"{label} {tuple(round(float(d), 2) for d in duty)}")
        bottom.plot(centres, [mean[c] for c in model.channels], color=colour, alpha=0.3)
    bottom.set(xlabel="channel centre (nm)", ylabel="counts", yscale="log",
               title="8-channel readings (markers: one noisy reading; faint: noise-free)")
    bottom.legend(fontsize=8, ncol=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
