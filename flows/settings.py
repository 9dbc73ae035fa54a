"""Settings: read once, at the composition root, from ``CLOSEDLOOP_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Where closedloop keeps its data and finds its broker and database.

    Every field is read from the environment variable ``CLOSEDLOOP_<FIELD>``; unset means
    the embedded default (a local nx-27017 server and an amqtt broker under ``home``).
    """

    model_config = SettingsConfigDict(env_prefix="CLOSEDLOOP_", extra="ignore", frozen=True)

    home: Path = Field(default=Path(".closedloop"), description="Local data: embedded database, broker state.")
    mongodb_uri: SecretStr | None = Field(default=None, description="MongoDB URI; unset = embedded nx-27017.")
    mongodb_database: str = "closedloop"
    mqtt_url: SecretStr | None = Field(default=None, description="mqtt[s]://[user:pass@]host[:port]; unset = embedded amqtt.")
    mqtt_prefix: str = "closedloop"
    mqtt_username: str | None = Field(default=None, description="broker user name, when the URL has none.")
    mqtt_password: SecretStr | None = Field(default=None, description="broker password, when the URL has none.")
    mqtt_password_file: Path | None = Field(default=None, description="a file holding the broker password.")
    mqtt_ca_file: Path | None = Field(default=None, description="CA certificate(s) (PEM) that sign the broker's, for mqtts.")
    mqtt_cert_file: Path | None = Field(default=None, description="client certificate (PEM), for brokers that require one.")
    mqtt_key_file: Path | None = Field(default=None, description="the client certificate's private key (PEM).")
    optimizer_threads: int | None = Field(default=1, description="torch threads for the optimizer (None = torch default).")
