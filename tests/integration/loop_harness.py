"""What the loop tests of issue 14 share: a Mosquitto of the test's own (with extra config lines),
a hand-made device (a plain MQTT client), a seeded log, and a campaign loop run in a thread
with an injected clock, stopped the way a lost lease stops it (nothing written on the way out)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from campaigns import (
    CampaignCreated,
    CampaignSpec,
    EventBase,
    SuggestedTrial,
    TrialDispatched,
    TrialsSuggested,
    parse_spec,
)
from devices import DeviceStatus, MqttConnection, MqttDeviceHub, MqttSettings, Topics, connect, encode
from flows.engine.loop import CampaignLoop, LoopOptions
from optimizer import AxOptimizer
from storage import MongoEventStore
from tests.conftest_brokers import Mosquitto

CAMPAIGN = "trust"


def private_mosquitto(directory: Path, *extra: str) -> Mosquitto:
    """A started Mosquitto of one test, with ``extra`` lines appended to its config."""
    directory.mkdir(parents=True, exist_ok=True)
    broker = Mosquitto(directory)
    if extra:
        broker.config.write_text(broker.config.read_text() + "".join(f"{line}\n" for line in extra))
    broker.start()
    return broker


def spec(devices: list[dict[str, Any]], **extra: object) -> CampaignSpec:
    return parse_spec({
        "name": CAMPAIGN, "seed": 5,
        "parameters": [{"name": "x1", "type": "float", "bounds": [-5, 10]},
                       {"name": "x2", "type": "float", "bounds": [0, 15]}],
        "objectives": [{"name": "branin", "minimize": True}],
        "budget": {"max_trials": 5}, "trial_timeout_s": 30, "optimizer": {"method": "sobol"},
        "devices": devices, **extra,
    })


def seed(store: MongoEventStore, campaign: CampaignSpec, dispatched: dict[str, str],
         after: Callable[[int], list[EventBase]] = lambda seq: [], campaign_id: str = CAMPAIGN) -> None:
    """Log a campaign whose trial ``i`` went to ``dispatched[str(i)]`` with request ``r-i``."""
    fields = {"campaign_id": campaign_id, "actor": "orchestrator"}
    trials = [SuggestedTrial(trial_id=t, parameters={"x1": float(i), "x2": 5.0}, generator="human")
              for i, t in enumerate(dispatched)]
    events: list[EventBase] = [CampaignCreated(campaign_id=campaign_id, seq=1, actor="user:test", spec=campaign),
                               TrialsSuggested(**fields, seq=2, trials=trials)]
    for t, device in dispatched.items():
        events.append(TrialDispatched(**fields, seq=len(events) + 1, trial_id=t, device_id=device, request_id=f"r-{t}"))
    events += after(len(events) + 1)
    store.append(events)


class ManualClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Device:
    """A hand-made device: a plain MQTT client that publishes what the test tells it to."""

    def __init__(self, settings: MqttSettings) -> None:
        self.topics = Topics(settings.prefix)
        self.conn: MqttConnection = connect(settings, client_id=f"dev-{uuid.uuid4().hex[:8]}")
        self._retained: list[str] = []

    def status(self, device_id: str, state: str, measures: list[str]) -> None:
        topic = self.topics.status(device_id)
        self.conn.publish(topic, encode(DeviceStatus(state=state, device_id=device_id, measures=measures)),  # type: ignore[arg-type]
                          retain=True)
        self._retained.append(topic)

    def result(self, device_id: str, request_id: str, trial_id: str, measurements: dict[str, Any],
               status: str = "completed") -> None:
        body = {"kind": "trial_result", "request_id": request_id, "trial_id": trial_id, "status": status,
                "measurements": measurements}
        self.conn.publish(self.topics.results(device_id), json.dumps(body).encode())

    def raw(self, topic: str, payload: bytes) -> None:
        self.conn.publish(topic, payload)

    def close(self) -> None:
        for topic in self._retained:
            self.conn.publish(topic, b"", retain=True)
        self.conn.close()


class _Stopped(Exception):
    """Ends a test's loop as a lost lease would: at the start of a pass, writing nothing."""


@contextmanager
def running_loop(store: MongoEventStore, settings: MqttSettings, clock: ManualClock | None = None,
                 options: LoopOptions | None = None) -> Iterator[CampaignLoop]:
    """The campaign loop, running in a thread until the block ends."""
    stop = threading.Event()
    failure: list[BaseException] = []
    with MqttDeviceHub(settings, client_id=f"hub-{uuid.uuid4().hex[:8]}") as hub:
        loop = CampaignLoop(CAMPAIGN, store, hub, make_optimizer=partial(AxOptimizer.rebuild, threads=1),
                            options=options, clock=clock or time.monotonic,
                            run_info={"host": socket.gethostname(), "pid": os.getpid()},
                            lease_lost=lambda: _Stopped() if stop.is_set() else None)

        def target() -> None:
            try:
                loop.run()
            except _Stopped:
                pass
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
                failure.append(exc)

        thread = threading.Thread(target=target, name="loop-under-test")
        thread.start()
        try:
            yield loop
        finally:
            stop.set()
            thread.join(60)
    if failure:
        raise failure[0]


def wait_log(store: MongoEventStore, predicate: Callable[[list[EventBase]], bool], timeout_s: float = 20.0) -> list[EventBase]:
    """Read the log until ``predicate`` holds (or the deadline passes); return the last read."""
    deadline = time.monotonic() + timeout_s
    while True:
        events = list(store.read(CAMPAIGN))
        if predicate(events) or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def kinds(events: list[EventBase], kind: str) -> list[Any]:
    return [e for e in events if e.kind == kind]  # type: ignore[attr-defined]
