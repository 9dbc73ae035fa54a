"""Replaying a campaign's trials into a fresh Ax experiment, all at once.

A resume rebuilds the Ax experiment from the log. Going through ``Client.complete_trial``
once per trial costs O(trials) each (Ax re-sorts and re-filters the experiment's whole data
frame to validate and log every call), so a 1,000-trial log took ~20-30 s. The bulk replay
builds the same experiment in one pass:

- each trial through ``Experiment.attach_trial`` — the very call ``Client.attach_trial`` makes
  in the live optimizer, so arms, arm names (``"<index>_0"``), search-space validation and
  trial properties are the live ones;
- every measurement as one Ax ``DataRow`` with the values ``Client.complete_trial`` would
  make (``sem=None`` → NaN, step NaN), attached with a single ``Experiment.attach_data``;
- then the statuses: ``mark_completed`` / ``mark_failed(reason)`` / ``mark_abandoned(reason)``
  (a trial a person rejected); the rest stay running, which Ax treats as pending.

People in the loop: a trial whose parameters a person edited (``generator == "human"``) is
attached with the edited parameters, like every replayed trial, and its run metadata says so
(``trial_run_metadata``). A rejected trial is attached and abandoned: Ax never suggests an
abandoned arm again (its generation strategy deduplicates against it and passes it to the
model as a pending point), and it expects no data for it. A trial outside today's bounds
(the bounds were narrowed since it ran) is attached with its data, out of design: Ax expands
its model space to fit it, and generates only inside the current search space.

Metrics a device reported beyond the spec's become tracking metrics first, as
``Client.attach_data`` does (registered in name order here, in arrival order live).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

from ax import Client
from ax.core.data import Data, DataRow

from campaigns.errors import OptimizerError
from campaigns.events import Measurement, ParameterValue
from campaigns.spec import CampaignSpec
from campaigns.state import TrialRecord
from optimizer.ax_setup import AX_ERRORS, coerce_parameters, optimizer_error

__all__ = ["RawData", "attach_in_bulk", "ordered_trials", "raw_data", "trial_run_metadata"]

#: Ax's raw outcome of one trial: metric name → mean, or (mean, sem).
RawData = dict[str, float | tuple[float, float]]

#: A trial of the log with its parameters coerced to the spec's types.
Replayed = tuple[TrialRecord, dict[str, ParameterValue]]

#: The warning Ax gives for a trial attached outside the search space; such trials are expected.
OUT_OF_DESIGN = r"Parameterization .* is in out-of-design"
_ATTACH_HINT = "the trial does not fit the campaign's search space; check the spec and the log"


def raw_data(measurements: Mapping[str, Measurement]) -> RawData:
    """Measurements as Ax raw data: ``(mean, sem)``, or the mean alone when ``sem`` is None."""
    return {name: (m.mean, m.sem) if m.sem is not None else m.mean for name, m in measurements.items()}


def trial_run_metadata(record: TrialRecord) -> dict[str, object] | None:
    """What Ax's trial run metadata notes about a trial a person chose, else None.

    ``{"chosen_by": "human", "decided_by": "user:ana", "suggested_parameters": {...}}``: the
    parameters were edited by a person at approval; ``suggested_parameters`` are the ones the
    optimizer had proposed.
    """
    if record.generator != "human":
        return None
    return {
        "chosen_by": "human",
        "decided_by": record.decided_by,
        "suggested_parameters": dict(record.suggested_parameters or {}),
    }


def ordered_trials(spec: CampaignSpec, trials: Iterable[TrialRecord]) -> list[Replayed]:
    """The log's trials in index order, each with its parameters coerced to the spec.

    Raises:
        OptimizerError: the trial ids are not ``"0", "1", ...`` in index order, or a trial's
            parameters do not fit the spec.
    """
    out: list[Replayed] = []
    for expected, record in enumerate(sorted(trials, key=lambda r: r.index)):
        if record.trial_id != str(expected):
            raise OptimizerError(
                f"campaign {spec.name!r}: trial {record.trial_id!r} is number {expected} in the log; "
                f"expected trial id {str(expected)!r}",
                "trial ids are Ax trial indices in suggestion order; the log is damaged or hand-edited",
                trial_id=record.trial_id,
            )
        out.append((record, coerce_parameters(spec, record.parameters)))
    return out


def attach_in_bulk(client: Client, spec: CampaignSpec, trials: Sequence[Replayed]) -> None:
    """Add the trials to the client's (empty) experiment with their data and statuses.

    Args:
        client: A client from ``build_client(spec)`` with no trials yet.
        spec: The campaign.
        trials: From ``ordered_trials``: trial ``i`` is at position ``i``.

    Raises:
        OptimizerError: Ax refuses a trial's parameters or the data.
    """
    # Ax 1.3.1's Client has no bulk path and no public accessor for its experiment.
    experiment = client._experiment
    if experiment.trials:
        raise OptimizerError(
            f"campaign {spec.name!r}: bulk replay into an experiment that has trials",
            "this is a bug in closedloop; please report it",
        )
    arm_names: dict[str, str] = {}
    for record, parameters in trials:
        try:
            with warnings.catch_warnings():
                # A recorded trial outside today's bounds (the bounds changed since) is
                # attached and used, as live; Ax's warning would name this module and be
                # an error under the test suite's filters.
                warnings.filterwarnings("ignore", message=OUT_OF_DESIGN, category=RuntimeWarning)
                arms, index = experiment.attach_trial(
                    parameterizations=[parameters], run_metadata=trial_run_metadata(record)
                )
        except AX_ERRORS as exc:
            raise optimizer_error(spec, f"attaching trial {record.trial_id}", exc, _ATTACH_HINT, record.trial_id) from exc
        if str(index) != record.trial_id:
            raise OptimizerError(
                f"campaign {spec.name!r}: Ax attached trial {record.trial_id} as {index}",
                "this is a bug in closedloop; please report it",
                trial_id=record.trial_id,
            )
        arm_names[record.trial_id] = next(iter(arms))

    completed = [record for record, _ in trials if record.status == "completed"]
    extra = sorted({name for r in completed for name in r.measurements} - set(experiment.metrics))
    try:
        if extra:
            client.configure_tracking_metrics(metric_names=extra)
        signature = {name: metric.signature for name, metric in experiment.metrics.items()}
        rows = [
            DataRow(
                trial_index=int(r.trial_id),
                arm_name=arm_names[r.trial_id],
                metric_name=name,
                metric_signature=signature[name],
                mean=float(m.mean),
                se=float(m.sem) if m.sem is not None else math.nan,
                step=math.nan,  # Client.attach_data's "no progression"
            )
            for r in completed
            for name, m in r.measurements.items()
        ]
        if rows:
            experiment.attach_data(Data(data_rows=rows))
    except AX_ERRORS as exc:
        raise optimizer_error(spec, "attaching the recorded measurements", exc, "check the measurements") from exc

    for record, _ in trials:
        trial = experiment.trials[int(record.trial_id)]
        if record.status == "completed":
            trial.mark_completed()
        elif record.status == "failed":
            trial.mark_failed(reason=record.failure_reason or "failed")
        elif record.status == "rejected":
            trial.mark_abandoned(reason=record.failure_reason or "rejected")
