"""The orchestrator's side of protocol v1: send requests, collect results and statuses.

The hub is transport only. It does not choose devices (the loop does, from the event log
and :meth:`MqttDeviceHub.devices`) and does not de-duplicate results (the loop does, by
``request_id``, from the log). Everything that arrives becomes a :data:`HubEvent` in a
thread-safe queue; nothing a device sends can raise out of the network thread.

Exactly-once effect: the hub keeps a persistent session (stable client id) and holds the
acknowledgement of every result until the loop calls :meth:`MqttDeviceHub.ack` after logging
it, so a result is never lost between the broker and the event log; it may come twice.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from types import TracebackType

from campaigns.errors import BrokerError, DeviceMessageError

from .events import (
    ConnectionLost,
    ConnectionRestored,
    HubEvent,
    ResultReceived,
    StatusChanged,
    rejection,
)
from .messages import DeviceStatus, RunTrial, encode, parse_result, parse_status_of
from .mqtt import Delivery, MqttConnection, MqttSettings, connect
from .mqtt import end_session as mqtt_end_session
from .topics import Channel, Topics

__all__ = ["MqttDeviceHub"]

log = logging.getLogger(__name__)

_END_SESSION_TIMEOUT_S = 5.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


class MqttDeviceHub:
    """Talks to the devices under one prefix through one MQTT connection.

    Args:
        settings: Broker URL, protocol, session and topic prefix.
        client_id: MQTT client id. Keep it stable across restarts and unique to one campaign
            instance (``campaigns.identity.client_id``; not per process, and never shared by two
            campaigns): the broker keeps the session under it, and results published while the
            orchestrator is away are delivered when a hub with the same id returns.
        clock: Returns the current UTC time; injected for tests.
        monotonic: Monotonic seconds, for ``down_s``; injected for tests.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str,
        clock: Callable[[], datetime] = _utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._client_id = client_id
        self._clock = clock
        self._monotonic = monotonic
        self._topics = Topics(settings.prefix)
        # None is a wake-up (see wake()), never handed out as an event.
        self._events: queue.SimpleQueue[HubEvent | None] = queue.SimpleQueue()
        self._devices: dict[str, DeviceStatus] = {}
        self._lock = threading.Lock()
        self._connection: MqttConnection | None = None
        self._lost_at: float | None = None

    @property
    def topics(self) -> Topics:
        """The topics of this hub's prefix."""
        return self._topics

    @property
    def connected(self) -> bool:
        """Whether the hub holds a connection to the broker right now."""
        return self._connection is not None and self._connection.is_connected()

    def start(self, devices: Sequence[str] | None = None, *, timeout_s: float = 10) -> None:
        """Connect and subscribe to the status and results of the given devices (of all: ``None``).

        A campaign names its own devices: then the broker neither forwards nor, while the hub
        is away, queues in its session what other campaigns' devices on the same prefix send.
        A session resumed from a hub that subscribed to every device (``None``, or an earlier
        version) drops those wildcard filters at every (re)connect.

        Args:
            devices: Device ids (the campaign spec's); ``None`` for every device of the prefix.
            timeout_s: Deadline for the connection.

        Raises:
            BrokerError: The broker cannot be reached within ``timeout_s``.
            DeviceMessageError: A device id cannot be one topic level (holds ``/``, ``+``, ``#``).
        """
        if self._connection is not None:
            return
        channels: tuple[Channel, Channel] = ("status", "results")
        wildcards = [self._topics.all_devices(channel) for channel in channels]
        self._connection = connect(
            self._settings,
            client_id=self._client_id,
            subscriptions=[f for channel in channels for f in self._topics.of_devices(channel, devices)],
            unsubscriptions=[] if devices is None else wildcards,
            on_message=self._on_message,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            manual_ack=True,
            timeout_s=timeout_s,
        )

    def stop(self, *, end_session: bool = False) -> None:
        """Disconnect cleanly, keeping the session: unacknowledged results come again later.

        Events already queued can still be drained, but acknowledging them does nothing.

        Args:
            end_session: End the broker's session too (a finished campaign, whose client id
                never returns): the broker forgets its subscriptions and drops what it queued
                for it. A broker that cannot be reached then is logged, not raised: the
                campaign's outcome does not depend on it.
        """
        if self._connection is not None:
            self._connection.close()
            self._connection = None
            if end_session:
                try:
                    mqtt_end_session(self._settings, self._client_id, timeout_s=_END_SESSION_TIMEOUT_S)
                except BrokerError as exc:
                    log.warning("could not end the broker session of %s: %s", self._client_id, exc.message)

    def __enter__(self) -> MqttDeviceHub:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def devices(self) -> dict[str, DeviceStatus]:
        """Return the latest status of every device seen, by device id (a copy)."""
        with self._lock:
            return dict(self._devices)

    def dispatch(self, device_id: str, request: RunTrial, timeout_s: float | None = 10) -> None:
        """Publish a request to a device at QoS 1 and wait for the broker's PUBACK.

        A PUBACK means the broker has the message (queued in the device's session if the
        device is away), not that the device has run it. While the connection is down it
        waits for paho to reconnect, within the same ``timeout_s``. Sending the same
        ``request_id`` again is always safe: a device answers it from its store.
        ``timeout_s=None`` hands the request to paho and returns at once, without the round
        trip: paho sends it (again after a reconnect) while this process lives.

        Raises:
            BrokerError: The hub is not started; or no connection within ``timeout_s``
                (nothing was sent); or no PUBACK in time (paho keeps the message in memory
                and sends it after a reconnect while this process lives).
            DeviceMessageError: ``device_id`` cannot be a topic level.
        """
        if self._connection is None:
            raise BrokerError(
                "device hub is not started",
                "call start() before dispatch()",
                campaign_id=request.campaign_id,
                trial_id=request.trial_id,
                device_id=device_id,
            )
        topic = self._topics.requests(device_id)
        try:
            self._connection.publish(topic, encode(request), qos=1, timeout_s=timeout_s)
        except BrokerError as exc:
            raise BrokerError(
                exc.message,
                exc.hint,
                campaign_id=request.campaign_id,
                trial_id=request.trial_id,
                device_id=device_id,
            ) from None

    def ack(self, event: HubEvent) -> None:
        """Acknowledge a received message, once its event is durably logged.

        Call it for every event (it does nothing for those without a ``delivery``). A
        result never acknowledged is delivered again after the next reconnect; an ack for a
        message that came on an earlier connection is dropped for the same reason.
        """
        delivery: Delivery | None = getattr(event, "delivery", None)
        connection = self._connection
        if delivery is not None and connection is not None:
            connection.ack(delivery)

    def next_events(self, timeout_s: float) -> list[HubEvent]:
        """Wait up to ``timeout_s`` for an event (or a :meth:`wake`), then return all queued.

        Returns:
            The events in arrival order; empty if none came in time, or after a wake-up.
        """
        try:
            first = self._events.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            return []
        events: list[HubEvent] = [] if first is None else [first]
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return events
            if event is not None:
                events.append(event)

    def wake(self) -> None:
        """Make a :meth:`next_events` waiting in another thread return now (thread-safe).

        The loop waits on device events; work it hands to other threads (a suggestion
        computed ahead) wakes it when done instead of waiting for the next poll.
        """
        self._events.put(None)

    # -- network thread ------------------------------------------------------------------

    def _on_disconnect(self, connection: MqttConnection, detail: str) -> None:
        self._lost_at = self._monotonic()
        self._events.put(ConnectionLost(detail=detail, at=self._clock()))

    def _on_connect(self, connection: MqttConnection) -> None:
        if self._lost_at is None:
            return
        down_s = max(0.0, self._monotonic() - self._lost_at)
        self._lost_at = None
        self._events.put(ConnectionRestored(
            down_s=down_s, at=self._clock(), session_present=connection.session_present))

    def _on_message(self, topic: str, payload: bytes, delivery: Delivery | None) -> bool:
        # Returns whether the acknowledgement is held for the loop's ack(): results only.
        now = self._clock()
        device_id: str | None = None
        if not topic.startswith(f"{self._topics.prefix}/devices/"):
            # Not ours at all (some brokers replay retained messages too eagerly): no device
            # broke the protocol, so nothing to report.
            log.debug("ignored message on %s: outside %s", topic[:200], self._topics.prefix)
            return False
        held: Delivery | None = None
        try:
            device_id, channel = self._topics.parse(topic)
            if channel == "results":
                held = delivery
                result = parse_result(payload)
                self._events.put(ResultReceived(
                    device_id=device_id, result=result, received_at=now, delivery=held))
            elif channel == "status":
                self._on_status(device_id, payload, now)
        except DeviceMessageError as exc:
            # Debug only: the orchestrator logs rejections, bounded (a publisher may send millions).
            log.debug("rejected message on %s: %s", topic[:200], exc.message[:300])
            self._events.put(rejection(device_id, topic, payload, exc.message, now, held))
        return held is not None

    def _on_status(self, device_id: str, payload: bytes, now: datetime) -> None:
        if not payload:
            # An empty retained message is how an operator removes a device for good.
            with self._lock:
                self._devices.pop(device_id, None)
            log.info("device %s removed (empty retained status)", device_id)
            return
        status = parse_status_of(device_id, payload)
        with self._lock:
            changed = self._devices.get(device_id) != status
            self._devices[device_id] = status
        if changed:
            self._events.put(StatusChanged(device_id=device_id, status=status, received_at=now))
