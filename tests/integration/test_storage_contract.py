"""The event-store contract: what every backend of ``MongoEventStore`` must honour.

Runs against nx-27017 (embedded) by default, and against a real MongoDB when
``CLOSEDLOOP_TEST_MONGODB_URI`` is set.
"""

from __future__ import annotations

import threading
import time
import typing
from collections.abc import Iterator

import pymongo
import pytest
from pymongo.collection import Collection

from campaigns import (
    AppendConflictError,
    CampaignCreated,
    Event,
    RunStarted,
    StorageError,
    fold,
)
from storage import MongoEventStore, redact_uri
from tests.conftest_mongo import sample_log

RawEvents = Collection[dict[str, typing.Any]]


@pytest.fixture
def raw(store: MongoEventStore, mongo_uri: str) -> Iterator[Collection[dict[str, typing.Any]]]:
    """The events collection through plain pymongo: another writer, or a hand edit."""
    client: pymongo.MongoClient[dict[str, typing.Any]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        yield client[store.database]["events"]
    finally:
        client.close()


def _run(campaign_id: str, seq: int, actor: str = "orchestrator") -> RunStarted:
    return RunStarted(campaign_id=campaign_id, seq=seq, actor=actor, host="h", pid=seq)


def _seqs(raw: Collection[dict[str, typing.Any]], campaign_id: str) -> list[int]:
    return sorted(d["seq"] for d in raw.find({"campaign_id": campaign_id}, {"seq": 1}))


def test_public_names() -> None:
    import storage

    assert sorted(storage.__all__) == [
        "CampaignSummary", "Command", "EmbeddedMongo", "LeaseInfo", "MongoCommandInbox", "MongoEventStore", "MongoLease",
        "export_columns", "export_rows", "redact_uri", "write_csv", "write_json",
    ]
    for name in storage.__all__:
        assert getattr(storage, name).__doc__, name


def test_round_trip_gives_back_every_kind_of_event_equal(store: MongoEventStore) -> None:
    log = sample_log("c-1")
    store.append(log[:1])  # one event: insert_one
    store.append(log[1:])  # a batch: ordered insert_many
    back = store.read("c-1")
    assert back == log
    kinds = {a.__name__ for a in typing.get_args(typing.get_args(Event)[0])}
    assert {type(e).__name__ for e in back} == kinds
    assert isinstance(back[0], CampaignCreated) and back[0].spec.objectives[0].minimize is True
    assert fold(back).original_spec == back[0].spec  # fold(...).spec is the effective spec, changes applied
    assert fold(back).spec.batch_size == 3


def test_stored_documents_keep_booleans_and_times_as_written(store: MongoEventStore, raw: RawEvents) -> None:
    log = sample_log("c-1")
    store.append(log)
    doc = raw.find_one({"campaign_id": "c-1", "seq": 1}, {"_id": 0})
    assert doc is not None
    assert doc["spec"]["objectives"][0]["minimize"] is True
    assert doc["spec"]["parameters"][0]["log_scale"] is False
    assert doc["spec"]["parameters"][2]["is_ordered"] is True
    assert doc["time"] == "2026-01-02T03:04:06.123000Z"
    assert doc["kind"] == "CampaignCreated"


def test_read_is_in_seq_order_and_after_seq_skips_the_prefix_and_limit_caps(store: MongoEventStore) -> None:
    log = sample_log("c-1")
    for e in log:
        store.append([e])
    assert [e.seq for e in store.read("c-1")] == list(range(1, len(log) + 1))
    assert store.read("c-1", after_seq=5) == log[5:]
    assert store.read("c-1", after_seq=len(log)) == []
    assert store.read("c-1", limit=1) == log[:1] and store.read("c-1", after_seq=2, limit=2) == log[2:4]
    assert store.read("nobody") == []


def test_last_seq_and_exists(store: MongoEventStore) -> None:
    assert store.last_seq("c-1") == 0
    assert not store.exists("c-1")
    store.append(sample_log("c-1"))
    store.append([_run("c-2", 1)])
    assert store.last_seq("c-1") == len(sample_log("c-1"))
    assert store.last_seq("c-2") == 1
    assert store.exists("c-1") and store.exists("c-2")


def test_appending_a_taken_seq_raises_conflict_and_leaves_the_log_unchanged(store: MongoEventStore) -> None:
    log = sample_log("c-1")
    store.append(log[:3])
    with pytest.raises(AppendConflictError) as info:
        store.append([_run("c-1", 3, actor="user:intruder")])
    assert "c-1" in str(info.value) and "seq 3" in str(info.value)
    assert "re-read the log" in info.value.hint
    assert info.value.campaign_id == "c-1"
    with pytest.raises(AppendConflictError):
        store.append([_run("c-1", 3), _run("c-1", 4)])  # the batch stops at its first event
    assert store.read("c-1") == log[:3]
    store.append(log[3:])
    assert store.read("c-1") == log


def test_appends_that_would_break_contiguity_are_programming_errors(store: MongoEventStore) -> None:
    store.append([_run("c-1", 1)])
    with pytest.raises(ValueError, match="gap"):
        store.append([_run("c-1", 3)])
    with pytest.raises(ValueError, match="contiguous"):
        store.append([_run("c-1", 2), _run("c-1", 4)])
    with pytest.raises(ValueError, match="c-2"):
        store.append([_run("c-1", 2), _run("c-2", 3)])
    store.append([])
    assert [e.seq for e in store.read("c-1")] == [1]


def test_a_batch_cut_by_a_foreign_write_lands_as_a_contiguous_prefix(store: MongoEventStore, raw: RawEvents) -> None:
    store.append([_run("c-1", 1), _run("c-1", 2), _run("c-1", 3)])
    raw.insert_one(dict(_run("c-1", 5, actor="user:foreign").model_dump(mode="json")))  # bypasses the store
    with pytest.raises(AppendConflictError, match="seq 5") as info:
        store.append([_run("c-1", 4), _run("c-1", 5), _run("c-1", 6)])
    assert "1 event(s) before it were written" in str(info.value)
    assert _seqs(raw, "c-1") == [1, 2, 3, 4, 5]
    assert store.read("c-1")[4].actor == "user:foreign"


def test_two_writers_racing_for_the_same_seq_exactly_one_wins(store: MongoEventStore, mongo_uri: str) -> None:
    rounds = 20
    stores = [store, MongoEventStore(mongo_uri, database=store.database)]
    wins: list[list[int]] = [[], []]
    conflicts: list[list[int]] = [[], []]
    barrier = threading.Barrier(2)

    def writer(i: int) -> None:
        for seq in range(1, rounds + 1):
            barrier.wait()
            try:
                stores[i].append([_run("race", seq, actor=f"user:w{i}")])
                wins[i].append(seq)
            except AppendConflictError:
                conflicts[i].append(seq)

    threads = [threading.Thread(target=writer, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    stores[1].close()
    assert sorted(wins[0] + wins[1]) == list(range(1, rounds + 1))
    assert sorted(conflicts[0] + conflicts[1]) == list(range(1, rounds + 1))
    log = store.read("race")
    assert [e.seq for e in log] == list(range(1, rounds + 1))
    assert [e.actor for e in log] == [f"user:w{0 if s in wins[0] else 1}" for s in range(1, rounds + 1)]


def test_list_campaigns(store: MongoEventStore) -> None:
    assert store.list_campaigns() == []
    store.append(sample_log("c-done", finished=True))
    store.append(sample_log("c-live", finished=False))
    store.append([_run("c-orphan", 1)])  # no CampaignCreated: not a campaign
    summaries = {s.campaign_id: s for s in store.list_campaigns()}
    assert set(summaries) == {"c-done", "c-live"}
    assert summaries["c-done"].finished and summaries["c-done"].last_seq == len(sample_log("c-done"))
    assert not summaries["c-live"].finished and summaries["c-live"].last_seq == len(sample_log("c-live", finished=False))
    assert summaries["c-live"].name == "roundtrip"
    assert summaries["c-live"].created_at == sample_log("c-live")[0].time


def test_a_document_that_no_longer_parses_gives_storage_error(store: MongoEventStore, raw: RawEvents) -> None:
    store.append([_run("c-1", 1)])
    alien = {"campaign_id": "c-1", "seq": 2, "kind": "TrialTeleported", "actor": "x", "time": "2026-01-01T00:00:00Z"}
    raw.insert_one(alien)
    with pytest.raises(StorageError, match=r"'c-1'.*seq 2") as info:
        store.read("c-1")
    assert info.value.campaign_id == "c-1"
    assert [e.seq for e in store.read("c-1", after_seq=2)] == []


def test_unreachable_server_gives_one_line_storage_error_without_the_password() -> None:
    uri = "mongodb://user:secret@127.0.0.1:1/"
    start = time.monotonic()
    with MongoEventStore(uri, timeout_s=1.0) as store, pytest.raises(StorageError) as info:
        store.exists("c-1")
    elapsed = time.monotonic() - start
    assert elapsed < 10  # a hang guard, not a benchmark: the timeout is 1 s
    text = f"{info.value} {info.value.message} {info.value.hint} {info.value!r}"
    assert "secret" not in text
    assert "cannot reach MongoDB at mongodb://user:***@127.0.0.1:1/" in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.__suppress_context__


def test_a_malformed_uri_gives_storage_error_without_the_password() -> None:
    with pytest.raises(StorageError) as info:
        MongoEventStore("mongodb://user:p@ss@word@host/")
    assert "ss@word" not in str(info.value) and "p@ss" not in str(info.value)


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("mongodb://user:secret@h:27017/db?authSource=admin", "mongodb://user:***@h:27017/db?authSource=admin"),
        ("mongodb+srv://u:p%40ss@cluster.example.net/", "mongodb+srv://u:***@cluster.example.net/"),
        ("mongodb://user@h/", "mongodb://user@h/"),
        ("mongodb://127.0.0.1:27017/", "mongodb://127.0.0.1:27017/"),
        ("mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN:tok&w=1", "mongodb://h/?authMechanismProperties=***&w=1"),
    ],
)
def test_redact_uri(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


# -- retrying an append whose acknowledgement was lost ------------------------------------------


def test_appending_the_same_events_again_is_a_silent_no_op(store: MongoEventStore, raw: RawEvents) -> None:
    log = sample_log("c-1")  # floats such as 0.1 + 0.2, booleans, nested documents
    store.append(log[:1])
    store.append(log[:1])  # insert_one path
    store.append(log[1:])
    store.append(log[1:])  # insert_many path
    store.append(log)  # the whole log again, from seq 1
    assert store.read("c-1") == log
    assert _seqs(raw, "c-1") == list(range(1, len(log) + 1))


def test_a_retry_after_a_partial_batch_appends_the_rest(store: MongoEventStore, raw: RawEvents) -> None:
    events = [_run("c-1", seq) for seq in range(1, 6)]
    store.append(events[:2])  # what a batch cut by a crash leaves: a prefix
    store.append(events)
    assert store.read("c-1") == events
    assert _seqs(raw, "c-1") == [1, 2, 3, 4, 5]


def test_a_different_event_at_a_taken_seq_is_still_a_conflict(store: MongoEventStore, raw: RawEvents) -> None:
    first = _run("c-1", 1)
    store.append([first])
    later = first.model_copy(update={"time": first.time.replace(microsecond=(first.time.microsecond + 1) % 10**6)})
    with pytest.raises(AppendConflictError, match="seq 1 is already in the log"):
        store.append([later])  # the same event but another time: not our earlier write
    events = [first, *(_run("c-1", seq) for seq in (2, 3, 4))]
    raw.insert_one(dict(_run("c-1", 3, actor="user:foreign").model_dump(mode="json")))  # after a prefix of ours
    store.append(events[1:2])
    with pytest.raises(AppendConflictError, match="seq 3") as info:
        store.append(events)
    assert "2 event(s) before it were written" in str(info.value)
    assert _seqs(raw, "c-1") == [1, 2, 3]
    assert store.read("c-1")[2].actor == "user:foreign"
