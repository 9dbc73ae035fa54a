"""The one place that builds a connected paho client, and what it does on the wire.

Sessions are persistent by default (a stable client id, clean session/start off, and under
MQTT 5 a Session Expiry Interval, without which an MQTT 5 broker keeps no session), until
:func:`end_session` ends one for good. With
``manual_ack`` a received QoS 1 message is acknowledged only when the receiver calls
:meth:`MqttConnection.ack`, so a message the receiver never made durable is delivered again
after a reconnect. paho reconnects by itself, with back-off from 1 s up to 30 s.
Credentials never reach a log line or an exception: addresses are shown without them.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from campaigns.errors import BrokerError

from .events import Delivery
from .settings import BrokerAddress, MqttSettings
from .settings import apply_tls

__all__ = ["Delivery", "MessageHandler", "MqttConnection", "connect", "end_session"]

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30


MessageHandler = Callable[[str, bytes, Delivery | None], bool]
"""Called in the MQTT network thread with ``(topic, payload, delivery)`` of each message.

``delivery`` is set when the connection has ``manual_ack`` and the message came at QoS 1.
Return ``True`` to hold its acknowledgement (then pass ``delivery`` to
:meth:`MqttConnection.ack` once the message is dealt with), ``False`` to acknowledge now.
"""

# Unsubscribing from a filter nobody uses is a round trip the broker answers only after the
# packets sent before it: a barrier that flushes pending PUBACKs before a disconnect.
_BARRIER_TOPIC = "closedloop/_barrier"
# Connection numbers are unique in the process, so a Delivery of a closed MqttConnection can
# never acknowledge a message of a later one.
_CONNECTIONS = itertools.count(1)
_HINT_DOWN = "check the broker is up; the client reconnects by itself, then send again (safe)"


def _set_nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # paho leaves Nagle on: a QoS 1 PUBACK then waits for a delayed ACK, ~45 ms per round
    # trip on loopback instead of ~1 ms.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError) as exc:  # not a TCP socket (e.g. websockets): no gain
        log.debug("TCP_NODELAY not set: %s", exc)


class MqttConnection:
    """A connected paho client running its network loop in a background thread.

    Built by :func:`connect`. paho reconnects on its own after a network failure (back-off
    1 s doubling to 30 s), and subscriptions are renewed on every reconnect.

    Attributes:
        client: The paho client.
        address: The broker, without credentials.
        client_id: The MQTT client id.
        session_present: Whether the broker resumed a stored session at the last connect.
    """

    def __init__(self, client: mqtt.Client, address: BrokerAddress, client_id: str) -> None:
        self.client = client
        self.address = address
        self.client_id = client_id
        self.session_present = False
        self._up = threading.Event()
        self._closing = False
        self._lock = threading.Lock()
        self._generation = 0
        self._unacked: set[int] = set()
        self._barrier = threading.Condition(self._lock)
        self._unsubacks: set[int] = set()

    def is_connected(self) -> bool:
        """Whether the client currently holds a connection to the broker."""
        return self._up.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a connection; return whether there is one."""
        return self._up.wait(max(0.0, timeout_s))

    def ack(self, delivery: Delivery) -> bool:
        """Acknowledge a message received with ``manual_ack`` (send its PUBACK).

        Args:
            delivery: The message's :class:`Delivery`.

        Returns:
            Whether a PUBACK was sent. ``False`` when the message came on an earlier
            connection (the broker delivers it again, to be acknowledged then) or was
            acknowledged already.
        """
        with self._lock:
            if delivery.connection != self._generation or delivery.message_id not in self._unacked:
                return False
            self._unacked.discard(delivery.message_id)
            rc = self.client.ack(delivery.message_id, delivery.qos)
        return rc == mqtt.MQTT_ERR_SUCCESS

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

        While the connection is down it first waits (within ``timeout_s``) for paho to
        reconnect. A message handed to paho is kept in its memory and resent after a
        reconnect until acknowledged, but only as long as this process lives.

        Args:
            topic: Topic name.
            payload: Payload bytes.
            qos: 0, 1 or 2.
            retain: Ask the broker to retain the message.
            timeout_s: Deadline for the connection plus the acknowledgement; ``None`` hands
                the message to paho and returns at once (required inside a paho callback,
                where waiting would block the network thread).

        Raises:
            BrokerError: Not connected within ``timeout_s`` (the message was not sent), or
                not acknowledged in time (paho may still deliver it after a reconnect).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if timeout_s is not None and not self.wait_connected(timeout_s):
            raise BrokerError(
                f"not connected to {self.address.display} for {timeout_s:g} s; "
                f"nothing was published to {topic}",
                _HINT_DOWN,
            )
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_NO_CONN and qos > 0:
            if deadline is None:
                return  # queued by paho, sent when the connection returns
            raise BrokerError(
                f"connection to {self.address.display} lost while publishing to {topic}",
                "paho sends it once the connection returns; receivers de-duplicate",
            )
        if deadline is None or qos == 0:
            return
        try:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        except (RuntimeError, ValueError) as exc:
            raise BrokerError(
                f"publish to {topic} via {self.address.display} failed: {exc}", _HINT_DOWN
            ) from None
        if not info.is_published():
            raise BrokerError(
                f"no PUBACK from {self.address.display} within {timeout_s:g} s for {topic}",
                "paho resends it once the connection returns; receivers de-duplicate",
            )

    def close(self, timeout_s: float = 5.0) -> None:
        """Disconnect cleanly (no last will, no unsubscribe) and stop the network thread.

        The broker keeps a persistent session, with every message not yet acknowledged.
        """
        self._closing = True
        if self.is_connected():
            # paho closes the socket right after writing DISCONNECT; if unread data is
            # waiting, the kernel resets the connection and the broker may lose what was
            # written last (PUBACKs, DISCONNECT). Let the broker confirm it has them first.
            self._flush(timeout_s)
        self.client.disconnect()
        self.client.loop_stop()
        self._up.clear()

    def _flush(self, timeout_s: float) -> None:
        rc, mid = self.client.unsubscribe(_BARRIER_TOPIC)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            return
        with self._barrier:
            self._barrier.wait_for(lambda: mid in self._unsubacks, timeout_s)
            self._unsubacks.discard(mid)

    # -- network thread ------------------------------------------------------------------

    def _connected(self, session_present: bool) -> None:
        with self._lock:
            self._generation = next(_CONNECTIONS)
            self._unacked.clear()
            self.session_present = session_present
        self._up.set()

    def _disconnected(self) -> None:
        with self._lock:
            self._generation = next(_CONNECTIONS)
            self._unacked.clear()
        self._up.clear()

    def _unsubscribed(self, mid: int) -> None:
        with self._barrier:
            self._unsubacks.add(mid)
            self._barrier.notify_all()

    def _received(self, message: mqtt.MQTTMessage, manual_ack: bool) -> Delivery | None:
        if not manual_ack or message.qos == 0:
            return None
        with self._lock:
            self._unacked.add(message.mid)
            return Delivery(message_id=message.mid, qos=message.qos, connection=self._generation)


def connect(
    settings: MqttSettings,
    *,
    client_id: str,
    will: tuple[str, bytes] | None = None,
    subscriptions: Sequence[str] = (),
    unsubscriptions: Sequence[str] = (),
    on_message: MessageHandler | None = None,
    on_connect: Callable[[MqttConnection], None] | None = None,
    on_disconnect: Callable[[MqttConnection, str], None] | None = None,
    manual_ack: bool = False,
    timeout_s: float | None = None,
) -> MqttConnection:
    """Connect to the broker and return once the CONNACK has arrived.

    Args:
        settings: Broker URL, TLS, keep-alive, protocol (3.1.1 or 5), session kind.
        client_id: MQTT client id; must be stable when ``settings.clean_session`` is off.
        will: ``(topic, payload)`` the broker publishes, retained at QoS 1, if the
            connection dies without a clean disconnect.
        subscriptions: Topic filters to subscribe at QoS 1 on every (re)connect.
        unsubscriptions: Topic filters to drop from a resumed session on every (re)connect,
            before subscribing: filters an earlier subscriber under the same client id may
            have left in the broker's session. Dropping one that is not there is harmless.
        on_message: Handler of incoming messages (see :data:`MessageHandler`); an
            exception it raises is logged (and the message acknowledged), never allowed to
            stop the network thread.
        on_connect: Called in the network thread after every (re)connect; it may publish
            with ``timeout_s=None`` only.
        on_disconnect: Called in the network thread with a one-line reason when an
            established connection is lost (not after :meth:`MqttConnection.close`).
        manual_ack: Hold the PUBACK of every QoS 1 message until :meth:`MqttConnection.ack`.
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
    if settings.protocol == 5:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
            manual_ack=manual_ack,
        )
    else:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
            clean_session=settings.clean_session, manual_ack=manual_ack,
        )
    client.on_socket_open = _set_nodelay
    client.reconnect_delay_set(min_delay=RECONNECT_MIN_S, max_delay=RECONNECT_MAX_S)
    client.connect_timeout = deadline_s
    if address.username is not None:
        password = address.password.get_secret_value() if address.password else None
        client.username_pw_set(address.username, password)
    apply_tls(client, settings, address)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    connection = MqttConnection(client, address, client_id)
    first = threading.Event()
    refused: list[str] = []
    # connect() returns once the broker has a new session's subscriptions (SUBACK): a message
    # published to them a moment later must not be missed.
    first_subscriptions: set[int] = set()
    # Message ids of those UNSUBSCRIBEs: their UNSUBACKs are no barrier anyone waits for (kept
    # out of the barrier's set, where a reused message id would release a later barrier early).
    cleanups: set[int] = set()

    def handle_connect(c: mqtt.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("%s refused %s: %s", address.display, client_id, reason)
            if not first.is_set():
                refused.append(str(reason))
                first.set()
            return
        connection._connected(bool(flags.session_present))
        cleanups.clear()  # an UNSUBACK lost with the previous connection never comes
        if unsubscriptions and flags.session_present:
            # Before the SUBSCRIBE, so a broker that forwards a message once per matching filter
            # never sees the old filter and a new one side by side. A new session has neither.
            rc, mid = c.unsubscribe(list(unsubscriptions))
            if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                cleanups.add(mid)
        for topic in subscriptions:
            rc, mid = c.subscribe(topic, qos=1)
            # Only a new session lacks the subscriptions until SUBACK; a present one has them
            # (and amqtt answers its SUBSCRIBE only after the queued messages are acknowledged).
            if not first.is_set() and not flags.session_present and rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                first_subscriptions.add(mid)
        log.info("connected to %s as %s (session present: %s)", address.display, client_id,
                 bool(flags.session_present))
        first.set()
        if on_connect is not None:
            _guarded("on_connect", on_connect, connection)

    def handle_disconnect(c: mqtt.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
        was_up = connection.is_connected()
        connection._disconnected()
        if connection._closing or not was_up:
            return
        log.warning("lost %s (%s as %s); reconnecting", address.display, reason, client_id)
        if on_disconnect is not None:
            _guarded("on_disconnect", on_disconnect, connection, str(reason))

    def handle_message(c: mqtt.Client, u: Any, message: mqtt.MQTTMessage) -> None:
        delivery = connection._received(message, manual_ack)
        held = False
        if on_message is not None:
            # A handler that fails does not hold the message: it must not stall the session.
            held = _guarded("on_message", on_message, message.topic, bytes(message.payload),
                            delivery) is True
        if delivery is not None and not held:
            connection.ack(delivery)

    def handle_unsubscribe(c: mqtt.Client, u: Any, mid: int, codes: Any, props: Any) -> None:
        if mid in cleanups:
            cleanups.discard(mid)
            return
        connection._unsubscribed(mid)

    def handle_subscribe(c: mqtt.Client, u: Any, mid: int, codes: Any, props: Any) -> None:
        if mid in first_subscriptions:  # the same barrier as UNSUBACKs: message ids never collide
            connection._unsubscribed(mid)

    client.on_connect = handle_connect
    client.on_unsubscribe = handle_unsubscribe
    client.on_subscribe = handle_subscribe
    client.on_disconnect = handle_disconnect
    client.on_message = handle_message
    properties: Properties | None = None
    if settings.protocol == 5 and not settings.clean_session:
        # paho sends no Session Expiry Interval by itself, and without one an MQTT 5 broker
        # drops the session at disconnect: clean_start=False alone keeps nothing.
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = settings.session_expiry_s
    hint = "check the broker runs, and the host, port, credentials and TLS settings of its URL"
    if settings.protocol == 5:
        hint += "; and that it speaks MQTT 5 (the embedded amqtt broker does not: use protocol=4)"
    try:
        if settings.protocol == 5:
            client.connect(address.host, address.port, keepalive=settings.keepalive_s,
                           clean_start=settings.clean_session, properties=properties)
        else:
            client.connect(address.host, address.port, keepalive=settings.keepalive_s)
    except (OSError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        raise BrokerError(
            f"cannot reach MQTT broker at {address.display}: {reason}", hint
        ) from None
    client.loop_start()
    remaining = max(0.0, deadline_s - (time.monotonic() - start))
    if not first.wait(remaining) or refused:
        connection._closing = True
        client.disconnect()
        client.loop_stop()
        reason = f"refused: {refused[0]}" if refused else f"no CONNACK within {deadline_s:g} s"
        raise BrokerError(f"cannot reach MQTT broker at {address.display}: {reason}", hint)
    remaining = max(0.0, deadline_s - (time.monotonic() - start))
    with connection._barrier:
        subscribed = connection._barrier.wait_for(lambda: first_subscriptions <= connection._unsubacks, remaining)
        connection._unsubacks -= first_subscriptions
    if not subscribed:
        connection._closing = True
        client.disconnect()
        client.loop_stop()
        raise BrokerError(f"cannot reach MQTT broker at {address.display}: no SUBACK within {deadline_s:g} s", hint)
    return connection


def end_session(settings: MqttSettings, client_id: str, timeout_s: float | None = None) -> None:
    """End the broker's session of ``client_id`` for good: no subscriptions, no queued messages.

    Connects once more under the same id with a clean session (MQTT 5: Clean Start and no
    Session Expiry Interval, i.e. 0) and disconnects: the broker drops the stored session at
    the connect (MQTT 3.1.1) or the disconnect (MQTT 5). For a client that will never come
    back (a finished campaign); one connection, no subscription.

    Raises:
        BrokerError: The broker cannot be reached within ``timeout_s``; the session stays.
    """
    clean = settings.model_copy(update={"clean_session": True})
    connect(clean, client_id=client_id, timeout_s=timeout_s).close()


def _guarded(name: str, func: Callable[..., object], *args: Any) -> object:
    # An exception escaping a paho callback kills its network thread: log it, go on.
    try:
        return func(*args)
    except Exception:
        log.exception("%s handler failed; the connection goes on", name)
        return None
