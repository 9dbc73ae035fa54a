"""Prior data as trials: an earlier campaign's trials, or documents' values, checked against the
new campaign's spec and numbered as its first trials (``PriorTrialsAdded``).

A source whose data does not fit is refused whole, with one line naming the first bad trial or
document and what is wrong: a scientist who starts from data wants all of it or to know why
not (a filter that also catches unfinished runs is fixed by narrowing it). A point outside the
bounds is kept, out of design, as Ax keeps it: it is data about the function all the same.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from campaigns.errors import SpecError
from campaigns.events import Measurement, ParameterValue, PriorTrial, PriorTrialsAdded
from campaigns.spec import (
    CampaignSpec,
    ChoiceParameter,
    FloatParameter,
    IntParameter,
    PriorData,
)
from campaigns.state import CampaignState

__all__ = ["MAX_PRIOR_TRIALS", "from_campaign", "from_documents", "prior_event"]

#: The most prior trials a campaign starts from (one event of the log holds them all).
MAX_PRIOR_TRIALS = 5000


def _value(p: FloatParameter | IntParameter | ChoiceParameter, v: Any) -> tuple[ParameterValue | None, str]:
    """The value in the parameter's type, or None and why it is not one."""
    if isinstance(v, bool):
        return None, f"{v!r} is not a {p.type} value"
    if isinstance(p, ChoiceParameter):
        matches = sorted((c for c in p.values if c == v), key=lambda c: type(c) is not type(v))
        return (matches[0], "") if matches else (None, f"{v!r} is not one of its values {p.values}")
    if not isinstance(v, int | float) or not math.isfinite(v):
        return None, f"{v!r} is not a finite number"
    if isinstance(p, IntParameter):
        return (int(v), "") if float(v).is_integer() else (None, f"{v!r} is not an integer")
    return float(v), ""


def _point(spec: CampaignSpec, values: Mapping[str, Any], what: str, where: str, how: str) -> dict[str, ParameterValue]:
    out: dict[str, ParameterValue] = {}
    for p in spec.parameters:
        v, why = _value(p, values[p.name])
        if v is None:
            raise SpecError(f"{where}: {what}: parameter {p.name!r}: {why}", how)
        out[p.name] = v
    return out


def from_campaign(spec: CampaignSpec, where: str, source: CampaignState) -> list[tuple[dict[str, ParameterValue],
                                                                                      dict[str, Measurement], str]]:
    """The completed trials of an earlier campaign, as ``(parameters, measurements, trial id)``.

    Its own trials only (not the prior data it started from itself: name that source too), with
    the measurements of this campaign's metrics; a trial that measured none of them is left out.

    Raises:
        SpecError: the campaign does not exist, its parameters are not this campaign's, a value
            does not fit a parameter, or no trial measured a metric of this campaign.
    """
    name = source.campaign_id
    if source.spec is None:
        raise SpecError(f"{where}: there is no campaign {name!r} in the log", "see `closedloop list`")
    ours = [p.name for p in spec.parameters]
    theirs = [p.name for p in source.spec.parameters]
    missing = [n for n in ours if n not in theirs]
    extra = [n for n in theirs if n not in ours]
    if missing or extra:
        said = (f"has no parameter {missing[0]!r}" if missing else f"varied parameter {extra[0]!r}, which this "
                "campaign does not define")
        raise SpecError(f"{where}: campaign {name!r} {said}", "start from a campaign over the same parameters")
    metrics = set(spec.metrics)
    out = []
    for t in sorted(source.trials.values(), key=lambda t: t.index):
        if t.prior is not None or t.status != "completed":
            continue
        measured = {k: m for k, m in t.measurements.items() if k in metrics}
        if not measured:
            continue
        parameters = _point(spec, t.parameters, f"trial {t.trial_id}", where,
                            "start from a campaign whose parameters take this campaign's values")
        out.append((parameters, measured, t.trial_id))
    if not out:
        raise SpecError(f"{where}: campaign {name!r} has no completed trial that measured "
                        f"{', '.join(spec.metrics)}", "start from a campaign that measured this campaign's metrics")
    return out


def from_documents(spec: CampaignSpec, where: str, source: PriorData,
                   documents: Iterable[tuple[str, Mapping[str, Any]]], missing: Any) -> list[
                       tuple[dict[str, ParameterValue], dict[str, Measurement], str]]:
    """Documents' values as ``(parameters, measurements, _id)``: each parameter and metric read
    from the field path the spec maps it to.

    Args:
        spec: The new campaign.
        where: ``prior_data[i]``, for messages.
        source: The spec's source (``mongodb``).
        documents: ``(_id as text, {field path: value})`` per document.
        missing: The value that stands for a field a document lacks.

    Raises:
        SpecError: the filter selects no document, or a document lacks a field or holds a value
            that is not a finite number (a metric, a float or int parameter) or not one of a
            choice's values; the first such document is named.
    """
    m = source.mongodb
    assert m is not None
    how = ("narrow the filter to complete documents (e.g. "
           f'{{"{next(iter(m.metrics.values()))}": {{"$type": "number"}}}}) or fix the document')
    out = []
    for doc_id, values in documents:
        what = f"document _id {doc_id}"
        for name, path in {**m.parameters, **m.metrics}.items():
            if values.get(path, missing) is missing:
                raise SpecError(f"{where}: {m.database}.{m.collection} {what} has no field {path!r} ({name})", how)
        parameters = _point(spec, {n: values[p] for n, p in m.parameters.items()}, what, where, how)
        measured = {}
        for name, path in m.metrics.items():
            v = values[path]
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise SpecError(f"{where}: {m.database}.{m.collection} {what}: {path!r} ({name}) is {v!r}, "
                                "not a finite number", how)
            measured[name] = Measurement(mean=float(v))
        out.append((parameters, measured, doc_id))
    if not out:
        raise SpecError(f"{where}: the filter selects no document of {m.database}.{m.collection}",
                        "check the database, collection and filter")
    return out


def prior_event(campaign_id: str, seq: int, actor: str, sources: list[PriorData],
                read: list[list[tuple[dict[str, ParameterValue], dict[str, Measurement], str]]],
                connection: str | None) -> PriorTrialsAdded:
    """The ``PriorTrialsAdded`` of the sources read (``read[i]``: source ``i``'s points), their
    trial ids ``"0"``, ``"1"``, ... in source order.

    Raises:
        SpecError: more than ``MAX_PRIOR_TRIALS`` points in all.
    """
    total = sum(len(r) for r in read)
    if total > MAX_PRIOR_TRIALS:
        raise SpecError(f"prior_data: {total} prior trials; a campaign starts from at most {MAX_PRIOR_TRIALS}",
                        "narrow the filters, or name fewer campaigns")
    trials = [PriorTrial(trial_id="", parameters=p, measurements=ms, source=i, origin=origin)
              for i, points in enumerate(read) for p, ms, origin in points]
    trials = [t.model_copy(update={"trial_id": str(k)}) for k, t in enumerate(trials)]
    return PriorTrialsAdded(campaign_id=campaign_id, seq=seq, actor=actor, sources=sources,
                            connection=connection, trials=trials)
