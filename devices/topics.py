"""MQTT topic names of protocol v1: ``{prefix}/devices/{device_id}/{channel}``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast, get_args

from campaigns.errors import DeviceMessageError

__all__ = ["Channel", "Topics", "validate_device_id"]

Channel = Literal["status", "requests", "results"]
_CHANNELS: tuple[str, ...] = get_args(Channel)
_FORBIDDEN = ("/", "+", "#", "\x00")


def validate_device_id(device_id: str) -> str:
    """Check that a device id can stand as one topic level.

    Args:
        device_id: The id to check.

    Returns:
        The same id.

    Raises:
        DeviceMessageError: The id is empty or holds ``/``, ``+``, ``#`` or NUL.
    """
    if not device_id or any(ch in device_id for ch in _FORBIDDEN):
        raise DeviceMessageError(
            f"invalid device id {device_id!r}",
            "use a non-empty id without '/', '+', '#' (e.g. 'hplc-1')",
            device_id=device_id or None,
        )
    return device_id


class Topics:
    """Builds and parses the topics of one prefix.

    Args:
        prefix: Topic prefix, one or more levels without wildcards (default ``closedloop``).

    Raises:
        DeviceMessageError: The prefix is empty, has wildcards or leading/trailing ``/``.
    """

    def __init__(self, prefix: str = "closedloop") -> None:
        levels = prefix.split("/")
        if not prefix or any(not level or "+" in level or "#" in level for level in levels):
            raise DeviceMessageError(
                f"invalid topic prefix {prefix!r}",
                "use levels separated by single '/', without wildcards (e.g. 'lab1/closedloop')",
            )
        self.prefix = prefix
        self._levels = len(levels)

    def topic(self, device_id: str, channel: Channel) -> str:
        """Return ``{prefix}/devices/{device_id}/{channel}``."""
        return f"{self.prefix}/devices/{validate_device_id(device_id)}/{channel}"

    def status(self, device_id: str) -> str:
        """Return the retained status topic of a device."""
        return self.topic(device_id, "status")

    def requests(self, device_id: str) -> str:
        """Return the topic the orchestrator publishes requests to for a device."""
        return self.topic(device_id, "requests")

    def results(self, device_id: str) -> str:
        """Return the topic a device publishes its results on."""
        return self.topic(device_id, "results")

    def all_devices(self, channel: Channel) -> str:
        """Return the subscription filter for one channel of every device."""
        return f"{self.prefix}/devices/+/{channel}"

    def of_devices(self, channel: Channel, device_ids: Sequence[str] | None) -> list[str]:
        """Return the subscription filters for one channel of some devices, or of all (``None``).

        Each id is validated as a topic level, so no id can widen a filter into a wildcard.

        Raises:
            DeviceMessageError: An id is empty or holds ``/``, ``+``, ``#`` or NUL.
        """
        if device_ids is None:
            return [self.all_devices(channel)]
        return [self.topic(device_id, channel) for device_id in dict.fromkeys(device_ids)]

    def parse(self, topic: str) -> tuple[str, Channel]:
        """Split a topic of this prefix into its device id and channel.

        Args:
            topic: e.g. ``closedloop/devices/d1/results``.

        Returns:
            ``(device_id, channel)``, e.g. ``("d1", "results")``.

        Raises:
            DeviceMessageError: The topic is not a protocol v1 topic of this prefix.
        """
        levels = topic.split("/")
        head = "/".join(levels[: self._levels])
        if (
            len(levels) != self._levels + 3
            or head != self.prefix
            or levels[self._levels] != "devices"
            or levels[-1] not in _CHANNELS
        ):
            raise DeviceMessageError(
                f"topic {topic[:200]!r} is not {self.prefix}/devices/<device_id>/<channel>",
                f"channels are {', '.join(_CHANNELS)}",
            )
        device_id = validate_device_id(levels[self._levels + 1])
        return device_id, cast(Channel, levels[-1])
