"""The closedloop exception tree.

Every error a user can cause or meet carries a one-line ``message`` (what is wrong) and a
``hint`` (what to do), and names the campaign, trial or device it concerns where there is one.
The CLI prints ``str(error)`` on one line and never a traceback for these.

::

    ClosedLoopError                 root: message + hint (+ campaign_id, trial_id, device_id)
     ├── UsageError                 a command line is malformed or asks for the impossible (CLI exit 2)
     ├── SpecError                  a campaign file is malformed or inconsistent (CLI exit 2)
     ├── CommandRefusedError        a person's command does not fit the campaign as it stands
     ├── CampaignNotFoundError      no campaign of that id in the log
     ├── CampaignStateError         the campaign's state forbids the request (finished, paused)
     ├── CampaignLockedError        another live process holds the campaign's lease
     ├── ConfigurationError         a setting or a file it names is missing or unreadable
     ├── OutputError                a file the user asked for cannot be written
     ├── ServiceStartError          a service closedloop starts itself (Prefect's local server) did not start
     ├── PrefectServerError         the Prefect server a campaign is deployed on cannot be reached or refused
     ├── StorageError               the event store cannot be reached or refused a write
     │    ├── StorageUnavailableError  the server cannot be reached now: retry later
     │    └── AppendConflictError   another writer appended the same seq: history would fork
     ├── BrokerError                the MQTT broker cannot be reached or refused us
     ├── DeviceMessageError         a device sent a payload that breaks protocol v1
     └── OptimizerError             the optimizer could not suggest or record a trial
"""

from __future__ import annotations

__all__ = [
    "AppendConflictError",
    "BrokerError",
    "CampaignLockedError",
    "CampaignNotFoundError",
    "CampaignStateError",
    "ClosedLoopError",
    "CommandRefusedError",
    "ConfigurationError",
    "DeviceMessageError",
    "OptimizerError",
    "OutputError",
    "PrefectServerError",
    "ServiceStartError",
    "SpecError",
    "StorageError",
    "StorageUnavailableError",
    "UsageError",
]


class ClosedLoopError(Exception):
    """Root of every error closedloop raises on purpose.

    Args:
        message: What is wrong, in one line.
        hint: What the user should do about it, in one line.
        campaign_id: The campaign concerned, if any.
        trial_id: The trial concerned, if any.
        device_id: The device concerned, if any.
    """

    def __init__(
        self,
        message: str,
        hint: str = "",
        *,
        campaign_id: str | None = None,
        trial_id: str | None = None,
        device_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.campaign_id = campaign_id
        self.trial_id = trial_id
        self.device_id = device_id

    def __str__(self) -> str:
        text = " ".join(self.message.split())
        if self.hint:
            text += f" — {' '.join(self.hint.split())}"
        return text


class UsageError(ClosedLoopError):
    """A command line is malformed (a flag's value, a missing argument) or asks for the
    impossible; nothing has run. The CLI's usage error, worded in its flags."""


class SpecError(ClosedLoopError):
    """A campaign spec is malformed or inconsistent; nothing has run."""


class CommandRefusedError(ClosedLoopError):
    """A person's command (approve, change, pause, stop) does not fit the campaign as it stands.

    Worded in the campaign's terms, whichever way the command came (CLI, Prefect form,
    inbox, replay); nothing was logged.
    """


class CampaignStateError(ClosedLoopError):
    """The campaign's state forbids what was asked (run a finished campaign, run a paused one)."""


class ConfigurationError(ClosedLoopError):
    """A setting, or a file a setting names, is missing or cannot be read."""


class OutputError(ClosedLoopError):
    """A file the user asked for (an export, a report) cannot be written."""


class ServiceStartError(ClosedLoopError):
    """A service closedloop starts itself (Prefect's local API server) did not start."""


class PrefectServerError(ClosedLoopError):
    """The Prefect server (``PREFECT_API_URL``) cannot be reached, or refused a request (e.g. 503
    when overloaded) while deploying or waking a campaign."""


class CampaignNotFoundError(ClosedLoopError):
    """No campaign with the given id exists in the event log."""


class CampaignLockedError(ClosedLoopError):
    """Another live orchestrator holds the campaign's lease: one writer per campaign.

    ``owner`` names the holder (``host:pid``) when it is known.
    """

    def __init__(self, message: str, hint: str = "", *, owner: str | None = None, **where: str | None) -> None:
        super().__init__(message, hint, **where)
        self.owner = owner


class StorageError(ClosedLoopError):
    """The event store cannot be reached, or refused a read or a write."""


class StorageUnavailableError(StorageError):
    """The database cannot be reached right now (down, restarting, network): worth retrying.

    An append that failed this way may or may not have been written; appending the very same
    events again is safe (the store recognises its own earlier write).
    """


class AppendConflictError(StorageError):
    """An append lost the race for its ``seq``: another writer appended first.

    The log is unchanged by the failed append; the writer must re-read the log before
    deciding anything else.
    """


class BrokerError(ClosedLoopError):
    """The MQTT broker cannot be reached, or refused the connection."""


class DeviceMessageError(ClosedLoopError):
    """A device payload breaks protocol v1; the message is rejected, the loop goes on."""


class OptimizerError(ClosedLoopError):
    """The optimizer could not suggest, or could not record, a trial."""
