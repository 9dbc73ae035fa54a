"""Pytest plugin: a MongoDB for the storage tests (registered from tests/conftest.py).

- ``mongo_uri`` (session): ``CLOSEDLOOP_TEST_MONGODB_URI`` if set (a real MongoDB), else an
  nx-27017 server started through ``EmbeddedMongo`` in a temporary directory.
- ``store`` (function): a ``MongoEventStore`` on a fresh database, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo
import pytest

from campaigns import (
    BrokerDisconnected,
    BrokerReconnected,
    CampaignCreated,
    CampaignFinished,
    ApprovalGiven,
    AnswerRefused,
    ApprovalRejected,
    ApprovalRequested,
    CampaignChange,
    CampaignChanged,
    CampaignPaused,
    CampaignResumed,
    DeviceOffline,
    DeviceOnline,
    DeviceSkipped,
    Event,
    LateResultRecorded,
    Measurement,
    MessageRejected,
    MessagesRejected,
    PriorTrial,
    PriorTrialsAdded,
    RequestResent,
    RunStarted,
    SuggestedTrial,
    TrialCompleted,
    TrialDispatched,
    TrialFailed,
    TrialRetried,
    TrialsSuggested,
    parse_spec,
)
from storage import EmbeddedMongo, MongoEventStore

__all__ = ["mongo_uri", "sample_log", "store"]

ENV = "CLOSEDLOOP_TEST_MONGODB_URI"


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB URI: the real server of ``CLOSEDLOOP_TEST_MONGODB_URI``, or embedded nx-27017."""
    uri = os.environ.get(ENV)
    if uri:
        yield uri
        return
    with EmbeddedMongo(tmp_path_factory.mktemp("mongo-home")) as mongo:
        yield mongo.uri


@pytest.fixture
def store(mongo_uri: str) -> Iterator[MongoEventStore]:
    """A store on a database of its own (``cl_test_<random>``), dropped after the test."""
    database = f"cl_test_{uuid.uuid4().hex[:12]}"
    with MongoEventStore(mongo_uri, database=database, timeout_s=5.0) as s:
        yield s
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(database)
    finally:
        client.close()


def sample_log(campaign_id: str = "c-1", *, finished: bool = True) -> list[Event]:
    """A short campaign log holding one event of every kind, seqs 1..N.

    The spec carries booleans (``minimize: true``, ``is_ordered: true``), an int and a choice
    parameter, so a round trip checks the types a document store might bend.
    """
    spec = parse_spec(
        {
            "name": "roundtrip",
            "parameters": [
                {"name": "x1", "type": "float", "bounds": [-5.0, 10.0]},
                {"name": "n", "type": "int", "bounds": [1, 8], "log_scale": True},
                {"name": "solvent", "type": "choice", "values": ["water", "ethanol"], "is_ordered": True},
            ],
            "objectives": [{"name": "yield_", "minimize": True}],
            "outcome_constraints": ["purity >= 0.9"],
            "budget": {"max_trials": 10, "max_hours": 1.5},
            "devices": [{"id": "dev-1", "measures": ["yield_", "purity"]}],
            # A filter with $ keys: the log keeps it as JSON text (stored documents and $ keys).
            "prior_data": [{"campaign": "earlier"},
                           {"mongodb": {"database": "lab", "collection": "runs",
                                        "filter": {"status": {"$in": ["done"]}, "$or": [{"a": 1}, {"a.b": 2}]},
                                        "parameters": {"x1": "c.x1", "n": "c.n", "solvent": "c.solvent"},
                                        "metrics": {"yield_": "r.yield"}}}],
        }
    )
    t0 = datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=UTC)
    kw: dict[str, Any] = {"campaign_id": campaign_id}

    def at(seq: int) -> dict[str, Any]:
        return {**kw, "seq": seq, "time": t0 + timedelta(seconds=seq)}

    events: list[Event] = [
        CampaignCreated(**at(1), actor="user:ada", spec=spec),
        PriorTrialsAdded(**at(2), actor="user:ada", sources=spec.prior_data, connection="the campaign store", trials=[
            PriorTrial(trial_id="p0", parameters={"x1": 11.0, "n": 2, "solvent": "water"},
                       measurements={"yield_": Measurement(mean=0.5)}, source=0, origin="4"),
            PriorTrial(trial_id="p1", parameters={"x1": 1.0, "n": 3, "solvent": "ethanol"},
                       measurements={"yield_": Measurement(mean=0.2, sem=0.1)}, source=1, origin="65f0c0ffee"),
        ]),
        RunStarted(**at(2), actor="orchestrator", host="lab-pc", pid=4242, flow_run_id=None),
        TrialsSuggested(
            **at(3),
            actor="optimizer",
            trials=[
                SuggestedTrial(
                    trial_id="t0",
                    parameters={"x1": 1.5, "n": 3, "solvent": "water"},
                    generator="sobol",
                    sobol_position=0,
                ),
                SuggestedTrial(
                    trial_id="t1", parameters={"x1": -2.0, "n": 8, "solvent": "ethanol"}, generator="botorch"
                ),
            ],
        ),
        TrialDispatched(**at(4), actor="orchestrator", trial_id="t0", device_id="dev-1", request_id="r-0"),
        TrialCompleted(
            **at(5),
            actor="device:dev-1",
            trial_id="t0",
            device_id="dev-1",
            request_id="r-0",
            measurements={"yield_": Measurement(mean=0.25, sem=0.01), "purity": Measurement(mean=1.0)},
        ),
        MessageRejected(
            **at(6), actor="orchestrator", device_id="dev-1", topic="lab/dev-1/result", reason="duplicate", excerpt="{}"
        ),
        TrialRetried(**at(7), actor="orchestrator", trial_id="t1", attempt=1, reason="timeout"),
        TrialDispatched(**at(8), actor="orchestrator", trial_id="t1", device_id="dev-1", request_id="r-1"),
        RequestResent(**at(9), actor="orchestrator", trial_id="t1", device_id="dev-1", request_id="r-1", reason="resume"),
        BrokerDisconnected(**at(10), actor="orchestrator", detail="connection lost"),
        BrokerReconnected(**at(11), actor="orchestrator", down_s=2.5),
        TrialFailed(**at(12), actor="orchestrator", trial_id="t1", reason="timeout", detail="no result in 60 s"),
        LateResultRecorded(
            **at(13),
            actor="device:dev-1",
            trial_id="t1",
            device_id="dev-1",
            request_id="r-1",
            measurements={"yield_": Measurement(mean=0.1 + 0.2, sem=None)},
        ),
        CampaignPaused(**at(14), actor="user:ada", reason="user", detail="lunch"),
        CampaignResumed(**at(15), actor="user:ada"),
        TrialsSuggested(**at(16), actor="optimizer", trials=[
            SuggestedTrial(trial_id="t2", parameters={"x1": 0.5, "n": 2, "solvent": "water"}, generator="botorch"),
            SuggestedTrial(trial_id="t3", parameters={"x1": 0.7, "n": 4, "solvent": "water"}, generator="botorch"),
            SuggestedTrial(trial_id="t4", parameters={"x1": 0.9, "n": 6, "solvent": "water"}, generator="botorch"),
        ]),
        ApprovalRequested(**at(17), actor="orchestrator", approval_id="a2", trial_ids=["t2", "t3"],
                          parameters={"t2": {"x1": 0.5, "n": 2, "solvent": "water"}}, why="every batch",
                          answer_with="closedloop approve c-1", on_timeout="reject"),
        ApprovalGiven(**at(18), actor="user:ada", approval_id="a2", approved=["t2"], edited={"t3": {"x1": 1.0, "n": 5}},
                      reason="x1 stays low", command_id="cmd-1"),
        ApprovalRequested(**at(19), actor="orchestrator", approval_id="a4", trial_ids=["t4"], why="first_n",
                          answer_with="closedloop approve c-1"),
        ApprovalRejected(**at(20), actor="user:bob", approval_id="a4", rejected=["t4"], reason="too hot", via="prefect"),
        CampaignChanged(**at(21), actor="user:ada", reason="reactor limit", command_id="cmd-2",
                        change=CampaignChange(set_bounds={"x1": (-1.0, 1.0)}, fix={"solvent": "water"}, batch_size=3)),
        MessagesRejected(**at(22), actor="orchestrator", device_id=None, reason="not_json", count=37,
                         first_time=t0 + timedelta(seconds=21.5), last_time=t0 + timedelta(seconds=21.9),
                         example="payload is not JSON: Expecting value"),
        DeviceSkipped(**at(23), actor="orchestrator", device_id="dev-1", missing=["purity"], measures=["yield_"]),
        DeviceOffline(**at(24), actor="orchestrator", device_id="dev-2"),
        DeviceOnline(**at(25), actor="orchestrator", device_id="dev-2", state="idle", measures=["yield_", "purity"]),
        AnswerRefused(**at(26), actor="orchestrator", command="approve", by="bob", via="prefect", approval_id="a4",
                      what="edit t4: x1=9", why="x1=9 is outside the bounds [-1, 1]", command_id="cmd-3"),
    ]
    if finished:
        events.append(CampaignFinished(**at(len(events) + 1), actor="user:ada", reason="stopped"))
    return [e.model_copy(update=at(i)) for i, e in enumerate(events, 1)]  # seqs 1..N as listed
