"""The simulators closedloop ships, their options, and what they measure.

Every entry builds a :class:`~simulators.SimModel` from validated options; the options of
every simulator include the behaviour options (:class:`SimulatorOptions`: noise, durations,
failures, drift, seed).

The catalog makes an entry on first use: a test function's options are a pydantic model of
their own, and every process that imports the catalog (``closedloop validate``, ``approve``,
``change``) uses one or two of the 50-odd (figures: benchmarks/README.md, issue 15).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field, model_validator

from .behaviour import Outcome, SimulatorOptions
from .functions import FUNCTIONS, BotorchModel, TestFunction
from .model import SimModel

__all__ = [
    "SIMULATORS",
    "BraninCurrinOptions",
    "BraninOptions",
    "FunctionOptions",
    "Hartmann6Options",
    "Outcome",
    "SimulatorInfo",
    "SimulatorOptions",
]


class FunctionOptions(SimulatorOptions):
    """Options of a botorch test-function simulator (besides the behaviour options).

    Attributes:
        inputs: Parameter names to read, in the function's input order (default x1..xd).
        metric: Name of the objective (single-objective functions; default the simulator's name).
        metrics: Names of all outputs in order: objectives, then constraint slacks
            (default ``f0, f1, ...`` then ``c0, c1, ...``).
        dim: Number of inputs, for functions of any dimension (Ackley, Levy, ZDT1, ...).
        num_objectives: Number of objectives, where botorch lets it be chosen (DTLZ, ZDT, GMM).
    """

    function: ClassVar[TestFunction]

    inputs: list[str] | None = None
    metric: str | None = Field(default=None, min_length=1)
    metrics: list[str] | None = None
    dim: int | None = Field(default=None, ge=1, le=1000)
    num_objectives: int | None = Field(default=None, ge=1, le=100)

    @model_validator(mode="after")
    def _function_fits(self) -> FunctionOptions:
        f = type(self).function
        if self.dim is not None and not f.dim_option:
            raise ValueError(f"dim: {f.name} has {f.dim} inputs, always")
        if self.num_objectives is not None and not f.objectives_option:
            raise ValueError(f"num_objectives: {f.name} has {f.objectives} objective(s), always")
        if (self.dim, self.num_objectives) != (None, None):
            try:
                f.problem(self.dim, self.num_objectives)
            except Exception as exc:  # botorch says why the size does not fit (its own error types)
                raise ValueError(f"{f.name} with dim={self.dim or f.dim}, num_objectives="
                                 f"{self.num_objectives or f.objectives}: {str(exc).splitlines()[0]}") from None
        dim = self.dim or f.dim
        if self.inputs is not None:
            if len(self.inputs) != dim:
                raise ValueError(f"inputs must name {dim} parameters, got {len(self.inputs)}")
            if len(set(self.inputs)) != len(self.inputs) or not all(self.inputs):
                raise ValueError("inputs must be distinct, non-empty names")
        defaults = f.metrics(self.num_objectives)
        if self.metric is not None and (self.metrics is not None or (self.num_objectives or f.objectives) > 1 or f.names):
            raise ValueError(f"metric: {f.name} measures several metrics ({', '.join(defaults)}); "
                             "name them all with metrics: [...]")
        if self.metrics is not None and (len(self.metrics) != len(defaults) or len(set(self.metrics)) != len(defaults)):
            raise ValueError(f"metrics must be {len(defaults)} distinct names ({', '.join(defaults)})")
        return self

    def model(self) -> BotorchModel:
        """The function as a model serving these options."""
        f = type(self).function
        dim = self.dim or f.dim
        metrics = self.metrics or f.metrics(self.num_objectives)
        if self.metric is not None:
            metrics = [self.metric, *metrics[1:]]
        return BotorchModel(f, self.inputs or [f"x{i + 1}" for i in range(dim)], metrics, self.dim, self.num_objectives)


def _options_model(function: TestFunction) -> type[FunctionOptions]:
    camel = "".join(part.capitalize() for part in function.name.split("_"))
    namespace = {
        "__annotations__": {"function": ClassVar[TestFunction]},
        "function": function,
        "__module__": __name__,
        "__doc__": f"Options of the ``{function.name}`` simulator (botorch ``{function.cls}``).",
    }
    return type(f"{camel}Options", (FunctionOptions,), namespace)


@dataclass(frozen=True)
class SimulatorInfo:
    """One simulator of the catalog.

    Attributes:
        name: Catalog key (``closedloop sim <name>``, ``simulator:`` in a spec).
        description: One line for listings.
        options_model: Pydantic model (``extra="forbid"``) validating the options.
        build: Makes the model served under validated options.
        details: ``--describe``'s lines of inputs (range or choices, unit), metrics and optimum
            under validated options, where the simulator knows more than the names.
    """

    name: str
    description: str
    options_model: type[SimulatorOptions]
    build: Callable[[Any], SimModel]
    details: Callable[[Any], list[str]] | None = None

    def options(self, options: Mapping[str, Any] | SimulatorOptions) -> SimulatorOptions:
        """Validate options (a mapping, or an already validated model)."""
        if isinstance(options, self.options_model):
            return options
        raw = options.model_dump(exclude_unset=True) if isinstance(options, BaseModel) else dict(options)
        return self.options_model.model_validate(raw)

    def model(self, options: Mapping[str, Any] | SimulatorOptions) -> SimModel:
        """The model served under these options."""
        return self.build(self.options(options))

    def inputs(self, options: Mapping[str, Any] | SimulatorOptions) -> list[str]:
        """Parameter names the simulator reads."""
        return list(self.model(options).inputs)

    def measures(self, options: Mapping[str, Any] | SimulatorOptions) -> list[str]:
        """Metric names the simulator reports."""
        return list(self.model(options).metrics)

    def describe(self, options: Mapping[str, Any] | SimulatorOptions) -> str:
        """Several lines: the inputs (bounds or choices, units), the metrics, the known optimum,
        for these options (``dim=4``: four inputs).

        Imports botorch for a test function.
        """
        validated = self.options(options)
        model = self.build(validated)
        function = FUNCTIONS.get(self.name)
        dim = getattr(validated, "dim", None)
        description = self.description
        if function is not None and self.name not in _DESCRIPTIONS:  # its size under these options
            description = _function_description(function, len(model.inputs), getattr(validated, "num_objectives", None))
        lines = [f"{self.name}: {description}"]
        if self.details is not None:
            return "\n".join(lines + self.details(validated))
        bounds = function.bounds(dim) if function is not None else None
        for i, name in enumerate(model.inputs):
            lines.append(f"  input  {name}" + (f"  in [{bounds[i][0]:g}, {bounds[i][1]:g}]" if bounds else ""))
        lines += [f"  metric {name}" for name in model.metrics]
        if function is not None and (optimum := function.optimum(dim)) is not None:
            lines.append(f"  optimum {optimum:g} (botorch)")
        return "\n".join(lines)


def _function_description(function: TestFunction, dim: int | None = None, num_objectives: int | None = None) -> str:
    """``botorch Ackley: 4 inputs (option dim), 1 objective(s)``, for a size (``None``: the default)."""
    size = f"{dim or function.dim} inputs" + (" (option dim)" if function.dim_option else "")
    outputs = (f"{num_objectives or function.objectives} objective(s)"
               + (" (option num_objectives)" if function.objectives_option else ""))
    slack = f", {function.constraints} constraint slack(s)" if function.constraints else ""
    return f"botorch {function.cls}: {size}, {outputs}{slack}"


def _function_info(function: TestFunction, description: str | None = None) -> SimulatorInfo:
    return SimulatorInfo(function.name, description or _function_description(function), _options_model(function),
                         lambda o: o.model())


_DESCRIPTIONS = {
    "branin": "Branin on x1 in [-5, 10], x2 in [0, 15]; minimum 0.397887",
    "hartmann6": "Hartmann 6-D on [0, 1]^6; minimum -3.32237",
    "branin_currin": "BoTorch's Branin-Currin pair on [0, 1]^2: metrics branin and currin, both minimized",
}

class EmulatorOptions(SimulatorOptions):
    """Options of the ``emulator`` simulator: an emulator file and the behaviour options.

    Attributes:
        file: An emulator written by ``closedloop sim --from-campaign CAMPAIGN --save FILE``
            (a path relative to where closedloop runs, or absolute).
    """

    file: str = Field(min_length=1)


@functools.lru_cache(maxsize=8)
def _load_emulator(path: str, mtime_ns: int) -> SimModel:
    from .emulator import Emulator  # torch and botorch only when an emulator is used

    return Emulator.load(path)


def _emulator(options: EmulatorOptions) -> SimModel:
    from .emulator import EmulatorError

    path = Path(options.file).resolve()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise EmulatorError(f"emulator file {options.file}: {exc.strerror or exc}",
                            "write it with `closedloop sim --from-campaign CAMPAIGN --save FILE`") from None
    return _load_emulator(str(path), mtime)


def _colour_mixing() -> SimulatorInfo:
    from .colour import ColourMixingModel, ColourMixingOptions, describe_lines

    return SimulatorInfo(
        "colour_mixing",
        "CLSLab:Light: R, G, B duty cycles in [0, 1] -> 8 spectral channels ch415..ch680 and colour_distance",
        ColourMixingOptions,
        ColourMixingModel,
        describe_lines,
    )


def _reaction_yield() -> SimulatorInfo:
    from .reaction import ReactionYieldModel, ReactionYieldOptions, describe_lines

    return SimulatorInfo(
        "reaction_yield",
        "temperature, time, concentration, solvent, catalyst -> yield_pct and impurity_pct",
        ReactionYieldOptions,
        ReactionYieldModel,
        describe_lines,
    )


class _Catalog(Mapping[str, SimulatorInfo]):
    """A read-only mapping of name to :class:`SimulatorInfo` whose entries are made on first
    access, once (under a lock: an entry's options model is one class for every thread)."""

    def __init__(self, makers: Mapping[str, Callable[[], SimulatorInfo]]) -> None:
        self._makers = dict(makers)
        self._made: dict[str, SimulatorInfo] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> SimulatorInfo:
        info = self._made.get(name)
        if info is None:
            make = self._makers[name]  # KeyError for a name the catalog lacks, as a dict
            with self._lock:
                info = self._made.get(name)
                if info is None:
                    info = self._made[name] = make()
        return info

    def __iter__(self) -> Iterator[str]:
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)

    def __contains__(self, name: object) -> bool:
        return name in self._makers

    def __repr__(self) -> str:
        return f"<simulator catalog: {', '.join(self._makers)}>"


SIMULATORS: Mapping[str, SimulatorInfo] = _Catalog({
    **{name: functools.partial(_function_info, f, _DESCRIPTIONS.get(name)) for name, f in sorted(FUNCTIONS.items())},
    "colour_mixing": _colour_mixing,
    "reaction_yield": _reaction_yield,
    "emulator": lambda: SimulatorInfo(
        "emulator",
        "a GP per metric fitted to a recorded campaign (option file: from `closedloop sim --from-campaign C --save F`)",
        EmulatorOptions,
        _emulator,
    ),
})
"""Every simulator, by name."""

_OPTIONS_OF = {"BraninOptions": "branin", "Hartmann6Options": "hartmann6", "BraninCurrinOptions": "branin_currin"}

if TYPE_CHECKING:
    BraninOptions: type[FunctionOptions]
    Hartmann6Options: type[FunctionOptions]
    BraninCurrinOptions: type[FunctionOptions]


def __getattr__(name: str) -> Any:
    """The options models of the catalog's best-known functions, made with their entries."""
    simulator = _OPTIONS_OF.get(name)
    if simulator is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = SIMULATORS[simulator].options_model
    globals()[name] = value
    return value
