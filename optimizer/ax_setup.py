"""Campaign spec → Ax ``Client``: the search space, the optimization config, quiet logs, errors.

Everything here speaks Ax 1.x's public ``Client`` API (``ax.api.client``), except
``set_ax_logger_levels`` which is how Ax itself documents turning its INFO chatter down.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
from ax import ChoiceParameterConfig, Client, RangeParameterConfig
from ax.exceptions.core import AxError
from ax.utils.common.logger import set_ax_logger_levels
from botorch.exceptions.errors import BotorchError, ModelFittingError

from campaigns.errors import OptimizerError
from campaigns.spec import CampaignSpec, ChoiceParameter, FloatParameter, IntParameter, LinearConstraint
from optimizer.records import coerce_parameters  # noqa: F401  (re-exported)

__all__ = [
    "AX_ERRORS",
    "build_client",
    "coerce_parameters",
    "objective_string",
    "optimizer_error",
    "outcome_constraint_strings",
    "parameter_constraint_string",
    "quiet_ax",
]



#: What Ax, BoTorch and the linear algebra under them raise for a configuration they refuse or
#: a generation that failed: each becomes an ``OptimizerError`` with a hint. ``ValueError`` is
#: in because Ax raises it (not its own ``UserInputError``) for refused configurations. A
#: ``TypeError``, ``KeyError`` or ``IndexError`` is a bug of ours and surfaces as one.
AX_ERRORS: tuple[type[BaseException], ...] = (
    AxError,
    BotorchError,
    ModelFittingError,
    ValueError,
    torch.linalg.LinAlgError,
    np.linalg.LinAlgError,
)


#: What to do when a model fails while suggesting trials (either BoTorch path).
SUGGEST_HINT = (
    "check the recorded measurements; to go on without a model: "
    "`closedloop change CAMPAIGN --method sobol --reason ...`, then `closedloop resume CAMPAIGN`"
)


def optimizer_error(
    spec: CampaignSpec, what: str, exc: BaseException, hint: str, trial_id: str | None = None
) -> OptimizerError:
    """An ``OptimizerError`` for an exception Ax raised, in one line.

    Args:
        spec: The campaign concerned.
        what: What the optimizer was doing (``"setting up the search space"``).
        exc: The exception from Ax.
        hint: What the user should do.
        trial_id: The trial concerned, if any.
    """
    detail = " ".join(str(exc).split()) or type(exc).__name__
    if len(detail) > 300:
        detail = detail[:297] + "..."
    return OptimizerError(
        f"campaign {spec.name!r}: Ax failed while {what}: {type(exc).__name__}: {detail}",
        hint,
        trial_id=trial_id,
    )


def quiet_ax(verbose: bool) -> None:
    """Set Ax's loggers to WARNING (or back to INFO when ``verbose``).

    Ax's loggers are process-wide, so this affects every Ax client in the process; it is called
    again before each Ax call because Ax creates loggers lazily, at INFO, as it imports modules.
    """
    set_ax_logger_levels(logging.INFO if verbose else logging.WARNING)


def objective_string(spec: CampaignSpec) -> str:
    """Ax's objective expression: ``"-branin"`` to minimize, ``"-branin, -currin"`` for two."""
    return ", ".join(f"-{o.name}" if o.minimize else o.name for o in spec.objectives)


def outcome_constraint_strings(spec: CampaignSpec) -> list[str]:
    """Outcome constraints, then (multi-objective) objective thresholds, as Ax strings.

    Ax 1.3.1's ``configure_optimization`` takes no separate thresholds: in a multi-objective
    config, a constraint on an objective's own metric becomes that objective's threshold
    (``optimization_config_from_string``). A threshold bounds the side one wants to leave:
    ``metric <= t`` when minimizing, ``metric >= t`` when maximizing.
    """
    out = [str(c) for c in spec.parsed_outcome_constraints]
    if len(spec.objectives) > 1:
        for o in spec.objectives:
            if o.threshold is not None:
                out.append(f"{o.name} {'<=' if o.minimize else '>='} {o.threshold!r}")
    return out


def parameter_constraint_string(c: LinearConstraint) -> str:
    """``sum(coef * name) <= bound`` rendered from the parsed constraint, as Ax reads it."""
    terms = []
    for i, (name, coef) in enumerate(c.coefficients.items()):
        if i == 0:
            terms.append(f"{coef!r}*{name}")
        else:
            terms.append(f"{'-' if coef < 0 else '+'} {abs(coef)!r}*{name}")
    return f"{' '.join(terms)} <= {c.bound!r}"


def _parameter_config(
    p: FloatParameter | IntParameter | ChoiceParameter,
) -> RangeParameterConfig | ChoiceParameterConfig:
    if isinstance(p, ChoiceParameter):
        values: list[str] | list[int] | list[float]
        kind: Literal["str", "int", "float"]
        if isinstance(p.values[0], str):
            kind, values = "str", [str(v) for v in p.values]
        elif all(isinstance(v, int) for v in p.values):
            kind, values = "int", [int(v) for v in p.values]
        else:
            kind, values = "float", [float(v) for v in p.values]
        return ChoiceParameterConfig(name=p.name, values=values, parameter_type=kind, is_ordered=p.is_ordered)
    return RangeParameterConfig(
        name=p.name,
        parameter_type=p.type,
        bounds=(float(p.bounds[0]), float(p.bounds[1])) if p.type == "float" else (p.bounds[0], p.bounds[1]),
        scaling="log" if p.log_scale else "linear",
    )


def build_client(spec: CampaignSpec) -> Client:
    """A configured Ax ``Client`` (experiment and optimization; no trials, no strategy yet).

    Raises:
        OptimizerError: Ax rejects something the spec parser accepted.
    """
    client = Client()
    try:
        client.configure_experiment(
            parameters=[_parameter_config(p) for p in spec.parameters],
            parameter_constraints=[parameter_constraint_string(c) for c in spec.parsed_parameter_constraints],
            name=spec.name,
            description=spec.description or None,
        )
    except AX_ERRORS as exc:
        raise optimizer_error(
            spec, "setting up the search space", exc,
            "check parameters and parameter_constraints in the campaign file "
            "(Ax allows no constraint on a log_scale parameter)",
        ) from exc
    try:
        client.configure_optimization(
            objective=objective_string(spec),
            outcome_constraints=outcome_constraint_strings(spec) or None,
        )
    except AX_ERRORS as exc:
        raise optimizer_error(
            spec, "setting up the objectives", exc,
            "check objectives and outcome_constraints (a single objective's own metric "
            "cannot also be an outcome constraint)",
        ) from exc
    return client
