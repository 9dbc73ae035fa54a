"""A reaction-yield surface with continuous and categorical inputs and an impurity to constrain.

A substrate S turns into the product P, which slowly degrades; S also dimerizes, faster
when concentrated. All three steps are first order in S or P with Arrhenius rates: the
dimerization has the highest activation energy (heat costs selectivity), the degradation the
lowest (a slow reaction is overtaken by it), and time first builds the product, then loses it::

    S --k1--> P --k2--> D          k1 = a_cat * f_solv * exp(-Ea_cat/R (1/T - 1/T0)) * c / (c + 0.15)
    S --k3--> X (dimer)           k2 = 0.001 * g_solv * exp(-40 kJ/mol / R (1/T - 1/T0))
                                  k3 = 0.01 * h_solv * h_cat * exp(-100 kJ/mol / R (1/T - 1/T0)) * c

(rates per minute, T0 = 80 °C). ``yield_pct`` is P and ``impurity_pct`` is D + X, in percent of
the substrate (both in [0, 100]; not ``yield``, a Python keyword that Ax cannot parse). The
catalyst sets activity and activation energy; the solvent scales each step. The best yield
lies inside the box, and the best yields come with a few percent of impurity, so an outcome
constraint such as ``impurity_pct <= 3`` shapes the answer. Best: 93.9 % yield, 5.1 %
impurity in toluene with pd_xphos at 55 °C, 140 min, 0.45 mol/L; with impurity_pct <= 3,
90.4 % at 45.8 °C, 149 min, 0.45 mol/L (SLSQP over each solvent and catalyst in 20–140 °C,
5–240 min, 0.05–2 mol/L).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import Field

from .behaviour import SimulatorOptions
from .model import ParameterValue, choice, number

__all__ = ["CATALYSTS", "SOLVENTS", "ReactionYieldModel", "ReactionYieldOptions", "describe_lines"]

_R = 8.314e-3  # kJ/(mol K)
_T0 = 353.15

CATALYSTS: dict[str, tuple[float, float, float]] = {
    # name: (activity a at 80 °C per minute, activation energy kJ/mol, dimerization factor)
    "pd_pph3": (0.06, 70.0, 1.0),
    "pd_dppf": (0.10, 62.0, 0.8),
    "pd_xphos": (0.18, 55.0, 1.3),
}
"""Catalysts: activity, activation energy, and how much they promote the dimer."""

SOLVENTS: dict[str, tuple[float, float, float]] = {
    # name: (main step f, degradation g, dimerization h)
    "toluene": (1.0, 1.0, 1.0),
    "thf": (0.8, 1.1, 0.9),
    "dmf": (1.5, 1.8, 1.4),
    "ethanol": (0.6, 1.2, 0.5),
}
"""Solvents: factors on the main step, the product's degradation and the dimerization."""


class ReactionYieldOptions(SimulatorOptions):
    """Options of the ``reaction_yield`` simulator (besides the behaviour options).

    Attributes:
        temperature: Name of the temperature parameter (°C; meaningful 20–140).
        time: Name of the reaction-time parameter (minutes; meaningful 5–240).
        concentration: Name of the concentration parameter (mol/L; meaningful 0.05–2).
        solvent: Name of the solvent parameter (one of ``toluene, thf, dmf, ethanol``).
        catalyst: Name of the catalyst parameter (one of ``pd_pph3, pd_dppf, pd_xphos``).
    """

    temperature: str = Field(default="temperature", min_length=1)
    time: str = Field(default="time", min_length=1)
    concentration: str = Field(default="concentration", min_length=1)
    solvent: str = Field(default="solvent", min_length=1)
    catalyst: str = Field(default="catalyst", min_length=1)


def _arrhenius(ea: float, kelvin: float) -> float:
    return math.exp(-ea / _R * (1.0 / kelvin - 1.0 / _T0))


class ReactionYieldModel:
    """The reaction as a :class:`~simulators.SimModel`: ``yield_pct`` and ``impurity_pct``.

    Args:
        options: The simulator's options (parameter names).
    """

    metrics = ["yield_pct", "impurity_pct"]

    def __init__(self, options: ReactionYieldOptions | None = None) -> None:
        o = options or ReactionYieldOptions()
        self._names = (o.temperature, o.time, o.concentration, o.solvent, o.catalyst)
        if len(set(self._names)) != 5:
            raise ValueError("temperature, time, concentration, solvent and catalyst need distinct names")
        self.inputs = list(self._names)

    def evaluate(self, parameters: Mapping[str, ParameterValue]) -> dict[str, float]:
        """Noise-free yield and impurity (percent) of one run.

        Raises:
            ParameterError: A parameter is missing, of the wrong type, or an unknown choice.
        """
        t_name, time_name, c_name, s_name, cat_name = self._names
        kelvin = number(parameters, t_name) + 273.15
        minutes = max(0.0, number(parameters, time_name))
        conc = max(0.0, number(parameters, c_name))
        f, g, h = SOLVENTS[choice(parameters, s_name, SOLVENTS)]
        activity, ea, dimer = CATALYSTS[choice(parameters, cat_name, CATALYSTS)]
        if kelvin <= 0:
            return {"yield_pct": 0.0, "impurity_pct": 0.0}
        k1 = activity * f * _arrhenius(ea, kelvin) * conc / (conc + 0.15)
        k2 = 0.001 * g * _arrhenius(40.0, kelvin)
        k3 = 0.01 * h * dimer * _arrhenius(100.0, kelvin) * conc
        ka = k1 + k3
        left = math.exp(-ka * minutes)
        if abs(k2 - ka) < 1e-12:
            product = k1 * minutes * left
        else:
            product = k1 / (k2 - ka) * (left - math.exp(-k2 * minutes))
        product = min(1.0, max(0.0, product))
        impurity = min(1.0, max(0.0, 1.0 - left - product))
        return {"yield_pct": 100.0 * product, "impurity_pct": 100.0 * impurity}


def describe_lines(options: ReactionYieldOptions) -> list[str]:
    """``closedloop sim reaction_yield --describe``: inputs with their range or choices and unit,
    the metrics, and the optimum (the module's docstring says how it was found)."""
    t, time, c, s, cat = options.temperature, options.time, options.concentration, options.solvent, options.catalyst
    return [
        f"  input  {t}  in [20, 140] °C (the range the model is meant for)",
        f"  input  {time}  in [5, 240] min",
        f"  input  {c}  in [0.05, 2] mol/L",
        f"  input  {s}  one of {', '.join(SOLVENTS)}",
        f"  input  {cat}  one of {', '.join(CATALYSTS)}",
        "  metric yield_pct  % of the substrate that is product (maximize)",
        "  metric impurity_pct  % that is degraded product or dimer (e.g. constrain impurity_pct <= 3)",
        f"  optimum yield_pct 93.9 (impurity_pct 5.1) at {s}=toluene, {cat}=pd_xphos, {t}=55, {time}=140, {c}=0.45",
        f"  optimum with impurity_pct <= 3: yield_pct 90.4 at {s}=toluene, {cat}=pd_xphos, {t}=45.8, {time}=149, {c}=0.45",
    ]
