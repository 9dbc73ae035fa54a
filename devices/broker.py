"""The embedded default MQTT broker: amqtt in a child process, with a password.

amqtt queues QoS 1 messages for an offline persistent session only when the session is
authenticated (anonymous sessions get nothing), so the embedded broker always requires a
user name and password: it generates a random password once, keeps it (mode 0600) in its
directory, and hands out a URL carrying it. Treat that URL as a secret.

The broker runs as ``python -m devices.broker --config FILE --parent-pid PID``. It exits when
its standard input closes (the parent is gone or called :meth:`EmbeddedBroker.stop`) or when
its parent process changes, so a crashed orchestrator does not leak a broker.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from campaigns.errors import BrokerError
from campaigns.waiting import wait_for

__all__ = ["EmbeddedBroker"]

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedBroker:
    """An amqtt MQTT 3.1.1 broker on ``host`` in a child process.

    Args:
        directory: Where the config, password file and log go (created if missing).
        host: Address to listen on; loopback by default.
        port: TCP port; a free one is picked when ``None``.
        username: The single user the broker accepts.
        startup_timeout_s: Deadline for the port to open.
        python: Interpreter for the child process.
    """

    def __init__(
        self,
        directory: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        username: str = "closedloop",
        startup_timeout_s: float = 15.0,
        python: str = sys.executable,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.host = host
        self.port = port
        self.username = username
        self.startup_timeout_s = startup_timeout_s
        self.python = python
        self._process: subprocess.Popen[bytes] | None = None
        self._url: str | None = None

    @property
    def log_path(self) -> Path:
        """The child's log file."""
        return self.directory / "broker.log"

    @property
    def url(self) -> str:
        """``mqtt://user:password@host:port`` of the running broker (a secret).

        Raises:
            BrokerError: The broker is not started.
        """
        if self._url is None:
            raise BrokerError("embedded MQTT broker is not started", "call start() first")
        return self._url

    def _password(self) -> str:
        path = self.directory / "password"
        if path.exists():
            return path.read_text(encoding="utf-8").strip()
        password = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(password + "\n")
        return password

    def _write_config(self, port: int, password: str) -> Path:
        from pwdlib import PasswordHash  # amqtt's own hashing library
        from pwdlib.hashers.argon2 import Argon2Hasher

        # A cheap Argon2 is enough: the password is 192 random bits, so the hash's cost
        # protects nothing, while the default parameters add ~170 ms to every connect.
        hasher = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=8192, parallelism=1),))
        password_file = self.directory / "passwd"
        password_file.write_text(f"{self.username}:{hasher.hash(password)}\n", encoding="utf-8")
        password_file.chmod(0o600)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.FileAuthPlugin": {
                    "password_file": str(password_file)
                },
            },
        }
        config_file = self.directory / "broker.json"
        config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
        return config_file

    def start(self) -> str:
        """Start the broker and return its URL once its port accepts connections.

        Returns:
            ``mqtt://user:password@host:port``.

        Raises:
            BrokerError: The child exited, or the port did not open within the deadline.
        """
        if self._url is not None:
            return self._url
        self.directory.mkdir(parents=True, exist_ok=True)
        port = self.port if self.port is not None else _free_port(self.host)
        password = self._password()
        config_file = self._write_config(port, password)
        display = f"mqtt://{self.host}:{port}"
        ready_file = self.directory / "broker.ready"
        ready_file.unlink(missing_ok=True)
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                [
                    self.python, "-m", "devices.broker",
                    "--config", str(config_file), "--parent-pid", str(os.getpid()),
                    "--ready-file", str(ready_file),
                ],
                stdin=subprocess.PIPE,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=_PACKAGE_ROOT,
            )
        # Readiness is the child's word (a file written once amqtt listens), not an open
        # port: another process may hold the port, and the child then dies instead.
        process = self._process
        if not wait_for(lambda: ready_file.exists() or process.poll() is not None, self.startup_timeout_s,
                        interval_s=0.05):
            self._kill()
            raise BrokerError(
                f"embedded MQTT broker at {display} did not start within {self.startup_timeout_s:g} s",
                f"see {self.log_path}",
            )
        code = process.poll()
        if not ready_file.exists() and code is not None:
            if process.stdin is not None:
                process.stdin.close()
            self._process = None
            raise BrokerError(
                f"embedded MQTT broker at {display} exited with code {code} on start-up: "
                f"{self._last_log_line()}",
                f"see {self.log_path}; is port {port} already in use?",
            )
        self._url = f"mqtt://{quote(self.username, safe='')}:{quote(password, safe='')}@{self.host}:{port}"
        return self._url

    def _last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "no log"
        return lines[-1][:300] if lines else "no output"

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            if self._process.stdin is not None:
                self._process.stdin.close()
            self._process = None

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker: close its stdin, then terminate, then kill if it lingers."""
        process, self._process, self._url = self._process, None, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(2.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _serve(config_file: Path, parent_pid: int, ready_file: Path) -> int:
    """Run amqtt until stdin closes, the parent dies, or SIGTERM/SIGINT arrives."""
    import asyncio
    import logging

    from amqtt.broker import Broker
    from amqtt.session import Session

    class OwnRetainedBroker(Broker):
        """amqtt with one fix: retained messages go only to their subscribers.

        amqtt 0.12.1, on every CONNECT, replays the retained messages matching the filters of
        *all* sessions to the connecting client, so a device would receive other devices'
        statuses as if they were its requests. Keep the replay to the session's own filters.
        """

        async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Session
        ) -> None:
            subscribers = self._subscriptions.get(subscription[0], [])
            if any(other.client_id == session.client_id for other, _ in subscribers):
                await super()._publish_retained_messages_for_subscription(subscription, session)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    done = asyncio.Event()

    def stop() -> None:
        loop.call_soon_threadsafe(done.set)

    def watch_stdin() -> None:
        while sys.stdin.buffer.read(4096):
            pass
        stop()

    async def watch_parent() -> None:
        while not done.is_set():
            if os.getppid() != parent_pid:
                done.set()
            await asyncio.sleep(0.5)

    async def main() -> None:
        broker = OwnRetainedBroker(config, loop=loop)
        await broker.start()
        ready_file.write_text(str(os.getpid()), encoding="utf-8")
        watcher = asyncio.create_task(watch_parent())
        await done.wait()
        watcher.cancel()
        await broker.shutdown()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, done.set)
    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m devices.broker")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args()
    sys.exit(_serve(args.config, args.parent_pid, args.ready_file))
