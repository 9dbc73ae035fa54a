"""``EmbeddedMongo``: the local MongoDB-wire server used when no MongoDB URI is configured.

It runs nx-27017 (a MongoDB wire-protocol server on SQLite files) as a child process bound to
127.0.0.1 on a free port, with its data in ``home/data/`` (one SQLite file per database).

Several processes share one server: the orchestrator running a campaign, and a second
terminal running ``closedloop status``. Coordination lives in three files under ``home``:

- ``mongo.json`` (port, pid, data dir) says where the running server is; it is read and
  written only under an exclusive ``flock`` on ``mongo.lock``.
- ``mongo.users``: each process using the server holds a shared ``flock`` on it for as long
  as it does. The kernel drops the lock when a process dies, even by SIGKILL.
- ``mongo.log``: the server's output (its tail goes into the error when it fails to start).

``start()`` reuses the server ``mongo.json`` points at if it answers, else starts one.
``stop()`` releases the shared lock and then, if it can take the lock exclusively without
waiting (nobody else uses the server), stops the server and removes ``mongo.json``: the last
one out turns off the lights, whichever process started the server. A process that dies
without ``stop()`` (SIGKILL) is covered too: the server runs under a keeper
(``storage/_guard.py``) that waits for the users lock exclusively and stops the server once
the last user is gone, and the server dies with its keeper. Nothing outlives its users.

The data is the owner's only: ``data/`` is 0700 and its files 0600 (existing ones are fixed
at start). nx-27017 has no authentication and listens on TCP: any local user who can
connect to 127.0.0.1 can read and write it while it runs (see README, Security).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from campaigns.errors import StorageError
from campaigns.waiting import wait_for
from storage._errors import local_data_dir

__all__ = ["EmbeddedMongo"]

_HOST = "127.0.0.1"
_PORT_ATTEMPTS = 3


class EmbeddedMongo:
    """A shared, local nx-27017 server whose data lives under ``home``.

    Args:
        home: The directory holding the data (``home/data/``) and the coordination files.
        start_timeout_s: How long a new server may take to answer before ``StorageError``.
        port: The port a new server binds; None picks a free one. A fixed port keeps the URI
            valid across a restart of the server, so clients reconnect by themselves. A server
            already running for ``home`` is reused on whatever port it has.

    Use it as a context manager, or call ``start()`` and ``stop()``::

        with EmbeddedMongo(home) as mongo:
            store = MongoEventStore(mongo.uri)
    """

    def __init__(self, home: Path, *, start_timeout_s: float = 15.0, port: int | None = None) -> None:
        self.home = Path(home).resolve()  # the server runs with another working directory
        self.start_timeout_s = start_timeout_s
        self.port = port
        self._users: IO[bytes] | None = None
        self._uri: str | None = None
        self._child: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        """The directory of the SQLite files (one ``<database>.db`` per database)."""
        return self.home / "data"

    @property
    def state_file(self) -> Path:
        """``mongo.json``: the port and pid of the running server."""
        return self.home / "mongo.json"

    @property
    def log_file(self) -> Path:
        """``mongo.log``: the output of the server this directory last started."""
        return self.home / "mongo.log"

    @property
    def uri(self) -> str:
        """``mongodb://127.0.0.1:PORT/`` of the running server.

        Raises:
            StorageError: ``start()`` has not been called.
        """
        if self._uri is None:
            raise StorageError("the embedded MongoDB server is not started", "call start() first, or use `with`")
        return self._uri

    def start(self) -> str:
        """Use the server of ``home``, starting it if none answers.

        Returns:
            The server's URI.

        Raises:
            StorageError: ``home`` is not writable, or nx-27017 did not answer within
                ``start_timeout_s`` (the message holds the tail of its output).
        """
        if self._uri is not None:
            return self._uri
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            users = (self.home / "mongo.users").open("ab")
        except OSError as exc:
            raise StorageError(
                f"cannot use {self.home} for the embedded MongoDB server: {exc.strerror or exc}",
                "check the directory's permissions, or set CLOSEDLOOP_MONGODB_URI",
            ) from None
        # Shared first, then the state lock: a process stopping the server holds the users lock
        # exclusively, so we wait here until it has finished and removed mongo.json.
        fcntl.flock(users.fileno(), fcntl.LOCK_SH)
        try:
            with self._state_lock():
                state = self._read_state()
                if state is not None and self._answers(state):
                    port = int(state["port"])
                else:
                    if state is not None:
                        self._kill(int(state["pid"]))  # alive but mute, or a recycled pid: not ours to reuse
                    port = self._launch()
        except BaseException:
            users.close()
            raise
        self._users = users
        self._uri = f"mongodb://{_HOST}:{port}/"
        local_data_dir[self._uri] = self.data_dir  # errors name the files, not just a URI
        return self._uri

    def stop(self) -> None:
        """Stop using the server; stop it too if no other process uses it. Idempotent."""
        users, self._users, uri, self._uri = self._users, None, self._uri, None
        if users is None:
            return
        local_data_dir.pop(uri or "", None)
        try:
            fcntl.flock(users.fileno(), fcntl.LOCK_UN)
            try:
                fcntl.flock(users.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another process uses the server: it turns off the lights
            with self._state_lock():
                state = self._read_state()
                if state is not None:
                    self._terminate(int(state["pid"]))
                    self.state_file.unlink(missing_ok=True)
        finally:
            users.close()
            self._child = None

    # -- the server process ----------------------------------------------------------------

    def _launch(self) -> int:
        """Start nx-27017 on a free port; return the port once it answers."""
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            _owner_only(self.data_dir)
            (self.home / "nx.pid").unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create {self.data_dir} for the embedded MongoDB server: {exc.strerror or exc}",
                "check the directory, or set CLOSEDLOOP_MONGODB_URI",
            ) from None
        for _ in range(_PORT_ATTEMPTS if self.port is None else 1):
            port = _free_port() if self.port is None else self.port
            fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as log:
                os.fchmod(fd, 0o600)
                child = subprocess.Popen(
                    [sys.executable, str(_GUARD), str(self.home), "--",
                     *_nx_command(), "--data-dir", str(self.data_dir), "--host", _HOST, "--port", str(port),
                     "--log-file", os.devnull, "--pid-file", str(self.home / "nx.pid")],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C in our terminal reaches us, and we stop it
                    cwd=self.home,
                )
            if self._wait_ready(child, port):
                self._child = child
                self._write_state({"port": port, "pid": child.pid, "data_dir": str(self.data_dir)})
                return port
            if "address already in use" not in self._log_tail().lower():
                break  # not a port race: retrying will not help
        raise StorageError(
            f"the embedded MongoDB server (nx-27017) did not start: {self._log_tail() or 'no output'}",
            f"see {self.log_file}, or set CLOSEDLOOP_MONGODB_URI to use another MongoDB",
        )

    def _wait_ready(self, child: subprocess.Popen[bytes], port: int) -> bool:
        def answered() -> str | None:
            if child.poll() is not None:
                return "exited"
            with contextlib.suppress(OSError), socket.create_connection((_HOST, port), timeout=0.5):
                if _ping(port, timeout_s=2.0):
                    return "ready"
            return None

        outcome = wait_for(answered, self.start_timeout_s, interval_s=0.05)
        if outcome is not None:
            return outcome == "ready"
        _stop_pid(child.pid, child)
        with self.log_file.open("ab") as log:
            log.write(f"\n(closedloop) no answer within {self.start_timeout_s:g} s; stopped it\n".encode())
        return False

    def _answers(self, state: dict[str, Any]) -> bool:
        """Whether the server of ``state`` is alive, is ours, and answers a ping."""
        pid, port = int(state.get("pid", 0)), int(state.get("port", 0))
        if pid <= 0 or not _alive(pid):
            return False
        cmdline = _cmdline(pid)
        if cmdline is not None and str(self.data_dir) not in cmdline:
            return False  # the pid was recycled by another program
        return _ping(port, timeout_s=2.0)

    def _kill(self, pid: int) -> None:
        cmdline = _cmdline(pid)
        if pid > 0 and _alive(pid) and cmdline is not None and str(self.data_dir) in cmdline:
            _stop_pid(pid, None)

    def _terminate(self, pid: int) -> None:
        child = self._child if self._child is not None and self._child.pid == pid else None
        if child is not None or self._is_ours(pid):
            _stop_pid(pid, child)

    def _is_ours(self, pid: int) -> bool:
        if pid <= 0 or not _alive(pid):
            return False
        cmdline = _cmdline(pid)
        return cmdline is None or str(self.data_dir) in cmdline

    def _log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        # Drop the caret lines of tracebacks: the tail should read as words.
        kept = [ln.strip() for ln in text.splitlines() if ln.strip(" ^~\t")]
        return " | ".join(kept[-lines:])

    # -- the state file --------------------------------------------------------------------

    @contextlib.contextmanager
    def _state_lock(self) -> Iterator[None]:
        with (self.home / "mongo.lock").open("ab") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            yield  # closing the file releases the lock

    def _read_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # a torn or hand-edited file: start afresh
        return state if isinstance(state, dict) and "pid" in state and "port" in state else None

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state), encoding="utf-8")
        os.replace(tmp, self.state_file)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedMongo({str(self.home)!r}, uri={self._uri!r})"


_GUARD = Path(__file__).with_name("_guard.py")


def _owner_only(data_dir: Path) -> None:
    """Make the data directory 0700 and the files in it 0600 (those of an older version too)."""
    os.chmod(data_dir, 0o700)
    for path in data_dir.iterdir():
        if path.is_file() and not path.is_symlink():
            os.chmod(path, 0o600)


def _nx_command() -> list[str]:
    """The nx-27017 console script of this interpreter's environment, or its module."""
    script = Path(sys.executable).with_name("nx-27017")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from nx_27017.nx_27017 import main; sys.exit(main())"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        return int(s.getsockname()[1])


def _ping(port: int, *, timeout_s: float) -> bool:
    ms = int(timeout_s * 1000)
    client: MongoClient[dict[str, Any]] = MongoClient(
        _HOST, port, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, directConnection=True
    )
    try:
        client.admin.command("ping")
    except PyMongoError:
        return False
    finally:
        client.close()
    return True


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _cmdline(pid: int) -> str | None:
    """The command line of ``pid``, or None where /proc is unavailable."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def _stop_pid(pid: int, child: subprocess.Popen[bytes] | None, grace_s: float = 5.0) -> None:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=grace_s)
            if child.returncode is not None:
                return
        else:
            if wait_for(lambda: not _alive(pid), grace_s, interval_s=0.02):
                return
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=grace_s)
