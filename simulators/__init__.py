"""Simulated instruments speaking MQTT protocol v1; runtime code never imports this package.

Public names: :data:`SIMULATORS` (the catalog: every botorch test function, ``colour_mixing``,
``reaction_yield``), :class:`SimulatorInfo`, :class:`SimModel` (what an instrument serves),
:class:`SimulatorOptions` (behaviour options every simulator takes), :class:`SimInstrument`,
:func:`serve` (the one way to start an instrument until a signal stops it: ``closedloop sim``,
its emulator, ``python -m simulators.standalone``), :func:`parse_options` (``--option KEY=VALUE``),
:func:`run_standalone`, :func:`plot_spectra`,
:func:`read_executions`, :func:`read_completions`, :func:`executions_path`, and the benchmark
functions :func:`branin`, :func:`hartmann6` and :func:`branin_currin`.

Every name is imported on first use, from the module that holds it: what talks MQTT (the
instrument, ``serve``, the records keyed by request) stays unloaded where the models and the
catalog serve the engine's in-memory hub, and the catalog (``closedloop validate``) loads no
simulator's model that the spec does not name.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and readers see; at run time, __getattr__ below
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
    from .instrument import SimInstrument, simulator_info
    from .model import ParameterError, SimModel
    from .reaction import ReactionYieldModel, ReactionYieldOptions
    from .record import executions_path, read_completions, read_executions
    from .standalone import StopSignal, parse_options, run_standalone, serve

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

_MODULES = {
    **dict.fromkeys(["Drift", "Failures", "Outcome", "SimulatorOptions", "run_random", "simulate"], ".behaviour"),
    **dict.fromkeys(["SIMULATORS", "BraninCurrinOptions", "BraninOptions", "FunctionOptions", "Hartmann6Options",
                     "SimulatorInfo"], ".catalog"),
    **dict.fromkeys(["ColourMixingModel", "ColourMixingOptions", "plot_spectra"], ".colour"),
    **dict.fromkeys(["FUNCTIONS", "BotorchModel", "TestFunction", "branin", "branin_currin", "hartmann6"], ".functions"),
    **dict.fromkeys(["ParameterError", "SimModel"], ".model"),
    **dict.fromkeys(["ReactionYieldModel", "ReactionYieldOptions"], ".reaction"),
    # these talk MQTT
    **dict.fromkeys(["SimInstrument", "simulator_info"], ".instrument"),
    **dict.fromkeys(["executions_path", "read_completions", "read_executions"], ".record"),
    **dict.fromkeys(["StopSignal", "parse_options", "run_standalone", "serve"], ".standalone"),
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
