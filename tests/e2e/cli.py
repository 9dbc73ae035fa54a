"""Helpers for running the `closedloop` CLI as a user does: a subprocess."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

CLOSEDLOOP = str(Path(sys.executable).parent / "closedloop")


def cli_env(home: Path, prefect: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOSEDLOOP_")}
    env.update(prefect)
    env["CLOSEDLOOP_HOME"] = str(home)
    env["OMP_NUM_THREADS"] = "1"
    # Ax's SQL store costs each run ~3 s of CPU loading Ax: kept by the tests that check it
    # (test_cli_run, test_engine_cli, test_service), which pass their own setting.
    env["CLOSEDLOOP_AX_DB_URL"] = "off"
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
    with start(args, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired([CLOSEDLOOP, *args], timeout, out, err) from None
    return subprocess.CompletedProcess([CLOSEDLOOP, *args], proc.returncode, out, err)


def start(args: list[str], env: dict[str, str], *, stdout: Any = None, stderr: Any = None, text: bool = False,
          cwd: Path | None = None, start_new_session: bool = False, program: str = "closedloop") -> Any:
    """`closedloop ARGS` (or `prefect ARGS`, ``program="prefect"``) started, as ``subprocess.Popen``
    would (stdin from /dev/null): forked from the fork server, or from the console script with
    ``CLOSEDLOOP_TEST_EXEC=1``."""
    argv = [str(Path(CLOSEDLOOP).with_name(program)), *args]
    if os.environ.get("CLOSEDLOOP_TEST_EXEC") == "1":
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                text=text, cwd=cwd, start_new_session=start_new_session)
    return _Forked(_forkserver(), argv, env, Path.cwd() if cwd is None else cwd, stdout, stderr, text,
                   start_new_session, program)


class _ForkServer:
    """This worker's `tests/e2e/forkserver.py`, and the replies about the commands it forked."""

    def __init__(self) -> None:
        import socket
        import threading

        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as every command's (cli_env): read when BLAS loads
        #: Where it listens for Prefect's flow runs (``forked_engine.py``): bound here, so a flow
        #: run that connects before the server has loaded waits in the backlog.
        self.engine_socket = Path(tempfile.mkdtemp(prefix="closedloop-forks-")) / "engine.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(str(self.engine_socket))
        listener.listen(16)
        server = Path(__file__).with_name("forkserver.py")
        self._process = subprocess.Popen([sys.executable, str(server), str(theirs.fileno()), str(listener.fileno())],
                                         pass_fds=[theirs.fileno(), listener.fileno()], env=env,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=Path(__file__).parents[2])
        theirs.close()
        listener.close()
        self._sock = mine
        self._lock = threading.Lock()
        self._replies: dict[str, Any] = {}
        self._ids = iter(range(1 << 62))
        threading.Thread(target=self._read, name="forkserver-replies", daemon=True).start()

    def _read(self) -> None:
        while message := self._sock.recv(1 << 16):
            reply = json.loads(message)
            self.box(reply["id"]).put(reply)

    def box(self, rid: str) -> Any:
        import queue

        with self._lock:
            return self._replies.setdefault(rid, queue.Queue())

    def fork(self, argv: list[str], env: dict[str, str], cwd: Path, fds: list[int], *, session: bool = False,
             program: str = "closedloop") -> tuple[str, int]:
        """Send the command (its stdin, stdout and stderr as ``fds``; ``session``: in a session of
        its own); its id and pid."""
        import socket

        with self._lock:
            rid = str(next(self._ids))
        request = {"id": rid, "argv": argv, "env": env, "cwd": str(cwd), "session": session, "program": program}
        socket.send_fds(self._sock, [json.dumps(request).encode()], fds)
        return rid, self.reply(rid, 60)["pid"]

    def reply(self, rid: str, timeout: float | None) -> dict[str, Any]:
        import queue

        try:
            return self.box(rid).get(timeout=timeout)
        except queue.Empty:
            if self._process.poll() is not None:
                raise RuntimeError(f"the fork server exited ({self._process.returncode})") from None
            raise


class _Forked:
    """A forked command with ``subprocess.Popen``'s ways: pid, returncode, stdout/stderr
    (PIPE, DEVNULL, a file or None: this process's), poll, wait, communicate, send_signal,
    terminate, kill, and ``with``."""

    def __init__(self, server: _ForkServer, argv: list[str], env: dict[str, str], cwd: Path,
                 stdout: Any, stderr: Any, text: bool, session: bool = False, program: str = "closedloop") -> None:
        self.args = argv
        self.returncode: int | None = None
        self.stdin = None
        self._server = server
        theirs: list[int] = [os.open(os.devnull, os.O_RDONLY)]
        ours: list[Any] = []
        for given, inherited in ((stdout, 1), (stderr, 2)):
            if given == subprocess.PIPE:
                r, w = os.pipe()
                theirs.append(w)
                ours.append(open(r, "r" if text else "rb", **({"encoding": "utf-8"} if text else {})))
            elif given == subprocess.STDOUT:
                theirs.append(os.dup(theirs[1]))
                ours.append(None)
            else:
                fd = (os.open(os.devnull, os.O_WRONLY) if given == subprocess.DEVNULL
                      else os.dup(inherited if given is None else given if isinstance(given, int) else given.fileno()))
                theirs.append(fd)
                ours.append(None)
        self.stdout, self.stderr = ours
        try:
            self._id, self.pid = server.fork(argv, env, cwd, theirs, session=session, program=program)
        finally:
            for fd in theirs:
                os.close(fd)

    def poll(self) -> int | None:
        import queue

        if self.returncode is None:
            try:
                self.returncode = self._server.box(self._id).get_nowait()["code"]
            except queue.Empty:
                pass
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import queue

        if self.returncode is None:
            try:
                self.returncode = self._server.reply(self._id, timeout)["code"]
            except queue.Empty:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[Any, Any]:
        import threading
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        read: dict[int, Any] = {}
        readers = [threading.Thread(target=lambda i=i, f=f: read.__setitem__(i, f.read()), daemon=True)
                   for i, f in enumerate((self.stdout, self.stderr)) if f is not None]
        for t in readers:
            t.start()
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for t in readers:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        return read.get(0), read.get(1)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        import signal

        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        import signal

        self.send_signal(signal.SIGKILL)

    def __enter__(self) -> _Forked:
        return self

    def __exit__(self, *exc: object) -> None:
        for f in (self.stdout, self.stderr):
            if f is not None:
                f.close()
        self.wait()


_SERVER: _ForkServer | None = None


def _forkserver() -> _ForkServer:
    global _SERVER
    if _SERVER is None:
        _SERVER = _ForkServer()
    return _SERVER


def engine_command() -> str | None:
    """The command a process work pool runs a flow run with: ``python -m prefect.engine`` forked
    from this worker's fork server (``forked_engine.py``), or None (Prefect's own, exec'd) with
    ``CLOSEDLOOP_TEST_EXEC=1``."""
    if os.environ.get("CLOSEDLOOP_TEST_EXEC") == "1":
        return None
    client = Path(__file__).with_name("forked_engine.py")
    return shlex.join([sys.executable, str(client), str(_forkserver().engine_socket)])


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
