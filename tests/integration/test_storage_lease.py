"""The lease contract: one writer per campaign, on nx-27017 and (when configured) a real MongoDB.

Time is injected (``Clock``) wherever a test needs a lease to go stale or be renewed. Racing acquirers are real threads and real processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pymongo
import pytest

from campaigns import CampaignLockedError, StorageUnavailableError
from storage import LeaseInfo, MongoLease

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0

Leases = Callable[..., MongoLease]


class Clock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def database(mongo_uri: str) -> Iterator[str]:
    """A database of its own, dropped afterwards."""
    name = f"cl_test_{uuid.uuid4().hex[:12]}"
    yield name
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(name)
    finally:
        client.close()


@pytest.fixture
def lease(mongo_uri: str, database: str) -> Iterator[Leases]:
    """Make ``MongoLease``s on the test database (campaign ``c-1`` unless told); all closed afterwards."""
    made: list[MongoLease] = []

    def make(owner: str, campaign_id: str = "c-1", **kw: object) -> MongoLease:
        made.append(MongoLease(mongo_uri, campaign_id, owner=owner, database=database, **kw))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for m in made:
        m.close()


def test_a_second_acquirer_is_refused_with_a_message_naming_the_owner(lease: Leases) -> None:
    clock = Clock()
    info = lease("lab-pc:101", clock=clock).acquire()
    assert isinstance(info, LeaseInfo) and not info.taken_over and info.taken_over_from is None
    assert (info.owner, info.acquired_at, info.expires_at) == ("lab-pc:101", T0, T0 + 30)
    clock.now += 12
    with pytest.raises(CampaignLockedError) as refused:
        lease("laptop:202", clock=clock).acquire()
    assert str(refused.value).startswith("campaign 'c-1' is being run by lab-pc:101 (last heartbeat 12 s ago)")
    assert refused.value.hint == "wait for it to finish or stop it; a dead owner's lease expires after 30 s"
    assert refused.value.campaign_id == "c-1" and refused.value.owner == "lab-pc:101"
    assert lease("laptop:202", campaign_id="c-2", clock=clock).acquire().owner == "laptop:202"  # other campaigns


def test_acquiring_a_lease_already_held_is_fine(lease: Leases) -> None:
    a = lease("a:1")
    first = a.acquire()
    again = a.acquire()
    assert not again.taken_over and again.token == first.token


def test_a_stale_lease_is_taken_over_and_the_old_owner_must_stop(lease: Leases) -> None:
    clock = Clock()
    old = lease("dead-host:7", clock=clock, ttl_s=30)
    old.acquire()
    new = lease("lab-pc:8", clock=clock, ttl_s=30)
    clock.now = T0 + 29
    with pytest.raises(CampaignLockedError):
        new.acquire()  # not stale yet
    clock.now = T0 + 31
    info = new.acquire()
    assert info.taken_over and info.taken_over_from == "dead-host:7"
    assert info.previous_heartbeat_at == pytest.approx(T0)
    with pytest.raises(CampaignLockedError, match="taken over by lab-pc:8: the lease of dead-host:7 expired"):
        old.renew()
    assert old.held_until is None
    with pytest.raises(CampaignLockedError, match="being run by lab-pc:8"):
        old.acquire()


def test_a_lease_of_an_owner_known_dead_is_taken_over_at_once(lease: Leases) -> None:
    clock = Clock()
    lease("lab-pc:7", clock=clock).acquire()
    with pytest.raises(CampaignLockedError):
        lease("lab-pc:9", clock=clock).acquire(dead_owner="lab-pc:8")  # not the holder: no effect
    info = lease("lab-pc:9", clock=clock).acquire(dead_owner="lab-pc:7")
    assert info.taken_over_from == "lab-pc:7" and info.owner == "lab-pc:9"


def test_renew_pushes_the_expiry_and_an_expired_lease_nobody_took_is_still_ours(lease: Leases) -> None:
    clock = Clock()
    a, b = lease("a:1", clock=clock, ttl_s=30), lease("b:2", clock=clock, ttl_s=30)
    a.acquire()
    clock.now = T0 + 25
    a.renew()
    assert a.held_until == T0 + 55
    clock.now = T0 + 40
    with pytest.raises(CampaignLockedError, match=r"being run by a:1 \(last heartbeat 15 s ago\)"):
        b.acquire()
    clock.now = T0 + 100
    a.renew()  # expired at T0 + 55, but nobody took it
    with pytest.raises(CampaignLockedError):
        b.acquire()


def test_release_frees_the_lease_and_is_idempotent(lease: Leases) -> None:
    a, b, c = lease("a:1"), lease("b:2"), lease("c:3")
    a.acquire()
    a.release()
    a.release()
    with pytest.raises(CampaignLockedError, match="no longer held by a:1: it was released"):
        a.renew()
    assert not b.acquire().taken_over
    a.release()  # no longer ours: leaves b's lease alone
    with pytest.raises(CampaignLockedError, match="being run by b:2"):
        c.acquire()


def test_the_context_manager_acquires_and_releases(lease: Leases, mongo_uri: str, database: str) -> None:
    with MongoLease(mongo_uri, "c-1", owner="a:1", database=database) as held:
        assert held.held_until is not None
        with pytest.raises(CampaignLockedError), MongoLease(mongo_uri, "c-1", owner="b:2", database=database):
            pass
    assert not lease("b:2").acquire().taken_over


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_two_threads_racing_to_acquire_exactly_one_wins(lease: Leases, stale: bool) -> None:
    rounds = 15
    clock = Clock()
    if stale:
        for r in range(rounds):
            lease("dead:0", campaign_id=f"race-{r}", clock=Clock(T0 - 100)).acquire()
    contenders = [[lease(f"t{i}:{i}", campaign_id=f"race-{r}", clock=clock) for r in range(rounds)] for i in (0, 1)]
    wins: list[list[LeaseInfo]] = [[], []]
    refused: list[int] = [0, 0]
    barrier = threading.Barrier(2)

    def contender(i: int) -> None:
        for r in range(rounds):
            barrier.wait(timeout=30)
            try:
                wins[i].append(contenders[i][r].acquire())
            except CampaignLockedError:
                refused[i] += 1

    threads = [threading.Thread(target=contender, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    won = sorted(info.campaign_id for info in wins[0] + wins[1])
    assert won == sorted(f"race-{r}" for r in range(rounds))
    assert refused[0] + refused[1] == rounds
    assert all(info.taken_over == stale for info in wins[0] + wins[1])


# Race for N campaigns: once both processes are ready, round r starts at START + r * 0.05 s (epoch)
# in both alike, so each round is a real race between two interpreters.
RACER = """
import json, sys, time
from campaigns import CampaignLockedError
from storage import MongoLease
uri, database, owner, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
leases = [MongoLease(uri, f"race-{r}", owner=owner, database=database) for r in range(rounds)]
print("ready", flush=True)
start = float(sys.stdin.readline())
won = []
for r, lease in enumerate(leases):
    time.sleep(max(0.0, start + r * 0.05 - time.time()))
    try:
        lease.acquire()
        won.append(r)
    except CampaignLockedError:
        pass
print(json.dumps(won), flush=True)
"""


def test_two_processes_racing_to_acquire_exactly_one_wins(lease: Leases, mongo_uri: str, database: str) -> None:
    rounds = 20
    for r in range(0, rounds, 2):  # half the campaigns hold a stale lease of a dead process
        lease("dead:0", campaign_id=f"race-{r}", clock=Clock(T0)).acquire()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, mongo_uri, database, f"p{i}:{i}", str(rounds)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
        )
        for i in (0, 1)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.communicate(timeout=30)[1][-2000:]
    start = f"{time.time() + 0.2}\n"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(start)
        p.stdin.flush()
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    won = [set(json.loads(out)) for out, _ in results]
    assert won[0].isdisjoint(won[1])
    assert won[0] | won[1] == set(range(rounds))
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        owners = {d["_id"]: d["owner"] for d in client[database]["leases"].find()}
    finally:
        client.close()
    assert owners == {f"race-{r}": f"p{0 if r in won[0] else 1}:{0 if r in won[0] else 1}" for r in range(rounds)}


def test_the_heartbeat_keeps_a_lease_alive_past_its_ttl(lease: Leases) -> None:
    """On an injected clock: the heartbeat's renewal (waited for, not slept for) carries the
    lease past the ttl it was acquired with; once it stops, the lease expires and is taken over.
    (It used a 1 s ttl on the real clock, which a heartbeat thread starved on a loaded machine
    could miss.)"""
    clock, ttl = Clock(), 30.0
    a = lease("a:1", ttl_s=ttl, clock=clock)
    lost: list[BaseException] = []
    assert a.acquire().expires_at == T0 + ttl
    clock.now = T0 + 27
    a.start_heartbeat(interval_s=0.05, on_lost=lost.append)
    deadline = time.monotonic() + 60
    while a.held_until != T0 + 57:  # the next beat renews it from the clock's now
        assert time.monotonic() < deadline, "the heartbeat never renewed the lease"
        time.sleep(0.02)
    a.stop_heartbeat()
    clock.now = T0 + 45  # past the ttl it was acquired with
    with pytest.raises(CampaignLockedError, match="being run by a:1"):
        lease("b:2", ttl_s=ttl, clock=clock).acquire()
    assert lost == []
    clock.now = T0 + 58  # nobody renews it any more
    info = lease("b:2", ttl_s=ttl, clock=clock).acquire()
    assert info.taken_over_from == "a:1"


def test_the_heartbeat_reports_a_lost_lease_once(lease: Leases) -> None:
    clock = Clock()
    a = lease("a:1", clock=clock)
    a.acquire()
    lease("b:2", clock=Clock(T0 + 31)).acquire()
    lost: list[BaseException] = []
    done = threading.Event()

    def on_lost(exc: BaseException) -> None:
        lost.append(exc)
        done.set()

    a.start_heartbeat(interval_s=0.05, on_lost=on_lost)
    assert done.wait(timeout=10)
    time.sleep(0.3)
    assert len(lost) == 1 and isinstance(lost[0], CampaignLockedError)
    assert "taken over by b:2" in str(lost[0])
    a.stop_heartbeat()


def test_an_unreachable_server_gives_storage_unavailable_without_the_password() -> None:
    lease = MongoLease("mongodb://u:s3cret@127.0.0.1:1/", "c-1", owner="a:1", timeout_s=0.5)
    try:
        for call in (lease.acquire, lease.renew, lease.release):
            with pytest.raises(StorageUnavailableError) as info:
                call()
            text = f"{info.value} {info.value!r} {info.value.hint}"
            assert "s3cret" not in text and "\n" not in str(info.value)
            assert str(info.value).startswith("cannot reach MongoDB at mongodb://u:***@127.0.0.1:1/")
    finally:
        lease.close()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="owner"):
        MongoLease("mongodb://127.0.0.1:1/", "c-1", owner="")
    with pytest.raises(ValueError, match="ttl_s"):
        MongoLease("mongodb://127.0.0.1:1/", "c-1", owner="a:1", ttl_s=0)
