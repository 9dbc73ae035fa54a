"""The optimizer's own records of trials, and building an Ax experiment from them at once.

``AxOptimizer`` keeps one ``TrialEntry`` per trial (parameters, generator, status,
measurements, reason) and touches Ax only to generate BoTorch trials: before a BoTorch call it
builds a fresh Ax ``Client`` from its entries with ``attach_in_bulk``, the same call
``AxOptimizer.rebuild`` makes on resume, so a live and a rebuilt optimizer hand Ax the same
experiment by construction.

Going through ``Client.complete_trial`` once per trial costs O(trials) each (Ax re-sorts and
re-filters the experiment's whole data frame to validate and log every call): ~14 ms per trial
at a few hundred trials, 20-30 s for a 1,000-trial log. The bulk build makes the same
experiment in one pass (~0.2-0.35 s per 1,000 trials):

- each trial through ``Experiment.attach_trial`` — the call ``Client.attach_trial`` makes, so
  arms, arm names (``"<index>_0"``), search-space validation and trial properties are Ax's own;
- every measurement as one Ax ``DataRow`` with the values ``Client.complete_trial`` would
  make (``sem=None`` → NaN, step NaN), attached with a single ``Experiment.attach_data``;
- then the statuses: ``mark_completed`` / ``mark_failed(reason)`` / ``mark_abandoned(reason)``
  (a trial a person rejected); the rest stay running, which Ax treats as pending.

``attach_per_trial`` builds the same experiment through ``Client`` one call per trial (attach,
complete, fail, abandon), as the optimizer did before it kept its own records: the reference
the bulk build is tested and benchmarked against.

People in the loop: a trial whose parameters a person edited (``generator == "human"``) is
attached with the edited parameters, like every trial, and its run metadata says so
(``trial_run_metadata``). A rejected trial is attached and abandoned: Ax never suggests an
abandoned arm again (its generation strategy deduplicates against it and passes it to the
model as a pending point), and it expects no data for it. A trial outside today's bounds
(the bounds were narrowed since it ran) is attached with its data, out of design: Ax expands
its model space to fit it, and generates only inside the current search space.

Metrics a device reported beyond the spec's become tracking metrics first, as
``Client.attach_data`` does (registered in name order in bulk, in arrival order per trial).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

from ax import Client
from ax.core.data import Data, DataRow

from campaigns.errors import OptimizerError
from campaigns.spec import CampaignSpec
from campaigns.state import TrialRecord
from optimizer.ax_setup import AX_ERRORS, optimizer_error
from optimizer.records import (  # noqa: F401  (re-exported)
    RawData,
    TrialEntry,
    ordered_trials,
    raw_data,
    trial_run_metadata,
)
from optimizer.robust import metric_bounds, safety_cutoffs

__all__ = [
    "OUT_OF_DESIGN",
    "RawData",
    "TrialEntry",
    "attach_in_bulk",
    "attach_one",
    "attach_per_trial",
    "experiment_client",
    "ordered_trials",
    "raw_data",
    "trial_run_metadata",
]

#: The warning Ax gives for a trial attached outside the search space; such trials are expected.
OUT_OF_DESIGN = r"Parameterization .* is in out-of-design"
_ATTACH_HINT = "the trial does not fit the campaign's search space; check the spec and the log"
_BUG = "this is a bug in closedloop; please report it"


def attach_one(client: Client, spec: CampaignSpec, trial: TrialEntry) -> str:
    """Attach one trial to the client's experiment as pending (running); its arm's name.

    Raises:
        OptimizerError: Ax refuses the parameters, or the trial's index is not its id.
    """
    try:
        with warnings.catch_warnings():
            # A recorded trial outside today's bounds (the bounds changed since) is attached
            # and used; Ax's warning would name this module and be an error under the test
            # suite's filters.
            warnings.filterwarnings("ignore", message=OUT_OF_DESIGN, category=RuntimeWarning)
            arms, index = client._experiment.attach_trial(
                parameterizations=[trial.parameters], run_metadata=trial.run_metadata
            )
    except AX_ERRORS as exc:
        raise optimizer_error(spec, f"attaching trial {trial.trial_id}", exc, _ATTACH_HINT, trial.trial_id) from exc
    if str(index) != trial.trial_id:
        raise OptimizerError(f"campaign {spec.name!r}: Ax attached trial {trial.trial_id} as {index}", _BUG,
                             trial_id=trial.trial_id)
    return next(iter(arms))


def attach_in_bulk(client: Client, spec: CampaignSpec, trials: Sequence[TrialEntry]) -> None:
    """Add the trials to the client's (empty) experiment with their data and statuses.

    Args:
        client: A client from ``build_client(spec)`` with no trials yet.
        spec: The campaign.
        trials: Trial ``i`` at position ``i`` (``ordered_trials``, or the optimizer's records).

    Raises:
        OptimizerError: Ax refuses a trial's parameters or the data.
    """
    # Ax 1.3.1's Client has no bulk path and no public accessor for its experiment.
    experiment = client._experiment
    if experiment.trials:
        raise OptimizerError(f"campaign {spec.name!r}: bulk replay into an experiment that has trials", _BUG)
    arm_names = {t.trial_id: attach_one(client, spec, t) for t in trials}

    completed = [t for t in trials if t.status == "completed"]
    extra = sorted({name for t in completed for name in t.measurements} - set(experiment.metrics))
    try:
        if extra:
            client.configure_tracking_metrics(metric_names=extra)
        signature = {name: metric.signature for name, metric in experiment.metrics.items()}
        cutoffs = model_cutoffs(spec, completed)
        rows = [
            DataRow(
                trial_index=int(t.trial_id),
                arm_name=arm_names[t.trial_id],
                metric_name=name,
                metric_signature=signature[name],
                mean=min(max(float(m.mean), cutoffs[name][0]), cutoffs[name][1]),
                se=float(m.sem) if m.sem is not None else math.nan,
                step=math.nan,  # Client.attach_data's "no progression"
            )
            for t in completed
            for name, m in t.measurements.items()
        ]
        if rows:
            experiment.attach_data(Data(data_rows=rows))
    except AX_ERRORS as exc:
        raise optimizer_error(spec, "attaching the recorded measurements", exc, "check the measurements") from exc

    for t in trials:
        trial = experiment.trials[int(t.trial_id)]
        if t.status == "completed":
            trial.mark_completed()
        elif t.status == "failed":
            trial.mark_failed(reason=t.reason or "failed")
        elif t.status == "rejected":
            trial.mark_abandoned(reason=t.reason or "rejected")


def attach_per_trial(client: Client, spec: CampaignSpec, trials: Sequence[TrialEntry]) -> None:
    """Add the trials one by one through Ax's ``Client`` (the reference; quadratic in trials).

    Each trial is attached, then completed (``Client.complete_trial``), failed
    (``Client.mark_trial_failed``) or abandoned before the next one is attached.

    Raises:
        OptimizerError: Ax refuses a trial's parameters or its data.
    """
    cutoffs = model_cutoffs(spec, [t for t in trials if t.status == "completed"])
    for t in trials:
        what, hint = f"attaching trial {t.trial_id}", _ATTACH_HINT
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=OUT_OF_DESIGN, category=RuntimeWarning)
                index = client.attach_trial(parameters=t.parameters)
            if str(index) != t.trial_id:
                raise OptimizerError(f"campaign {spec.name!r}: Ax attached trial {t.trial_id} as {index}", _BUG,
                                     trial_id=t.trial_id)
            if t.run_metadata is not None:
                client._experiment.trials[index].update_run_metadata(t.run_metadata)
            what, hint = f"completing trial {t.trial_id}", "check the measurements"
            if t.status == "completed":
                clipped = {k: m.model_copy(update={"mean": min(max(m.mean, cutoffs[k][0]), cutoffs[k][1])})
                           for k, m in t.measurements.items()}
                client.complete_trial(trial_index=index, raw_data=raw_data(clipped) or None)
            elif t.status == "failed":
                client.mark_trial_failed(trial_index=index, failed_reason=t.reason or "failed")
            elif t.status == "rejected":
                # Client.mark_trial_abandoned takes no reason; this is the call it makes, with one.
                client._experiment.trials[index].mark_abandoned(reason=t.reason or "rejected")
        except AX_ERRORS as exc:
            raise optimizer_error(spec, what, exc, hint, t.trial_id) from exc


def model_cutoffs(spec: CampaignSpec, completed: Sequence[TrialEntry]) -> dict[str, tuple[float, float]]:
    """Per metric, the range Ax's model sees its values in (``optimizer.robust.safety_cutoffs``:
    ordinary data is untouched; a 1e200 reading would overflow Ax's standardization)."""
    values: dict[str, list[float]] = {}
    for t in completed:
        for name, m in t.measurements.items():
            values.setdefault(name, []).append(float(m.mean))
    return {name: safety_cutoffs(v, metric_bounds(spec, name)) for name, v in values.items()}


def experiment_client(spec: CampaignSpec, trials: Iterable[TrialRecord]) -> Client:
    """A fresh Ax ``Client`` holding the campaign's experiment as the log has it.

    For Ax's view of a campaign (its analyses, its SQL store): the spec's search space and
    objectives, and every trial with its parameters, data, status and who chose it
    (``trial_run_metadata``), built in one pass as ``AxOptimizer.rebuild`` builds it.
    """
    from optimizer.ax_setup import build_client

    client = build_client(spec)
    attach_in_bulk(client, spec, ordered_trials(spec, trials))
    return client

