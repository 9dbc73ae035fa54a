"""Prior data (issue 18, must-show 4): a campaign that starts from an earlier campaign's trials,
or from documents of a filtered MongoDB collection on nx-27017 (through pymongo), suggests by
model from its first trial; the prior trials are in its log with their sources, never
dispatched, and not counted in its budget. Bad prior data is one line naming what is wrong.

The loop runs in process on the engine's in-memory backends (``tests/unit/engine_rig.py``); the
earlier campaign's log and the collection live in the real store.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest

from campaigns import (
    CampaignSpec,
    Measurement,
    PriorTrialsAdded,
    SpecError,
    fold,
    parse_spec,
)
from campaigns.prior import prior_event
from flows.app.prior import read_prior_data
from flows.app.settings import Settings
from optimizer import AxOptimizer
from storage import MongoEventStore
from tests.unit.engine_rig import Rig, kinds

ACTOR = "user:test"


def branin(x1: float, x2: float) -> float:
    """Branin's function, also outside its usual domain (a lab's run may lie there)."""
    return ((x2 - 5.1 / (4 * math.pi**2) * x1**2 + 5 / math.pi * x1 - 6) ** 2
            + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10)


def spec(name: str, **extra: Any) -> CampaignSpec:
    """A Branin campaign on one simulated instrument, the fast engine after 5 opening trials."""
    return parse_spec({
        "name": name, "seed": 3,
        "parameters": [{"name": "x1", "type": "float", "bounds": [-5, 10]},
                       {"name": "x2", "type": "float", "bounds": [0, 15]}],
        "objectives": [{"name": "branin", "minimize": True}],
        "budget": {"max_trials": 3}, "trial_timeout_s": 30,
        "devices": [{"id": "sim", "simulator": "branin"}], **extra,
    })


def run(campaign: CampaignSpec, campaign_id: str, prior: PriorTrialsAdded | None) -> tuple[Rig, Any]:
    """The campaign created (with its prior trials) and run to its budget on a simulated Branin."""
    rig = Rig(campaign_id=campaign_id)
    rig.create(campaign)
    if prior is not None:
        rig.log.append([prior])
    rig.hub.instrument("sim", "branin", {"duration_s": [0.1, 0.1], "seed": 1})
    return rig, rig.run()


def check_started_from(rig: Rig, state: Any, k: int) -> None:
    """What a seeded campaign shows: k prior trials, then its own budget of trials, all by model."""
    events = rig.events()
    assert state.finished_reason == "budget_exhausted"
    assert state.prior_count == k and state.count("completed") == 3 and state.budget_used == 3
    prior_ids = {str(i) for i in range(k)}
    assert not {e.trial_id for e in kinds(events, "TrialDispatched")} & prior_ids  # never dispatched
    suggested = [t for e in kinds(events, "TrialsSuggested") for t in e.trials]
    assert [t.trial_id for t in suggested] == [str(k + i) for i in range(3)]
    # The Bayesian phase at once: no Sobol opening, the model's first suggestion is trial k.
    assert [t.engine for t in suggested] == ["fast"] * 3
    assert all(state.trials[t].engine == "prior" and state.trials[t].status == "completed" for t in prior_ids)


def test_a_campaign_starts_from_an_earlier_campaigns_trials(store: MongoEventStore, tmp_path: Path) -> None:
    # Week 1: six trials (the opening and one by model), its log in the real store.
    week1 = spec("week1", budget={"max_trials": 6})
    rig1, state1 = run(week1, "week1", None)
    store.append(rig1.events())
    ran = sorted(state1.trials.values(), key=lambda t: t.index)

    week2 = spec("week2", prior_data=[{"campaign": "week1"}])
    prior = read_prior_data(week2, "week2", store, Settings(home=tmp_path), ACTOR)
    assert prior is not None
    assert prior.sources[0].campaign == "week1"
    assert [(t.origin, t.parameters, t.measurements) for t in prior.trials] == [
        (t.trial_id, t.parameters, t.measurements) for t in ran]

    rig2, state2 = run(week2, "week2", prior)
    check_started_from(rig2, state2, 6)
    assert state2.trials["2"].prior == f"campaign week1 trial {ran[2].trial_id}"

    # Week 3 names week 2: its own three trials, not the week-1 data it started from.
    week3 = spec("week3", prior_data=[{"campaign": "week2"}])
    store.append(rig2.events())
    prior3 = read_prior_data(week3, "week3", store, Settings(home=tmp_path), ACTOR)
    assert prior3 is not None and [t.origin for t in prior3.trials] == ["6", "7", "8"]


@pytest.fixture
def lab(mongo_uri: str) -> Iterator[pymongo.collection.Collection[dict[str, Any]]]:
    """A lab's own collection of runs (database ``lab_<random>``), dropped afterwards."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    database = f"lab_{uuid.uuid4().hex[:10]}"
    try:
        yield client[database]["runs"]
    finally:
        client.drop_database(database)
        client.close()


def lab_runs(lab: pymongo.collection.Collection[dict[str, Any]]) -> list[tuple[float, float]]:
    """Reactor R2's finished runs (one outside the bounds: x1 = 12), among others the filter
    must leave out; the (x1, x2) of the finished R2 runs, in insertion order."""
    points = [(-3.0, 12.0), (3.14, 2.27), (9.4, 2.5), (0.0, 7.5), (12.0, 1.0), (5.0, 5.0)]
    docs = [{"reactor": "R2", "status": "done", "conditions": {"temp": x1, "time": x2},
             "result": {"yield": branin(x1, x2)}} for x1, x2 in points]
    docs += [{"reactor": "R1", "status": "done", "conditions": {"temp": 1.0, "time": 1.0}, "result": {"yield": 0.0}},
             {"reactor": "R2", "status": "running", "conditions": {"temp": 2.0, "time": 2.0}}]
    lab.insert_many(docs)
    return points


def mongodb_source(lab: pymongo.collection.Collection[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"mongodb": {"database": lab.database.name, "collection": "runs",
                        "filter": {"reactor": "R2", "status": "done"},
                        "parameters": {"x1": "conditions.temp", "x2": "conditions.time"},
                        "metrics": {"branin": "result.yield"}, **extra}}


def test_a_campaign_starts_from_a_filtered_collection(store: MongoEventStore, lab: Any, mongo_uri: str,
                                                      tmp_path: Path) -> None:
    points = lab_runs(lab)
    seeded = spec("seeded", prior_data=[mongodb_source(lab)])
    # Read through CLOSEDLOOP_PRIOR_MONGODB_URI here; the store's own MongoDB below.
    settings = Settings(home=tmp_path, prior_mongodb_uri=mongo_uri)
    prior = read_prior_data(seeded, "seeded", store, settings, ACTOR)
    assert prior is not None and prior.connection == "CLOSEDLOOP_PRIOR_MONGODB_URI"
    assert [(t.parameters["x1"], t.parameters["x2"]) for t in prior.trials] == points  # x1 = 12 kept, out of design
    ids = {str(d["_id"]) for d in lab.find({"reactor": "R2", "status": "done"}, {"_id": 1})}
    assert {t.origin for t in prior.trials} == ids
    # The log records the source with its filter, in the event and in the store's copy of it.
    store.append([*Rig(seeded, "seeded").events(), prior])
    logged = store.read("seeded")[1]
    assert isinstance(logged, PriorTrialsAdded)
    assert json.loads(logged.sources[0].mongodb.filter_text) == {"reactor": "R2", "status": "done"}  # type: ignore[union-attr]

    rig, state = run(seeded, "seeded", prior)
    check_started_from(rig, state, 6)
    assert state.trials["4"].parameters["x1"] == 12.0  # kept as data
    assert fold(rig.events()).trials["0"].prior.startswith(f"{lab.database.name}.runs _id ")  # type: ignore[union-attr]


@pytest.mark.parametrize(("change", "words"), [
    ({"filter": {"reactor": {"$bogus": 1}}}, "the server refused the filter"),
    ({"filter": {"reactor": "R9"}}, "the filter selects no document"),
    ({"filter": {"reactor": "R2"}}, "has no field 'result.yield' (branin)"),
    ({"metrics": {"branin": "reactor"}}, "'reactor' (branin) is 'R2', not a finite number"),
])
def test_bad_prior_documents_are_one_line(store: MongoEventStore, lab: Any, tmp_path: Path,
                                          change: dict[str, Any], words: str) -> None:
    lab_runs(lab)
    bad = spec("bad", prior_data=[mongodb_source(lab, **change)])
    with pytest.raises(SpecError) as caught:
        read_prior_data(bad, "bad", store, Settings(home=tmp_path), ACTOR)
    line = str(caught.value)
    assert line.startswith("prior_data[0]: ") and words in line and "\n" not in line, line


def test_bad_prior_values_and_sources_are_one_line(store: MongoEventStore, lab: Any, tmp_path: Path) -> None:
    lab_runs(lab)
    settings = Settings(home=tmp_path)
    choice = spec("choice", parameters=[{"name": "x1", "type": "float", "bounds": [-5, 10]},
                                        {"name": "x2", "type": "choice", "values": [1.0, 2.27]}],
                  devices=[{"id": "lab", "measures": ["branin"]}], prior_data=[mongodb_source(lab)])
    with pytest.raises(SpecError, match=r"document _id \w+: parameter 'x2': 12.0 is not one of its values"):
        read_prior_data(choice, "choice", settings=settings, store=store, actor=ACTOR)
    with pytest.raises(SpecError, match=r"prior_data\[0\]: there is no campaign 'nowhere' in the log"):
        read_prior_data(spec("c", prior_data=[{"campaign": "nowhere"}]), "c", store, settings, ACTOR)
    with pytest.raises(SpecError, match="cannot start from its own trials"):
        read_prior_data(spec("c", prior_data=[{"campaign": "c"}]), "c", store, settings, ACTOR)


@pytest.mark.parametrize("method", ["ax", "auto"])
def test_both_engines_take_prior_points_out_of_design_and_suggest_by_model_at_once(method: str) -> None:
    # A choice parameter (the fast engine's since issue 18, Ax's when asked); one prior point
    # lies outside x1's bounds.
    seeded = spec("mixed", parameters=[{"name": "x1", "type": "float", "bounds": [-5, 10]},
                                       {"name": "x2", "type": "choice", "values": [2.5, 7.5, 12.5]}],
                  devices=[{"id": "lab", "measures": ["branin"]}], prior_data=[{"campaign": "earlier"}],
                  optimizer={"method": method})
    points = [(-3.0, 12.5), (3.0, 2.5), (9.0, 2.5), (0.0, 7.5), (12.0, 2.5)]
    read = [[({"x1": x1, "x2": x2}, {"branin": Measurement(mean=branin(x1, x2))}, str(i))
             for i, (x1, x2) in enumerate(points)]]
    state = fold([*Rig(seeded, "mixed").events(), prior_event("mixed", 2, ACTOR, seeded.prior_data, read, None)])
    optimizer = AxOptimizer.rebuild(seeded, state.trials.values(), threads=1)
    [first] = optimizer.suggest(1)
    assert (first.trial_id, first.engine) == ("5", "ax" if method == "ax" else "fast")
    assert -5 <= float(first.parameters["x1"]) <= 10 and first.parameters["x2"] in (2.5, 7.5, 12.5)


@pytest.mark.parametrize("uri", ["mongodb://ana:s3cret@h:badport", "foo://ana:s3cret@h", "mongodb://ana:s3cret@"])
def test_a_malformed_prior_data_uri_is_one_line_without_its_password(uri: str, store: MongoEventStore, lab: Any,
                                                                      tmp_path: Path) -> None:
    """CLOSEDLOOP_PRIOR_MONGODB_URI is read only when a campaign names a collection: a malformed
    one is then one line naming the problem, the password never shown, nothing appended."""
    from campaigns import ClosedLoopError

    lab_runs(lab)
    seeded = spec("badly-seeded", prior_data=[mongodb_source(lab)])
    with pytest.raises(ClosedLoopError) as caught:
        read_prior_data(seeded, "badly-seeded", store, Settings(home=tmp_path, prior_mongodb_uri=uri), ACTOR)
    line = str(caught.value)
    assert "\n" not in line and "s3cret" not in line and "MongoDB URI" in line, line
    assert store.read("badly-seeded") == []
