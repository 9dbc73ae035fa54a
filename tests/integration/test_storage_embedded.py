"""The embedded nx-27017 server shared by several processes: who starts it, who stops it.

Each test has its own ``home`` and so its own server. The other user of the server is a real
second process (``python -c``), as a second terminal running ``closedloop status`` would be.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from campaigns import RunStarted, StorageError
from storage import EmbeddedMongo, MongoEventStore

REPO = Path(__file__).resolve().parents[2]

# A second user: start the server of HOME, append one event to CAMPAIGN, report what it sees
# of OTHER, then wait for a line on stdin before stopping (or to be killed).
USER_SCRIPT = """
import json, sys
from pathlib import Path
from campaigns import RunStarted
from storage import EmbeddedMongo, MongoEventStore
home, campaign, other = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
mongo = EmbeddedMongo(home)
uri = mongo.start()
with MongoEventStore(uri) as store:
    store.append([RunStarted(campaign_id=campaign, seq=1, actor="user:child", host="h", pid=1)])
    print(json.dumps({"uri": uri, "seen": store.last_seq(other)}), flush=True)
    sys.stdin.readline()
mongo.stop()
print("stopped", flush=True)
"""


class User:
    """A second process using the embedded server of ``home``."""

    def __init__(self, home: Path, campaign: str, other: str = "-") -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", USER_SCRIPT, str(home), campaign, other],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"user process failed: {self.proc.communicate(timeout=10)[1][-2000:]}")
        self.report: dict[str, Any] = json.loads(line)

    def finish(self) -> None:
        out, err = self.proc.communicate("\n", timeout=30)
        assert self.proc.returncode == 0, err[-2000:]
        assert out.strip() == "stopped"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=10)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A fresh home; any server left running by a failed test is stopped afterwards."""
    yield tmp_path
    state = tmp_path / "mongo.json"
    if state.exists():
        pid = json.loads(state.read_text())["pid"]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _run(campaign: str, seq: int) -> RunStarted:
    return RunStarted(campaign_id=campaign, seq=seq, actor="user:main", host="h", pid=seq)


def _server_pid(home: Path) -> int:
    return int(json.loads((home / "mongo.json").read_text())["pid"])


def _gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().rpartition(")")[2].split()[0] == "Z":
            return True  # killed, waiting for its parent to reap it
        time.sleep(0.05)
    return False


def test_two_processes_see_each_others_writes_and_the_last_one_out_stops_the_server(home: Path) -> None:
    main = EmbeddedMongo(home)
    uri = main.start()
    server = _server_pid(home)
    with MongoEventStore(uri) as store:
        store.append([_run("c-main", 1)])
        user = User(home, "c-child", other="c-main")
        assert user.report == {"uri": uri, "seen": 1}  # same server, and it sees our write
        assert store.read("c-child")[0].actor == "user:child"  # we see its write
    main.stop()  # we started the server, but the other process still uses it
    assert not _gone(server, within_s=0.5)
    with MongoEventStore(uri, timeout_s=2.0) as store:
        assert store.last_seq("c-child") == 1
    user.finish()  # last one out
    assert _gone(server)
    assert not (home / "mongo.json").exists()


def test_data_survives_a_restart_of_the_server(home: Path) -> None:
    events = [_run("c-1", 1), _run("c-1", 2)]
    with EmbeddedMongo(home) as mongo, MongoEventStore(mongo.uri) as store:
        store.append(events)
        first = _server_pid(home)
    assert _gone(first)
    with EmbeddedMongo(home) as mongo, MongoEventStore(mongo.uri) as store:
        assert _server_pid(home) != first
        assert store.read("c-1") == events


def test_sigkill_of_the_last_user_stops_the_server(home: Path) -> None:
    """Issue 14 item 12: the server of a SIGKILLed user stayed up with nobody using it (and
    outlived the orchestrator that started it). Now its keeper stops it once the last user
    is gone, however it went; the next user starts one and finds the data."""
    user = User(home, "c-killed")  # this process starts the server
    server = _server_pid(home)
    nx = int((home / "nx.pid").read_text())
    user.kill()
    assert _gone(server) and _gone(nx)
    assert not (home / "mongo.json").exists()
    with EmbeddedMongo(home) as mongo, MongoEventStore(mongo.uri) as store:
        assert store.last_seq("c-killed") == 1


def test_sigkill_of_one_user_leaves_the_server_to_the_others(home: Path) -> None:
    with EmbeddedMongo(home) as mongo, MongoEventStore(mongo.uri) as store:
        server = _server_pid(home)
        user = User(home, "c-killed")  # it uses this process's server
        assert user.report["uri"] == mongo.uri
        user.kill()
        assert not _gone(server, within_s=1.0)
        assert store.last_seq("c-killed") == 1
    assert _gone(server)  # and the last user turned it off


def test_data_is_the_owners_only(home: Path) -> None:
    """Issue 14 item 18: the embedded database's files were world-readable (0644), so any
    local user could read a campaign's log. Now data/ is 0700 and its files 0600, files an
    older version left too."""
    data = home / "data"
    data.mkdir(mode=0o755)
    (data / "closedloop.db").touch(mode=0o644)  # an empty file is an empty SQLite database
    os.chmod(data / "closedloop.db", 0o644)
    with EmbeddedMongo(home) as mongo, MongoEventStore(mongo.uri) as store:
        store.append([RunStarted(campaign_id="c-1", seq=1, actor="user:t", host="h", pid=1)])
        files = sorted(p.name for p in data.iterdir())
        modes = {p.name: p.stat().st_mode & 0o777 for p in data.iterdir()}
        assert data.stat().st_mode & 0o777 == 0o700
        assert "closedloop.db" in files and set(modes.values()) == {0o600}, modes
        assert (home / "mongo.log").stat().st_mode & 0o777 == 0o600


def test_stop_is_idempotent_and_uri_needs_start(home: Path) -> None:
    mongo = EmbeddedMongo(home)
    with pytest.raises(StorageError, match="not started"):
        _ = mongo.uri
    mongo.start()
    assert mongo.start() == mongo.uri
    mongo.stop()
    mongo.stop()
    assert not (home / "mongo.json").exists()


def test_a_server_that_cannot_start_gives_storage_error_with_its_output(home: Path) -> None:
    (home / "data" / "admin.db").mkdir(parents=True)  # SQLite cannot open a directory
    with pytest.raises(StorageError, match=r"did not start.*unable to open database file") as info:
        EmbeddedMongo(home).start()
    assert "mongo.log" in info.value.hint
    assert not (home / "mongo.json").exists()


_HANGS_ON_SIGTERM = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(3600)
"""


def test_a_server_hung_in_its_shutdown_is_killed_and_the_next_user_is_not_blocked(home: Path) -> None:
    """nx-27017 0.8.1 can hang for good in its shutdown after SIGTERM (asyncio cancelling its
    tasks). Its keeper waited for it while holding the users lock exclusively, so every later
    command on that home blocked (a `resume` after a SIGKILL hung in a full run, 2 of ~30
    tries alone). The keeper now kills a server still running GRACE_S after SIGTERM."""
    import fcntl

    home.mkdir(parents=True, exist_ok=True)
    users = (home / "mongo.users").open("ab")
    fcntl.flock(users.fileno(), fcntl.LOCK_SH)  # a user, there before the keeper
    pid_file = home / "server.pid"
    guard = Path(__file__).parents[2] / "storage" / "_guard.py"
    keeper = subprocess.Popen([sys.executable, str(guard), str(home), "--", sys.executable, "-c", _HANGS_ON_SIGTERM,
                               str(pid_file)])
    try:
        deadline = time.monotonic() + 120  # a hang guard: the server writes its pid as it starts
        while not pid_file.exists():
            assert keeper.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        server = int(pid_file.read_text())
        users.close()  # the last user goes: the keeper stops the server, which ignores SIGTERM
        keeper.wait(timeout=120)  # a hang guard: the keeper kills it GRACE_S after SIGTERM
    finally:
        if keeper.poll() is None:
            keeper.kill()
    assert _gone(server)
    with (home / "mongo.users").open("ab") as again:
        fcntl.flock(again.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)  # the next user is not blocked
