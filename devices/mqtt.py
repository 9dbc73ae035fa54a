"""MQTT connection settings and the one place that builds a connected paho client.

Credentials travel in the broker URL (``mqtt://user:password@host:1883``) and must never
reach a log line, an exception or an event: everything here that shows a URL shows
:func:`redact_url` of it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from campaigns.errors import BrokerError, ClosedLoopError

from .topics import Topics

__all__ = [
    "BrokerAddress",
    "MessageHandler",
    "MqttConnection",
    "MqttSettings",
    "connect",
    "parse_broker_url",
    "redact_url",
]

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]
"""Called in the MQTT network thread with ``(topic, payload)`` of each message."""

_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_URL_HINT = "use mqtt://[user:password@]host[:port] or mqtts://... for TLS"


def redact_url(url: str) -> str:
    """Return the URL with its password replaced by ``***``.

    Args:
        url: A broker URL, well-formed or not.

    Returns:
        A string that is safe to log; ``<unparseable URL>`` when it cannot be split at all.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if "@" not in parts.netloc:
        return url
    userinfo, hostport = parts.netloc.rsplit("@", 1)
    user, has_password, _ = userinfo.partition(":")
    netloc = f"{user}:***@{hostport}" if has_password else f"{user}@{hostport}"
    return parts._replace(netloc=netloc).geturl()


class BrokerAddress(BaseModel):
    """A parsed broker URL.

    Attributes:
        scheme: ``mqtt`` or ``mqtts`` (TLS).
        host: Host name or address.
        port: TCP port (default 1883, or 8883 for ``mqtts``).
        username: User name, if any.
        password: Password, if any; a secret that never prints.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: SecretStr | None = None

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS."""
        return self.scheme == "mqtts"

    @property
    def display(self) -> str:
        """``scheme://host:port``, without credentials, for messages."""
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse ``mqtt://[user:password@]host[:port]`` or ``mqtts://...``.

    Args:
        url: The broker URL.

    Returns:
        The address, with percent-decoded user name and password.

    Raises:
        BrokerError: The URL is malformed; the message shows it redacted.
    """
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BrokerError(f"invalid MQTT broker URL {shown}: {exc}", _URL_HINT) from None
    if parts.scheme not in _DEFAULT_PORTS:
        raise BrokerError(
            f"invalid MQTT broker URL {shown}: scheme must be mqtt or mqtts", _URL_HINT
        )
    if not parts.hostname:
        raise BrokerError(f"invalid MQTT broker URL {shown}: no host", _URL_HINT)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BrokerError(
            f"invalid MQTT broker URL {shown}: unexpected path or query", _URL_HINT
        )
    return BrokerAddress(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port or _DEFAULT_PORTS[parts.scheme],
        username=unquote(parts.username) if parts.username else None,
        password=SecretStr(unquote(parts.password)) if parts.password is not None else None,
    )


class MqttSettings(BaseModel):
    """How to reach the MQTT broker. Its repr and validation errors never show the password.

    Attributes:
        url: ``mqtt://[user:password@]host[:port]``, or ``mqtts://`` for TLS (port 8883).
        prefix: Topic prefix of protocol v1.
        keepalive_s: MQTT keep-alive; the broker declares a silent client dead (and
            publishes its last will) after 1.5 times this.
        ca_file: CA bundle for ``mqtts``; the system CAs when ``None``.
        clean_session: ``False`` keeps a persistent session on the broker, so QoS 1
            messages sent while the client is away are delivered when it returns (the
            client id must then be stable).
        connect_timeout_s: Deadline for TCP connect plus CONNACK.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: str = Field(repr=False)
    prefix: str = "closedloop"
    keepalive_s: int = Field(default=30, ge=2, le=65535)
    ca_file: Path | None = None
    clean_session: bool = False
    connect_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        try:
            parse_broker_url(value)
        except BrokerError as exc:
            raise ValueError(exc.message) from None
        return value

    @field_validator("prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        try:
            Topics(value)
        except ClosedLoopError as exc:
            raise ValueError(exc.message) from None
        return value

    @property
    def address(self) -> BrokerAddress:
        """The parsed URL."""
        return parse_broker_url(self.url)

    @property
    def redacted_url(self) -> str:
        """The URL without its password, safe to log."""
        return redact_url(self.url)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield "url", self.redacted_url
        yield from super().__repr_args__()


def _set_nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # paho leaves Nagle on: a QoS 1 PUBACK then waits for a delayed ACK, ~45 ms per round
    # trip on loopback instead of ~1 ms.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError) as exc:  # not a TCP socket (e.g. websockets): no gain
        log.debug("TCP_NODELAY not set: %s", exc)


class MqttConnection:
    """A connected paho client running its network loop in a background thread.

    Built by :func:`connect`; paho reconnects on its own after a network failure, and
    subscriptions are renewed on every reconnect.
    """

    def __init__(self, client: mqtt.Client, address: BrokerAddress, client_id: str) -> None:
        self.client = client
        self.address = address
        self.client_id = client_id

    def is_connected(self) -> bool:
        """Whether the client currently holds a connection to the broker."""
        return bool(self.client.is_connected())

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout_s: float | None = 10.0,
    ) -> None:
        """Publish, and for QoS ≥ 1 wait up to ``timeout_s`` for the broker's PUBACK.

        Args:
            topic: Topic name.
            payload: Payload bytes.
            qos: 0, 1 or 2.
            retain: Ask the broker to retain the message.
            timeout_s: Wait for the acknowledgement; ``None`` returns at once (required
                inside a paho callback, where waiting would block the network thread).

        Raises:
            BrokerError: The message was refused or not acknowledged in time. It may still
                be delivered later (paho resends on reconnect): receivers de-duplicate.
        """
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if timeout_s is None or qos == 0:
            return
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise BrokerError(
                f"publish to {topic} via {self.address.display} failed: {exc}",
                "check the broker is up; the message is resent when the connection returns",
            ) from None
        if not info.is_published():
            raise BrokerError(
                f"no PUBACK from {self.address.display} within {timeout_s:g} s for {topic}",
                "check the broker is up; the message is resent when the connection returns",
            )

    def close(self, timeout_s: float = 5.0) -> None:
        """Disconnect cleanly (no last will) and stop the network thread."""
        self.client.disconnect()
        deadline = time.monotonic() + timeout_s
        while self.client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.client.loop_stop()


def connect(
    settings: MqttSettings,
    *,
    client_id: str,
    will: tuple[str, bytes] | None = None,
    subscriptions: Sequence[str] = (),
    on_message: MessageHandler | None = None,
    on_connect: Callable[[MqttConnection], None] | None = None,
    timeout_s: float | None = None,
) -> MqttConnection:
    """Connect to the broker (MQTT 3.1.1) and return once the CONNACK has arrived.

    Args:
        settings: Broker URL, TLS, keep-alive, session kind.
        client_id: MQTT client id; must be stable when ``settings.clean_session`` is off.
        will: ``(topic, payload)`` the broker publishes, retained at QoS 1, if the
            connection dies without a clean disconnect.
        subscriptions: Topic filters to subscribe at QoS 1 on every (re)connect.
        on_message: Handler of incoming messages; an exception it raises is logged,
            never allowed to stop the network thread.
        on_connect: Called in the network thread after every (re)connect; it may publish
            with ``timeout_s=None`` only.
        timeout_s: Deadline for TCP connect plus CONNACK; ``settings.connect_timeout_s``
            when ``None``.

    Returns:
        The connected client.

    Raises:
        BrokerError: The broker cannot be reached or refused the connection in time.
    """
    address = settings.address
    deadline_s = settings.connect_timeout_s if timeout_s is None else timeout_s
    start = time.monotonic()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=settings.clean_session,
    )
    client.on_socket_open = _set_nodelay
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    client.connect_timeout = deadline_s
    if address.username is not None:
        password = address.password.get_secret_value() if address.password else None
        client.username_pw_set(address.username, password)
    if address.tls:
        client.tls_set(ca_certs=str(settings.ca_file) if settings.ca_file else None)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    connection = MqttConnection(client, address, client_id)
    connected = threading.Event()
    refused: list[str] = []

    def handle_connect(c: mqtt.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
            connected.set()
            return
        for topic in subscriptions:
            c.subscribe(topic, qos=1)
        log.info("connected to %s as %s", address.display, client_id)
        connected.set()
        if on_connect is not None:
            _guarded("on_connect", on_connect, connection)

    def handle_disconnect(c: mqtt.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("lost %s (%s as %s); reconnecting", address.display, reason, client_id)

    def handle_message(c: mqtt.Client, u: Any, message: mqtt.MQTTMessage) -> None:
        if on_message is not None:
            _guarded("on_message", on_message, message.topic, bytes(message.payload))

    client.on_connect = handle_connect
    client.on_disconnect = handle_disconnect
    client.on_message = handle_message
    hint = "check the broker runs, and the host, port, credentials and TLS settings of its URL"
    try:
        client.connect(address.host, address.port, keepalive=settings.keepalive_s)
    except (OSError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        raise BrokerError(
            f"cannot reach MQTT broker at {address.display}: {reason}", hint
        ) from None
    client.loop_start()
    remaining = max(0.0, deadline_s - (time.monotonic() - start))
    if not connected.wait(remaining) or refused:
        client.disconnect()
        client.loop_stop()
        reason = f"refused: {refused[0]}" if refused else f"no CONNACK within {deadline_s:g} s"
        raise BrokerError(f"cannot reach MQTT broker at {address.display}: {reason}", hint)
    return connection


def _guarded(name: str, func: Callable[..., None], *args: Any) -> None:
    # An exception escaping a paho callback kills its network thread: log it, go on.
    try:
        func(*args)
    except Exception:
        log.exception("%s handler failed; the connection goes on", name)
