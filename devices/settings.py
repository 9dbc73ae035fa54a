"""MQTT broker settings: the URL (with its secret), protocol version, session and prefix.

Credentials travel in the broker URL (``mqtt://user:password@host:1883``) or beside it
(``username``/``password``, for URLs that must not carry one, e.g. on a command line), and
must never reach a log line, an exception or an event: everything that shows a URL shows
:func:`redact_url` of it. TLS (``mqtts``) trusts ``ca_file`` (a lab's own authority) or the
system's CAs, and presents ``cert_file``/``key_file`` to brokers that require a client
certificate.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from campaigns.errors import BrokerError, ClosedLoopError

from .topics import Topics

__all__ = ["BrokerAddress", "MqttSettings", "apply_tls", "parse_broker_url", "redact_url"]

_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_URL_HINT = "use mqtt://[user:password@]host[:port] or mqtts://... for TLS"
_WEEK_S = 7 * 24 * 3600


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
        cert_file: Client certificate (PEM) for ``mqtts`` brokers that require one.
        key_file: Its private key (PEM); ``None`` when ``cert_file`` holds it too.
        username: User name when the URL has none.
        password: Password when the URL has none; a secret that never prints.
        clean_session: ``False`` keeps a persistent session on the broker, so QoS 1
            messages sent while the client is away are delivered when it returns (the
            client id must then be stable). Under MQTT 5 it is sent as Clean Start.
        connect_timeout_s: Deadline for TCP connect plus CONNACK.
        protocol: ``4`` for MQTT 3.1.1 (its protocol level byte) or ``5`` for MQTT 5.0.
        session_expiry_s: MQTT 5 only: how long the broker keeps a persistent session after
            the client goes away (sent as the Session Expiry Interval; without it an MQTT 5
            broker ends the session at disconnect). A week by default: longer than a stop or
            a week-end, short of forever; a client that will not return ends its session
            (``devices.mqtt.end_session``). Under MQTT 3.1.1 the broker decides (Mosquitto:
            ``persistent_client_expiration``, default never).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: str = Field(repr=False)
    prefix: str = "closedloop"
    keepalive_s: int = Field(default=30, ge=2, le=65535)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    clean_session: bool = False
    connect_timeout_s: float = Field(default=10.0, gt=0)
    protocol: Literal[4, 5] = 4
    session_expiry_s: int = Field(default=_WEEK_S, ge=0, le=0xFFFFFFFF)

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
        """The parsed URL, with ``username``/``password`` when the URL carries none."""
        address = parse_broker_url(self.url)
        if address.username is None and self.username is not None:
            return address.model_copy(update={"username": self.username, "password": self.password})
        if address.password is None and self.password is not None:
            return address.model_copy(update={"password": self.password})
        return address

    @property
    def redacted_url(self) -> str:
        """The URL without its password, safe to log."""
        return redact_url(self.url)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield "url", self.redacted_url
        yield from super().__repr_args__()


def apply_tls(client: Any, settings: MqttSettings, address: BrokerAddress) -> None:
    """Set up a paho client's TLS for ``mqtts``: trust ``ca_file`` (else the system's CAs) and
    present ``cert_file``/``key_file`` when given.

    Raises:
        BrokerError: A TLS file is missing, unreadable or not PEM, or one is set for ``mqtt://``.
    """
    files = {"CA file": settings.ca_file, "certificate file": settings.cert_file, "key file": settings.key_file}
    if not address.tls:
        given = [name for name, path in files.items() if path is not None]
        if given:
            raise BrokerError(f"a TLS {given[0]} is set but {address.display} does not use TLS",
                              "use an mqtts:// URL, or unset CLOSEDLOOP_MQTT_CA_FILE/_CERT_FILE/_KEY_FILE")
        return
    for name, path in files.items():
        if path is not None and not os.access(path, os.R_OK):
            raise BrokerError(f"cannot read the TLS {name} {path}", "check the path and its permissions "
                              "(CLOSEDLOOP_MQTT_CA_FILE, CLOSEDLOOP_MQTT_CERT_FILE, CLOSEDLOOP_MQTT_KEY_FILE)")
    try:
        client.tls_set(ca_certs=str(settings.ca_file) if settings.ca_file else None,
                       certfile=str(settings.cert_file) if settings.cert_file else None,
                       keyfile=str(settings.key_file) if settings.key_file else None)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise BrokerError(f"cannot use the TLS files for {address.display}: {exc}",
                          "give PEM files: a CA certificate, and a client certificate with its key") from None
