"""The hostile part of ``chaos.py --hostile``: a same-named twin campaign and a rogue publisher.

- ``Twin``: a second campaign with the chaos campaign's name, in another home and another
  database, run by its own orchestrator on the same broker and the same instruments for as
  long as the chaos lasts. Two labs that named their campaigns alike must never read each
  other's results.
- ``Rogue``: an MQTT client that listens to every device's results and sends lies: each real
  result again, with other numbers, on another device's results topic and on the topic of a
  device that does not exist; and, every few tenths of a second, an old result replayed
  exactly on its own topic.
- ``wrong_values``: the check that matters: every measurement a log holds must equal what the
  instrument the request was sent to recorded for that request, and (the instruments are
  noise-free Branin) the Branin value at the trial's parameters.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from campaigns import LateResultRecorded, TrialCompleted, TrialDispatched, fold

__all__ = ["Rogue", "Twin", "branin", "wrong_values"]


def branin(x1: float, x2: float) -> float:
    """Branin, written out independently of the simulator."""
    b, c, r, s, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 6.0, 10.0, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - r) ** 2 + s * (1 - t) * math.cos(x1) + s


class Rogue:
    """Publishes well-formed lies about real requests (see the module docstring)."""

    def __init__(self, port: int, prefix: str, devices: tuple[str, ...], seed: int) -> None:
        self.prefix, self.devices = prefix, devices
        self.rng = random.Random(seed)
        self.seen: list[tuple[str, bytes]] = []
        self._mine: set[tuple[str, bytes]] = set()  # what it sent: never taken for a device's result
        self.sent = {"wrong_device": 0, "unknown_device": 0, "replayed": 0}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"rogue-{seed}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/devices/+/results", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 5)
        self.client.connect_async("127.0.0.1", port)
        self._replayer = threading.Thread(target=self._replay, daemon=True)

    def start(self) -> None:
        self.client.loop_start()
        self._replayer.start()

    def stop(self) -> None:
        self._stop.set()
        self._replayer.join(5)
        self.client.disconnect()
        self.client.loop_stop()

    def _publish(self, topic: str, payload: bytes, what: str) -> None:
        with self._lock:
            self._mine.add((topic, payload))
        if self.client.publish(topic, payload, qos=1).rc == mqtt.MQTT_ERR_SUCCESS:
            with self._lock:
                self.sent[what] += 1

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        device = message.topic.split("/")[-2]
        if device not in self.devices or message.retain:
            return  # our own lies, or a stale retained message
        payload = bytes(message.payload)
        with self._lock:
            if (message.topic, payload) in self._mine:
                return
            self.seen.append((message.topic, payload))
        try:
            result = json.loads(payload)
            result["measurements"] = {k: 1000.0 + self.rng.random() for k in result.get("measurements", {})}
        except (ValueError, AttributeError, TypeError):
            return
        lie = json.dumps(result).encode()
        other = self.rng.choice([d for d in self.devices if d != device])
        self._publish(f"{self.prefix}/devices/{other}/results", lie, "wrong_device")
        self._publish(f"{self.prefix}/devices/rogue-9/results", lie, "unknown_device")

    def _replay(self) -> None:
        while not self._stop.wait(self.rng.uniform(0.1, 0.5)):
            with self._lock:
                old = self.rng.choice(self.seen) if self.seen else None
            if old is not None:
                self._publish(old[0], old[1], "replayed")


class Twin:
    """The chaos campaign's namesake in another home and database, on the same instruments."""

    def __init__(self, root: Path, env: dict[str, str], spec: dict[str, Any], closedloop: str) -> None:
        root.mkdir()
        self.root, self.closedloop = root, closedloop
        self.env = {**env, "CLOSEDLOOP_HOME": str(root / "home"), "CLOSEDLOOP_MONGODB_DATABASE": "twin"}
        self.spec = root / "twin.yaml"
        self.spec.write_text(json.dumps(spec))
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def ensure_running(self) -> None:
        """(Re)start the twin's orchestrator if it is not running (e.g. it gave up on a dead database)."""
        if self.proc is not None and self.proc.poll() is None:
            return
        cmd = ["run", str(self.spec)] if self.runs == 0 else ["resume", str(json.loads(self.spec.read_text())["name"])]
        with (self.root / "orchestrator.log").open("ab") as out:
            self.proc = subprocess.Popen([self.closedloop, *cmd, "--no-simulators", "--quiet"], env=self.env,
                                         stdout=out, stderr=out, start_new_session=True)
        self.runs += 1


def wrong_values(events: list[Any], records: dict[str, Path]) -> list[str]:
    """Request ids whose logged measurements are not what the instrument sent the request recorded
    for it, or not Branin at the trial's parameters."""
    dispatched = {e.request_id: e.device_id for e in events if isinstance(e, TrialDispatched)}
    trials = fold(events).trials
    recorded: dict[tuple[str, str], dict[str, Any]] = {}
    for device, path in records.items():
        for line in path.read_bytes().splitlines() if path.exists() else []:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("status") == "completed":
                recorded.setdefault((device, r.get("request_id")), r.get("measurements", {}))
    wrong = []
    for e in events:
        if not isinstance(e, TrialCompleted | LateResultRecorded):
            continue
        device = dispatched.get(e.request_id)
        mine = recorded.get((device, e.request_id)) if device is not None else None
        p = trials[e.trial_id].parameters
        truth = branin(float(p["x1"]), float(p["x2"]))
        ok = device == e.device_id and mine is not None and all(
            abs(e.measurements[k].mean - (v["mean"] if isinstance(v, dict) else v)) <= 1e-9 for k, v in mine.items())
        if not ok or abs(e.measurements["branin"].mean - truth) > 1e-6 * max(1.0, abs(truth)):
            wrong.append(e.request_id)
    return wrong
