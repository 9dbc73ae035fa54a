"""What the CLI shows of a campaign: a status summary (text or JSON), built from the fold."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from campaigns import CampaignSpec, CampaignState, EventBase, TrialRecord, event_to_doc
from optimizer.engines import default_initialization_trials, model_engine

if TYPE_CHECKING:  # the model loads torch (~1.3 s): only `status` and a run's progress fit it
    from optimizer.model_best import ModelBest
    from storage.export import ModelColumns

__all__ = [
    "best_line",
    "condition_line",
    "engine_counts",
    "engine_line",
    "engines_text",
    "log_line",
    "model_columns",
    "model_dict",
    "model_line",
    "model_of",
    "status_dict",
    "status_text",
]


def engine_line(spec: CampaignSpec) -> str:
    """What ``closedloop validate`` says of the optimizer: the engine and why."""
    choice = model_engine(spec)
    if choice.engine == "sobol":
        return f"engine: sobol ({choice.why}; no model, quasi-random points only)"
    opening = default_initialization_trials(spec)
    return f"engine: {choice.engine} ({choice.why}); the first {opening} trials: sobol (the centre, then Sobol points)"


def log_line(event: EventBase) -> str:
    """One event on one line: seq, time, actor, kind, then its own fields as compact JSON."""
    doc = event_to_doc(event)
    head = f"{event.seq:>5}  {doc['time']}  {event.actor}  {doc['kind']}"
    rest = {k: v for k, v in doc.items() if k not in ("seq", "time", "actor", "kind", "campaign_id", "schema_version")}
    return f"{head}  {json.dumps(rest, sort_keys=True, separators=(',', ':'))}" if rest else head


def engine_counts(state: CampaignState) -> dict[str, int]:
    """How many trials each engine chose (``sobol``, ``fast``, ``ax``, ...), in first-use order."""
    out: dict[str, int] = {}
    for t in state.trials.values():
        out[t.engine] = out.get(t.engine, 0) + 1
    return out


def engines_text(counts: dict[str, int]) -> str:
    """``"sobol 5, fast 3"`` (``"-"`` with no trial)."""
    return ", ".join(f"{engine} {n}" for engine, n in counts.items()) or "-"


def _trial_summary(t: TrialRecord) -> dict[str, Any]:
    return {
        "trial_id": t.trial_id,
        "parameters": t.parameters,
        "measurements": {k: v.mean for k, v in t.measurements.items()},
        "device_id": t.device_id,
        "engine": t.engine,
        "generator": t.generator,
        "prior": t.prior,  # where prior data came from; None for the campaign's own trials
    }


def model_of(state: CampaignState) -> ModelBest | None:
    """The model-based best of a campaign's completed trials (``optimizer.model_best``; loads
    torch and fits a GP per metric), or None without a spec."""
    if state.spec is None:
        return None
    from optimizer.model_best import model_best

    return model_best(state.spec, state.trials.values())


def model_dict(spec: CampaignSpec, model: ModelBest) -> dict[str, Any]:
    """``model_best`` (``{trial_id, parameters, objectives: {name: {mean, sd, low, high,
    observed}}}`` or None), ``model_best_why``, and with several objectives ``model_pareto_front``."""
    from optimizer.model_best import as_json

    out: dict[str, Any] = {"model_best": None if model.pick is None else as_json(model.pick, spec),
                           "model_best_why": model.why}
    if len(spec.objectives) > 1:
        out["model_pareto_front"] = [as_json(t, spec) for t in model.front]
    return out


def model_columns(spec: CampaignSpec, model: ModelBest) -> ModelColumns:
    """The model's view as ``closedloop export`` writes it (``storage.export.ModelColumns``)."""
    from storage.export import ModelColumns

    picked = [model.pick] if model.pick is not None else model.front
    return ModelColumns(
        metrics=list(spec.metrics),
        predictions={t: {m: (e.mean, e.sd) for m, e in est.metrics.items()} for t, est in model.trials.items()},
        picked=frozenset(t.trial_id for t in picked),
        why=model.why,
    )


def model_line(spec: CampaignSpec, model: ModelBest) -> str:
    """One line: ``best by the model: trial 12 (branin 0.41 ± 0.05; observed 0.38)``, the model's
    Pareto set with several objectives, or why there is none."""
    if len(spec.objectives) > 1 and model.front:
        return f"Pareto front by the model: {len(model.front)} trial(s): " + ", ".join(t.trial_id for t in model.front)
    if model.pick is None:
        return f"best by the model: - ({model.why})"
    name = spec.objectives[0].name
    e = model.pick.metrics[name]
    observed = "" if e.observed is None else f"; observed {e.observed:.4g}"
    return f"best by the model: trial {model.pick.trial_id} ({name} {e.mean:.4g} ± {e.sd:.2g}{observed})"


def status_dict(state: CampaignState, model: ModelBest | None = None) -> dict[str, Any]:
    """The campaign's status as JSON-ready data (``closedloop status --json``); with ``model``
    (``model_of(state)``) also the model-based best (``model_dict``)."""
    spec = state.spec
    best = state.best()
    out: dict[str, Any] = {
        "campaign_id": state.campaign_id,
        "status": state.status,
        "finished_reason": state.finished_reason,
        "budget": None if spec is None else spec.budget.model_dump(),
        "trials": {
            "total": len(state.trials),
            "waiting": state.count("suggested"),
            "running": state.count("running"),
            "completed": state.count("completed"),
            "failed": state.count("failed"),
            "rejected": state.count("rejected"),
            "prior": state.prior_count,  # data the campaign started from (completed, not run, not in the budget)
        },
        "best": None if best is None else _trial_summary(best),
        "optimizer": None if spec is None else {"method": spec.optimizer.method, "engines": engine_counts(state)},
        "objectives": [] if spec is None else [o.model_dump() for o in spec.objectives],
        "runs": state.runs,
        "paused": None if state.paused_reason is None else {"reason": state.paused_reason, "detail": state.paused_detail},
        "broker_down_since": None if state.broker_down_since is None else state.broker_down_since.isoformat(),
        "late_results": sum(1 for t in state.trials.values() if t.late_measurements),
        "approvals_waiting": [{"approval_id": a.approval_id, "trial_ids": a.trial_ids, "why": a.why}
                              for a in state.open_approvals.values()],
        "changes": state.changes,
        "answers_refused": [{"seq": r.seq, "time": r.time.isoformat(), "by": r.by, "via": r.via, "command": r.command,
                             "approval_id": r.approval_id, "what": r.what, "why": r.why} for r in state.refusals],
        "rejected_messages": state.rejected_messages,
        "last_seq": state.last_seq,
        "created_at": None if state.created_at is None else state.created_at.isoformat(),
        "updated_at": None if state.updated_at is None else state.updated_at.isoformat(),
    }
    if spec is not None and len(spec.objectives) > 1:
        # No single best of several objectives: the front, and each objective's best on its own.
        out["best"] = None
        out["pareto_front"] = [_trial_summary(t) for t in state.pareto_front()]
        out["best_by_objective"] = {o.name: None if (t := state.best_for(o.name)) is None else _trial_summary(t)
                                    for o in spec.objectives}
    if spec is not None and model is not None:
        out |= model_dict(spec, model)
    return out


def _fmt(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def best_line(state: CampaignState) -> str:
    """One line: the best trial so far (or the Pareto front's size for several objectives)."""
    spec = state.spec
    if spec is None:
        return "best: -"
    if len(spec.objectives) > 1:
        front = state.pareto_front()
        return f"Pareto front: {len(front)} trial(s)" + (
            ": " + "; ".join(
                ", ".join(f"{o.name}={_fmt(t.measurements[o.name].mean)}" for o in spec.objectives) for t in front[:5]
            ) if front else ""
        )
    best = state.best()
    if best is None:
        if spec.outcome_constraints and state.count("completed"):
            return f"best: - (no completed trial satisfies {', '.join(spec.outcome_constraints)} yet)"
        return "best: - (no completed trial yet)"
    obj = spec.objectives[0]
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in best.parameters.items())
    return f"best {obj.name} = {_fmt(best.measurements[obj.name].mean)} (trial {best.trial_id}) at {params}"


def condition_line(state: CampaignState, database_down: bool = False) -> str:
    """What keeps the campaign from running normally right now, or "" when nothing does."""
    if database_down:
        return "database unreachable: nothing is dispatched until it is back; retrying"
    if state.paused_reason is not None:
        return f"paused: {state.paused_detail or state.paused_reason}"
    if state.open_approvals:
        waiting = ", ".join(f"{a.approval_id} (trials {', '.join(a.trial_ids)})" for a in state.open_approvals.values())
        return f"waiting for approval: {waiting} — see `closedloop pending`"
    if state.broker_down_since is not None:
        return f"MQTT broker down since {state.broker_down_since:%H:%M:%S} UTC: reconnecting with back-off"
    return ""


def status_text(state: CampaignState, model: ModelBest | None = None) -> str:
    """A few human lines (``closedloop status``); with ``model``, the model-based best's line."""
    d = status_dict(state)
    spec = state.spec
    head = f"campaign {state.campaign_id}: {state.status}"
    if state.finished_reason:
        head += f" ({state.finished_reason})"
    t = d["trials"]
    budget = "" if spec is None else f" of a budget of {spec.budget.max_trials}"
    lines = [
        head,
        f"trials: {t['completed']} completed, {t['running']} running, {t['failed']} failed, "
        f"{t['waiting']} waiting{budget}",
        best_line(state),
    ]
    if spec is not None and model is not None:
        lines.append(model_line(spec, model))
    if state.trials:
        method = "" if spec is None else f" (optimizer.method: {spec.optimizer.method})"
        lines.append(f"chosen by: {engines_text(engine_counts(state))}{method}")
    if condition_line(state):
        lines.append(condition_line(state))
    if state.refusals:
        r = state.refusals[-1]
        lines.append(f"answers refused: {len(state.refusals)}; the last, {r.by}'s {r.command} via {r.via} "
                     f"at {r.time:%Y-%m-%d %H:%M} UTC: {r.why} (see `closedloop history`)")
    if state.rejected_messages:
        lines.append(f"rejected device messages: {state.rejected_messages} (see `closedloop export`)")
    return "\n".join(lines)
