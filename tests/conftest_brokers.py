"""Real MQTT brokers for the tests: Mosquitto and the embedded amqtt broker.

A pytest plugin (``-p tests.conftest_brokers`` or ``pytest_plugins`` in tests/conftest.py).
Mosquitto is required: a missing binary fails the session loudly instead of skipping,
because the durability tests are only meaningful on it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devices import EmbeddedBroker, HubEvent, MqttDeviceHub, MqttSettings

__all__ = ["Mosquitto", "free_port", "unique", "wait_for"]

MOSQUITTO = "/usr/sbin/mosquitto"


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mosquitto_binary() -> Path:
    if Path(MOSQUITTO).exists():
        return Path(MOSQUITTO)
    found = shutil.which("mosquitto")
    if found is None:
        pytest.fail(
            f"mosquitto not found at {MOSQUITTO} nor on PATH: it is required "
            "(apt-get install mosquitto mosquitto-clients)",
            pytrace=False,
        )
    return Path(found)


class Mosquitto:
    """A Mosquitto process with ``persistence true`` on a fixed port, that can be restarted.

    Args:
        directory: Where the config, the persistence database and the log go.
        port: The TCP port; a free one when ``None``. It stays the same across restarts.
    """

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port if port is not None else free_port()
        self.log = directory / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.config = directory / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "set_tcp_nodelay true\n"
            # Run as root, Mosquitto drops to the user `mosquitto`, which cannot write its
            # database into our temporary directory: persistence would silently not persist.
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            "persistence true\n"
            f"persistence_location {directory}/\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:<port>``."""
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, deadline_s: float = 10.0) -> None:
        """Start it and wait until its port accepts connections."""
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(
                [str(_mosquitto_binary()), "-c", str(self.config)], stdout=out, stderr=out
            )
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                pytest.fail(f"mosquitto exited with {self._process.returncode}: "
                            f"{self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        self._process.kill()
        pytest.fail(f"mosquitto did not open port {self.port} within {deadline_s} s")

    def stop(self) -> None:
        """SIGTERM (Mosquitto saves its persistence database), then wait for the exit."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def mosquitto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Mosquitto broker with persistence, anonymous, on a free loopback port."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker.url
    finally:
        broker.stop()


@pytest.fixture
def restartable_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto of this test alone, started, that the test may stop and start again."""
    directory = tmp_path / "mosquitto"
    directory.mkdir()
    broker = Mosquitto(directory)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def embedded_broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL (with generated credentials) of the embedded amqtt broker."""
    with EmbeddedBroker(tmp_path_factory.mktemp("amqtt")) as broker:
        yield broker.url


@pytest.fixture(params=["mosquitto", "amqtt"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """Each test using it runs once on Mosquitto and once on the embedded broker."""
    name = "mosquitto_url" if request.param == "mosquitto" else "embedded_broker_url"
    return str(request.getfixturevalue(name))


def unique(name: str) -> str:
    """Return ``name`` with a random suffix: topics, device and client ids never collide."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


_unread: weakref.WeakKeyDictionary[MqttDeviceHub, list[HubEvent]] = weakref.WeakKeyDictionary()


def wait_for(
    hub: MqttDeviceHub,
    predicate: Callable[[HubEvent], bool],
    timeout_s: float = 30.0,
    seen: list[HubEvent] | None = None,
) -> HubEvent:
    """Take hub events in order until one matches ``predicate``; each one taken goes to ``seen``.

    Events drained from the hub after the match are kept for the next call.

    Raises:
        AssertionError: None matched within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    collected = seen if seen is not None else []
    unread = _unread.setdefault(hub, [])
    while True:
        while unread:
            event = unread.pop(0)
            collected.append(event)
            if predicate(event):
                return event
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no matching hub event within {timeout_s} s; saw {collected!r}")
        unread.extend(hub.next_events(min(0.2, remaining)))


@pytest.fixture
def mqtt_settings(broker_url: str) -> MqttSettings:
    """Settings for ``broker_url`` under a prefix no other test uses."""
    return MqttSettings(url=broker_url, prefix=unique("test"), connect_timeout_s=5)


@pytest.fixture
def hub(mqtt_settings: MqttSettings) -> Iterator[MqttDeviceHub]:
    """A started orchestrator hub on ``mqtt_settings``."""
    with MqttDeviceHub(mqtt_settings, client_id=unique("hub")) as started:
        yield started
