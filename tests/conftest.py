"""Shared fixtures: real brokers (tests/conftest_brokers.py), a MongoDB-wire server
(tests/conftest_mongo.py) and one Prefect API server for the whole run (all xdist workers)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

# One BLAS/OpenMP thread per process, set before torch or numpy is first imported (the test
# modules import them after this file). Test workers, servers and CLI subprocesses share two
# cores: a second OpenMP thread spin-waits for a core someone else holds, and an Ax fit took
# 200 s instead of 1 s on a loaded machine. `torch.set_num_threads(1)` later is not enough:
# the pool already exists by then.
for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_variable] = "1"
assert "torch" not in sys.modules, "tests/conftest.py must run before torch is imported"

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


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller (or the only process, without xdist)
        os.environ[SHARED_ENV] = tempfile.mkdtemp(prefix="closedloop-tests-")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput"):
        return
    shared = Path(os.environ.pop(SHARED_ENV, "") or "/nonexistent")
    info = shared / "prefect.json"
    if info.exists():
        _stop(int(json.loads(info.read_text())["pid"]))
    shutil.rmtree(shared, ignore_errors=True)


def _stop(pid: int) -> None:
    """SIGTERM the server's process group (it was started in a session of its own), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            os.kill(pid, 0)  # raises ProcessLookupError once it is gone
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG) != (0, 0):
                    return
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)


def _start_prefect(home: Path) -> dict[str, object]:
    """Start `prefect server start` in a session of its own; wait until it answers."""
    port = free_port()
    env = {**os.environ, **PREFECT_QUIET, "PREFECT_HOME": str(home)}
    with (home / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc.pid)
            raise RuntimeError(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    return {"pid": proc.pid, "env": {**PREFECT_QUIET, "PREFECT_HOME": str(home), "PREFECT_API_URL": url}}


@pytest.fixture(scope="session")
def prefect_server() -> dict[str, str]:
    """One real `prefect server start` for the whole run, shared by the xdist workers (each
    start costs ~12 s of CPU; one per worker was three). The first worker to need it starts
    it, under a file lock; the controller stops it at the end of the session.

    Returns the environment variables that point a process (or this one) at it. Tests tell
    their runs apart by campaign name, as they did on a server per worker.
    """
    shared = Path(os.environ[SHARED_ENV])
    with (shared / "prefect.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = shared / "prefect.json"
        if not info.exists():
            home = shared / "prefect-home"
            home.mkdir()
            info.write_text(json.dumps(_start_prefect(home)))
        return dict(json.loads(info.read_text())["env"])


@pytest.fixture
def prefect_env(prefect_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Point this process's Prefect at the session server."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    for k, v in prefect_server.items():
        monkeypatch.setenv(k, v)
    with temporary_settings(updates={PREFECT_API_URL: prefect_server["PREFECT_API_URL"],
                                     PREFECT_HOME: prefect_server["PREFECT_HOME"]}):
        yield prefect_server


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
