"""The optimizer's own records of trials, without Ax: what ``AxOptimizer`` keeps per trial,
read from the log, and which trials a model is fitted on.

Loads without Ax (it takes seconds to import): a campaign whose engine is closedloop's
Sobol opening or the fast engine never imports Ax.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from campaigns.errors import OptimizerError
from campaigns.events import Measurement, ParameterValue
from campaigns.spec import CampaignSpec, ChoiceParameter, FloatParameter, IntParameter
from campaigns.state import TrialRecord

if TYPE_CHECKING:  # a table of means is handed in; pandas loads only when the cap applies
    import pandas as pd

__all__ = [
    "EntryStatus",
    "RawData",
    "TrialEntry",
    "coerce_parameters",
    "ordered_trials",
    "raw_data",
    "training_rows",
    "trial_run_metadata",
]

#: Ax's raw outcome of one trial: metric name → mean, or (mean, sem).
RawData = dict[str, float | tuple[float, float]]

#: What a trial is to the optimizer: suggested or running trials are pending a result.
EntryStatus = Literal["pending", "completed", "failed", "rejected"]

@dataclass
class TrialEntry:
    """One trial as the optimizer records it (and Ax is told it).

    Attributes:
        trial_id: The Ax trial index as text.
        parameters: The parameters run (a person's edit, if any), in the spec's types.
        generator: ``"sobol"``, ``"botorch"``, ``"human"`` or ``"prior"`` (prior data).
        sobol_position: The trial's position in the Sobol sequence, if a Sobol point.
        status: ``"pending"`` until completed, failed or rejected.
        measurements: The measurements, once completed (may be empty: completed without data).
        reason: Why it failed or was rejected.
        run_metadata: Ax run metadata (``trial_run_metadata``), for a trial a person chose.
    """

    trial_id: str
    parameters: dict[str, ParameterValue]
    generator: str
    sobol_position: int | None
    status: EntryStatus = "pending"
    measurements: dict[str, Measurement] = field(default_factory=dict)
    reason: str | None = None
    run_metadata: dict[str, object] | None = None


def raw_data(measurements: Mapping[str, Measurement]) -> RawData:
    """Measurements as Ax raw data: ``(mean, sem)``, or the mean alone when ``sem`` is None."""
    return {name: (m.mean, m.sem) if m.sem is not None else m.mean for name, m in measurements.items()}


def trial_run_metadata(record: TrialRecord) -> dict[str, object] | None:
    """What Ax's trial run metadata notes about a trial a person chose, else None.

    ``{"chosen_by": "human", "decided_by": "user:ana", "suggested_parameters": {...}}``: the
    parameters were edited by a person at approval; ``suggested_parameters`` are the ones the
    optimizer had proposed. ``{"chosen_by": "prior", "source": "campaign w1 trial 7"}``: prior
    data the campaign started from (``PriorTrialsAdded``).
    """
    if record.prior is not None:
        return {"chosen_by": "prior", "source": record.prior}
    if record.generator != "human":
        return None
    return {
        "chosen_by": "human",
        "decided_by": record.decided_by,
        "suggested_parameters": dict(record.suggested_parameters or {}),
    }


def ordered_trials(spec: CampaignSpec, trials: Iterable[TrialRecord]) -> list[TrialEntry]:
    """The log's trials in index order as entries, parameters coerced to the spec's types.

    Completed trials carry their measurements, failed and rejected ones their reason; the
    others (suggested, running) are pending.

    Raises:
        OptimizerError: the trial ids are not ``"0", "1", ...`` in index order, or a trial's
            parameters do not fit the spec.
    """
    out: list[TrialEntry] = []
    for expected, record in enumerate(sorted(trials, key=lambda r: r.index)):
        if record.trial_id != str(expected):
            raise OptimizerError(
                f"campaign {spec.name!r}: trial {record.trial_id!r} is number {expected} in the log; "
                f"expected trial id {str(expected)!r}",
                "trial ids are Ax trial indices in suggestion order; the log is damaged or hand-edited",
                trial_id=record.trial_id,
            )
        entry = TrialEntry(
            record.trial_id, coerce_parameters(spec, record.parameters), record.generator,
            record.sobol_position, run_metadata=trial_run_metadata(record),
        )
        if record.status == "completed":
            entry.status, entry.measurements = "completed", dict(record.measurements)
        elif record.status in ("failed", "rejected"):
            entry.status, entry.reason = record.status, record.failure_reason or record.status
        out.append(entry)
    return out


def coerce_parameters(spec: CampaignSpec, parameters: Mapping[str, ParameterValue]) -> dict[str, ParameterValue]:
    """Parameters with each value in its parameter's Python type (a JSON round trip turns 3 into 3.0).

    Raises:
        OptimizerError: a parameter is missing, unknown, or has a value of the wrong kind.
    """
    hint = "the log and the spec disagree; check the campaign's spec"
    unknown = sorted(set(parameters) - {p.name for p in spec.parameters})
    if unknown:
        raise OptimizerError(f"campaign {spec.name!r}: a trial has unknown parameter {unknown[0]!r}", hint)
    out: dict[str, ParameterValue] = {}
    for p in spec.parameters:
        if p.name not in parameters:
            raise OptimizerError(f"campaign {spec.name!r}: a trial lacks parameter {p.name!r}", hint)
        value = _coerce(p, parameters[p.name])
        if value is None:
            raise OptimizerError(
                f"campaign {spec.name!r}: parameter {p.name!r} has value {parameters[p.name]!r}, not a {p.type}", hint
            )
        out[p.name] = value
    return out


def _coerce(p: FloatParameter | IntParameter | ChoiceParameter, v: ParameterValue) -> ParameterValue | None:
    number = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    if isinstance(p, FloatParameter):
        return float(v) if number else None
    if isinstance(p, IntParameter):
        return int(v) if number and float(v).is_integer() else None
    exact = [c for c in p.values if c == v and type(c) is type(v)]
    loose = [c for c in p.values if c == v]
    return exact[0] if exact else (loose[0] if loose else None)


def training_rows(spec: CampaignSpec, means: pd.DataFrame, max_points: int) -> list[int] | None:
    """The trial indices to fit on, from a table of means (index: trial index; a column per
    metric); ``None`` when every trial fits. The choice ``training_trials`` describes."""
    if len(means) <= max_points:
        return None
    trials = means.index.to_numpy(dtype=int)
    n_best, n_recent = max_points // 2, max_points // 4
    best = trials[_best_first(spec, means, n_best)[:n_best]].tolist()
    chosen = set(best)
    rest = [t for t in sorted(trials.tolist(), reverse=True) if t not in chosen]
    chosen.update(rest[:n_recent])
    rest = sorted(rest[n_recent:])
    spread = max_points - len(chosen)
    if spread > 0 and rest:
        step = len(rest) / spread
        chosen.update(rest[min(len(rest) - 1, int(k * step))] for k in range(spread))
    return sorted(chosen)


def training_entries(spec: CampaignSpec, done: list[TrialEntry]) -> list[TrialEntry]:
    """The completed trials a model is fitted on: all of them, or the
    ``optimizer.max_training_points`` that ``training_rows`` chooses."""
    if len(done) <= spec.optimizer.max_training_points:
        return done
    import pandas as pd  # only a long campaign needs it (~0.3 s of CPU to load)

    means = pd.DataFrame([{m: v.mean for m, v in e.measurements.items()} for e in done],
                         index=[int(e.trial_id) for e in done])
    keep = set(training_rows(spec, means, spec.optimizer.max_training_points) or means.index)
    return [e for e in done if int(e.trial_id) in keep]


def _column(means: pd.DataFrame, name: str) -> np.ndarray:
    return means[name].to_numpy(dtype=float) if name in means else np.full(len(means), np.nan)


def _best_first(spec: CampaignSpec, means: pd.DataFrame, wanted: int) -> np.ndarray:
    """Row positions of ``means`` from best to worst: feasible, Pareto layer, objective, index."""
    # Every objective as a loss to minimize; a missing value is the worst.
    losses = np.column_stack([_column(means, o.name) * (1.0 if o.minimize else -1.0) for o in spec.objectives])
    losses = np.where(np.isnan(losses), np.inf, losses)
    infeasible = np.zeros(len(means), dtype=bool)
    for c in spec.parsed_outcome_constraints:
        v = _column(means, c.metric)
        with np.errstate(invalid="ignore"):
            infeasible |= np.isnan(v) | (v < c.bound if c.op == ">=" else v > c.bound)
    layers = _pareto_layers(losses, wanted) if losses.shape[1] > 1 else np.zeros(len(means), dtype=int)
    # np.lexsort sorts by the last key first.
    return np.lexsort((means.index.to_numpy(dtype=int), losses[:, 0], layers, infeasible))


def _pareto_layers(losses: np.ndarray, wanted: int) -> np.ndarray:
    """Non-dominated sorting: layer 0 is the Pareto front, 1 the front of the rest, ...

    Stops once ``wanted`` rows have a layer; the others get the next layer number. Works in
    chunks of rows, so memory stays small for long campaigns.
    """
    n = len(losses)
    layers = np.full(n, -1)
    layer = 0
    while (layers >= 0).sum() < min(wanted, n):
        left = np.flatnonzero(layers < 0)
        others = losses[left]
        dominated = np.zeros(len(left), dtype=bool)
        for start in range(0, len(left), _CHUNK):
            rows = others[start : start + _CHUNK]
            # worse[i, j]: row j of the chunk is dominated by row i of the rest.
            no_better = (others[:, None, :] <= rows[None, :, :]).all(-1)
            better = (others[:, None, :] < rows[None, :, :]).any(-1)
            dominated[start : start + _CHUNK] = (no_better & better).any(0)
        layers[left[~dominated]] = layer
        layer += 1
    layers[layers < 0] = layer
    return layers


_CHUNK = 256
