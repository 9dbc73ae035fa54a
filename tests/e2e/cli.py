"""Helpers for running the `closedloop` CLI as a user does: a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

CLOSEDLOOP = str(Path(sys.executable).parent / "closedloop")


def cli_env(home: Path, prefect: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOSEDLOOP_")}
    env.update(prefect)
    env["CLOSEDLOOP_HOME"] = str(home)
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def shared_env(home: Path, prefect: dict[str, str], mongo_uri: str, broker: str) -> dict[str, str]:
    """`cli_env` on the session's database server and broker, under a database and topic prefix
    of this test's own: no command starts an embedded server (each `status` did), which the
    tests of the embedded defaults (test_cli_run, test_stops, test_crash_resume) still cover."""
    import uuid

    return cli_env(home, prefect, CLOSEDLOOP_MONGODB_URI=mongo_uri, CLOSEDLOOP_MQTT_URL=broker,
                   CLOSEDLOOP_MONGODB_DATABASE=f"cl_e2e_{uuid.uuid4().hex[:8]}",
                   CLOSEDLOOP_MQTT_PREFIX=f"e2e-{uuid.uuid4().hex[:8]}")


def read_events(env: dict[str, str], campaign: str) -> list[Any]:
    """The campaign's log on the database of a `shared_env`."""
    from storage import MongoEventStore

    with MongoEventStore(env["CLOSEDLOOP_MONGODB_URI"], database=env["CLOSEDLOOP_MONGODB_DATABASE"]) as store:
        return store.read(campaign)


def log_of(env: dict[str, str], campaign: str) -> list[Any]:
    """The campaign's log as the CLI with ``env`` reads it: the configured database, or the
    embedded server of its home while one runs (none running: no log yet, and none is started)."""
    from storage import EmbeddedMongo, MongoEventStore

    if "CLOSEDLOOP_MONGODB_URI" in env:
        with MongoEventStore(env["CLOSEDLOOP_MONGODB_URI"],
                             database=env.get("CLOSEDLOOP_MONGODB_DATABASE", "closedloop")) as store:
            return store.read(campaign)
    home = Path(env["CLOSEDLOOP_HOME"])
    if not (home / "mongo.json").exists():
        return []
    with EmbeddedMongo(home) as mongo, MongoEventStore(mongo.uri) as store:
        return store.read(campaign)


def status_now(campaign: str, env: dict[str, str]) -> dict[str, Any] | None:
    """What `closedloop status CAMPAIGN --json` prints, computed in this process from the log
    (the same ``status_dict``): the condition a test's wait polls, without a CLI process per poll
    (~0.7 s of CPU each). None while the campaign has no log yet. The `status` command itself
    is tested where its output is the point (test_cli_run)."""
    from campaigns import fold
    from flows.cli.report import status_dict

    events = log_of(env, campaign)
    return status_dict(fold(events)) if events else None


def run(args: list[str], env: dict[str, str], timeout: float = 240, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`closedloop ARGS` to its end, as a process of its own: its exit code, stdout and stderr.

    Forked from this worker's fork server (``tests/e2e/forkserver.py``: the CLI and torch
    imported once, ~1 s of CPU saved per command); ``CLOSEDLOOP_TEST_EXEC=1`` starts each
    command from the console script instead (what a shell does).
    """
    if os.environ.get("CLOSEDLOOP_TEST_EXEC") == "1":
        return subprocess.run([CLOSEDLOOP, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    return _forkserver().run([CLOSEDLOOP, *args], env, timeout, Path.cwd() if cwd is None else cwd)


class _ForkServer:
    """This worker's `tests/e2e/forkserver.py` and the commands it runs (see its docstring)."""

    def __init__(self) -> None:
        import socket
        import threading

        mine, theirs = socket.socketpair()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as every command's (cli_env): read when BLAS loads
        self._process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("forkserver.py")), str(theirs.fileno())],
                                         pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, cwd=Path(__file__).parents[2])
        theirs.close()
        self._sock = mine
        self._lock = threading.Lock()
        self._replies: dict[str, Any] = {}
        self._ids = iter(range(1 << 62))
        threading.Thread(target=self._read, name="forkserver-replies", daemon=True).start()

    def _read(self) -> None:
        import queue

        for line in self._sock.makefile("r", encoding="utf-8"):
            reply = json.loads(line)
            with self._lock:
                box = self._replies.setdefault(reply["id"], queue.Queue())
            box.put(reply)

    def _reply(self, rid: str, timeout: float | None) -> dict[str, Any]:
        import queue

        with self._lock:
            box = self._replies.setdefault(rid, queue.Queue())
        try:
            return box.get(timeout=timeout)
        except queue.Empty:
            if self._process.poll() is not None:
                raise RuntimeError(f"the fork server exited ({self._process.returncode})") from None
            raise

    def run(self, argv: list[str], env: dict[str, str], timeout: float, cwd: Path) -> subprocess.CompletedProcess[str]:
        import queue
        import signal
        import tempfile
        import time

        with tempfile.TemporaryDirectory(prefix="cl-cmd-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            out.touch()
            err.touch()
            with self._lock:
                rid = str(next(self._ids))
            request = {"id": rid, "argv": argv, "env": env, "cwd": str(cwd), "stdout": str(out), "stderr": str(err)}
            self._sock.sendall((json.dumps(request) + "\n").encode())
            deadline = time.monotonic() + timeout
            pid = self._reply(rid, 60)["pid"]
            try:
                code = self._reply(rid, max(0.0, deadline - time.monotonic()))["code"]
            except queue.Empty:
                os.kill(pid, signal.SIGKILL)
                self._reply(rid, 60)
                raise subprocess.TimeoutExpired(argv, timeout, out.read_text(), err.read_text()) from None
            finally:
                with self._lock:
                    self._replies.pop(rid, None)
            return subprocess.CompletedProcess(argv, code, out.read_text(), err.read_text())


_SERVER: _ForkServer | None = None


def _forkserver() -> _ForkServer:
    global _SERVER
    if _SERVER is None:
        _SERVER = _ForkServer()
    return _SERVER


def status(campaign: str, env: dict[str, str]) -> dict[str, Any]:
    out = run(["status", campaign, "--json"], env, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def branin(x1: float, x2: float) -> float:
    """Branin, written out here independently of the simulator."""
    import math

    b, c, r, s, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 6.0, 10.0, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - r) ** 2 + s * (1 - t) * math.cos(x1) + s
