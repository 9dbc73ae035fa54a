"""A fork server for the end-to-end tests' `closedloop` commands (``tests.e2e.cli.run``).

Started once per pytest worker, it imports the CLI and the libraries whose import does not
depend on the environment (torch, BoTorch, SciPy, matplotlib: over a second of CPU per
`run`), then forks one child per command. The child is a process of its own, as `closedloop` started
from a shell is: it takes the test's environment, working directory and output files, runs
the console script's ``sys.exit(main())`` and exits through the interpreter's normal
shutdown; its exit code (or signal) is reported back. Prefect is imported here too (~0.8 s of
CPU a `run`). It reads its settings and logging configuration from the environment when it is
imported; every command calls ``flows.prefect.server.quiet_prefect_defaults`` before it uses
Prefect (an exec'd command imports Prefect only then), which reads both again, from the
command's environment, when Prefect is already imported. A child whose command never uses
Prefect does not pay for that (~0.13 s of CPU).

The child ends as the interpreter's shutdown would for what the command made — non-daemon
threads joined, ``atexit`` handlers run, the command's own garbage collected (its finalizers
run and may print), stdout and stderr flushed — and then ``os._exit``: tearing down the
preloaded modules (0.2-0.6 s of CPU with torch loaded) is left out. ``CLOSEDLOOP_TEST_EXEC=1``
runs the same tests on processes started from the console script.

Protocol, one JSON object a message on the SOCK_SEQPACKET socket given as ``argv[1]``: a
request ``{"id", "argv", "env", "cwd", "session", "program"}`` (``closedloop`` or ``prefect``)
carrying the command's stdin, stdout and stderr as file descriptors is answered by ``{"id",
"pid"}`` once forked and ``{"id", "code"}`` once the child has ended (``-N`` for signal N, as
subprocess reports it). The server ends when the socket closes.

The listening socket given as ``argv[2]`` (SOCK_SEQPACKET) serves Prefect's flow runs
(``tests/e2e/forked_engine.py``, the command of test_service's work pools): one request a
connection, the same protocol, run as ``python -m prefect.engine`` would be. A connection that
closes before its child ended (the worker killed the client) takes the child down with
SIGKILL, as it would have taken down the exec'd process.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import select
import signal
import socket
import sys
import threading

# Imported once here, inherited by every child: torch, BoTorch and SciPy read no environment when
# imported; Prefect's settings and logging are read again by the children that use it.
import botorch  # noqa: F401
import prefect.main  # noqa: F401
import scipy.optimize  # noqa: F401
import torch  # noqa: F401

import optimizer.fastbo  # noqa: F401

# The rest of what the campaign commands import (~0.35 s of CPU a `run`, ~0.15 s a `status`): the
# flow and the service, the log, the device hub, the instruments. Prefect's flow and task
# decorators read its default retries when the flow's module is imported: no test sets them.
import devices  # noqa: F401, I001
import flows.prefect.flow  # noqa: F401
import flows.prefect.service  # noqa: F401
import simulators  # noqa: F401
import storage  # noqa: F401
from flows.cli.main import main


def _warm_matplotlib() -> None:
    """Import matplotlib and load its fonts: every campaign run with Prefect plots its best so
    far (flows.prefect.artifacts), ~0.7 s of CPU the first time in a process."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], label="best")
    ax.set_title("warm")
    ax.legend()
    fig.savefig(io.BytesIO(), format="png")


_warm_matplotlib()

_sock = socket.socket(fileno=int(sys.argv[1]))  # AF_UNIX, SOCK_SEQPACKET: a message a request
_children: dict[int, str] = {}


def _send(message: dict[str, object]) -> None:
    _sock.send(json.dumps(message).encode())


def _become(request: dict, fds: list[int]) -> None:
    """In the forked child: take the command's environment and files (what exec would give)."""
    _sock.close()
    if request.get("session"):  # Popen's start_new_session
        os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for target, fd in enumerate(fds):  # stdin, stdout, stderr
        os.dup2(fd, target)
        os.close(fd)
    sys.argv = list(request["argv"])


def _prefect_engine() -> int:
    """``python -m prefect.engine``: Prefect's settings read from this child's environment first."""
    import runpy
    import warnings

    from flows.prefect.server import reread_prefect_settings

    reread_prefect_settings()
    with warnings.catch_warnings():  # runpy: "found in sys.modules ... prior to execution" (preloaded)
        warnings.simplefilter("ignore", RuntimeWarning)
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
    return 0


def _prefect_cli() -> int:
    """The ``prefect`` console script (``prefect worker start`` in test_service)."""
    from prefect.cli import app

    from flows.prefect.server import reread_prefect_settings

    reread_prefect_settings()
    return app()  # type: ignore[no-any-return]


_PROGRAMS = {"closedloop": main, "prefect": _prefect_cli}


def _run_command(entry=main) -> int:  # type: ignore[no-untyped-def]
    """The console script's ``sys.exit(main())`` and the interpreter's exit, in this child."""
    try:
        code = entry()
    except SystemExit as exc:  # what sys.exit does with its argument
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]  # what Py_Finalize does first
    atexit._run_exitfuncs()
    gc.collect()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        code = 120  # Python's own code when flushing at exit fails
    return code


_listener: socket.socket | None = None
_engine_runs: dict[socket.socket, int] = {}  # a flow run's connection -> its child's pid
if len(sys.argv) > 2:
    _listener = socket.socket(fileno=int(sys.argv[2]))


def _fork(request: dict, fds: list[int], entry, conn: socket.socket | None = None) -> int:  # type: ignore[no-untyped-def]
    """Fork a child for ``request`` running ``entry``; the sockets it must not hold are closed in it."""
    pid = os.fork()
    if pid == 0:
        for other in (_listener, conn, *_engine_runs):
            if other is not None:
                other.close()
        _become(request, fds)
        os._exit(_run_command(entry))
    for fd in fds:
        os.close(fd)
    return pid


gc.freeze()  # what was imported stays out of every child's collections
while True:
    readable, _, _ = select.select([_sock, *([_listener] if _listener else []), *_engine_runs], [], [], 0.02)
    for ready in readable:
        if ready is _sock:
            message, fds, _, _ = socket.recv_fds(_sock, 1 << 20, 3)
            if not message:
                sys.exit(0)
            request = json.loads(message)
            pid = _fork(request, fds, _PROGRAMS[request.get("program", "closedloop")])
            _children[pid] = request["id"]
            _send({"id": request["id"], "pid": pid})
        elif ready is _listener:
            conn, _ = _listener.accept()
            message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            if not message:
                conn.close()
                continue
            request = json.loads(message)
            pid = _fork(request, fds, _prefect_engine, conn)
            _engine_runs[conn] = pid
            conn.send(json.dumps({"id": request["id"], "pid": pid}).encode())
        elif not ready.recv(1):  # its client is gone: so is the flow run
            with contextlib.suppress(ProcessLookupError):
                os.kill(_engine_runs.pop(ready), signal.SIGKILL)
            ready.close()
    while True:  # every ended child reaped, a flow run killed for its gone client too
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        code = os.waitstatus_to_exitcode(status)
        if pid in _children:
            _send({"id": _children.pop(pid), "code": code})
            continue
        for conn, child in list(_engine_runs.items()):
            if child == pid:
                with contextlib.suppress(OSError):
                    conn.send(json.dumps({"id": "engine", "code": code}).encode())
                conn.close()
                del _engine_runs[conn]
