"""Simulated instruments speaking MQTT protocol v1; runtime code never imports this package.

Public names: :data:`SIMULATORS` (the catalog), :class:`SimulatorInfo`,
:class:`SimulatorOptions`, :class:`SimInstrument`, :func:`run_standalone` (also
``python -m simulators.standalone``), :func:`read_executions`, :func:`read_completions`,
:func:`executions_path`, and the benchmark functions :func:`branin` and :func:`hartmann6`.
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
from .record import executions_path, read_completions, read_executions
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
    "executions_path",
    "hartmann6",
    "read_completions",
    "read_executions",
    "run_standalone",
    "simulator_info",
]
