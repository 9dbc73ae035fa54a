"""Connecting: dead brokers, silent brokers, bad credentials, and secrets that never leak."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from campaigns.errors import BrokerError
from devices import EmbeddedBroker, MqttDeviceHub, MqttSettings, connect, redact_url
from tests.conftest_brokers import free_port, unique


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (no CONNACK)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield int(server.getsockname()[1])


def test_dead_broker_url_gives_a_broker_error_within_the_deadline() -> None:
    url = f"mqtt://alice:hunter2@127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(BrokerError) as caught:
        MqttDeviceHub(MqttSettings(url=url), client_id=unique("hub")).start(timeout_s=3)
    assert time.monotonic() - started < 3.5
    message = str(caught.value)
    assert message.startswith("cannot reach MQTT broker at mqtt://127.0.0.1:")
    assert "hunter2" not in message and "alice" not in message
    assert caught.value.hint


def test_silent_broker_gives_a_broker_error_at_the_deadline(silent_port: int) -> None:
    settings = MqttSettings(url=f"mqtt://bob:s3cr3t@127.0.0.1:{silent_port}")
    started = time.monotonic()
    with pytest.raises(BrokerError, match="no CONNACK within 1 s") as caught:
        connect(settings, client_id=unique("c"), timeout_s=1)
    assert 0.9 < time.monotonic() - started < 2.5
    assert "s3cr3t" not in str(caught.value)


def test_wrong_password_is_refused_without_showing_it(embedded_broker_url: str) -> None:
    settings = MqttSettings(url=embedded_broker_url)
    password = settings.address.password
    assert password is not None
    secret = password.get_secret_value()
    assert secret not in redact_url(embedded_broker_url)
    assert secret not in repr(settings)
    wrong = embedded_broker_url.replace(secret, "wrong-password")
    with pytest.raises(BrokerError, match="refused") as caught:
        connect(MqttSettings(url=wrong), client_id=unique("c"), timeout_s=5)
    assert "wrong-password" not in str(caught.value) and secret not in str(caught.value)
    anonymous = embedded_broker_url.replace(f"closedloop:{secret}@", "")
    with pytest.raises(BrokerError, match="refused"):
        connect(MqttSettings(url=anonymous), client_id=unique("c"), timeout_s=5)


def test_embedded_broker_lifecycle(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path / "b")
    with broker:
        url = broker.url
        connection = connect(MqttSettings(url=url), client_id=unique("c"))
        connection.close()
        process = broker._process
        assert process is not None and process.poll() is None
    assert process.poll() is not None
    with pytest.raises(BrokerError):
        broker.url  # noqa: B018
    # The password is kept: a restarted broker hands out the same credentials.
    with EmbeddedBroker(tmp_path / "b") as again:
        assert again.url.split("@")[0] == url.split("@")[0]
    assert oct((tmp_path / "b" / "password").stat().st_mode & 0o777) == "0o600"


def test_embedded_broker_that_cannot_bind_fails_clearly(
    tmp_path: Path, silent_port: int
) -> None:
    started = time.monotonic()
    with pytest.raises(BrokerError, match="exited with code"):
        EmbeddedBroker(tmp_path / "b", port=silent_port).start()
    assert time.monotonic() - started < 15
