"""Shared fixtures: real brokers (tests/conftest_brokers.py), a MongoDB-wire server
(tests/conftest_mongo.py) and one Prefect API server, on PostgreSQL, for the whole run (all xdist
workers)."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

# One BLAS/OpenMP thread per process, set before torch or numpy is first imported (the test
# modules import them after this file). Test workers, servers and CLI subprocesses share two
# cores: a second OpenMP thread spin-waits for a core someone else holds, and an Ax fit took
# 200 s instead of 1 s on a loaded machine. `torch.set_num_threads(1)` later is not enough:
# the pool already exists by then.
for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_variable] = "1"
assert "torch" not in sys.modules, "tests/conftest.py must run before torch is imported"

# Collection imports torch, Prefect, BoTorch and hypothesis: about a million long-lived objects
# that collections would only re-scan (~1.3 s of each worker's start). The collector is off
# until the tests are collected, then those objects are frozen (the CLI does the same:
# flows.cli.drive.startup_finished).
gc.disable()

import pytest

pytest_plugins = ["tests.conftest_brokers", "tests.conftest_mongo"]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PREFECT_QUIET = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}


#: A directory the controller makes and every xdist worker inherits (through the environment):
#: the one Prefect server of the whole run is described there.
SHARED_ENV = "CLOSEDLOOP_TEST_SHARED_DIR"


_T = TypeVar("_T")


def computed_once(name: str, make: Callable[[], _T]) -> _T:
    """``make()`` once for the whole run: the first xdist worker to ask computes it, under a lock in
    the run's shared directory, and the others read the pickled result (pytest-xdist's advice for
    work a fixture should do once). For CPU-heavy module fixtures whose tests the workers share
    out: each worker that runs one of them would otherwise compute the fixture again."""
    shared = Path(os.environ[SHARED_ENV])
    path = shared / f"once-{name}.pickle"
    with (shared / f"once-{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return pickle.loads(path.read_bytes())  # type: ignore[no-any-return]
        value = make()
        path.write_bytes(pickle.dumps(value))
        return value


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller (or the only process, without xdist)
        os.environ[SHARED_ENV] = tempfile.mkdtemp(prefix="closedloop-tests-")
        whole_suite = all(Path(a).resolve() == REPO / "tests" for a in config.args)
        if whole_suite and config.getoption("numprocesses", None) and not config.getoption("collectonly"):
            _launch_prefect(Path(os.environ[SHARED_ENV]))  # the e2e tests, handed out first, need it
        if config.getoption("numprocesses", None):
            gc.enable()  # the xdist controller collects nothing


def pytest_collection_finish(session: pytest.Session) -> None:
    gc.freeze()
    gc.enable()


#: The order tests are handed to the xdist workers: the long end-to-end scenarios first, the
#: many short unit tests last, so that they fill the workers' gaps at the end instead of one
#: worker running a 45 s scenario alone while the others are done (that tail was ~50 s).
_LAYER_ORDER = {"e2e": 0, "integration": 1, "unit": 2}
#: The end-to-end files whose scenarios run longest (deployed campaigns waiting on Prefect's
#: automations, kills and restarts: 30-170 s each), first of all: handed out late, one of them
#: ran alone for 80 s at the end.
_LONGEST_FIRST = ("test_service.py", "test_stops.py", "test_cli_run.py", "test_replay_cli.py")


#: Deployed-campaign scenarios handed out after the other long ones: they mostly wait (for
#: Prefect, a deadline, a standby), and all four at the start left the CPU idle for a minute.
_LATER = ("test_a_suspended_approval_past_its_deadline_follows_its_timeout_policy",)


def _order(item: pytest.Item) -> tuple[int, int]:
    path = Path(item.path)
    first = _LONGEST_FIRST.index(path.name) if path.name in _LONGEST_FIRST else len(_LONGEST_FIRST)
    if getattr(item, "originalname", None) in _LATER:
        first = len(_LONGEST_FIRST)
    return _LAYER_ORDER.get(path.parent.name, 1), first


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_order)  # stable: files keep their order otherwise


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput"):
        return
    shared = Path(os.environ.pop(SHARED_ENV, "") or "/nonexistent")
    info = shared / "prefect.json"
    if info.exists():
        _stop(int(json.loads(info.read_text())["pid"]))
    _stop_database(shared)
    log = shared / "prefect-home" / "server.log"
    if session.testsfailed and log.exists():  # what the server saw, for the failures above
        kept = Path(tempfile.gettempdir()) / f"closedloop-tests-prefect-server-{os.getpid()}.log"
        shutil.copyfile(log, kept)
        print(f"\nthe session's Prefect server log: {kept}")
    shutil.rmtree(shared, ignore_errors=True)


def _gone(pid: int) -> bool:
    """True once ``pid`` has ended (and been reaped, if it is a child of this process)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _stop(pid: int, *, group: bool = True, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to the server's process group (it was started in a session of its own) or,
    with ``group`` False, to the process alone; SIGKILL if it has not ended 20 s later."""
    from campaigns.waiting import wait_for

    kill = os.killpg if group else os.kill
    with contextlib.suppress(ProcessLookupError):
        kill(pid, sig)
        if not wait_for(lambda: _gone(pid), 20, interval_s=0.1):
            kill(pid, signal.SIGKILL)


def _launch_database(shared: Path) -> str:
    """A PostgreSQL server (pgserver's bundled binaries, over a Unix socket in ``shared``) for
    the session's Prefect server; returns its SQLAlchemy URL. Prefect advises PostgreSQL for
    concurrent use: on its SQLite, the runs of four workers collided (*database is locked*,
    answered 503 and retried by the clients, once for two minutes)."""
    import warnings

    with warnings.catch_warnings():  # its lock file's directory: /tmp/runtime-<uid> without XDG_RUNTIME_DIR
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver

        server = pgserver.get_server(shared / "prefect-db", cleanup_mode=None)
    return server.get_uri().replace("postgresql://", "postgresql+asyncpg://", 1)


def _stop_database(shared: Path) -> None:
    """Fast shutdown (SIGINT) of the database `_launch_database` started, if it runs."""
    try:
        pid = int((shared / "prefect-db" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    _stop(pid, group=False, sig=signal.SIGINT)


def _launch_prefect(shared: Path) -> None:
    """Start `prefect server start` on `_launch_database`'s database in a session of its own
    and describe it in the shared directory (``prefect.json``); it answers some 15 s later
    (`_wait_for_prefect`)."""
    home = shared / "prefect-home"
    home.mkdir()
    port = free_port()
    # Retryable errors (503: database busy, ...) are logged with their cause, kept if a test fails.
    env = {**os.environ, **PREFECT_QUIET, "PREFECT_HOME": str(home), "PREFECT_SERVER_LOG_RETRYABLE_ERRORS": "true",
           "PREFECT_SERVER_DATABASE_CONNECTION_URL": _launch_database(shared)}
    with (home / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/api"
    (shared / "prefect.json").write_text(json.dumps(
        {"pid": proc.pid, "env": {**PREFECT_QUIET, "PREFECT_HOME": str(home), "PREFECT_API_URL": url}}))


def _running(pid: int) -> bool:
    try:  # a zombie (dead, not yet reaped by the controller) is not running
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _wait_for_prefect(shared: Path) -> dict[str, str]:
    """The server's environment once it answers (a hang guard of 180 s, not a speed claim)."""
    info = json.loads((shared / "prefect.json").read_text())
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{info['env']['PREFECT_API_URL']}/health", timeout=2) as r:
                if r.status == 200:
                    return dict(info["env"])
        except OSError:
            pass
        if not _running(info["pid"]) or time.monotonic() > deadline:
            log = (shared / "prefect-home" / "server.log").read_text()[-2000:]
            raise RuntimeError(f"prefect server did not start: {log}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def prefect_server() -> dict[str, str]:
    """One real `prefect server start` for the whole run, shared by the xdist workers (each
    start costs ~12 s of CPU; one per worker was three). A whole-suite run starts it at once
    (`pytest_configure`), while the workers collect; otherwise the first worker to need it
    starts it, under a file lock. The controller stops it at the end of the session.

    Returns the environment variables that point a process (or this one) at it. Tests tell
    their runs apart by campaign name, as they did on a server per worker.
    """
    shared = Path(os.environ[SHARED_ENV])
    with (shared / "prefect.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "prefect.json").exists():
            _launch_prefect(shared)
    return _wait_for_prefect(shared)


@pytest.fixture
def prefect_env(prefect_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Point this process's Prefect at the session server, its own threads too, as Prefect's
    ``prefect_test_harness`` does: the settings become the process-global ones as well (the
    thread that sends a flow run's logs has none of its own: it started a temporary server),
    and what the test's runs left queued (logs, events) is sent before they are restored."""
    import prefect.context
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    for k, v in prefect_server.items():
        monkeypatch.setenv(k, v)
    with temporary_settings(updates={PREFECT_API_URL: prefect_server["PREFECT_API_URL"],
                                     PREFECT_HOME: prefect_server["PREFECT_HOME"]}), \
            prefect.context._temporary_global_settings_context(prefect.context.get_settings_context()):
        yield prefect_server
        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)


def closedloop_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, broker: str, mongo_uri: str) -> dict[str, str]:
    """Point this process's closedloop settings (``CLOSEDLOOP_*``) at a test's broker and a fresh
    database and topic prefix of its own (tests share the broker and the server); returns them."""
    import uuid

    values = {
        "CLOSEDLOOP_HOME": str(tmp_path / "home"),
        "CLOSEDLOOP_MQTT_URL": broker,
        "CLOSEDLOOP_MQTT_PREFIX": f"t-{uuid.uuid4().hex[:8]}",
        "CLOSEDLOOP_MONGODB_URI": mongo_uri,
        "CLOSEDLOOP_MONGODB_DATABASE": f"cl_{uuid.uuid4().hex[:8]}",
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values
