"""Prefect's local API server for one `closedloop run`, tied to the life of the process.

Without ``PREFECT_API_URL``, Prefect starts its own API server (uvicorn) in a subprocess the
first time it needs one and stops it only at a normal interpreter exit: a SIGKILL of the
orchestrator (or any death that skips ``atexit``) leaves it running with no parent. Here the
same server (the same uvicorn command and app factory Prefect's ephemeral mode runs) is
started before Prefect needs it, from the main thread, through a launcher that asks Linux to
kill it when its parent dies (``PR_SET_PDEATHSIG``, which survives ``exec``). Prefect is then
pointed at it for this process only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from campaigns import ClosedLoopError, ServiceStartError
from campaigns.waiting import wait_for

__all__ = ["local_api_url", "local_prefect_api", "quiet_prefect_defaults"]

log = logging.getLogger("closedloop.prefect")


def quiet_prefect_defaults() -> None:
    """Before Prefect is imported (or at once, if it was): keep its console logs out of the
    progress display, don't try to reach the internet, and give the ephemeral API server time
    to start on a slow machine."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # Imported already (closedloop called in-process, or forked from a process that imported it):
    # its settings are read again from this environment, as its import would read them.
    if "prefect.context" in sys.modules:
        reread_prefect_settings()


def reread_prefect_settings() -> None:
    """Prefect's settings and logging configuration read again from the environment, as
    ``import prefect`` reads them: for a process that imported Prefect before its environment
    was final."""
    from prefect.context import refresh_global_settings_context
    from prefect.logging.configuration import setup_logging

    refresh_global_settings_context()
    setup_logging(incremental=False)


_HOST = "127.0.0.1"
_ATTEMPTS = 3

# Runs in the child before `exec`: the death signal is set in the child itself (no preexec_fn,
# which is unsafe in a threaded parent), then the parent is checked once more, in case it died
# before the signal was armed. Linux only; elsewhere the launcher just execs.
_LAUNCHER = """\
import os, signal, sys
if sys.platform.startswith("linux"):
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != int(sys.argv[1]):
        sys.exit(0)
os.execv(sys.argv[2], sys.argv[2:])
"""


def launch_with_parent(args: list[str], **popen: object) -> subprocess.Popen[bytes]:
    """Start ``args`` as a child that the kernel kills when this process dies (Linux).

    Call it from the main thread: the death signal follows the thread that forked.
    """
    return subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(os.getpid()), *args], **popen)  # type: ignore[call-overload, no-any-return]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


_local_url: str | None = None


def local_api_url() -> str | None:
    """The URL of the local API server this process started (None: none, or a configured one)."""
    return _local_url


@contextlib.contextmanager
def local_prefect_api() -> Iterator[str | None]:
    """Give this process a Prefect API: the configured server, or a local one that dies with it.

    Yields:
        The URL of the local server started here, or None when ``PREFECT_API_URL`` (from the
        environment or the Prefect profile) already names a server.

    Raises:
        ServiceStartError: The local server did not answer in time.
    """
    from prefect.settings import get_current_settings

    quiet = _ConsoleNoise()
    for handler in logging.getLogger().handlers:  # Prefect's console handler, set up at its import
        handler.addFilter(quiet)
    try:
        settings = get_current_settings()
        if settings.api.url:
            yield None
        else:
            with _local_server(settings) as url:
                yield url
    finally:
        for handler in logging.getLogger().handlers:
            handler.removeFilter(quiet)


class _ConsoleNoise(logging.Filter):
    """Keep off the console what the CLI says in one line of its own: Prefect's traceback of a
    `ClosedLoopError` that ended the flow, and its "Crash detected! ... aborted by an
    interrupt/termination signal". The flow run in Prefect (its logs, its state) keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("prefect.flow_runs"):
            return True
        if record.exc_info and isinstance(record.exc_info[1], ClosedLoopError):
            return False
        return not record.getMessage().startswith("Crash detected! Execution was aborted by a")


@contextlib.contextmanager
def _local_server(settings: Any) -> Iterator[str]:
    from prefect.context import refresh_global_settings_context
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
           **settings.to_environment_variables(exclude_unset=True)}
    timeout_s = float(settings.server.ephemeral.startup_timeout_seconds)
    server: subprocess.Popen[bytes] | None = None
    url = ""
    log_path = Path(settings.home).expanduser() / "closedloop-api.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    output = log_path.open("ab")
    for _ in range(_ATTEMPTS):
        port = _free_port()
        url = f"http://{_HOST}:{port}/api"
        server = launch_with_parent(
            [sys.executable, "-m", "uvicorn", "--app-dir", os.path.dirname(os.path.dirname(_prefect_path())),
             "--factory", "prefect.server.api.server:create_app", "--host", _HOST, "--port", str(port),
             "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda s=server, u=url: s.poll() is not None or _healthy(u), timeout_s, interval_s=0.1)
        except BaseException:  # Ctrl-C or SIGTERM while it starts: stop it, then go on stopping
            _stop(server)
            output.close()
            raise
        if server.poll() is None and _healthy(url):
            break
        _stop(server)
        server = None
    if server is None:
        output.close()
        raise ServiceStartError(f"Prefect's local API server did not start within {timeout_s:g} s (see {log_path})",
                              "retry, raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, "
                              "or set PREFECT_API_URL to a running Prefect server")
    global _local_url
    log.info("Prefect API for this run: %s", url)
    os.environ["PREFECT_API_URL"] = _local_url = url
    refresh_global_settings_context()
    try:
        yield url
    finally:
        _local_url = None
        # What Prefect still has to send (the flow run's last logs and events) goes before the
        # server does, not at interpreter exit to a server already gone.
        APILogWorker.drain_all(timeout=5)
        EventsWorker.drain_all(timeout=5)
        os.environ.pop("PREFECT_API_URL", None)
        refresh_global_settings_context()
        _stop(server)
        output.close()


def _prefect_path() -> str:
    import prefect

    return str(prefect.__file__)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
