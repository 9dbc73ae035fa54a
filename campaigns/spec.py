"""The campaign spec: a YAML file describing what to optimize, with what, and for how long.

A spec is validated in full before anything runs. Every mistake becomes a `SpecError` whose
one line names the field (``parameters[1].bounds``) and the fix; reading files and turning
validation errors into that line is `campaigns.spec_file`.
"""

from __future__ import annotations

import difflib
import json
import keyword
import math
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from campaigns import expressions
from campaigns.approval import ApprovalPolicy
from campaigns.errors import SpecError

__all__ = [
    "Budget",
    "CampaignSpec",
    "ChoiceParameter",
    "DeviceSpec",
    "FailurePolicy",
    "FloatParameter",
    "IntParameter",
    "LinearConstraint",
    "Objective",
    "OutcomeConstraint",
    "OLD_METHOD_NAMES",
    "MAX_CHOICE_COMBINATIONS",
    "Parameter",
    "PriorCollection",
    "PriorData",
    "SERVER_SIDE_JS",
    "fast_obstacle",
]

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_NAME_RE = re.compile(rf"^{_NAME}$")
_DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")
#: The largest magnitude of a parameter bound: integers up to it are exact in float64 (Ax
#: models int parameters as floats) and far inside MongoDB's 8-byte ints, and a float range's
#: width and its Sobol and model arithmetic stay finite (issue 14, item 11).
MAX_BOUND = 1e15


def _check_bounds(low: float, high: float, info: ValidationInfo) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("bounds must be finite numbers")
    # A spec read back from a log (``campaigns.events.event_from_doc``) was accepted when it was
    # written: an older version's wider bounds must still fold. New specs and changes obey.
    from_log = isinstance(info.context, dict) and info.context.get("from_log") is True
    if not from_log and max(abs(low), abs(high)) > MAX_BOUND:
        raise ValueError("bounds must lie within ±1e15 (what the optimizer and the database hold "
                         "exactly); rescale the parameter, e.g. to other units")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a valid name; use letters, digits and _ (not first)")
    if keyword.iskeyword(name):
        # Ax reads objectives and constraints as Python-like expressions: a keyword breaks them.
        raise ValueError(f"{name!r} is a Python keyword and cannot name a parameter or metric; "
                         f"rename it, e.g. {name + '_pct'!r}")
    return name


class FloatParameter(_Model):
    """A continuous parameter in ``[low, high]``."""

    name: str
    type: Literal["float"] = "float"
    bounds: tuple[float, float]
    log_scale: bool = False

    _name = field_validator("name")(_check_name)

    @model_validator(mode="after")
    def _bounds(self, info: ValidationInfo) -> FloatParameter:
        low, high = self.bounds
        _check_bounds(low, high, info)
        if low >= high:
            raise ValueError(f"lower bound {low:g} is not below upper bound {high:g}; write [low, high]")
        if self.log_scale and low <= 0:
            raise ValueError("log_scale needs bounds above 0; raise the lower bound or drop log_scale")
        return self


class IntParameter(_Model):
    """An integer parameter in ``[low, high]``."""

    name: str
    type: Literal["int"]
    bounds: tuple[int, int]
    log_scale: bool = False

    _name = field_validator("name")(_check_name)

    @model_validator(mode="after")
    def _bounds(self, info: ValidationInfo) -> IntParameter:
        low, high = self.bounds
        _check_bounds(low, high, info)
        if low >= high:
            raise ValueError(f"lower bound {low} is not below upper bound {high}; write [low, high]")
        if self.log_scale and low <= 0:
            raise ValueError("log_scale needs bounds above 0; raise the lower bound or drop log_scale")
        return self


class ChoiceParameter(_Model):
    """A parameter taking one of a list of values (e.g. a solvent)."""

    name: str
    type: Literal["choice"]
    values: list[str] | list[int] | list[float]
    is_ordered: bool = False

    _name = field_validator("name")(_check_name)

    @field_validator("values")
    @classmethod
    def _values(cls, values: list[Any]) -> list[Any]:
        if len(values) < 2:
            raise ValueError("a choice needs at least 2 values")
        if len(set(values)) != len(values):
            raise ValueError("values must be distinct")
        return values


Parameter = Annotated[FloatParameter | IntParameter | ChoiceParameter, Field(discriminator="type")]


class Objective(_Model):
    """One metric to optimize."""

    name: str
    minimize: bool = False
    threshold: float | None = None

    _name = field_validator("name")(_check_name)


class OutcomeConstraint(_Model):
    """``metric >= bound`` or ``metric <= bound``, parsed from a string like ``"purity >= 0.9"``."""

    metric: str
    op: Literal[">=", "<="]
    bound: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound!r}"

    def holds(self, value: float) -> bool:
        """Whether a measured value of the metric satisfies the constraint."""
        return value >= self.bound if self.op == ">=" else value <= self.bound


class LinearConstraint(_Model):
    """``sum(coef * parameter) <= bound`` (``>=`` is stored negated), from ``"x1 + 2*x2 <= 10"``."""

    coefficients: dict[str, float]
    bound: float
    text: str

    def holds(self, parameters: Mapping[str, Any]) -> bool:
        """Whether a point satisfies the constraint (with a small tolerance)."""
        total = sum(c * float(parameters[n]) for n, c in self.coefficients.items())
        return total <= self.bound + 1e-9 * max(1.0, abs(self.bound))


class Budget(_Model):
    """How much the campaign may spend: trials, and optionally wall-clock hours."""

    max_trials: int = Field(gt=0)
    max_hours: float | None = Field(default=None, gt=0)


class DeviceSpec(_Model):
    """An instrument: a real one (give ``measures``) or a simulated one (give ``simulator``)."""

    id: str
    simulator: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    measures: list[str] | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _DEVICE_ID_RE.match(value):
            raise ValueError(f"device id {value!r} may hold only letters, digits and _ . : -")
        return value


#: ``optimizer.method`` values of earlier versions, read as the engine they named.
OLD_METHOD_NAMES = {"botorch": "auto", "botorch_default": "ax_default"}


class OptimizerSettings(_Model):
    """Optional tuning of the optimizer; the defaults suit most campaigns.

    Every method but ``sobol`` opens with ``initialization_trials`` trials (default 5): the
    centre of the search space first (``center_first``), then scrambled Sobol points. Then
    ``method`` names the engine that suggests trials (``optimizer.engines``; README's spec
    reference has the table):

    - ``auto`` (default): ``fast``, unless ``fast_obstacle`` names what it cannot serve (many
      choice combinations; a constraint on a log-scale parameter): then ``ax``.
      ``closedloop validate`` says which, and why.
    - ``fast``: closedloop's NumPy GP (``optimizer.fastbo``): Ax's default model and
      acquisition without Ax's per-call overhead; int and choice parameters and parameter
      constraints too (``optimizer.mixed``).
    - ``ax``: Ax's BoTorch with a cheaper acquisition optimizer; any space.
    - ``ax_default``: Ax's BoTorch with Ax's own defaults (slower, every trial in the model).
    - ``sobol``: quasi-random points only; no model.

    ``botorch`` and ``botorch_default`` (earlier names) are read as ``auto`` and ``ax_default``.

    Attributes:
        initialization_trials: Trials before the model takes over (the centre and Sobol points).
        center_first: Whether the campaign's first trial is the centre of the search space:
            each float or int parameter at the middle of its range (of its log range when
            ``log_scale``), each choice at its middle value (the later of two), a fixed
            parameter at its value; skipped when the centre breaks a parameter constraint.
        method: ``auto``, ``fast``, ``ax``, ``ax_default`` or ``sobol``.
        max_training_points: ``fast`` and ``ax``: the most trials the GP is fitted on.
    """

    initialization_trials: int | None = Field(default=None, ge=1)
    center_first: bool = True
    method: Literal["auto", "fast", "ax", "ax_default", "sobol"] = "auto"
    max_training_points: int = Field(default=250, ge=20)

    @field_validator("method", mode="before")
    @classmethod
    def _old_names(cls, value: Any) -> Any:
        return OLD_METHOD_NAMES.get(value, value) if isinstance(value, str) else value


#: The most combinations of unordered choice values the fast engine enumerates (each one is an
#: acquisition optimization of its own); a campaign with more goes to Ax (``optimizer.engines``).
MAX_CHOICE_COMBINATIONS = 32


def fast_obstacle(spec: CampaignSpec) -> str | None:
    """What keeps the ``fast`` engine from serving a spec's space, or ``None``.

    It serves float, int and choice parameters and linear parameter constraints
    (``optimizer.mixed``) but for more than ``MAX_CHOICE_COMBINATIONS`` combinations of the
    unordered choices' values, and a constraint on a log-scale parameter (Ax refuses it too).
    """
    combinations = math.prod(len(p.values) for p in spec.parameters
                             if isinstance(p, ChoiceParameter) and not p.is_ordered
                             and p.name not in spec.fixed_parameters)
    if combinations > MAX_CHOICE_COMBINATIONS:
        return f"{combinations} combinations of choice values (the fast engine enumerates up to {MAX_CHOICE_COMBINATIONS})"
    log_scaled = {p.name for p in spec.parameters if not isinstance(p, ChoiceParameter) and p.log_scale}
    for c in spec.parsed_parameter_constraints:
        if log_scaled & set(c.coefficients):
            return f"a parameter constraint on a log_scale parameter: {c.text}"
    return None


class FailurePolicy(_Model):
    """What to do when trials fail.

    Attributes:
        retries: How many more times a failed trial is tried (same parameters, a new request id).
        max_failure_rate: Above this fraction of failed trials the campaign pauses ...
        min_failures: ... once at least this many trials have failed.
    """

    retries: int = Field(default=0, ge=0)
    max_failure_rate: float = Field(default=0.5, gt=0, le=1)
    min_failures: int = Field(default=5, ge=1)


#: MongoDB query operators that run JavaScript on the server: never sent from a campaign file.
SERVER_SIDE_JS = frozenset({"$where", "$function", "$accumulator"})
_FIELD_PATH_RE = re.compile(r"^[^$.][^.]*(\.[^$.][^.]*)*$")


#: The operators MongoDB accepts at a query's top level (``$where`` aside).
_TOP_LEVEL = frozenset({"$and", "$or", "$nor", "$expr", "$text", "$comment", "$jsonSchema"})


def _check_filter(value: Any) -> None:
    """Refuse what is not a MongoDB query document, as far as a file can tell (the server
    judges the operators); server-side JavaScript is refused outright."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"key {key!r} is not text; a MongoDB filter's keys are field names or $operators")  # noqa: TRY004 - a spec mistake: pydantic wants ValueError
            if key in SERVER_SIDE_JS:
                raise ValueError(f"{key} runs JavaScript on the database server and is refused; "
                                 "write the condition with query operators ($eq, $gt, $in, ...)")
            _check_filter(item)
    elif isinstance(value, list):
        for item in value:
            _check_filter(item)
    elif not (value is None or isinstance(value, str | int | float | bool)):
        raise ValueError(f"{value!r} is not a JSON value; write dates and ids as MongoDB Extended JSON, "
                         'e.g. {"$date": "2026-01-31T00:00:00Z"}')


class PriorCollection(_Model):
    """Documents of a MongoDB collection to start from: which ones (``filter``, a MongoDB query
    document; MongoDB Extended JSON such as ``{"$date": ...}`` for dates and ids) and which of
    their fields hold each parameter and metric (dotted paths: ``conditions.temp``).

    The database is the campaign store's own MongoDB, or the one ``CLOSEDLOOP_PRIOR_MONGODB_URI``
    names: a password never stands in a campaign file. ``filter`` is kept as JSON text in the
    log (a stored document cannot hold ``$`` keys everywhere).
    """

    database: str = Field(min_length=1, max_length=63)
    collection: str = Field(min_length=1, max_length=255)
    filter: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, str] = Field(min_length=1)
    metrics: dict[str, str] = Field(min_length=1)

    @field_validator("filter", mode="before")
    @classmethod
    def _filter(cls, value: Any) -> Any:
        if isinstance(value, str):  # as the log keeps it
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError("not JSON; write a MongoDB query document, e.g. "
                                 '{"status": "done"}') from None
        if not isinstance(value, dict):
            raise ValueError(f"{value!r} is not a MongoDB query document; write a mapping, "  # noqa: TRY004
                             'e.g. {"status": "done"}')
        _check_filter(value)
        unknown = sorted(k for k in value if k.startswith("$") and k not in _TOP_LEVEL | SERVER_SIDE_JS)
        if unknown:
            raise ValueError(f"{unknown[0]} is not a top-level query operator; use field names, or "
                             f"{', '.join(sorted(_TOP_LEVEL))}")
        return value

    @field_serializer("filter")
    def _filter_text(self, value: dict[str, Any]) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    @field_validator("parameters", "metrics")
    @classmethod
    def _paths(cls, value: dict[str, str]) -> dict[str, str]:
        for name, path in value.items():
            if not _FIELD_PATH_RE.match(path):
                raise ValueError(f"{name}: {path!r} is not a document field path; write it like \"result.yield\"")
        return value

    @property
    def filter_text(self) -> str:
        """The filter as JSON text (what the log keeps)."""
        return self._filter_text(self.filter)


class PriorData(_Model):
    """One source of prior data: ``campaign: ID`` (that campaign's own completed trials) or
    ``mongodb: {...}`` (documents of a collection, ``PriorCollection``)."""

    campaign: str | None = None
    mongodb: PriorCollection | None = None

    @model_validator(mode="after")
    def _one(self) -> PriorData:
        if (self.campaign is None) == (self.mongodb is None):
            raise ValueError("give one source of prior data; write `campaign: ID` or `mongodb: {database, "
                             "collection, filter, parameters, metrics}`")
        if self.campaign is not None and not _DEVICE_ID_RE.match(self.campaign):
            raise ValueError(f"campaign {self.campaign!r} is not a campaign id (letters, digits and _ . : -)")
        return self

    def describe(self) -> str:
        """``campaign branin-week1`` or ``lab.runs where {"reactor":"R2"}``, for messages and the log."""
        if self.mongodb is None:
            return f"campaign {self.campaign}"
        m = self.mongodb
        return f"{m.database}.{m.collection} where {m.filter_text}"


class CampaignSpec(_Model):
    """A whole campaign, as written in its YAML file.

    ``dispatch`` is ``async`` (default: devices never wait for each other, suggestions are
    computed ahead while devices are busy) or ``batch`` (batch-synchronous: a batch of
    ``batch_size`` trials, then the next once the whole batch has finished).
    """

    schema_version: Literal[1] = 1
    name: str
    description: str = ""
    parameters: list[Parameter] = Field(min_length=1)
    objectives: list[Objective] = Field(min_length=1)
    outcome_constraints: list[str] = Field(default_factory=list)
    parameter_constraints: list[str] = Field(default_factory=list)
    budget: Budget
    batch_size: int = Field(default=1, ge=1)
    dispatch: Literal["async", "batch"] = Field(
        default="async",
        description=(
            "async: a device that frees up gets a trial at once, and the next suggestions are "
            "computed ahead, while devices are busy (pending trials known to the optimizer); "
            "batch: batch-synchronous, `batch_size` trials are suggested only when none is in "
            "flight, and the whole batch finishes before the next is suggested"
        ),
    )
    trial_timeout_s: float = Field(default=600.0, gt=0)
    seed: int = 0
    devices: list[DeviceSpec] = Field(min_length=1)
    optimizer: OptimizerSettings = Field(default_factory=OptimizerSettings)
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy)
    approval: ApprovalPolicy = Field(default_factory=ApprovalPolicy)
    fixed_parameters: dict[str, float | int | str] = Field(
        default_factory=dict, description="parameters held at a value (the optimizer varies the others)"
    )
    prior_data: list[PriorData] = Field(
        default_factory=list,
        description="data to start from: earlier campaigns' trials, documents of a MongoDB collection",
    )
    # Constraints parsed once, when the spec is validated (the texts above are what the log keeps).
    _outcome: list[OutcomeConstraint] = PrivateAttr(default_factory=list)
    _linear: list[LinearConstraint] = PrivateAttr(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _DEVICE_ID_RE.match(value):
            raise ValueError(f"name {value!r} may hold only letters, digits and _ . : -")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CampaignSpec:
        names = [p.name for p in self.parameters]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"parameters: duplicate name {sorted(dup)[0]!r}; give each parameter its own name")
        objs = [o.name for o in self.objectives]
        if len(set(objs)) != len(objs):
            raise ValueError("objectives: the same metric is listed twice; list each once")
        if len(self.objectives) == 1 and self.objectives[0].threshold is not None:
            raise ValueError("objectives[0].threshold: thresholds are for multi-objective campaigns; remove it")
        ids = [d.id for d in self.devices]
        if len(set(ids)) != len(ids):
            raise ValueError("devices: two devices share an id; give each its own id")
        for i, d in enumerate(self.devices):
            if d.simulator is None and not d.measures:
                raise ValueError(
                    f"devices[{i}]: a real device needs `measures: [metric, ...]` (or set `simulator:`)"
                )
        by_name = {p.name: p for p in self.parameters}
        for name, value in self.fixed_parameters.items():
            p = by_name.get(name)
            if p is None:
                raise ValueError(f"fixed_parameters: {name!r} is not a parameter of this campaign; fix a parameter by its name")
            if isinstance(p, ChoiceParameter):
                if value not in p.values:
                    raise ValueError(f"fixed_parameters.{name}: {value!r} is not one of its values {p.values}")
            elif isinstance(value, str) or not (p.bounds[0] <= value <= p.bounds[1]):
                raise ValueError(f"fixed_parameters.{name}: {value!r} is outside its bounds {list(p.bounds)}")
        condition = self.approval.condition
        if condition is not None:
            unknown = sorted(expressions.names(condition) - set(by_name))
            if unknown:
                raise ValueError(f"approval.when: {unknown[0]!r} is not a parameter of this campaign; use parameter names")
        self._outcome = [_parse_outcome(t, f"outcome_constraints[{i}]") for i, t in enumerate(self.outcome_constraints)]
        self._check_prior_data(names)
        self._linear = [_parse_linear(t, by_name, f"parameter_constraints[{i}]")
                        for i, t in enumerate(self.parameter_constraints)]
        return self

    def _check_prior_data(self, names: list[str]) -> None:
        metrics = self.metrics
        seen: set[str] = set()
        for i, source in enumerate(self.prior_data):
            where = f"prior_data[{i}]"
            if source.campaign is not None:
                if source.campaign in seen:
                    raise ValueError(f"{where}: campaign {source.campaign!r} is listed twice; list each source once")
                seen.add(source.campaign)
                continue
            assert source.mongodb is not None
            m = source.mongodb
            for name in m.parameters:
                if name not in names:
                    raise ValueError(f"{where}.mongodb.parameters: {name!r} is not a parameter of this campaign; "
                                     f"map parameters by name ({', '.join(names)})")
            missing = [n for n in names if n not in m.parameters]
            if missing:
                raise ValueError(f"{where}.mongodb.parameters: parameter {missing[0]!r} is not mapped to a field; "
                                 "a prior point needs every parameter's value")
            for name in m.metrics:
                if name not in metrics:
                    raise ValueError(f"{where}.mongodb.metrics: {name!r} is not a metric of this campaign; "
                                     f"map metrics by name ({', '.join(metrics)})")

    @model_validator(mode="after")
    def _engine_fits(self) -> CampaignSpec:
        why = fast_obstacle(self) if self.optimizer.method == "fast" else None
        if why is not None:
            raise ValueError(f"optimizer.method: fast cannot serve this campaign's space, which has {why}; "
                             "use method auto or ax")
        return self

    @property
    def parsed_outcome_constraints(self) -> list[OutcomeConstraint]:
        """The outcome constraints, parsed (when the spec was validated)."""
        return list(self._outcome)

    @property
    def parsed_parameter_constraints(self) -> list[LinearConstraint]:
        """The linear parameter constraints, parsed (when the spec was validated)."""
        return list(self._linear)

    @property
    def metrics(self) -> list[str]:
        """Every metric the campaign needs measured: objectives, then constraint metrics."""
        out = [o.name for o in self.objectives]
        for c in self.parsed_outcome_constraints:
            if c.metric not in out:
                out.append(c.metric)
        return out

    def check_devices(
        self,
        simulators: Mapping[str, Any],
        validate_options: Callable[[str, Mapping[str, Any]], list[str]],
        inputs_of: Callable[[str, Mapping[str, Any]], list[str]],
    ) -> None:
        """Check devices against the simulators closedloop knows, and that the metrics are measured.

        Args:
            simulators: The known simulator names (a mapping or set).
            validate_options: ``(simulator, options) -> measured metrics``; raises ``ValueError``
                for bad options.
            inputs_of: ``(simulator, options) -> parameter names the simulator reads``.

        Raises:
            SpecError: naming the device field and the fix.
        """
        params = {p.name for p in self.parameters}
        per_device: list[tuple[int, DeviceSpec, set[str]]] = []
        for i, d in enumerate(self.devices):
            if d.simulator is None:
                per_device.append((i, d, set(d.measures or [])))
                continue
            if d.simulator not in simulators:
                close = difflib.get_close_matches(d.simulator, list(simulators), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"choose one of: {', '.join(sorted(simulators))}"
                raise SpecError(f"devices[{i}].simulator: unknown simulator {d.simulator!r}", hint)
            try:
                metrics = validate_options(d.simulator, d.options)
                inputs = inputs_of(d.simulator, d.options)
            except ValueError as exc:
                raise SpecError(f"devices[{i}].options: {_first_line(exc)}", "fix the option or remove it") from None
            missing = [n for n in inputs if n not in params]
            if missing:
                raise SpecError(
                    f"devices[{i}]: simulator {d.simulator!r} reads parameter {missing[0]!r}, "
                    "which the campaign does not define",
                    "add the parameter, or map inputs with `options: {inputs: [...]}`",
                )
            per_device.append((i, d, set(metrics)))
        # Any device may get any trial, so every device must measure every metric the campaign needs.
        for where, metric in self._needed_metrics():
            for i, d, measured in per_device:
                if metric not in measured:
                    raise SpecError(
                        f"{where}: device {d.id!r} (devices[{i}]) does not measure {metric!r}"
                        f" (it measures: {', '.join(sorted(measured)) or 'nothing'})",
                        "fix the metric name, or use devices that measure it",
                    )

    def _needed_metrics(self) -> list[tuple[str, str]]:
        out = [(f"objectives[{i}].name", o.name) for i, o in enumerate(self.objectives)]
        out += [(f"outcome_constraints[{i}]", c.metric) for i, c in enumerate(self.parsed_outcome_constraints)]
        return out


def _parse_outcome(text: str, where: str) -> OutcomeConstraint:
    try:
        metric, op, bound = expressions.outcome(expressions.parse(text))
    except expressions.ExpressionError:
        raise ValueError(f"{where}: cannot read {text!r}; write it like \"purity >= 0.2\"") from None
    try:
        _check_name(metric)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return OutcomeConstraint(metric=metric, op=op, bound=bound)  # type: ignore[arg-type]


def _parse_linear(text: str, parameters: Mapping[str, Any], where: str) -> LinearConstraint:
    """A linear constraint on float and int parameters (the grammar of `campaigns.expressions`)."""
    try:
        coefficients, op, bound = expressions.linear(expressions.parse(text))
    except expressions.ExpressionError:
        raise ValueError(f"{where}: cannot read {text!r}; write it like \"x1 + 2*x2 <= 10\"") from None
    for name in coefficients:
        p = parameters.get(name)
        if p is None:
            raise ValueError(f"{where}: {name!r} is not a float or int parameter of this campaign")
        if isinstance(p, ChoiceParameter):
            raise ValueError(f"{where}: {name!r} is a choice parameter; a linear constraint reads float or int "  # noqa: TRY004 - a spec mistake: pydantic wants ValueError
                             "parameters only")
    if op == ">=":
        coefficients = {k: -v for k, v in coefficients.items()}
        bound = -bound
    return LinearConstraint(coefficients=coefficients, bound=bound, text=text.strip())


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
