"""``MemoryDeviceHub``: the device hub in this process, driving simulated instruments on a clock.

It reports the same :data:`~devices.HubEvent`s as ``devices.MqttDeviceHub`` (a status change,
a result with a delivery to acknowledge, a rejected message, a lost and restored connection)
and keeps the same contract (tests/integration/test_hub_contract.py runs one suite on both): a
result not acknowledged is delivered again after :meth:`MemoryDeviceHub.restart`, as a broker
does for a persistent session.

Devices are of two kinds. :meth:`MemoryDeviceHub.instrument` serves a ``SimModel`` the way
``simulators.SimInstrument`` does — one trial at a time, a store by request id, durations, noise
and failures from its ``SimulatorOptions`` — with its run time elapsing on the hub's clock.
:meth:`MemoryDeviceHub.device` is a hand-made device the test drives (any status, any result on
any topic, garbage, late answers), to express devices that misbehave.

On a :class:`~flows.engine.memory.ManualClock`, :meth:`MemoryDeviceHub.next_events` never
sleeps: when nothing is due it moves the clock to the next thing scheduled (or by its timeout).
Actions the test schedules (:meth:`MemoryDeviceHub.call_at`, :meth:`MemoryDeviceHub.when`) run
in the loop's thread, between two passes: ordered by construction.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from campaigns.errors import BrokerError, DeviceMessageError
from devices import Delivery
from devices.events import (
    ConnectionLost,
    ConnectionRestored,
    HubEvent,
    ResultReceived,
    StatusChanged,
    rejection,
)
from devices.messages import (
    DeviceStatus,
    Measurement,
    RunTrial,
    TrialResult,
    encode,
    parse_result,
    parse_status_of,
)
from devices.topics import Topics, validate_device_id
from flows.engine.memory import ManualClock
from flows.engine.ports import Clock, SystemClock
from simulators.behaviour import SimulatorOptions, run_random, simulate
from simulators.catalog import SIMULATORS
from simulators.model import SimModel

__all__ = ["HandDevice", "MemoryDeviceHub", "MemoryInstrument"]



@dataclass(order=True)
class _Timer:
    at: float
    order: int
    action: Callable[[], None] = field(compare=False)


class MemoryDeviceHub:
    """Devices in this process, seen as the orchestrator sees them over MQTT.

    Args:
        clock: The clock device run times elapse on (a ``ManualClock``: no real waiting).
        prefix: The topic prefix (named in topics and diagnoses, as over MQTT).
    """

    def __init__(self, clock: Clock | None = None, *, prefix: str = "closedloop") -> None:
        self.clock: Clock = clock or SystemClock()
        self._topics = Topics(prefix)
        self._cond = threading.Condition()
        self._events: list[HubEvent] = []
        self._woken = False
        self._timers: list[_Timer] = []
        self._order = itertools.count()
        self._watchers: list[tuple[Callable[[], bool], Callable[[], None]]] = []
        self._statuses: dict[str, DeviceStatus] = {}
        self._devices: dict[str, HandDevice | MemoryInstrument] = {}
        self._connection = 1
        self._connected = True
        self._lost_at: float | None = None
        self._message_ids = itertools.count(1)
        self._unacked: dict[int, tuple[str, bytes | TrialResult]] = {}
        self.requests: list[tuple[str, RunTrial]] = []
        """Every request dispatched, in order, with the device it went to."""

    # -- what the loop calls (the DeviceHub port) -------------------------------------------

    @property
    def topics(self) -> Topics:
        """The topics of this hub's prefix."""
        return self._topics

    @property
    def connected(self) -> bool:
        """Whether requests can be sent now (see :meth:`lose_connection`)."""
        return self._connected

    def devices(self) -> dict[str, DeviceStatus]:
        """The latest status of every device seen, by id (a copy)."""
        with self._cond:
            return dict(self._statuses)

    def dispatch(self, device_id: str, request: RunTrial, timeout_s: float | None = 10) -> None:
        """Hand a request to a device (kept for it while it is away, as a persistent session does).

        Raises:
            BrokerError: The connection is lost (nothing was sent).
            DeviceMessageError: ``device_id`` cannot be a topic level.
        """
        validate_device_id(device_id)
        if not self._connected:
            raise BrokerError("not connected to the (in-memory) broker", "wait for the connection to come back",
                              campaign_id=request.campaign_id, trial_id=request.trial_id, device_id=device_id)
        with self._cond:
            self.requests.append((device_id, request))
            device = self._devices.get(device_id)
        if device is not None:
            device.receive(request)

    def ack(self, event: HubEvent) -> None:
        """Acknowledge a result once logged; one received on an earlier connection is dropped."""
        delivery: Delivery | None = getattr(event, "delivery", None)
        if delivery is not None and delivery.connection == self._connection:
            with self._cond:
                self._unacked.pop(delivery.message_id, None)

    def next_events(self, timeout_s: float) -> list[HubEvent]:
        """Every queued event, after running what is due; waits (on the clock) up to ``timeout_s``.

        On a ``ManualClock`` nothing waits in real time: when nothing is queued the clock moves
        to the next scheduled action, or by ``timeout_s`` when there is none that soon.
        """
        now = self.clock.monotonic()
        deadline = now + max(0.0, timeout_s)
        self._run_due()
        while True:
            with self._cond:
                if self._events or self._woken:
                    events, self._events, self._woken = self._events, [], False
                    return events
                upcoming = self._timers[0].at if self._timers else None
                if isinstance(self.clock, ManualClock):
                    self.clock.advance_to(deadline if upcoming is None else min(upcoming, deadline))
                else:
                    wait = deadline - self.clock.monotonic()
                    if upcoming is not None:
                        wait = min(wait, upcoming - self.clock.monotonic())
                    if wait > 0:
                        self._cond.wait(wait)
            self._run_due()
            if self.clock.monotonic() >= deadline:
                with self._cond:
                    events, self._events, self._woken = self._events, [], False
                    return events

    def wake(self) -> None:
        """Make a waiting :meth:`next_events` return now (thread-safe)."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    # -- the test's side ----------------------------------------------------------------------

    def instrument(self, device_id: str, model: SimModel | str,
                   options: SimulatorOptions | Mapping[str, Any] | None = None, *, online: bool = True) -> MemoryInstrument:
        """Add a simulated instrument serving ``model`` (or a catalog simulator by name, e.g.
        ``"branin"``); it announces ``idle`` when ``online``."""
        if isinstance(model, str):
            info = SIMULATORS[model]
            opts = info.options(options if options is not None else {})
            model = info.build(opts)
        else:
            opts = options if isinstance(options, SimulatorOptions) else SimulatorOptions.model_validate(dict(options or {}))
        device = MemoryInstrument(self, validate_device_id(device_id), model, opts)
        self._devices[device_id] = device
        if online:
            device.start()
        return device

    def device(self, device_id: str) -> HandDevice:
        """A hand-made device that publishes what the test tells it to (requests land in ``.requests``)."""
        device = HandDevice(self, validate_device_id(device_id))
        self._devices[device_id] = device
        return device

    def publish(self, topic: str, payload: bytes) -> None:
        """A message arrives on ``topic``, as from the broker (statuses, results, anything)."""
        self._on_message(topic, payload)

    def call_at(self, monotonic: float, action: Callable[[], None]) -> None:
        """Run ``action`` in the loop's thread once the clock reaches ``monotonic``."""
        with self._cond:
            heapq.heappush(self._timers, _Timer(monotonic, next(self._order), action))
            self._cond.notify_all()

    def call_later(self, delay_s: float, action: Callable[[], None]) -> None:
        """Run ``action`` in the loop's thread ``delay_s`` seconds from now on the clock."""
        self.call_at(self.clock.monotonic() + delay_s, action)

    def when(self, condition: Callable[[], bool], action: Callable[[], None]) -> None:
        """Run ``action`` once, in the loop's thread, at the first pass where ``condition()`` holds."""
        with self._cond:
            self._watchers.append((condition, action))

    def lose_connection(self, detail: str = "connection lost") -> None:
        """The broker goes away: ``ConnectionLost``; nothing can be sent until :meth:`restore_connection`."""
        if not self._connected:
            return
        self._connected = False
        self._lost_at = self.clock.monotonic()
        self._connection += 1
        self._put(ConnectionLost(detail=detail, at=self.clock.now()))

    def restore_connection(self, *, session_present: bool = True) -> None:
        """The broker is back: ``ConnectionRestored``, then every result not acknowledged, again."""
        if self._connected:
            return
        self._connected = True
        down = max(0.0, self.clock.monotonic() - (self._lost_at or self.clock.monotonic()))
        self._lost_at = None
        self._put(ConnectionRestored(down_s=down, at=self.clock.now(), session_present=session_present))
        self._redeliver()

    def restart(self) -> None:
        """The orchestrator's connection restarts (same session): unacknowledged results come again."""
        self._connection += 1
        with self._cond:
            self._events = []  # what the old connection queued is gone with it
        self._redeliver()

    @property
    def unacknowledged(self) -> int:
        """How many delivered results wait for their acknowledgement."""
        with self._cond:
            return len(self._unacked)

    # -- inside ---------------------------------------------------------------------------

    def _put(self, event: HubEvent) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    def _run_due(self) -> None:
        while True:
            with self._cond:
                due = self._timers and self._timers[0].at <= self.clock.monotonic()
                timer = heapq.heappop(self._timers) if due else None
                watchers = [] if timer is not None else list(self._watchers)
            if timer is not None:
                timer.action()
                continue
            fired = [(c, a) for c, a in watchers if c()]
            if not fired:
                return
            with self._cond:
                self._watchers = [w for w in self._watchers if w not in fired]
            for _, action in fired:
                action()

    def _redeliver(self) -> None:
        with self._cond:
            held, self._unacked = list(self._unacked.values()), {}
        for device_id, body in held:
            self._result(device_id, body)

    def _delivery(self, device_id: str, body: bytes | TrialResult) -> Delivery:
        message_id = next(self._message_ids)
        with self._cond:
            self._unacked[message_id] = (device_id, body)
        return Delivery(message_id=message_id, qos=1, connection=self._connection)

    def _result(self, device_id: str, body: bytes | TrialResult) -> None:
        """A message on ``device_id``'s results topic: parsed (bytes) or already a result."""
        if isinstance(body, bytes):
            self._on_message(self._topics.results(device_id), body)
        elif self._connected:
            self._put(ResultReceived(device_id=device_id, result=body, received_at=self.clock.now(),
                                     delivery=self._delivery(device_id, body)))
        else:
            with self._cond:  # the broker holds it for the session
                self._unacked[next(self._message_ids)] = (device_id, body)

    def _status(self, device_id: str, status: DeviceStatus) -> None:
        with self._cond:
            last = self._statuses.get(device_id)
            changed = last is not status and last != status
            self._statuses[device_id] = status
        if changed:
            self._put(StatusChanged(device_id=device_id, status=status, received_at=self.clock.now()))

    def _on_message(self, topic: str, payload: bytes) -> None:
        # As MqttDeviceHub._on_message: a parsed event, or a MessageRejected with the reason.
        now = self.clock.now()
        if not topic.startswith(f"{self._topics.prefix}/devices/"):
            return
        device_id: str | None = None
        delivery: Delivery | None = None
        try:
            device_id, channel = self._topics.parse(topic)
            if channel == "results":
                if not self._connected:
                    with self._cond:
                        self._unacked[next(self._message_ids)] = (device_id, payload)
                    return
                delivery = self._delivery(device_id, payload)
                self._put(ResultReceived(device_id=device_id, result=parse_result(payload), received_at=now,
                                         delivery=delivery))
            elif channel == "status":
                if not payload:
                    with self._cond:
                        self._statuses.pop(device_id, None)
                    return
                self._status(device_id, parse_status_of(device_id, payload))
        except DeviceMessageError as exc:
            self._put(rejection(device_id, topic, payload, exc.message, now, delivery))


class HandDevice:
    """A device the test drives by hand: it publishes what it is told; requests it gets are kept.

    Attributes:
        requests: Every request dispatched to it, in order.
        on_request: Called with each request as it arrives (e.g. to answer it, now or later).
    """

    def __init__(self, hub: MemoryDeviceHub, device_id: str) -> None:
        self.hub, self.device_id = hub, device_id
        self.requests: list[RunTrial] = []
        self.on_request: Callable[[RunTrial], None] | None = None

    def receive(self, request: RunTrial) -> None:
        """A request arrives from the orchestrator."""
        self.requests.append(request)
        if self.on_request is not None:
            self.on_request(request)

    def status(self, state: str, measures: list[str], device_id: str | None = None) -> None:
        """Publish a (retained) status on its own status topic (or another device's)."""
        device_id = device_id or self.device_id
        self.hub.publish(self.hub.topics.status(device_id),
                         encode(DeviceStatus(state=state, device_id=device_id, measures=measures)))  # type: ignore[arg-type]

    def result(self, request_id: str, trial_id: str, measurements: dict[str, Any], status: str = "completed",
               error: str | None = None) -> None:
        """Publish a result on its own results topic (``None`` as a metric's value: not measured)."""
        body: dict[str, Any] = {"kind": "trial_result", "request_id": request_id, "trial_id": trial_id,
                                "status": status, "measurements": measurements}
        if error is not None:
            body["error"] = error
        self.hub.publish(self.hub.topics.results(self.device_id), json.dumps(body).encode())

    def raw(self, payload: bytes, topic: str | None = None) -> None:
        """Publish any bytes (on its results topic unless told another)."""
        self.hub.publish(topic or self.hub.topics.results(self.device_id), payload)


class MemoryInstrument:
    """A simulated instrument in the hub's process, as ``simulators.SimInstrument`` behaves on a broker.

    One trial at a time; requests that arrive meanwhile wait. A repeated request id is answered
    from its store without running again. Durations, noise, drift and failures (an error, a
    dropped request, a garbage answer, going offline) follow its options, with each run's random
    numbers drawn from ``(seed, trial, attempt, runs before)`` as the broker instrument does.
    """

    def __init__(self, hub: MemoryDeviceHub, device_id: str, model: SimModel, options: SimulatorOptions) -> None:
        self.hub, self.device_id, self.model, self.options = hub, device_id, model, options
        self._seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**63)
        self._queue: list[RunTrial] = []
        self._store: dict[str, TrialResult] = {}
        self._runs: dict[str, int] = {}
        self.executions: dict[str, int] = {}
        """Runs started per request id."""
        self._state = "offline"
        self._statuses: dict[str, DeviceStatus] = {}
        self._running = False
        self._online = False

    @property
    def measures(self) -> list[str]:
        """Metrics it reports."""
        return list(self.model.metrics)

    def start(self) -> None:
        """Come online: announce ``idle`` (or busy), then serve what waited meanwhile."""
        self._online = True
        self._announce("busy" if self._queue else "idle")
        self._next()

    def stop(self) -> None:
        """Go offline (its last will): requests sent meanwhile wait for :meth:`start`."""
        self._online = False
        self._announce("offline")

    def receive(self, request: RunTrial) -> None:
        """A request arrives (kept while it is offline or busy)."""
        self._queue.append(request)
        self._next()

    def _announce(self, state: str) -> None:
        self._state = state
        status = self._statuses.get(state)
        if status is None:  # frozen: one per state will do
            status = self._statuses[state] = DeviceStatus(state=state, device_id=self.device_id,  # type: ignore[arg-type]
                                                          measures=self.measures)
        self.hub._status(self.device_id, status)

    def _next(self) -> None:
        while self._online and not self._running and self._queue:
            request = self._queue.pop(0)
            stored = self._store.get(request.request_id)
            if stored is not None:
                self.hub._result(self.device_id, stored)
                continue
            self._run(request)
        if self._online and not self._running and not self._queue and self._state != "idle":
            self._announce("idle")

    def _run(self, request: RunTrial) -> None:
        before = self._runs.get(request.request_id, 0)
        trials_before = sum(self._runs.values())
        self._runs[request.request_id] = before + 1
        self.executions[request.request_id] = self.executions.get(request.request_id, 0) + 1
        attempt = f":{request.trial_id}:{request.request_id.rsplit(':', 1)[-1]}"
        rng = run_random(self._seed, request.trial_id, attempt, before)
        outcome = simulate(self.model, self.options, request.parameters, rng, trials_before=trials_before)
        self._running = True
        if self._state != "busy":
            self._announce("busy")
        delay = outcome.duration_s
        if outcome.fate == "offline":
            self._announce("offline")
            self.hub.call_later(self.options.failures.offline_s, lambda: self._announce("busy"))
            delay += self.options.failures.offline_s

        def finish() -> None:
            self._running = False
            if not self._online:
                self._queue.insert(0, request)  # stopped mid-run: nothing recorded, it comes again
                return
            if outcome.fate == "drop":
                pass
            elif outcome.values is None:
                self._answer(TrialResult(request_id=request.request_id, trial_id=request.trial_id, status="failed",
                                         error=outcome.error or "failed"))
            else:
                sems = outcome.sems or {}
                result = TrialResult(request_id=request.request_id, trial_id=request.trial_id, status="completed",
                                     measurements={k: Measurement(mean=v, sem=sems.get(k))
                                                   for k, v in outcome.values.items()})
                if outcome.fate == "garbage":
                    whole = encode(result)
                    self.hub._result(self.device_id, whole[: len(whole) // 2])
                else:
                    self._answer(result)
            self._next()

        self.hub.call_later(delay, finish)

    def _answer(self, result: TrialResult) -> None:
        self._store[result.request_id] = result
        self.hub._result(self.device_id, result)
