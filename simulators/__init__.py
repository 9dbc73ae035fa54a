"""Simulated instruments speaking MQTT protocol v1; runtime code never imports this package.

Public names: :data:`SIMULATORS` (the catalog: every botorch test function, ``colour_mixing``,
``reaction_yield``), :class:`SimulatorInfo`, :class:`SimModel` (what an instrument serves),
:class:`SimulatorOptions` (behaviour options every simulator takes), :class:`SimInstrument`,
:func:`serve` (the one way to start an instrument until a signal stops it: ``closedloop sim``,
its emulator, ``python -m simulators.standalone``), :func:`parse_options` (``--option KEY=VALUE``),
:func:`run_standalone`, :func:`plot_spectra`,
:func:`read_executions`, :func:`read_completions`, :func:`executions_path`, and the benchmark
functions :func:`branin`, :func:`hartmann6` and :func:`branin_currin`.

What talks MQTT (the instrument, ``serve``, the records keyed by request) is imported on first
use: the models and the catalog serve the engine's in-memory hub without an MQTT client.
"""

import importlib
from typing import Any

from .behaviour import Drift, Failures, Outcome, SimulatorOptions, run_random, simulate
from .catalog import (
    SIMULATORS,
    BraninCurrinOptions,
    BraninOptions,
    FunctionOptions,
    Hartmann6Options,
    SimulatorInfo,
)
from .colour import ColourMixingModel, ColourMixingOptions, plot_spectra
from .functions import FUNCTIONS, BotorchModel, TestFunction, branin, branin_currin, hartmann6
from .model import ParameterError, SimModel
from .reaction import ReactionYieldModel, ReactionYieldOptions

__all__ = [
    "FUNCTIONS",
    "SIMULATORS",
    "BotorchModel",
    "BraninCurrinOptions",
    "BraninOptions",
    "ColourMixingModel",
    "ColourMixingOptions",
    "Drift",
    "Failures",
    "FunctionOptions",
    "Hartmann6Options",
    "Outcome",
    "ParameterError",
    "ReactionYieldModel",
    "ReactionYieldOptions",
    "SimInstrument",
    "SimModel",
    "SimulatorInfo",
    "SimulatorOptions",
    "StopSignal",
    "TestFunction",
    "branin",
    "branin_currin",
    "executions_path",
    "hartmann6",
    "plot_spectra",
    "read_completions",
    "read_executions",
    "run_random",
    "parse_options",
    "run_standalone",
    "serve",
    "simulate",
    "simulator_info",
]

_NEEDS_A_CLIENT = {"SimInstrument": ".instrument", "simulator_info": ".instrument",
                   "executions_path": ".record", "read_completions": ".record", "read_executions": ".record",
                   "StopSignal": ".standalone", "parse_options": ".standalone", "run_standalone": ".standalone",
                   "serve": ".standalone"}


def __getattr__(name: str) -> Any:
    module = _NEEDS_A_CLIENT.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
