"""Exports of a campaign's trials: one row per trial, as CSV or JSON, from its folded state.

Columns, in order: ``trial_id, index, status, device_id, request_id, suggested_at,
dispatched_at, finished_at, failure_reason, failure_detail, attempts, engine, generator``
(``engine``: what chose the trial, ``sobol``, ``fast``, ``ax``, ...; ``unknown`` for a model
trial of a log written before engines were recorded), then ``param.<name>`` for every
parameter of the spec, then ``<metric>`` (the mean) and ``<metric>.sem`` for every metric the
spec needs (objectives, then constraint metrics) and any other metric a device reported.
Times are ISO-8601 UTC text; a missing value is ``None`` (an empty CSV cell, ``null`` in JSON).

Given the model's view (``ModelColumns``, which ``closedloop export`` computes from
``optimizer.model_best``), the rows also say which trials the model picks (``model.pick``: its
best, or its Pareto set with several objectives) and its posterior ``model.<metric>.mean`` and
``model.<metric>.sd`` at every completed trial; empty where the model does not apply.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from campaigns.state import CampaignState, TrialRecord

__all__ = ["ModelColumns", "export_columns", "export_rows", "write_csv", "write_json"]


@dataclass(frozen=True)
class ModelColumns:
    """The model's view of the trials, for an export (storage does not import the optimizer:
    the CLI hands it in).

    Attributes:
        metrics: The modelled metrics, in column order.
        predictions: Trial id -> metric -> ``(posterior mean, sd)``, for completed trials.
        picked: The trials the model picks: its best, or its Pareto set.
        why: Why the model picks none (``model_best_why``), else None.
    """

    metrics: list[str]
    predictions: Mapping[str, Mapping[str, tuple[float, float]]] = field(default_factory=dict)
    picked: frozenset[str] = frozenset()
    why: str | None = None

_TRIAL_COLUMNS = [
    "trial_id",
    "index",
    "status",
    "device_id",
    "request_id",
    "suggested_at",
    "dispatched_at",
    "finished_at",
    "failure_reason",
    "failure_detail",
    "attempts",
    "engine",
    "generator",
]


def _parameters(state: CampaignState) -> list[str]:
    names = [p.name for p in state.spec.parameters] if state.spec is not None else []
    for trial in state.trials.values():
        names += [n for n in trial.parameters if n not in names]
    return names


def _metrics(state: CampaignState) -> list[str]:
    names = list(state.spec.metrics) if state.spec is not None else []
    extra = sorted({m for t in state.trials.values() for m in t.measurements} - set(names))
    return names + extra


def _late_metrics(state: CampaignState) -> list[str]:
    return sorted({m for t in state.trials.values() for m in t.late_measurements})


def export_columns(state: CampaignState, model: ModelColumns | None = None) -> list[str]:
    """The column names of ``export_rows(state, model)``, in order.

    Args:
        state: A folded campaign state.
        model: The model's view, or None for no model columns.

    Returns:
        The trial columns, then ``param.<name>``, then ``<metric>`` and ``<metric>.sem``, then
        ``late.<metric>`` for results that arrived after their trial had failed (if any did),
        then with ``model``: ``model.pick``, ``model.<metric>.mean`` and ``model.<metric>.sd``.
    """
    columns = list(_TRIAL_COLUMNS)
    columns += [f"param.{n}" for n in _parameters(state)]
    for m in _metrics(state):
        columns += [m, f"{m}.sem"]
    columns += [f"late.{m}" for m in _late_metrics(state)]
    if model is not None:
        columns.append("model.pick")
        for m in model.metrics:
            columns += [f"model.{m}.mean", f"model.{m}.sd"]
    return columns


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _row(trial: TrialRecord, parameters: list[str], metrics: list[str], late: list[str],
         model: ModelColumns | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "trial_id": trial.trial_id,
        "index": trial.index,
        "status": trial.status,
        "device_id": trial.device_id,
        "request_id": trial.request_id,
        "suggested_at": _iso(trial.suggested_at),
        "dispatched_at": _iso(trial.dispatched_at),
        "finished_at": _iso(trial.finished_at),
        "failure_reason": trial.failure_reason,
        "failure_detail": trial.failure_detail or None,
        "attempts": trial.attempts,
        "engine": trial.engine,
        "generator": trial.generator,
    }
    for name in parameters:
        row[f"param.{name}"] = trial.parameters.get(name)
    for name in metrics:
        measured = trial.measurements.get(name)
        row[name] = measured.mean if measured is not None else None
        row[f"{name}.sem"] = measured.sem if measured is not None else None
    for name in late:
        late_value = trial.late_measurements.get(name)
        row[f"late.{name}"] = late_value.mean if late_value is not None else None
    if model is not None:
        predicted = model.predictions.get(trial.trial_id, {})
        row["model.pick"] = (trial.trial_id in model.picked) if predicted else None
        for name in model.metrics:
            mean, sd = predicted.get(name, (None, None))
            row[f"model.{name}.mean"], row[f"model.{name}.sd"] = mean, sd
    return row


def export_rows(state: CampaignState, model: ModelColumns | None = None) -> list[dict[str, Any]]:
    """One row per trial, in the order the trials were suggested.

    Args:
        state: A folded campaign state (``campaigns.fold(events)``).
        model: The model's view, or None for no model columns.

    Returns:
        Dicts with the keys of ``export_columns(state, model)``; JSON-ready (times as ISO text).
    """
    parameters, metrics = _parameters(state), _metrics(state)
    trials = sorted(state.trials.values(), key=lambda t: t.index)
    late = _late_metrics(state)
    return [_row(t, parameters, metrics, late, model) for t in trials]


@contextmanager
def _text_out(path_or_stream: str | Path | IO[str]) -> Iterator[IO[str]]:
    if isinstance(path_or_stream, str | Path):
        with Path(path_or_stream).open("w", encoding="utf-8", newline="") as f:
            yield f
    else:
        yield path_or_stream


def write_csv(state: CampaignState, path_or_stream: str | Path | IO[str], model: ModelColumns | None = None) -> None:
    """Write the trials as CSV: a header, then one line per trial.

    Args:
        state: A folded campaign state.
        model: The model's view, or None for no model columns.
        path_or_stream: A file path (created or replaced) or an open text stream (for a file
            you open yourself, pass ``newline=""``).

    Raises:
        OSError: The file cannot be written.
    """
    with _text_out(path_or_stream) as out:
        writer = csv.DictWriter(out, fieldnames=export_columns(state, model), lineterminator="\n")
        writer.writeheader()
        writer.writerows(export_rows(state, model))


def write_json(state: CampaignState, path_or_stream: str | Path | IO[str], model: ModelColumns | None = None) -> None:
    """Write ``{"campaign_id", "spec", "trials": rows}`` as indented JSON; with ``model`` also
    ``"model": {"picked": [trial ids], "why"}``.

    Args:
        state: A folded campaign state.
        model: The model's view, or None for no model fields.
        path_or_stream: A file path (created or replaced) or an open text stream.

    Raises:
        OSError: The file cannot be written.
    """
    document = {
        "campaign_id": state.campaign_id,
        "spec": state.spec.model_dump(mode="json") if state.spec is not None else None,
        "trials": export_rows(state, model),
    }
    if model is not None:
        document["model"] = {"picked": sorted(model.picked, key=lambda t: (len(t), t)), "why": model.why}
    with _text_out(path_or_stream) as out:
        json.dump(document, out, indent=2, allow_nan=False)
        out.write("\n")
