"""What a person sees to decide an approval: each trial's parameters (4 significant digits),
the bounds, the model's prediction, and the campaign's best so far.

One view for every place that asks (`closedloop pending`, the Prefect form), read from the log
alone: the prediction is the one logged with the suggestion (``SuggestedTrial.prediction``).
Pure: the callers format the rows as a text table or markdown.
"""

from __future__ import annotations

from dataclasses import dataclass

from campaigns.spec import CampaignSpec, ChoiceParameter, FloatParameter, IntParameter
from campaigns.state import CampaignState, OpenApproval, TrialRecord

__all__ = ["ApprovalView", "approval_view", "best_so_far", "bounds_text", "number", "prediction_text"]

_Parameter = FloatParameter | IntParameter | ChoiceParameter


def number(value: object) -> str:
    """A value as a person reads it: floats to 4 significant digits, the rest as they are."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def bounds_text(p: _Parameter) -> str:
    """``[low, high]`` (``log`` when log-scaled) or the choices ``{a, b, c}``."""
    if isinstance(p, ChoiceParameter):
        return "{" + ", ".join(number(v) for v in p.values) + "}"
    low, high = p.bounds
    return f"[{number(low)}, {number(high)}]" + (" log" if p.log_scale else "")


def prediction_text(spec: CampaignSpec, trial: TrialRecord, metric: str) -> str:
    """The model's ``mean ± sd`` of ``metric`` at the trial, or why there is none."""
    if trial.prediction is not None and metric in trial.prediction:
        p = trial.prediction[metric]
        return f"{number(p.mean)} ± {number(p.sd)}"
    if trial.engine == "sobol":
        return "no model yet (Sobol)" if not trial.generator.startswith("sobol (fallback") else \
            "no model (Sobol: the model failed)"
    if trial.engine in ("fixed", "replay"):
        return f"no model ({trial.engine})"
    return "not predicted"  # a model's trial logged before predictions were kept, or Ax gave none


def best_so_far(state: CampaignState) -> str:
    """The best observed value of each objective so far, with its trial (feasible trials only)."""
    spec = state.spec
    if spec is None:
        return "no campaign"
    done = [t for t in state.trials.values() if t.status == "completed" and state.feasible(t)]
    parts = []
    for o in spec.objectives:
        measured = [t for t in done if o.name in t.measurements]
        if not measured:
            parts.append(f"{o.name}: nothing measured yet")
            continue
        sign = 1.0 if o.minimize else -1.0
        best = min(measured, key=lambda t: (sign * t.measurements[o.name].mean, t.index))
        parts.append(f"{o.name} = {number(best.measurements[o.name].mean)} "
                     f"({'min' if o.minimize else 'max'}, trial {best.trial_id})")
    if len(spec.objectives) > 1:
        parts.append(f"Pareto front: {len(state.pareto_front())} trial(s)")
    return "; ".join(parts)


@dataclass(frozen=True)
class ApprovalView:
    """An approval request as rows: ``headers`` (``x1 [-5, 10]``, ``predicted y``) and one row per trial."""

    headers: list[str]
    rows: list[list[str]]
    best: str


def approval_view(state: CampaignState, request: OpenApproval) -> ApprovalView:
    """The rows of an approval request: trial, each parameter, each metric's prediction."""
    spec = state.spec
    assert spec is not None
    trials = [state.trials[t] for t in request.trial_ids if t in state.trials]
    by_name = {p.name: p for p in spec.parameters}
    names = list(dict.fromkeys([*(p.name for p in spec.parameters), *(k for t in trials for k in t.parameters)]))
    names = [n for n in names if any(n in t.parameters for t in trials)]
    # Every objective, then any other metric the model predicted (an outcome constraint's).
    metrics = [o.name for o in spec.objectives]
    metrics += sorted({m for t in trials for m in (t.prediction or {})} - set(metrics))
    headers = ["trial", *(f"{n} {bounds_text(by_name[n])}" if n in by_name else n for n in names),
               *(f"predicted {m} (mean ± sd)" for m in metrics)]
    rows = [[t.trial_id, *(number(t.parameters[n]) if n in t.parameters else "" for n in names),
             *(prediction_text(spec, t, m) for m in metrics)] for t in trials]
    return ApprovalView(headers, rows, best_so_far(state))
