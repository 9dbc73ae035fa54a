"""Which engine suggests a campaign's trials, and why: decided here and nowhere else.

``optimizer.method`` names an engine or ``auto``; ``model_engine`` resolves it for a spec
(``closedloop validate`` prints its reason), and ``sobol_phase`` says how many of the next
trials still come from the space-filling opening instead (the one "Sobol or model?" rule,
asked by ``AxOptimizer`` and by the Prefect flow alike).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from campaigns.spec import (
    MAX_CHOICE_COMBINATIONS,
    OLD_METHOD_NAMES,
    CampaignSpec,
    ChoiceParameter,
    fast_obstacle,
)

__all__ = ["MAX_COMBINATIONS", "EngineChoice", "ModelEngine", "default_initialization_trials", "model_engine", "sobol_phase"]

ModelEngine = Literal["sobol", "fast", "ax", "ax_default"]

#: The most combinations of unordered choice values the fast engine enumerates.
MAX_COMBINATIONS = MAX_CHOICE_COMBINATIONS


@dataclass(frozen=True)
class EngineChoice:
    """The engine that suggests a campaign's trials after its opening, and why."""

    engine: ModelEngine
    why: str


def model_engine(spec: CampaignSpec) -> EngineChoice:
    """The engine ``optimizer.method`` names for this spec (``auto`` resolved by the space)."""
    # A spec copied without validation (``model_copy``) may still hold an earlier name.
    method = OLD_METHOD_NAMES.get(spec.optimizer.method, spec.optimizer.method)
    if method != "auto":
        return EngineChoice(method, f"optimizer.method: {method}")  # type: ignore[arg-type]
    obstacle = fast_obstacle(spec)
    if obstacle is not None:
        return EngineChoice("ax", f"auto: {obstacle}")
    return EngineChoice("fast", f"auto: {_space_words(spec)}")


def _space_words(spec: CampaignSpec) -> str:
    """E.g. ``"a continuous space, float parameters only and no parameter constraint"``, or
    ``"float, int and choice parameters (3 choice combinations), 1 parameter constraint"``."""
    kinds = [k for k in ("float", "int", "choice") if any(p.type == k for p in spec.parameters)]
    n = len(spec.parameter_constraints)
    if kinds == ["float"] and not n:
        return "a continuous space, float parameters only and no parameter constraint"
    combos = 1
    for p in spec.parameters:
        if isinstance(p, ChoiceParameter) and not p.is_ordered and p.name not in spec.fixed_parameters:
            combos *= len(p.values)
    words = (", ".join(kinds[:-1]) + " and " + kinds[-1]) if len(kinds) > 1 else kinds[0]
    out = f"{words} parameters"
    if combos > 1:
        out += f" ({combos} choice combinations, each optimized)"
    if n:
        out += f", {n} parameter constraint{'s' if n > 1 else ''}"
    return out


def default_initialization_trials(spec: CampaignSpec) -> int:
    """How many trials open a campaign before a model: the spec's setting, else 5 (Ax's default)."""
    if spec.optimizer.initialization_trials is not None:
        return spec.optimizer.initialization_trials
    return 5


class _Trial(Protocol):
    @property
    def status(self) -> str: ...
    @property
    def measurements(self) -> object: ...


def sobol_phase(spec: CampaignSpec, trials: Iterable[_Trial], unobserved_metrics: bool, wanted: int) -> int:
    """How many of the next ``wanted`` trials come from the Sobol opening rather than a model.

    The model takes over once ``initialization_trials`` trials were suggested (rejected ones
    do not count: they never ran), at least half of that many (rounded up) completed with data,
    and every metric of the optimization config was measured at least once (Ax cannot model a
    metric without data). Until then devices get Sobol points rather than wait for data.

    Prior data (completed trials the campaign started from) counts as trials run: ``k`` prior
    points leave ``max(0, initialization_trials - k)`` Sobol points to suggest, and a campaign
    that starts from ``initialization_trials`` measured points or more suggests by model from
    its first trial.

    Args:
        spec: The campaign's effective spec.
        trials: The optimizer's trials (``status`` ``completed``/``rejected``/..., ``measurements``).
        unobserved_metrics: Whether a metric of the optimization config has no data yet.
        wanted: How many trials are asked for.
    """
    if model_engine(spec).engine == "sobol":
        return wanted
    init = default_initialization_trials(spec)
    trials = list(trials)
    observed = sum(1 for t in trials if t.status == "completed" and t.measurements)
    if observed < math.ceil(init / 2) or unobserved_metrics:
        return wanted
    counted = sum(1 for t in trials if t.status != "rejected")
    return min(wanted, max(0, init - counted))
