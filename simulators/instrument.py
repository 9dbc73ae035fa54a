"""A simulated instrument that speaks MQTT protocol v1 exactly as lab hardware should.

It runs one trial at a time, keeps every result by ``request_id`` (in memory, and in a JSON
lines file when given one), and answers a repeated ``request_id`` from that store without
running the trial again: at-least-once delivery never becomes at-least-once execution. A
repeat is the same ``request_id`` for the same campaign id, trial id and parameters; a known
``request_id`` that asks for something else (another campaign reusing it) is not answered from
the store, nor run: it gets a ``failed`` result saying so (docs/protocol.md).

It keeps a persistent session under a stable client id, and acknowledges a request only once
it has answered it, so a request sent while it is away, or one it was running when it died,
is delivered again when it returns. With a record file, every run is also journalled before
it starts (``<record>.started``): :func:`read_executions` and :func:`read_completions` count
started and finished runs across restarts.

What it measures is a :class:`~simulators.SimModel` (a catalog entry, or any model given),
and how it behaves — durations, noise, drift, and failures: an error result, a request
dropped, a garbage payload, going offline for a while — follows its
:class:`~simulators.SimulatorOptions`. Each run draws its random numbers from its own
generator, seeded from ``(seed, trial, attempt, how many times this instrument ran it)``
(:func:`~simulators.behaviour.run_random`), so results do not depend on run order.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from campaigns.errors import BrokerError, DeviceMessageError, SpecError
from devices import (
    Delivery,
    DeviceStatus,
    Measurement,
    MqttConnection,
    MqttSettings,
    RunTrial,
    Topics,
    TrialResult,
    connect,
    encode,
    parse_request,
    parse_result,
    validate_device_id,
)

from .behaviour import SimulatorOptions, run_random, simulate
from .catalog import SIMULATORS, SimulatorInfo
from .model import SimModel
from .record import append_line, executions_path, read_executions, read_fingerprints, request_fingerprint

__all__ = ["SimInstrument", "simulator_info"]

log = logging.getLogger(__name__)

State = Literal["idle", "busy", "offline"]
_RETRY_S = 0.5
_DROPPED = b""  # a run that never answers: nothing to send


def simulator_info(simulator: str) -> SimulatorInfo:
    """Look a simulator up in the catalog.

    Raises:
        SpecError: No simulator of that name.
    """
    try:
        return SIMULATORS[simulator]
    except KeyError:
        raise SpecError(
            f"unknown simulator {simulator!r}",
            f"choose one of: {', '.join(sorted(SIMULATORS))}",
        ) from None


class SimInstrument:
    """A simulated device on the broker.

    Args:
        device_id: Its id (one topic level).
        simulator: Catalog name (e.g. ``branin``), a catalog entry, or any
            :class:`~simulators.SimModel` (e.g. an emulator fitted from data).
        options: Simulator options: the entry's options, or for a model the behaviour
            options (:class:`~simulators.SimulatorOptions`).
        settings: Broker URL and protocol prefix.
        record_path: JSON lines file of answered results; loaded on start, appended to.
        client_id: MQTT client id; stable by default so the broker keeps its session.
        clock: Monotonic seconds (for ``drift.per_hour``); injected for tests.

    Raises:
        SpecError: Unknown simulator.
        pydantic.ValidationError: Invalid options.
        DeviceMessageError: Invalid device id.
    """

    def __init__(
        self,
        device_id: str,
        simulator: str | SimulatorInfo | SimModel,
        options: Mapping[str, Any] | SimulatorOptions,
        settings: MqttSettings,
        *,
        record_path: Path | None = None,
        client_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device_id = validate_device_id(device_id)
        if isinstance(simulator, str | SimulatorInfo):
            info = simulator_info(simulator) if isinstance(simulator, str) else simulator
            self._options = info.options(options)
            self._model = info.build(self._options)
        elif isinstance(simulator, SimModel):
            self._options = options if isinstance(options, SimulatorOptions) else SimulatorOptions.model_validate(dict(options))
            self._model = simulator
        else:
            raise TypeError("simulator: a catalog name, a SimulatorInfo, or a model with inputs, metrics and evaluate()")
        self._seed = self._options.seed if self._options.seed is not None else random.SystemRandom().randrange(2**63)
        self._clock = clock
        self._born = clock()
        self._settings = settings
        self._record_path = record_path
        self._client_id = client_id or f"closedloop-sim-{device_id}"
        self._topics = Topics(settings.prefix)
        self._store: dict[str, TrialResult] = {}
        self._runs: dict[str, int] = {}  # runs started per request_id, across restarts
        self._fingerprints: dict[str, str] = {}  # what each request_id asked for when first run
        self._executions: dict[str, int] = {}
        self._completions: dict[str, int] = {}
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[tuple[RunTrial, Delivery | None] | None] = (
            queue.SimpleQueue()
        )
        self._stopping = threading.Event()
        self._state: State = "idle"
        self._connection: MqttConnection | None = None
        self._worker: threading.Thread | None = None

    @property
    def measures(self) -> list[str]:
        """Metrics this instrument reports."""
        return list(self._model.metrics)

    @property
    def executions(self) -> dict[str, int]:
        """How many runs of each ``request_id`` this instance started (a copy).

        Across restarts, see :func:`read_executions`.
        """
        with self._lock:
            return dict(self._executions)

    @property
    def completions(self) -> dict[str, int]:
        """How many runs of each ``request_id`` this instance finished and recorded (a copy).

        Across restarts, see :func:`read_completions`.
        """
        with self._lock:
            return dict(self._completions)

    def _status(self, state: State) -> bytes:
        return encode(DeviceStatus(state=state, device_id=self.device_id, measures=self.measures))

    def start(self) -> None:
        """Load the record, connect, announce ``idle`` and start serving requests.

        Raises:
            BrokerError: The broker cannot be reached.
        """
        if self._connection is not None:
            return
        self._load_record()
        self._stopping.clear()
        self._connection = connect(
            self._settings,
            client_id=self._client_id,
            will=(self._topics.status(self.device_id), self._status("offline")),
            subscriptions=[self._topics.requests(self.device_id)],
            on_message=self._on_message,
            on_connect=self._announce,
            manual_ack=True,
        )
        self._worker = threading.Thread(
            target=self._serve, name=f"sim-{self.device_id}", daemon=True
        )
        self._worker.start()

    def stop(self) -> None:
        """Stop serving, publish ``offline``, disconnect (the session stays on the broker).

        A trial in progress is abandoned unrecorded and its request unacknowledged, so the
        broker delivers it again when the instrument returns.
        """
        if self._connection is None:
            return
        self._stopping.set()
        self._requests.put(None)
        if self._worker is not None:
            self._worker.join(10)
        try:
            self._set_state("offline")
        except BrokerError as exc:
            log.warning("device %s: could not publish offline: %s", self.device_id, exc)
        self._connection.close()
        self._connection = None

    def __enter__(self) -> SimInstrument:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- network thread ------------------------------------------------------------------

    def _announce(self, connection: MqttConnection) -> None:
        # On every (re)connect: the broker may have published our last will meanwhile.
        connection.publish(
            self._topics.status(self.device_id), self._status(self._state),
            retain=True, timeout_s=None,
        )

    def _on_message(self, topic: str, payload: bytes, delivery: Delivery | None) -> bool:
        # Returns whether the acknowledgement is held until the request is answered.
        if topic != self._topics.requests(self.device_id):
            log.debug("device %s ignored a message on %s", self.device_id, topic[:200])
            return False
        try:
            request = parse_request(payload)
        except DeviceMessageError as exc:
            log.warning("device %s ignored a request: %s", self.device_id, exc.message)
            return False
        self._requests.put((request, delivery))
        return True

    # -- worker thread -------------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        self._state = state
        assert self._connection is not None
        self._connection.publish(
            self._topics.status(self.device_id), self._status(state), retain=True
        )

    def _try_state(self, state: State) -> None:
        try:
            self._set_state(state)
        except BrokerError as exc:  # announced again on reconnect (_announce)
            log.warning("device %s: %s", self.device_id, exc)

    def _serve(self) -> None:
        while not self._stopping.is_set():
            item = self._requests.get()
            if item is None:
                return
            try:
                if not self._answer(*item):
                    return
            except (OSError, BrokerError) as exc:
                # The instrument stays up: the request stays unacknowledged and comes again.
                log.error("device %s: could not serve %s: %s", self.device_id, item[0].request_id, exc)
                self._try_state("idle")

    def _answer(self, request: RunTrial, delivery: Delivery | None) -> bool:
        """Serve one request; False when the instrument is stopping."""
        fingerprint = request_fingerprint(request)
        with self._lock:
            result = self._store.get(request.request_id)
            first = self._fingerprints.get(request.request_id)
        if first is not None and first != fingerprint:
            # Not a repeat: the stored answer belongs to another request (another campaign's).
            log.warning("device %s: request id %s reused for another request; not run", self.device_id,
                        request.request_id)
            payload = encode(self._failed(request, f"request id {request.request_id} was already used for "
                                          "another campaign, trial or parameters: not run; send a new request id"))
        elif result is not None:
            log.info("device %s: %s answered from store", self.device_id, request.request_id)
            payload = encode(result)
        else:
            self._try_state("busy")
            answer = self._run(request, fingerprint)
            if answer is None:
                return False  # stopped mid-trial: unacknowledged, so it comes again
            payload = answer
        if payload and not self._send(payload):  # empty: dropped, nothing to send
            return False
        if delivery is not None and self._connection is not None:
            self._connection.ack(delivery)
        if self._requests.empty():
            self._try_state("idle")
        return True

    def _send(self, payload: bytes) -> bool:
        # The result is recorded: keep trying through broker outages until it is out.
        while not self._stopping.is_set():
            try:
                assert self._connection is not None
                self._connection.publish(self._topics.results(self.device_id), payload)
                return True
            except BrokerError as exc:
                log.warning("device %s: %s", self.device_id, exc)
                self._stopping.wait(_RETRY_S)
        return False

    def _run(self, request: RunTrial, fingerprint: str) -> bytes | None:
        """Run a request (its ``request_fingerprint`` kept and journalled): the payload to publish
        (``_DROPPED``: none), or None when stopping."""
        with self._lock:
            self._fingerprints.setdefault(request.request_id, fingerprint)
            before = self._runs.get(request.request_id, 0)
            trials_before = sum(self._runs.values())
            self._runs[request.request_id] = before + 1
            self._executions[request.request_id] = self._executions.get(request.request_id, 0) + 1
        if self._record_path is not None:
            started = {"request_id": request.request_id, "trial_id": request.trial_id,
                       "request": fingerprint}
            append_line(executions_path(self._record_path), json.dumps(started).encode())
        # Keyed by trial and attempt (the request id's last field), not by the campaign or its
        # instance: a replay, or the same campaign in another home, draws the same numbers.
        attempt = f":{request.trial_id}:{request.request_id.rsplit(':', 1)[-1]}"
        rng = run_random(self._seed, request.trial_id, attempt, before)
        try:
            outcome = simulate(self._model, self._options, request.parameters, rng, trials_before=trials_before,
                               hours=(self._clock() - self._born) / 3600.0)
        except Exception as exc:  # a simulator bug becomes a failed trial, reported
            log.exception("device %s: trial %s crashed", self.device_id, request.trial_id)
            return encode(self._record(self._failed(request, f"simulator error: {exc}")))
        if outcome.fate == "offline":
            log.info("device %s: offline for %.1f s (simulated outage)", self.device_id,
                     self._options.failures.offline_s)
            self._try_state("offline")
            if self._stopping.wait(self._options.failures.offline_s):
                return None
            self._try_state("busy")
        if self._stopping.wait(outcome.duration_s):
            return None  # stopped mid-trial: like a power cut, nothing is recorded
        if outcome.fate == "drop":
            log.info("device %s: dropped %s (simulated)", self.device_id, request.request_id)
            return _DROPPED
        if outcome.values is None:
            return encode(self._record(self._failed(request, outcome.error or "failed")))
        sems = outcome.sems or {}
        result = TrialResult(
            request_id=request.request_id,
            trial_id=request.trial_id,
            status="completed",
            measurements={k: Measurement(mean=v, sem=sems.get(k)) for k, v in outcome.values.items()},
        )
        if outcome.fate == "garbage":
            log.info("device %s: garbage answer to %s (simulated)", self.device_id, request.request_id)
            whole = encode(result)
            return whole[: len(whole) // 2]  # cut short, as by a firmware bug: not JSON
        return encode(self._record(result))

    @staticmethod
    def _failed(request: RunTrial, error: str) -> TrialResult:
        return TrialResult(
            request_id=request.request_id, trial_id=request.trial_id, status="failed", error=error
        )

    # -- store ---------------------------------------------------------------------------

    def _record(self, result: TrialResult) -> TrialResult:
        # The result is durable before it is sent: a crash in between is answered from
        # the record when the orchestrator repeats the request.
        if self._record_path is not None:
            append_line(self._record_path, encode(result))
        with self._lock:
            self._store[result.request_id] = result
            self._completions[result.request_id] = self._completions.get(result.request_id, 0) + 1
        return result

    def _load_record(self) -> None:
        if self._record_path is None:
            return
        with self._lock:
            for request_id, runs in read_executions(self._record_path).items():
                self._runs[request_id] = max(self._runs.get(request_id, 0), runs)
            for request_id, fingerprint in read_fingerprints(self._record_path).items():
                self._fingerprints.setdefault(request_id, fingerprint)
        if not self._record_path.exists():
            return
        loaded = 0
        for number, line in enumerate(self._record_path.read_bytes().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                result = parse_result(line)
            except DeviceMessageError as exc:  # e.g. a line cut short by a crash
                log.warning("%s line %d skipped: %s", self._record_path, number, exc.message)
                continue
            with self._lock:
                self._store[result.request_id] = result
            loaded += 1
        log.info("device %s: %d results loaded from %s", self.device_id, loaded, self._record_path)
