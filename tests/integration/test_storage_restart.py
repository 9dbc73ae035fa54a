"""Stops of the database: an nx-27017 server on a fixed port is SIGKILLed and started again.

The store and the lease keep their pymongo clients across the restart, as a running campaign
does: while the server is down every call raises ``StorageUnavailableError`` within the
timeout, and the very same objects work again once it is back on the same port and data.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from campaigns import CampaignLockedError, RunStarted, StorageUnavailableError
from storage import EmbeddedMongo, MongoEventStore, MongoLease

TIMEOUT_S = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """An nx-27017 server of ``home`` on a fixed port that a test can kill and start again."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = _free_port()
        self._users: list[EmbeddedMongo] = []

    def start(self) -> str:
        mongo = EmbeddedMongo(self.home, port=self.port)
        self._users.append(mongo)
        return mongo.start()

    def kill(self) -> None:
        pid = int(json.loads((self.home / "mongo.json").read_text())["pid"])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child: reap it
                    return
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)
        raise AssertionError(f"nx-27017 (pid {pid}) survived SIGKILL")

    def stop(self) -> None:
        for mongo in self._users:
            mongo.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    yield s
    s.stop()


def _run(seq: int) -> RunStarted:
    return RunStarted(campaign_id="c-1", seq=seq, actor="orchestrator", host="h", pid=seq)


def test_the_store_survives_a_restart_of_its_server(server: Server) -> None:
    uri = server.start()
    e1, e2, e3, e4 = (_run(seq) for seq in range(1, 5))  # events carry their time: make them once
    with MongoEventStore(uri, timeout_s=TIMEOUT_S) as store:
        store.append([e1, e2])
        server.kill()
        start = time.monotonic()
        with pytest.raises(StorageUnavailableError, match="cannot reach MongoDB at mongodb://127.0.0.1:") as info:
            store.append([e3])  # the intent is not logged: the loop must not dispatch
        assert time.monotonic() - start < 10 * TIMEOUT_S  # a hang guard, not a benchmark
        assert "retries when it returns" in info.value.hint and info.value.campaign_id == "c-1"
        with pytest.raises(StorageUnavailableError):
            store.read("c-1")
        with pytest.raises(StorageUnavailableError):
            store.append([e3])  # the loop retries: still down
        assert server.start() == uri  # same port, same data
        store.append([e3])  # the same store, the same call
        store.append([e3, e4])  # a retry of an append whose acknowledgement was lost
        assert store.read("c-1") == [e1, e2, e3, e4]


def test_a_heartbeat_rides_out_a_short_outage_and_keeps_the_lease(server: Server) -> None:
    uri = server.start()
    lost: list[BaseException] = []
    # The lease's clock moves only when the test says: a slow restart of the server cannot let
    # the lease expire by itself (with a 6 s ttl on the real clock, a loaded machine could).
    now = [1_700_000_000.0]
    with MongoLease(uri, "c-1", owner="a:1", ttl_s=6.0, timeout_s=TIMEOUT_S, clock=lambda: now[0]) as lease:
        lease.start_heartbeat(interval_s=0.2, on_lost=lost.append)
        server.kill()
        with pytest.raises(StorageUnavailableError):
            lease.renew()
        time.sleep(1.0)  # the heartbeat fails through this
        server.start()
        before = lease.held_until
        now[0] += 1.0  # a renewal from here on is seen as a later expiry
        renewed = threading.Event()
        deadline = time.monotonic() + 120  # a guard against a hang, not an order
        while time.monotonic() < deadline and not renewed.is_set():
            if lease.held_until is not None and before is not None and lease.held_until > before:
                renewed.set()
            time.sleep(0.05)
        assert renewed.is_set(), "the heartbeat did not renew after the server came back"
        other = MongoLease(uri, "c-1", owner="b:2", timeout_s=TIMEOUT_S, clock=lambda: now[0])
        try:
            with pytest.raises(CampaignLockedError, match="being run by a:1"):
                other.acquire()
        finally:
            other.close()
        assert lost == []
