"""Mid-campaign changes: what a person may change while a campaign runs, and how it applies.

A change is recorded as a `CampaignChanged` event (with who and why) and the campaign's
*effective* spec is the original spec with every change applied in log order. Trials run
under older settings keep their data; the optimizer works with the effective spec from the
change on (and on every resume, since it is rebuilt from the log).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from campaigns.errors import SpecError
from campaigns.spec import CampaignSpec, ChoiceParameter
from campaigns.spec_file import parse_spec

__all__ = ["CampaignChange", "apply_change"]


class CampaignChange(BaseModel):
    """What one `closedloop change` asks for; every field is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    set_bounds: dict[str, tuple[float, float]] = Field(default_factory=dict)
    fix: dict[str, float | int | str] = Field(default_factory=dict)
    free: list[str] = Field(default_factory=list)
    add_outcome_constraints: list[str] = Field(default_factory=list)
    objective_thresholds: dict[str, float] = Field(default_factory=dict)
    batch_size: int | None = Field(default=None, ge=1)
    trial_timeout_s: float | None = Field(default=None, gt=0)
    max_trials: int | None = Field(default=None, gt=0)
    max_hours: float | None = Field(default=None, gt=0)
    # botorch / botorch_default: earlier names of auto / ax_default, still read (old logs).
    method: Literal["auto", "fast", "ax", "ax_default", "sobol", "botorch", "botorch_default"] | None = Field(
        default=None, description="the optimizer's method from now on (`optimizer.method`)"
    )

    def is_empty(self) -> bool:
        """Whether the change changes nothing."""
        return self == CampaignChange()

    def describe(self) -> str:
        """One line for `closedloop history`."""
        parts = [f"bounds {k}={lo:g}:{hi:g}" for k, (lo, hi) in self.set_bounds.items()]
        parts += [f"fix {k}={v}" for k, v in self.fix.items()] + [f"free {k}" for k in self.free]
        parts += [f"constraint {c}" for c in self.add_outcome_constraints]
        parts += [f"threshold {k}={v:g}" for k, v in self.objective_thresholds.items()]
        for name in ("batch_size", "trial_timeout_s", "max_trials", "max_hours"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value:g}")
        if self.method is not None:
            parts.append(f"method={self.method}")
        return ", ".join(parts) or "nothing"


def apply_change(spec: CampaignSpec, change: CampaignChange) -> CampaignSpec:
    """The spec with the change applied, validated like a spec file.

    Raises:
        SpecError: the change does not fit the campaign (unknown parameter, bad bounds, ...).
    """
    data: dict[str, Any] = spec.model_dump(mode="json")
    params = {p["name"]: p for p in data["parameters"]}
    for name, (low, high) in change.set_bounds.items():
        p = params.get(name)
        if p is None:
            raise SpecError(f"bounds of {name}: no such parameter", f"parameters: {', '.join(params)}")
        if p["type"] == "choice":
            raise SpecError(f"bounds of {name}: a choice parameter has no bounds", "fix it to one of its values instead")
        if not (math.isfinite(low) and math.isfinite(high)):
            raise SpecError(f"bounds of {name}: {low:g} to {high:g}: bounds must be finite numbers",
                            "give a finite low and high, e.g. 0 and 5")
        p["bounds"] = [int(low), int(high)] if p["type"] == "int" else [low, high]
    fixed = dict(data.get("fixed_parameters", {}))
    for name in change.free:
        if name not in fixed:
            raise SpecError(f"freeing {name}: the parameter is not fixed", f"fixed now: {', '.join(fixed) or 'none'}")
        fixed.pop(name)
    for name, value in change.fix.items():
        p = next((q for q in spec.parameters if q.name == name), None)
        if p is not None and not isinstance(p, ChoiceParameter) and isinstance(value, str):
            raise SpecError(f"fixing {name} at {value}: the parameter takes a number", "give a number, e.g. 3.0")
        fixed[name] = value
    data["fixed_parameters"] = fixed
    data["outcome_constraints"] = [*data["outcome_constraints"], *change.add_outcome_constraints]
    objectives = {o["name"]: o for o in data["objectives"]}
    for name, value in change.objective_thresholds.items():
        if name not in objectives:
            raise SpecError(f"threshold of {name}: not an objective", f"objectives: {', '.join(objectives)}")
        objectives[name]["threshold"] = value
    for name in ("batch_size", "trial_timeout_s"):
        if getattr(change, name) is not None:
            data[name] = getattr(change, name)
    if change.max_trials is not None:
        data["budget"]["max_trials"] = change.max_trials
    if change.max_hours is not None:
        data["budget"]["max_hours"] = change.max_hours
    if change.method is not None:
        data["optimizer"] = {**data.get("optimizer", {}), "method": change.method}
    try:
        return parse_spec(data, "change")
    except SpecError:
        raise
    except ValidationError as exc:  # pragma: no cover - parse_spec turns these into SpecError
        raise SpecError(f"change: {exc.errors()[0]['msg']}", "fix the change") from None
