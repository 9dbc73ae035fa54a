"""What the loop benchmarks share: a real broker and log in a temporary directory, campaigns on them.

``Stack`` starts Mosquitto (``set_tcp_nodelay true``, as the README advises for production)
and an nx-27017 server (``storage.EmbeddedMongo``) in a temporary directory; ``run_campaign``
creates a campaign in its log, starts simulated instruments on its broker and runs the loop —
``CampaignLoop`` directly, or the Prefect ``campaign`` flow (ephemeral Prefect) — and returns
the folded log with the wall time.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from campaigns import CampaignCreated, CampaignSpec, CampaignState, fold, parse_spec
from devices import MqttDeviceHub, MqttSettings
from simulators import SimInstrument
from storage import EmbeddedMongo, MongoEventStore

__all__ = ["Run", "Stack", "branin_spec", "run_campaign"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """Mosquitto + nx-27017 in a temporary directory, for one benchmark process."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="closedloop-bench-"))
        self.port = _free_port()
        self._mosquitto: subprocess.Popen[bytes] | None = None
        self._mongo = EmbeddedMongo(self.root / "db", port=_free_port())
        self.mongo_uri = ""

    @property
    def mqtt_url(self) -> str:
        """The broker's URL."""
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Stack:
        """Start both servers; return self."""
        binary = "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else shutil.which("mosquitto")
        if binary is None:
            raise SystemExit("mosquitto not found (apt-get install mosquitto)")
        conf = self.root / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
                        "persistence false\nlog_dest none\n")
        self._mosquitto = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("mosquitto did not start") from None
                time.sleep(0.02)
        self.mongo_uri = self._mongo.start()
        return self

    def stop(self) -> None:
        """Stop both servers and remove the directory."""
        if self._mosquitto is not None:
            self._mosquitto.terminate()
            self._mosquitto.wait(10)
        self._mongo.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def mqtt(self, prefix: str | None = None) -> MqttSettings:
        """Settings for the broker under a fresh topic prefix."""
        return MqttSettings(url=self.mqtt_url, prefix=prefix or f"b-{uuid.uuid4().hex[:8]}")

    def store(self, database: str) -> MongoEventStore:
        """An event store on the log server."""
        return MongoEventStore(self.mongo_uri, database=database)


def branin_spec(name: str, devices: int, *, max_trials: int, batch_size: int = 1, dispatch: str = "async",
                method: str = "sobol", duration_s: tuple[float, float] = (0.0, 0.0), seed: int = 1,
                initialization_trials: int | None = None, trial_timeout_s: float = 120.0) -> CampaignSpec:
    """A 2-D Branin campaign on ``devices`` simulated instruments with uniform durations."""
    optimizer: dict[str, Any] = {"method": method}
    if initialization_trials is not None:
        optimizer["initialization_trials"] = initialization_trials
    return parse_spec({
        "name": name, "seed": seed,
        "parameters": [{"name": "x1", "type": "float", "bounds": [-5, 10]},
                       {"name": "x2", "type": "float", "bounds": [0, 15]}],
        "objectives": [{"name": "branin", "minimize": True}],
        "budget": {"max_trials": max_trials}, "batch_size": batch_size, "dispatch": dispatch,
        "trial_timeout_s": trial_timeout_s, "optimizer": optimizer,
        "devices": [{"id": f"dev-{i}", "simulator": "branin",
                     "options": {"duration_s": list(duration_s), "seed": seed * 100 + i}} for i in range(devices)],
    })


@dataclass
class Run:
    """One campaign run: its folded log, its events and its wall time (seconds)."""

    state: CampaignState
    events: list[Any]
    wall_s: float
    loop_s: float  # from RunStarted to CampaignFinished, as the log times them


def run_campaign(stack: Stack, spec: CampaignSpec, *, prefect: bool = False, database: str | None = None,
                 threads: int | None = 1, make_optimizer: Any = None, options: Any = None) -> Run:
    """Create ``spec``'s campaign, start its instruments, run the loop to the budget.

    Args:
        stack: The running servers.
        spec: The campaign; each device is a ``SimInstrument`` with the device's options.
        prefect: Run the Prefect ``campaign`` flow (ephemeral Prefect) instead of
            ``CampaignLoop`` directly.
        make_optimizer: ``CampaignLoop``'s (default: ``AxOptimizer.rebuild``); not with ``prefect``.
        options: ``CampaignLoop``'s ``LoopOptions`` (default: its defaults); not with ``prefect``.
        database: The log's database (a fresh one by default).
        threads: Torch threads of the optimizer.
    """
    database = database or f"bench_{uuid.uuid4().hex[:8]}"
    prefix = f"b-{uuid.uuid4().hex[:8]}"
    mqtt = stack.mqtt(prefix)
    store = stack.store(database)
    store.append([CampaignCreated(campaign_id=spec.name, seq=1, actor="user:bench", spec=spec)])
    with ExitStack() as stack_:
        for d in spec.devices:
            stack_.enter_context(SimInstrument(d.id, d.simulator or "branin", d.options, mqtt))
        started = time.perf_counter()
        if prefect:
            env = {"CLOSEDLOOP_HOME": str(stack.root / "home"), "CLOSEDLOOP_MQTT_URL": stack.mqtt_url,
                   "CLOSEDLOOP_MQTT_PREFIX": prefix, "CLOSEDLOOP_MONGODB_URI": stack.mongo_uri,
                   "CLOSEDLOOP_MONGODB_DATABASE": database}
            if threads is not None:
                env["CLOSEDLOOP_OPTIMIZER_THREADS"] = str(threads)
            os.environ.update(env)
            from flows.prefect.flow import campaign

            campaign(spec.name)
        else:
            from functools import partial

            from flows.engine.loop import CampaignLoop
            from optimizer import AxOptimizer

            hub = MqttDeviceHub(mqtt, client_id=f"bench-orchestrator-{uuid.uuid4().hex[:6]}")
            hub.start()
            try:
                CampaignLoop(spec.name, store, hub,
                             make_optimizer=make_optimizer or partial(AxOptimizer.rebuild, threads=threads),
                             run_info={"host": socket.gethostname(), "pid": os.getpid()},
                             options=options).run()
            finally:
                hub.stop()
        wall = time.perf_counter() - started
    events = store.read(spec.name)
    store.close()
    state = fold(events)
    run_started = next(e.time for e in events if e.kind == "RunStarted")
    finished = next(e.time for e in reversed(events) if e.kind == "CampaignFinished")
    return Run(state, events, wall, (finished - run_started).total_seconds())
