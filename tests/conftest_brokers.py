"""Real MQTT brokers for the tests: Mosquitto and the embedded amqtt broker.

A pytest plugin (``-p tests.conftest_brokers`` or ``pytest_plugins`` in tests/conftest.py).
Mosquitto is required: a missing binary fails the session loudly instead of skipping,
because the durability tests are only meaningful on it.
"""

from __future__ import annotations

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

__all__ = ["free_port", "unique", "wait_for"]

MOSQUITTO = "/usr/sbin/mosquitto"


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mosquitto exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    process.kill()
    pytest.fail(f"mosquitto did not open port {port} within {deadline_s} s")


@pytest.fixture(scope="session")
def mosquitto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Mosquitto broker with persistence, anonymous, on a free loopback port."""
    binary = Path(MOSQUITTO) if Path(MOSQUITTO).exists() else None
    if binary is None:
        found = shutil.which("mosquitto")
        binary = Path(found) if found else None
    if binary is None:
        pytest.fail(
            f"mosquitto not found at {MOSQUITTO} nor on PATH: it is required "
            "(apt-get install mosquitto mosquitto-clients)",
            pytrace=False,
        )
    directory = tmp_path_factory.mktemp("mosquitto")
    port = free_port()
    config = directory / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "set_tcp_nodelay true\n"
        "persistence true\n"
        f"persistence_location {directory}/\n"
        "log_dest stderr\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
    )
    log = directory / "mosquitto.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(binary), "-c", str(config)], stdout=out, stderr=out)
    try:
        _wait_port(port, process, log, 10.0)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
    timeout_s: float = 10.0,
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
