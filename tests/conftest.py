"""Shared fixtures: real brokers (tests/conftest_brokers.py), a MongoDB-wire server
(tests/conftest_mongo.py) and one Prefect API server for the whole session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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

import pytest  # noqa: E402

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


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real `prefect server start` for the session (starting one per test costs ~10 s each).

    Yields the environment variables that point a process (or this one) at it.
    """
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {**os.environ, **PREFECT_QUIET, "PREFECT_HOME": str(home)}
    log = (home / "server.log").open("wb")
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
            proc.kill()
            raise RuntimeError(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    try:
        yield {**PREFECT_QUIET, "PREFECT_HOME": str(home), "PREFECT_API_URL": url}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


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
