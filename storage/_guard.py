"""The keeper of the embedded nx-27017 server: it runs the server and stops it when nobody uses it.

Run by path (stdlib only, no package import)::

    python storage/_guard.py HOME -- NX-COMMAND...

Every process using the embedded server holds a shared ``flock`` on ``HOME/mongo.users``, and
the kernel drops it when that process dies, even by SIGKILL. The keeper waits for the lock
exclusively: it gets it only once the last user is gone, then removes ``mongo.json`` and
stops the server (killing it if it has not stopped ``GRACE_S`` after SIGTERM). The server itself
gets a parent-death SIGKILL (Linux), so it never outlives its keeper either. Files the server
creates are the owner's only (umask 077): the data directory 0700, the SQLite files 0600.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path


#: How long the server may take to stop after SIGTERM before it is killed. nx-27017 0.8.1 can
#: hang for good in its shutdown (asyncio cancelling its tasks); committed data is in SQLite's
#: WAL either way. Below ``EmbeddedMongo``'s 5 s grace for the keeper itself.
GRACE_S = 3.0


def _arm_parent_death() -> None:
    """In the child, before exec: SIGKILL it when the keeper dies (Linux); a SIGTERM could leave
    a server hung in its shutdown with no keeper."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG


def _stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after ``GRACE_S``."""
    server.terminate()
    try:
        server.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _stop_when_unused(home: Path, server: subprocess.Popen[bytes]) -> None:
    users = (home / "mongo.users").open("ab")
    fcntl.flock(users.fileno(), fcntl.LOCK_EX)  # held until this process exits
    with (home / "mongo.lock").open("ab") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        state_file = home / "mongo.json"
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = None
        if isinstance(state, dict) and state.get("pid") == os.getpid():
            state_file.unlink(missing_ok=True)
        _stop(server)


def main(argv: list[str]) -> int:
    """Run the server command after ``--`` and keep it; returns its exit code."""
    home, command = Path(argv[0]), argv[argv.index("--") + 1:]
    os.umask(0o077)
    server = subprocess.Popen(command, preexec_fn=_arm_parent_death, stdin=subprocess.DEVNULL, cwd=home)  # noqa: PLW1509 - no threads yet
    def stop_on_signal(*_: object) -> None:
        threading.Thread(target=_stop, args=(server,), daemon=True).start()

    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGINT, stop_on_signal)
    threading.Thread(target=_stop_when_unused, args=(home, server), daemon=True).start()
    try:
        return server.wait()
    finally:
        if server.poll() is None:
            server.kill()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
