"""The storage contracts: what every event log and command inbox must honour.

Each test runs on every backend: ``MongoEventStore`` / ``MongoCommandInbox`` on nx-27017 (a real
MongoDB when ``CLOSEDLOOP_TEST_MONGODB_URI`` is set) and the engine's in-memory classes
(``MemoryEventLog`` / ``MemoryCommandInbox``). What only a database server can show (an
unreachable server, a malformed URI) runs on MongoDB alone.
"""

from __future__ import annotations

import itertools
import threading
import time
import typing
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pymongo
import pytest

from campaigns import (
    AppendConflictError,
    CampaignCreated,
    Event,
    RunStarted,
    StorageError,
    fold,
)
from flows.engine.memory import MemoryCommandInbox, MemoryEventLog
from storage import MongoCommandInbox, MongoEventStore, redact_uri
from tests.conftest_mongo import sample_log

Store = MongoEventStore | MemoryEventLog
Inbox = MongoCommandInbox | MemoryCommandInbox


@dataclass
class Raw:
    """The stored documents behind a store's back: another writer, or a hand edit."""

    insert: Callable[[dict[str, typing.Any]], None]
    documents: Callable[[str], list[dict[str, typing.Any]]]

    def seqs(self, campaign_id: str) -> list[int]:
        return sorted(d["seq"] for d in self.documents(campaign_id))

    def doc(self, campaign_id: str, seq: int) -> dict[str, typing.Any] | None:
        return next((d for d in self.documents(campaign_id) if d["seq"] == seq), None)


@dataclass
class Backend:
    store: Store
    raw: Raw
    another_writer: Callable[[], Store]  # a second handle on the same log (its own connection)


@pytest.fixture(params=["mongodb", "memory"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        log = MemoryEventLog()
        yield Backend(log, Raw(log.insert_document, log.documents), lambda: log)
        return
    store: MongoEventStore = request.getfixturevalue("store")
    mongo_uri: str = request.getfixturevalue("mongo_uri")
    client: pymongo.MongoClient[dict[str, typing.Any]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    coll = client[store.database]["events"]
    try:
        yield Backend(store, Raw(lambda d: coll.insert_one(dict(d)) and None,
                                 lambda cid: list(coll.find({"campaign_id": cid}, {"_id": 0}))),
                      lambda: MongoEventStore(mongo_uri, database=store.database))
    finally:
        client.close()


@pytest.fixture
def raw(backend: Backend) -> Raw:
    return backend.raw


@pytest.fixture
def log_store(backend: Backend) -> Store:
    return backend.store


def _run(campaign_id: str, seq: int, actor: str = "orchestrator") -> RunStarted:
    return RunStarted(campaign_id=campaign_id, seq=seq, actor=actor, host="h", pid=seq)


def test_public_names() -> None:
    import storage

    assert sorted(storage.__all__) == [
        "CampaignSummary", "Command", "EmbeddedMongo", "LeaseInfo", "MongoCommandInbox", "MongoEventStore", "MongoLease",
        "export_columns", "export_rows", "redact_uri", "write_csv", "write_json",
    ]
    for name in storage.__all__:
        assert getattr(storage, name).__doc__, name


def test_round_trip_gives_back_every_kind_of_event_equal(log_store: Store) -> None:
    log = sample_log("c-1")
    log_store.append(log[:1])  # one event: insert_one
    log_store.append(log[1:])  # a batch: ordered insert_many
    back = log_store.read("c-1")
    assert back == log
    kinds = {a.__name__ for a in typing.get_args(typing.get_args(Event)[0])}
    assert {type(e).__name__ for e in back} == kinds
    assert isinstance(back[0], CampaignCreated) and back[0].spec.objectives[0].minimize is True
    assert fold(back).original_spec == back[0].spec  # fold(...).spec is the effective spec, changes applied
    assert fold(back).spec.batch_size == 3


def test_stored_documents_keep_booleans_and_times_as_written(log_store: Store, raw: Raw) -> None:
    log = sample_log("c-1")
    log_store.append(log)
    doc = raw.doc("c-1", 1)
    assert doc is not None
    assert doc["spec"]["objectives"][0]["minimize"] is True
    assert doc["spec"]["parameters"][0]["log_scale"] is False
    assert doc["spec"]["parameters"][2]["is_ordered"] is True
    assert doc["time"] == "2026-01-02T03:04:06.123000Z"
    assert doc["kind"] == "CampaignCreated"


def test_read_is_in_seq_order_and_after_seq_skips_the_prefix_and_limit_caps(log_store: Store) -> None:
    log = sample_log("c-1")
    for e in log:
        log_store.append([e])
    assert [e.seq for e in log_store.read("c-1")] == list(range(1, len(log) + 1))
    assert log_store.read("c-1", after_seq=5) == log[5:]
    assert log_store.read("c-1", after_seq=len(log)) == []
    assert log_store.read("c-1", limit=1) == log[:1] and log_store.read("c-1", after_seq=2, limit=2) == log[2:4]
    assert log_store.read("nobody") == []


def test_last_seq_and_exists(log_store: Store) -> None:
    assert log_store.last_seq("c-1") == 0
    assert not log_store.exists("c-1")
    log_store.append(sample_log("c-1"))
    log_store.append([_run("c-2", 1)])
    assert log_store.last_seq("c-1") == len(sample_log("c-1"))
    assert log_store.last_seq("c-2") == 1
    assert log_store.exists("c-1") and log_store.exists("c-2")


def test_appending_a_taken_seq_raises_conflict_and_leaves_the_log_unchanged(log_store: Store) -> None:
    log = sample_log("c-1")
    log_store.append(log[:3])
    with pytest.raises(AppendConflictError) as info:
        log_store.append([_run("c-1", 3, actor="user:intruder")])
    assert "c-1" in str(info.value) and "seq 3" in str(info.value)
    assert "re-read the log" in info.value.hint
    assert info.value.campaign_id == "c-1"
    with pytest.raises(AppendConflictError):
        log_store.append([_run("c-1", 3), _run("c-1", 4)])  # the batch stops at its first event
    assert log_store.read("c-1") == log[:3]
    log_store.append(log[3:])
    assert log_store.read("c-1") == log


def test_appends_that_would_break_contiguity_are_programming_errors(log_store: Store) -> None:
    log_store.append([_run("c-1", 1)])
    with pytest.raises(ValueError, match="gap"):
        log_store.append([_run("c-1", 3)])
    with pytest.raises(ValueError, match="contiguous"):
        log_store.append([_run("c-1", 2), _run("c-1", 4)])
    with pytest.raises(ValueError, match="c-2"):
        log_store.append([_run("c-1", 2), _run("c-2", 3)])
    log_store.append([])
    assert [e.seq for e in log_store.read("c-1")] == [1]


def test_a_batch_cut_by_a_foreign_write_lands_as_a_contiguous_prefix(log_store: Store, raw: Raw) -> None:
    log_store.append([_run("c-1", 1), _run("c-1", 2), _run("c-1", 3)])
    raw.insert(dict(_run("c-1", 5, actor="user:foreign").model_dump(mode="json")))  # bypasses the store
    with pytest.raises(AppendConflictError, match="seq 5") as info:
        log_store.append([_run("c-1", 4), _run("c-1", 5), _run("c-1", 6)])
    assert "1 event(s) before it were written" in str(info.value)
    assert raw.seqs("c-1") == [1, 2, 3, 4, 5]
    assert log_store.read("c-1")[4].actor == "user:foreign"


def test_two_writers_racing_for_the_same_seq_exactly_one_wins(backend: Backend) -> None:
    rounds = 20
    log_store = backend.store
    stores = [log_store, backend.another_writer()]
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
    log = log_store.read("race")
    assert [e.seq for e in log] == list(range(1, rounds + 1))
    assert [e.actor for e in log] == [f"user:w{0 if s in wins[0] else 1}" for s in range(1, rounds + 1)]


def test_list_campaigns(log_store: Store) -> None:
    assert log_store.list_campaigns() == []
    log_store.append(sample_log("c-done", finished=True))
    log_store.append(sample_log("c-live", finished=False))
    log_store.append([_run("c-orphan", 1)])  # no CampaignCreated: not a campaign
    summaries = {s.campaign_id: s for s in log_store.list_campaigns()}
    assert set(summaries) == {"c-done", "c-live"}
    assert summaries["c-done"].finished and summaries["c-done"].last_seq == len(sample_log("c-done"))
    assert not summaries["c-live"].finished and summaries["c-live"].last_seq == len(sample_log("c-live", finished=False))
    assert summaries["c-live"].name == "roundtrip"
    assert summaries["c-live"].created_at == sample_log("c-live")[0].time


def test_a_document_that_no_longer_parses_gives_storage_error(log_store: Store, raw: Raw) -> None:
    log_store.append([_run("c-1", 1)])
    alien = {"campaign_id": "c-1", "seq": 2, "kind": "TrialTeleported", "actor": "x", "time": "2026-01-01T00:00:00Z"}
    raw.insert(alien)
    with pytest.raises(StorageError, match=r"'c-1'.*seq 2") as info:
        log_store.read("c-1")
    assert info.value.campaign_id == "c-1"
    assert [e.seq for e in log_store.read("c-1", after_seq=2)] == []


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


def test_appending_the_same_events_again_is_a_silent_no_op(log_store: Store, raw: Raw) -> None:
    log = sample_log("c-1")  # floats such as 0.1 + 0.2, booleans, nested documents
    log_store.append(log[:1])
    log_store.append(log[:1])  # insert_one path
    log_store.append(log[1:])
    log_store.append(log[1:])  # insert_many path
    log_store.append(log)  # the whole log again, from seq 1
    assert log_store.read("c-1") == log
    assert raw.seqs("c-1") == list(range(1, len(log) + 1))


def test_a_retry_after_a_partial_batch_appends_the_rest(log_store: Store, raw: Raw) -> None:
    events = [_run("c-1", seq) for seq in range(1, 6)]
    log_store.append(events[:2])  # what a batch cut by a crash leaves: a prefix
    log_store.append(events)
    assert log_store.read("c-1") == events
    assert raw.seqs("c-1") == [1, 2, 3, 4, 5]


def test_a_different_event_at_a_taken_seq_is_still_a_conflict(log_store: Store, raw: Raw) -> None:
    first = _run("c-1", 1)
    log_store.append([first])
    later = first.model_copy(update={"time": first.time.replace(microsecond=(first.time.microsecond + 1) % 10**6)})
    with pytest.raises(AppendConflictError, match="seq 1 is already in the log"):
        log_store.append([later])  # the same event but another time: not our earlier write
    events = [first, *(_run("c-1", seq) for seq in (2, 3, 4))]
    raw.insert(dict(_run("c-1", 3, actor="user:foreign").model_dump(mode="json")))  # after a prefix of ours
    log_store.append(events[1:2])
    with pytest.raises(AppendConflictError, match="seq 3") as info:
        log_store.append(events)
    assert "2 event(s) before it were written" in str(info.value)
    assert raw.seqs("c-1") == [1, 2, 3]
    assert log_store.read("c-1")[2].actor == "user:foreign"


# -- the command inbox ---------------------------------------------------------------------------


def _inbox(request: pytest.FixtureRequest, now: Callable[[], datetime] | None = None) -> Iterator[Inbox]:
    clock = {} if now is None else {"now": now}
    if request.param == "memory":
        yield MemoryCommandInbox(**clock)
        return
    mongo_uri: str = request.getfixturevalue("mongo_uri")
    database = f"cl_test_{uuid.uuid4().hex[:12]}"
    with MongoCommandInbox(mongo_uri, database=database, **clock) as mongo:
        yield mongo
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(database)
    finally:
        client.close()


@pytest.fixture(params=["mongodb", "memory"])
def inbox(request: pytest.FixtureRequest) -> Iterator[Inbox]:
    yield from _inbox(request)


#: One instant for every command: ``submitted_at`` has millisecond precision.
INSTANT = datetime(2026, 12, 7, 9, 0, 0, 123000, tzinfo=UTC)


@pytest.fixture(params=["mongodb", "memory"])
def inbox_of_one_instant(request: pytest.FixtureRequest) -> Iterator[Inbox]:
    yield from _inbox(request, lambda: INSTANT)


@pytest.fixture(params=["mongodb", "memory"])
def ticking_inbox(request: pytest.FixtureRequest) -> Iterator[Inbox]:
    """Its clock starts on a whole second and moves a millisecond a command."""
    ticks = itertools.count()
    yield from _inbox(request, lambda: datetime(2026, 12, 7, 9, 40, 12, tzinfo=UTC) + timedelta(milliseconds=next(ticks)))


def test_submitted_commands_are_pending_oldest_first_per_campaign(inbox: Inbox) -> None:
    first = inbox.submit("c-1", "pause", {}, by="ana", reason="lunch")
    second = inbox.submit("c-1", "approve", {"approval_id": "a0", "approved": ["0"]}, by="bo", reason="ok",
                          command_id="mine")
    inbox.submit("c-2", "stop", {}, by="ana", reason="done")
    pending = inbox.pending("c-1")
    assert [c.command_id for c in pending] == [first.command_id, "mine"]
    assert pending[1] == second and pending[1].payload == {"approval_id": "a0", "approved": ["0"]}
    assert pending[1].state == "pending" and pending[1].by == "bo" and pending[1].reason == "ok"
    assert [c.kind for c in inbox.pending("c-2")] == ["stop"]
    assert inbox.pending("nobody") == []


def test_a_claimed_command_stays_pending_until_applied_or_refused(inbox: Inbox) -> None:
    a = inbox.submit("c-1", "pause", {}, by="ana", reason="r")
    b = inbox.submit("c-1", "stop", {}, by="ana", reason="r")
    assert inbox.claim(a.command_id) and inbox.claim(a.command_id)  # claimed again after a crash
    assert [c.state for c in inbox.pending("c-1")] == ["claimed", "pending"]
    inbox.applied(a.command_id, 42)
    assert inbox.claim(b.command_id)
    inbox.refused(b.command_id, "the campaign is finished")
    assert inbox.pending("c-1") == []
    applied, refused = inbox.get(a.command_id), inbox.get(b.command_id)
    assert applied is not None and applied.state == "applied" and applied.seq == 42
    assert refused is not None and refused.state == "refused" and refused.error == "the campaign is finished"
    assert not inbox.claim(a.command_id) and not inbox.claim(b.command_id)


def test_commands_of_one_millisecond_stay_in_the_order_they_were_submitted(inbox_of_one_instant: Inbox) -> None:
    """A pause and a stop submitted within one millisecond came back stop first once the pause
    was claimed (a clean-clone run): the order of submission is kept, claimed or not."""
    inbox = inbox_of_one_instant
    submitted = [inbox.submit("c-1", kind, {}, by="ana", reason=str(i)).command_id
                 for i, kind in enumerate(["pause", "stop", "change"] * 4)]
    for command_id in submitted[::3]:
        assert inbox.claim(command_id)
    assert inbox.withdraw(submitted[1])
    pending = inbox.pending("c-1")
    assert [c.command_id for c in pending] == [c for c in submitted if c != submitted[1]]
    assert {c.submitted_at for c in pending} == {INSTANT}


def test_a_command_of_a_whole_second_comes_before_the_next_milliseconds(ticking_inbox: Inbox) -> None:
    """``submitted_at`` is stored as text, without a fraction on a whole second: ``...:12Z``
    sorted after ``...:12.001000Z``, so a pause at 09:40:12.000 came after a stop a millisecond later."""
    first = ticking_inbox.submit("c-1", "pause", {}, by="ana", reason="r")
    second = ticking_inbox.submit("c-1", "stop", {}, by="ana", reason="r")
    assert first.submitted_at.microsecond == 0 and second.submitted_at.microsecond == 1000
    assert [c.command_id for c in ticking_inbox.pending("c-1")] == [first.command_id, second.command_id]


def test_pending_commands_stored_by_an_earlier_version_come_first_by_their_time(mongo_uri: str) -> None:
    """Commands stored before the submission number (no ``order``) are still pending, and are
    taken before the ones submitted after the upgrade."""
    database = f"cl_test_{uuid.uuid4().hex[:12]}"
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        old = [{"_id": f"old-{i}", "command_id": f"old-{i}", "campaign_id": "c-1", "kind": "pause", "payload": {},
                "by": "ana", "reason": "r", "submitted_at": f"2026-12-0{7 - i}T09:00:00.500000Z", "state": "pending"}
               for i in range(2)]
        client[database]["commands"].insert_many(old)
        with MongoCommandInbox(mongo_uri, database=database) as inbox:
            new = inbox.submit("c-1", "stop", {}, by="bo", reason="r")
            assert [c.command_id for c in inbox.pending("c-1")] == ["old-1", "old-0", new.command_id]
    finally:
        client.drop_database(database)
        client.close()


def test_a_command_is_withdrawn_only_while_pending_and_then_never_claimed(inbox: Inbox) -> None:
    a = inbox.submit("c-1", "pause", {}, by="ana", reason="r")
    b = inbox.submit("c-1", "stop", {}, by="ana", reason="r")
    assert inbox.withdraw(a.command_id)
    assert not inbox.claim(a.command_id) and not inbox.withdraw(a.command_id)
    assert inbox.claim(b.command_id)
    assert not inbox.withdraw(b.command_id)  # claimed: the orchestrator applies it
    assert not inbox.withdraw("never-submitted") and not inbox.claim("never-submitted")
    assert inbox.get("never-submitted") is None
    assert [c.command_id for c in inbox.pending("c-1")] == [b.command_id]
    withdrawn = inbox.get(a.command_id)
    assert withdrawn is not None and withdrawn.state == "withdrawn"
