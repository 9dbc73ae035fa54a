"""Wiring: the event store, the broker and the simulated lab, embedded when nothing is configured.

The database driver, the MQTT client, the embedded broker and the simulators are imported
by the function that uses them: every light command (`status`, `validate`, ...) imports this
module, and most of them never talk MQTT.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from campaigns import (
    CampaignNotFoundError,
    CampaignSpec,
    ConfigurationError,
    UsageError,
)
from flows.app.settings import Settings

if TYPE_CHECKING:
    from devices import MqttSettings
    from storage import MongoEventStore

__all__ = ["broker_url", "event_store", "has_store", "mqtt_settings", "simulated_lab"]


def has_store(settings: Settings) -> bool:
    """Whether there is a campaign log to read: a configured database, or an embedded one under ``home``."""
    return settings.mongodb_uri is not None or (settings.home / "data").is_dir()


@contextmanager
def event_store(settings: Settings, *, create: bool = True) -> Iterator[MongoEventStore]:
    """The campaign log: ``CLOSEDLOOP_MONGODB_URI``, or an embedded nx-27017 under ``home``.

    Args:
        settings: The settings.
        create: Start an embedded database under a home that has none. A command that only
            reads passes False: it makes no empty store where the person did not mean one.

    Raises:
        CampaignNotFoundError: ``create`` is False and there is no store (:func:`has_store`);
            the message says where it looked.
    """
    from storage import EmbeddedMongo, MongoEventStore

    if not create and not has_store(settings):
        raise CampaignNotFoundError(f"no campaigns in {settings.store_named()}",
                                    "start one with `closedloop run SPEC.yaml`, or set CLOSEDLOOP_HOME to the "
                                    "directory that holds them")
    with ExitStack() as stack:
        if settings.mongodb_uri is not None:
            uri = settings.mongodb_uri.get_secret_value()
        else:
            settings.home.mkdir(parents=True, exist_ok=True)
            uri = stack.enter_context(EmbeddedMongo(settings.home)).uri
        store = stack.enter_context(MongoEventStore(uri, database=settings.mongodb_database))
        yield store


def _broker_file(home: Path) -> Path:
    return home / "broker.json"


@contextmanager
def broker_url(settings: Settings) -> Iterator[str]:
    """The broker URL: ``CLOSEDLOOP_MQTT_URL``, or an embedded amqtt broker for this run.

    The embedded broker's URL (with its generated credentials) is written to
    ``home/broker.json`` (mode 0600) so that `closedloop sim` in another terminal can join.
    """
    if settings.mqtt_url is not None:
        yield settings.mqtt_url.get_secret_value()
        return
    from devices import EmbeddedBroker

    settings.home.mkdir(parents=True, exist_ok=True)
    path = _broker_file(settings.home)
    with EmbeddedBroker(settings.home / "broker") as broker:
        url = broker.url
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"url": url, "pid": os.getpid()}, f)
        try:
            yield url
        finally:
            path.unlink(missing_ok=True)


def running_broker_url(settings: Settings, given: str | None = None) -> str:
    """The URL of a broker to join: ``given`` (``--broker``), the configured one, or the embedded
    one a `closedloop run` started here.

    Raises:
        ClosedLoopError: none of them.
    """
    if given:
        from devices import parse_broker_url

        if parse_broker_url(given).password is not None:
            raise UsageError(
                "--broker: a password on the command line is visible to every user of this machine (ps)",
                "pass --broker mqtt[s]://[USER@]HOST[:PORT] and the password in CLOSEDLOOP_MQTT_PASSWORD "
                "or a file named by CLOSEDLOOP_MQTT_PASSWORD_FILE",
            )
        return given
    if settings.mqtt_url is not None:
        return settings.mqtt_url.get_secret_value()
    try:
        url = json.loads(_broker_file(settings.home).read_text()).get("url")
    except (OSError, ValueError, AttributeError):
        url = None
    if not isinstance(url, str):
        raise ConfigurationError(
            "no MQTT broker to join: CLOSEDLOOP_MQTT_URL is not set and no `closedloop run` is running here",
            "pass --broker mqtt://HOST:PORT or set CLOSEDLOOP_MQTT_URL",
        )
    return url


def mqtt_settings(settings: Settings, url: str) -> MqttSettings:
    """MQTT settings for a broker URL under the configured topic prefix, with the credentials
    and TLS files of the settings (used where the URL carries no credentials).

    Raises:
        ClosedLoopError: ``CLOSEDLOOP_MQTT_PASSWORD_FILE`` cannot be read.
    """
    from devices import MqttSettings

    password = settings.mqtt_password
    if settings.mqtt_password_file is not None:
        try:
            password = SecretStr(settings.mqtt_password_file.read_text(encoding="utf-8").rstrip("\r\n"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read the MQTT password file {settings.mqtt_password_file}: "
                                  f"{getattr(exc, 'strerror', None) or exc}",
                                  "check CLOSEDLOOP_MQTT_PASSWORD_FILE and the file's permissions") from None
    return MqttSettings(url=url, prefix=settings.mqtt_prefix, username=settings.mqtt_username, password=password,
                        ca_file=settings.mqtt_ca_file, cert_file=settings.mqtt_cert_file,
                        key_file=settings.mqtt_key_file)


@contextmanager
def simulated_lab(spec: CampaignSpec, mqtt: MqttSettings, record_dir: Path | None = None) -> Iterator[list[str]]:
    """Start a simulated instrument for every ``simulator:`` device of the spec; yields their ids."""
    from simulators import SimInstrument

    with ExitStack() as stack:
        ids = []
        for d in spec.devices:
            if d.simulator is None:
                continue
            record = None if record_dir is None else record_dir / f"{d.id}.jsonl"
            inst = SimInstrument(d.id, d.simulator, d.options, mqtt, record_path=record)
            stack.enter_context(inst)
            ids.append(d.id)
        yield ids


