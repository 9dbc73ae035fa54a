"""Settings: read once, at the composition root, from ``CLOSEDLOOP_*`` environment variables."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from campaigns import ClosedLoopError

__all__ = ["AX_STORE_OFF", "LEGACY_HOME", "Settings", "default_home", "settings_problem"]

#: Where earlier versions kept their data by default: relative to the working directory.
LEGACY_HOME = Path(".closedloop")
#: ``CLOSEDLOOP_AX_DB_URL=off``: runs keep no Ax SQL store (``closedloop ax-store --url`` still writes one).
AX_STORE_OFF = "off"


def default_home() -> Path:
    """The per-user data directory: ``$XDG_DATA_HOME/closedloop``, by default
    ``~/.local/share/closedloop`` (platformdirs' answer on other systems).

    One place whatever the working directory, so `closedloop list` from any directory sees the
    same campaigns (the earlier default, ``./.closedloop``, did not).
    """
    from platformdirs import user_data_path

    return user_data_path("closedloop", appauthor=False)

_DB_NAME_FORBIDDEN = set('/\\. "$\x00')


def _one_line(check: Callable[[str], object], value: str) -> None:
    """Run the devices layer's own check of a value; its error becomes the setting's message."""
    try:
        check(value)
    except ClosedLoopError as exc:
        raise ValueError(exc.message) from None


class Settings(BaseSettings):
    """Where closedloop keeps its data and finds its broker and database.

    Every field is read from the environment variable ``CLOSEDLOOP_<FIELD>``; unset means
    the embedded default (a local nx-27017 server and an amqtt broker under ``home``).
    """

    model_config = SettingsConfigDict(env_prefix="CLOSEDLOOP_", extra="ignore", frozen=True,
                                      hide_input_in_errors=True)

    home: Path = Field(default_factory=default_home,
                       description="Local data: embedded database, broker state (default: a per-user data directory).")
    mongodb_uri: SecretStr | None = Field(default=None, description="MongoDB URI; unset = embedded nx-27017.")
    mongodb_database: str = "closedloop"
    prior_mongodb_uri: SecretStr | None = Field(default=None, description="MongoDB URI where a campaign's "
                                                "`prior_data: - mongodb:` collections are read; unset = the "
                                                "campaign store's own MongoDB.")
    mqtt_url: SecretStr | None = Field(default=None, description="mqtt[s]://[user:pass@]host[:port]; unset = embedded amqtt.")
    mqtt_prefix: str = "closedloop"
    mqtt_username: str | None = Field(default=None, description="broker user name, when the URL has none.")
    mqtt_password: SecretStr | None = Field(default=None, description="broker password, when the URL has none.")
    mqtt_password_file: Path | None = Field(default=None, description="a file holding the broker password.")
    mqtt_ca_file: Path | None = Field(default=None, description="CA certificate(s) (PEM) that sign the broker's, for mqtts.")
    mqtt_cert_file: Path | None = Field(default=None, description="client certificate (PEM), for brokers that require one.")
    mqtt_key_file: Path | None = Field(default=None, description="the client certificate's private key (PEM).")
    optimizer_threads: int | None = Field(default=1, ge=1, le=1024,
                                          description="torch threads for the optimizer (None = torch default).")
    handover_wait_s: float = Field(default=30.0, ge=0, le=86400,
                                   description="how long approve/change/stop wait for a running orchestrator to "
                                               "apply the command before leaving it in its inbox.")
    standby_s: float = Field(default=120.0, ge=20, le=86400,
                             description="how far ahead a deployed flow run keeps its standby flow run scheduled "
                                         "(started if the run dies and no restart came; flows.prefect.standby), "
                                         "and how long after an approval's deadline its backup flow run starts.")
    ax_db_url: SecretStr | None = Field(default=None, description="SQLAlchemy URL of Ax's SQL store; "
                                        "unset = sqlite under home (ax.sqlite); off = none kept.")

    def home_named(self) -> str:
        """The home and where it comes from, for messages: ``/x/closedloop (CLOSEDLOOP_HOME)``."""
        origin = "CLOSEDLOOP_HOME" if "home" in self.model_fields_set else "the default home; CLOSEDLOOP_HOME sets another"
        return f"{self.home} ({origin})"

    def store_named(self) -> str:
        """Where the campaign log is, for messages (never the URI: it may hold a password)."""
        if self.mongodb_uri is not None:
            return f"database {self.mongodb_database!r} of CLOSEDLOOP_MONGODB_URI"
        return self.home_named()

    def legacy_home_hint(self, cwd: Path) -> str | None:
        """One line when ``cwd`` holds an earlier version's default home that these settings do not use."""
        legacy = cwd / LEGACY_HOME
        if "home" in self.model_fields_set or not (legacy / "data").is_dir():
            return None
        if legacy.resolve() == self.home.resolve():
            return None
        return (f"note: {legacy} holds the campaigns of an earlier closedloop (its default home); this command uses "
                f"{self.home}: `export CLOSEDLOOP_HOME={legacy.resolve()}` to use it")

    # Checked here, when the settings are read, so that a malformed value is one line at the
    # start of any command rather than a traceback from deep inside the one that uses it.

    @field_validator("home")
    @classmethod
    def _home(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} is a file, not a directory")
        return value

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            # the devices layer's own check, loaded only when there is a value to check
            from devices import parse_broker_url

            _one_line(parse_broker_url, value.get_secret_value())  # its message shows the URL redacted
        return value

    @field_validator("ax_db_url")
    @classmethod
    def _ax_db_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() != AX_STORE_OFF:
            # the optimizer's own check (SQLAlchemy only, not Ax), loaded only when there is a value
            from optimizer.ax_store import check_url

            _one_line(check_url, value.get_secret_value())  # its message never shows the URL
        return value

    def ax_store_url(self) -> str | None:
        """Where Ax's SQL store is: ``CLOSEDLOOP_AX_DB_URL``, or ``ax.sqlite`` under ``home``;
        None when the setting is ``off`` (runs keep no store)."""
        if self.ax_db_url is not None:
            if self.ax_db_url.get_secret_value() == AX_STORE_OFF:
                return None
            return self.ax_db_url.get_secret_value()
        return "sqlite:///" + str((self.home / "ax.sqlite").resolve())

    @field_validator("mqtt_prefix")
    @classmethod
    def _mqtt_prefix(cls, value: str) -> str:
        from devices import Topics

        _one_line(Topics, value)
        return value

    @field_validator("mongodb_database")
    @classmethod
    def _database(cls, value: str) -> str:
        if not value or len(value.encode()) > 63 or _DB_NAME_FORBIDDEN & set(value):
            raise ValueError(f"{value!r} is not a MongoDB database name (1-63 bytes, none of / \\ . \" $ or a space)")
        return value


def settings_problem(exc: ValidationError) -> str:
    """One line naming the environment variable a settings error concerns and what is wrong."""
    err = exc.errors(include_url=False)[0]
    name = "CLOSEDLOOP_" + "_".join(str(p) for p in err["loc"][:1]).upper() if err["loc"] else "CLOSEDLOOP_*"
    message = " ".join(str(err["msg"]).removeprefix("Value error, ").split())
    return f"{name}: {message} — fix or unset it (see README, Settings)"
