"""Simulated instruments speaking MQTT protocol v1; runtime code never imports this package.

Public names: :data:`SIMULATORS` (the catalog), :class:`SimulatorInfo`,
:class:`SimulatorOptions`, :class:`SimInstrument`, :func:`run_standalone`, and the benchmark
functions :func:`branin` and :func:`hartmann6`.
"""

from .catalog import (
    SIMULATORS,
    BraninOptions,
    Hartmann6Options,
    Outcome,
    SimulatorInfo,
    SimulatorOptions,
)
from .functions import FUNCTIONS, TestFunction, branin, hartmann6
from .instrument import SimInstrument, simulator_info
from .standalone import StopSignal, run_standalone

__all__ = [
    "FUNCTIONS",
    "SIMULATORS",
    "BraninOptions",
    "Hartmann6Options",
    "Outcome",
    "SimInstrument",
    "SimulatorInfo",
    "SimulatorOptions",
    "StopSignal",
    "TestFunction",
    "branin",
    "hartmann6",
    "run_standalone",
    "simulator_info",
]
