"""Chaos: a simulated campaign survives SIGKILLs and restarts of everything around it (issue 3).

Everything is real and lives in a temporary directory: a Mosquitto with ``persistence true``,
an nx-27017 MongoDB-wire server on a data directory, one ``prefect server start``, three
standalone simulated instruments (``closedloop sim branin --record ...``), and the
orchestrator run as a user runs it: ``closedloop run SPEC --no-simulators`` the first time,
``closedloop resume ID --no-simulators`` after that.

The chaos loop, seeded (``--seed``), repeats until ``--kills`` orchestrators have been killed:

1. start the orchestrator; wait until its ``RunStarted`` is in the log (or, now and then, kill
   it during its start-up instead);
2. let it run a random 2-8 s, during which the plan may restart Mosquitto (SIGTERM, start),
   SIGKILL and restart the database server, or SIGKILL and restart a simulated device;
3. SIGKILL the orchestrator's process group;
4. the plan may do the same restarts between two orchestrators.

Each kind of restart happens at least ``max(2, kills // 4)`` times (with ``--kills`` 2 or more),
at least once during a run and once between runs (a planned during-run restart falls between
runs when that cycle's orchestrator is killed during its start-up). Then ``closedloop resume``
runs the campaign to its budget (exit 0 expected), and the checks read the log and the
instruments' own records (``<record>`` of finished runs, ``<record>.started`` of started runs):

- forks: the seqs are not exactly 1..N, or two stored documents share a seq (raw collection);
- results lost: a result an instrument recorded as completed for a request of this campaign that
  the log holds in no form. ``TrialCompleted`` or ``LateResultRecorded`` hold it with its
  measurements; a result for an attempt the orchestrator had already retried (``TrialRetried``
  names its request id; protocol v1 ignores it) is counted apart as "discarded", not as lost;
- trials executed twice: a request id an instrument completed more than once, or a trial whose
  result was already logged when another request of it was dispatched and run to completion.
  Runs started but killed with their instrument (the request returns and runs again, with no
  result recorded the first time) are counted apart: that is honest, not a duplicate;
- the campaign finished with ``budget_exhausted`` and completed + failed = the budget; every
  logged measurement equals what the instrument recorded for that request.

With ``--hostile`` (``benchmarks/_hostile.py``), while the plan runs: a second campaign with
the same name, in another home and database, shares the broker and the instruments; and a rogue
MQTT client sends every real result again with other numbers on another device's topic and on
an unknown device's topic, and replays old results. Then also: wrong values recorded (a logged
measurement that is not what the instrument the request went to recorded for that request, in
either campaign's log) must be 0, and no orchestrator run may write more rejection events
than ``flows.engine.rejections`` bounds a run to, however many lies come.

With ``--service`` (``benchmarks/_service_chaos.py``, issue 16): four campaigns deployed on two
Prefect process workers instead, with nobody typing anything after ``closedloop deploy``; the
kills are of flow runs and of whole workers, and each campaign gets the checks above.

The last line printed is the figures; the exit code is 0 iff every invariant holds.

Usage::

    .venv/bin/python benchmarks/chaos.py [--kills 20] [--trials N] [--seed 1] [--botorch]
        [--retries 0] [--hostile] [--keep]
    .venv/bin/python benchmarks/chaos.py --service [--kills 20] [--campaigns 4] [--workers 2]
        [--worker-kills N] [--trials N] [--seed 1] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo
import yaml

from campaigns import (
    LateResultRecorded,
    RunStarted,
    TrialCompleted,
    TrialDispatched,
    TrialRetried,
    fold,
)
from simulators import read_completions, read_executions
from storage import MongoEventStore

from flows.engine.rejections import KINDS, MAX_EVENTS_PER_RUN

from _hostile import Rogue, Twin, wrong_values

BIN = Path(sys.executable).parent
CLOSEDLOOP = str(BIN / "closedloop")
CAMPAIGN = "chaos"
DEVICES = ("dev-1", "dev-2", "dev-3")
DATABASE = "closedloop"
# Item 19 of issue 14: no publisher can grow a log without limit. A run of the orchestrator
# writes at most this many rejection events (flows/engine/rejections.py), however much is sent.
REJECTION_EVENTS_PER_RUN = MAX_EVENTS_PER_RUN + (len(DEVICES) + 1) * len(KINDS)
PREFECT_QUIET = {"PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f} s] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')[-1500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not open port {port} within {timeout_s:g} s")


def stop_group(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGKILL, timeout_s: float = 20.0) -> None:
    """Signal the process group of a child started with ``start_new_session``, reap it."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# -- the parts ---------------------------------------------------------------------------------


class Broker:
    """Mosquitto with persistence on a fixed port, restartable (SIGTERM saves its database)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.port, self.log, self.proc = free_port(), directory / "mosquitto.log", None
        self.config = directory / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
            f"user {pwd.getpwuid(os.getuid()).pw_name}\npersistence true\npersistence_location {directory}/\n"
            "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n")
        self.binary = "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else shutil.which("mosquitto")
        if self.binary is None:
            raise SystemExit("mosquitto not found (apt-get install mosquitto)")

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=out, stderr=out,
                                         start_new_session=True)
        wait_port(self.port, self.proc, "mosquitto", self.log)

    def stop(self) -> None:
        stop_group(self.proc, signal.SIGTERM)


class Database:
    """nx-27017 on a fixed port and data directory, started the way ``EmbeddedMongo`` does."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.dir, self.port, self.log, self.proc = directory, free_port(), directory / "nx.log", None
        script = BIN / "nx-27017"
        self.command = [str(script)] if script.exists() else [
            sys.executable, "-c", "import sys; from nx_27017.nx_27017 import main; sys.exit(main())"]

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self) -> None:
        (self.dir / "data").mkdir(exist_ok=True)
        (self.dir / "nx.pid").unlink(missing_ok=True)
        for attempt in range(20):  # the port may linger a moment after a SIGKILL
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(
                    [*self.command, "--data-dir", str(self.dir / "data"), "--host", "127.0.0.1", "--port",
                     str(self.port), "--log-file", os.devnull, "--pid-file", str(self.dir / "nx.pid")],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                    cwd=self.dir)
            try:
                wait_port(self.port, self.proc, "nx-27017", self.log)
            except RuntimeError:
                if attempt == 19:
                    raise
                stop_group(self.proc)
                time.sleep(0.5)
                continue
            client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=10000)
            try:
                client.admin.command("ping")
            finally:
                client.close()
            return

    def kill(self) -> None:
        stop_group(self.proc, signal.SIGKILL)


class Prefect:
    """One ``prefect server start`` for the whole run."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.home, self.port, self.proc = directory, free_port(), None
        self.env = {**PREFECT_QUIET, "PREFECT_HOME": str(directory),
                    "PREFECT_API_URL": f"http://127.0.0.1:{self.port}/api"}

    def start(self) -> None:
        log = (self.home / "server.log").open("wb")
        self.proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                      str(self.port)], env={**os.environ, **self.env}, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{self.env['PREFECT_API_URL']}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start: {(self.home / 'server.log').read_text()[-1500:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        stop_group(self.proc, signal.SIGINT, timeout_s=30)  # it ignores SIGTERM (Prefect 3.8.8)


class Device:
    """A standalone simulated Branin instrument with its record file, in its own process group."""

    def __init__(self, device_id: str, seed: int, directory: Path, env: dict[str, str]) -> None:
        self.id, self.seed, self.env, self.proc = device_id, seed, env, None
        self.record, self.log = directory / f"{device_id}.jsonl", directory / f"{device_id}.log"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [CLOSEDLOOP, "sim", "branin", "--device-id", self.id, "--record", str(self.record),
                 "--option", "duration_s=[0.5, 2.0]", "--option", f"seed={self.seed}"],
                env=self.env, stdout=out, stderr=out, start_new_session=True)

    def kill(self) -> None:
        stop_group(self.proc, signal.SIGKILL)


def spec_dict(args: argparse.Namespace, name: str, seed: int, devices: tuple[str, ...]) -> dict[str, Any]:
    """The chaos campaign's spec: Branin, batch 3, the budget and policies of the options."""
    return {
        "name": name, "seed": seed,
        "parameters": [{"name": "x1", "type": "float", "bounds": [-5.0, 10.0]},
                       {"name": "x2", "type": "float", "bounds": [0.0, 15.0]}],
        "objectives": [{"name": "branin", "minimize": True}],
        "budget": {"max_trials": args.trials}, "batch_size": 3, "trial_timeout_s": args.trial_timeout,
        "devices": [{"id": d, "measures": ["branin"]} for d in devices],
        "optimizer": {"method": "botorch" if args.botorch else "sobol"},
        "failure_policy": {"retries": args.retries},
    }


# -- the chaos loop ----------------------------------------------------------------------------


@dataclass
class Tally:
    kills: list[int] = field(default_factory=list)  # last seq in the log at each kill
    startup_kills: int = 0
    broker: int = 0
    database: int = 0
    device: int = 0
    during: Counter[str] = field(default_factory=Counter)
    own_exits: list[str] = field(default_factory=list)


def servers(root: Path) -> tuple[Broker, Database, Prefect, dict[str, str]]:
    """The broker, database and Prefect server of a chaos run in ``root`` (not started yet), and
    the environment every child gets (no CLOSEDLOOP_* of the caller's; ``root/devices`` made)."""
    broker, db, prefect = Broker(root / "mosquitto"), Database(root / "mongo"), Prefect(root / "prefect")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOSEDLOOP_")}
    env.update(prefect.env)
    env.update({"CLOSEDLOOP_HOME": str(root / "home"), "CLOSEDLOOP_MONGODB_URI": db.uri,
                "CLOSEDLOOP_MQTT_URL": f"mqtt://127.0.0.1:{broker.port}", "OMP_NUM_THREADS": "1"})
    (root / "devices").mkdir()
    return broker, db, prefect, env


class Chaos:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args, self.root = args, root
        self.rng = random.Random(args.seed)
        self.broker, self.db, self.prefect, self.env = servers(root)
        self.devices = [Device(d, i + 1, root / "devices", self.env) for i, d in enumerate(DEVICES)]
        self.orch: subprocess.Popen[bytes] | None = None
        self.tally = Tally()
        self.spec = root / "chaos.yaml"
        self.spec.write_text(yaml.safe_dump(self.spec_dict(args.seed), sort_keys=False))
        self.twin = Twin(root / "twin", self.env, self.spec_dict(args.seed + 1000), CLOSEDLOOP) if args.hostile else None
        self.rogue = Rogue(self.broker.port, "closedloop", DEVICES, args.seed) if args.hostile else None
        self._client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            self.db.uri, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000, socketTimeoutMS=5000)

    def spec_dict(self, seed: int) -> dict[str, Any]:
        return spec_dict(self.args, CAMPAIGN, seed, DEVICES)

    # ---- the parts' lifecycle

    def start_all(self) -> None:
        self.prefect.start()
        say(f"prefect server on :{self.prefect.port}")
        self.broker.start()
        self.db.start()
        say(f"mosquitto on :{self.broker.port}, nx-27017 on :{self.db.port}, in {self.root}")
        for d in self.devices:
            d.start()
        say(f"{len(self.devices)} simulated instruments started")
        if self.rogue is not None and self.twin is not None:
            self.rogue.start()
            self.twin.ensure_running()
            say("hostile: a rogue publisher and a same-named twin campaign (another home) started")

    def keep_twin_running(self) -> None:
        if self.twin is None:
            return
        try:
            done = self._client["twin"]["events"].find_one(
                {"campaign_id": {"$eq": CAMPAIGN}, "kind": {"$eq": "CampaignFinished"}}) is not None
        except pymongo.errors.PyMongoError:
            return
        if not done:
            self.twin.ensure_running()

    def stop_hostiles(self) -> None:
        if self.rogue is not None:
            self.rogue.stop()
        if self.twin is not None:
            stop_group(self.twin.proc, signal.SIGINT, timeout_s=60)

    def stop_all(self) -> None:
        stop_group(self.orch)
        self.stop_hostiles()
        for d in self.devices:
            stop_group(d.proc, signal.SIGTERM)
        self.broker.stop()
        self.db.kill()
        self.prefect.stop()
        self._client.close()

    def restart_broker(self, when: str) -> None:
        self.broker.stop()
        time.sleep(self.rng.uniform(0.3, 2.0))
        self.broker.start()
        self.tally.broker += 1
        say(f"broker restarted ({when}) #{self.tally.broker}")

    def restart_database(self, when: str) -> None:
        self.db.kill()
        time.sleep(self.rng.uniform(0.3, 2.0))
        self.db.start()
        self.tally.database += 1
        say(f"database SIGKILLed and restarted ({when}) #{self.tally.database}")

    def restart_device(self, when: str) -> None:
        d = self.rng.choice(self.devices)
        d.kill()
        time.sleep(self.rng.uniform(0.0, 1.5))
        d.start()
        self.tally.device += 1
        say(f"device {d.id} SIGKILLed and restarted ({when}) #{self.tally.device}")

    def disrupt(self, kind: str, when: str) -> None:
        {"broker": self.restart_broker, "database": self.restart_database, "device": self.restart_device}[kind](when)
        if when == "during run":
            self.tally.during[kind] += 1

    # ---- the orchestrator

    def log_position(self) -> tuple[int, int]:
        """(last seq, trials completed), or (-1, -1) while the database is unreachable."""
        try:
            docs = list(self._client[DATABASE]["events"].find({"campaign_id": {"$eq": CAMPAIGN}},
                                                                {"_id": 0, "seq": 1, "kind": 1}))
        except pymongo.errors.PyMongoError:
            return -1, -1
        return max((d["seq"] for d in docs), default=0), sum(d["kind"] == "TrialCompleted" for d in docs)

    def run_started(self, pid: int) -> bool:
        try:
            return self._client[DATABASE]["events"].find_one(
                {"campaign_id": {"$eq": CAMPAIGN}, "kind": {"$eq": "RunStarted"}, "pid": {"$eq": pid}}) is not None
        except pymongo.errors.PyMongoError:
            return False

    def start_orchestrator(self, first: bool) -> subprocess.Popen[bytes]:
        cmd = ["run", str(self.spec)] if first else ["resume", CAMPAIGN]
        out = (self.root / "orchestrator.log").open("ab")
        out.write(f"\n==== {' '.join(cmd)} at {time.monotonic() - T0:.1f} s\n".encode())
        out.flush()
        self.orch = subprocess.Popen([CLOSEDLOOP, *cmd, "--no-simulators", "--quiet"], env=self.env,
                                     stdout=out, stderr=out, start_new_session=True)
        out.close()
        return self.orch

    def own_exit(self, proc: subprocess.Popen[bytes]) -> str:
        tail = (self.root / "orchestrator.log").read_text(errors="replace").strip().splitlines()[-1:]
        return f"exit {proc.returncode}: {tail[0] if tail else ''}"

    def plan(self) -> dict[int, list[tuple[str, str]]]:
        """Cycle → [(kind, 'during run' | 'between runs')], each kind at least max(2, kills // 4) times."""
        plan: dict[int, list[tuple[str, str]]] = defaultdict(list)
        n = max(2, self.args.kills // 4)
        for kind in ("broker", "database", "device"):
            cycles = self.rng.sample(range(self.args.kills), min(n, self.args.kills))
            for i, cycle in enumerate(cycles):  # at least one of each while a run goes on, and between runs
                when = ("during run", "between runs")[i] if i < 2 else self.rng.choice(["during run", "between runs"])
                plan[cycle].append((kind, when))
        return plan

    def run(self) -> int:
        plan = self.plan()
        cycle, first = 0, True
        while len(self.tally.kills) < self.args.kills:
            self.keep_twin_running()
            proc = self.start_orchestrator(first)
            started = time.monotonic()
            startup_kill = self.rng.random() < 0.15
            if startup_kill:
                time.sleep(self.rng.uniform(0.5, 4.0))
            else:
                while not self.run_started(proc.pid) and proc.poll() is None and time.monotonic() - started < 180:
                    time.sleep(0.1)
            first = self.log_position()[0] <= 0  # `resume` needs the campaign created
            if proc.poll() is not None:
                if proc.returncode == 0:
                    say(f"the campaign finished before kill {len(self.tally.kills) + 1}: raise --trials")
                    return 0
                self.tally.own_exits.append(self.own_exit(proc))
                say(f"orchestrator pid {proc.pid} exited by itself ({self.tally.own_exits[-1]}); starting another")
                if len(self.tally.own_exits) > 2 * self.args.kills:
                    raise RuntimeError("the orchestrator keeps exiting by itself; see orchestrator.log")
                time.sleep(1.0)
                continue
            window = self.rng.uniform(2.0, 8.0)
            steps = [] if startup_kill else sorted(
                (self.rng.uniform(0.5, max(0.6, window - 1.0)), kind) for kind, when in plan.get(cycle, [])
                if when == "during run")
            t_run = time.monotonic()
            for offset, kind in steps:
                time.sleep(max(0.0, t_run + offset - time.monotonic()))
                self.disrupt(kind, "during run")
            if not startup_kill:
                time.sleep(max(0.0, t_run + window - time.monotonic()))
            if proc.poll() is not None:
                if proc.returncode == 0:
                    say(f"the campaign finished before kill {len(self.tally.kills) + 1}: raise --trials")
                    return 0
                self.tally.own_exits.append(self.own_exit(proc))
                say(f"orchestrator pid {proc.pid} exited by itself ({self.tally.own_exits[-1]})")
            else:
                alive = time.monotonic() - started
                stop_group(proc, signal.SIGKILL)
                seq, done = self.log_position()
                self.tally.kills.append(seq)
                self.tally.startup_kills += startup_kill
                say(f"kill {len(self.tally.kills)}/{self.args.kills}: orchestrator pid {proc.pid} SIGKILLed "
                    f"{alive:.1f} s after start{' (during start-up)' if startup_kill else ''}; "
                    f"log at seq {seq}, {done} trials completed")
            for kind, when in plan.get(cycle, []):
                if when == "between runs" or startup_kill:
                    self.disrupt(kind, "between runs")
            cycle += 1
        say(f"{len(self.tally.kills)} kills done; resuming to the end of the budget")
        proc = self.start_orchestrator(first)
        try:
            proc.wait(timeout=self.args.final_timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            say(f"the final resume did not finish within {self.args.final_timeout:g} s")
            return -1
        say(f"final resume exited with {proc.returncode}")
        self.stop_hostiles()
        return proc.returncode


# -- the checks --------------------------------------------------------------------------------


def check(chaos: Chaos, final_rc: int) -> tuple[dict[str, Any], list[str]]:
    args, tally = chaos.args, chaos.tally
    with MongoEventStore(chaos.db.uri, database=DATABASE) as store:
        events = store.read(CAMPAIGN)
    raw = raw_seqs(chaos._client, DATABASE, CAMPAIGN)
    records = {d.id: d.record for d in chaos.devices}
    figures, problems = check_campaign(events, raw, records, args.trials)
    runs_started = [e.seq for e in events if isinstance(e, RunStarted)]
    survived = sum(1 for seq in tally.kills if any(s > seq for s in runs_started)) if figures["finished_ok"] else 0

    hostile: dict[str, Any] = {}
    wrong = list(figures["wrong_list"])
    if chaos.twin is not None and chaos.rogue is not None:
        with MongoEventStore(chaos.db.uri, database="twin") as store:
            twin_events = store.read(CAMPAIGN)
        twin_wrong = [f"twin {r}" for r in wrong_values(twin_events, records)]
        wrong += twin_wrong
        if twin_wrong:
            problems.insert(0, f"wrong values recorded: {twin_wrong[:10]}")
        hostile = {"rogue_sent": dict(chaos.rogue.sent), "twin_completed": fold(twin_events).count("completed"),
                   "rejection_events": rejection_events(events), "twin_rejection_events": rejection_events(twin_events),
                   "per_run": max(rejections_per_run(events) + rejections_per_run(twin_events)),
                   "twin_events": len(twin_events)}
    if hostile and hostile["per_run"] > REJECTION_EVENTS_PER_RUN:
        problems.append(f"{hostile['per_run']} rejection events in one run exceed {REJECTION_EVENTS_PER_RUN}")
    if final_rc != 0:
        problems.append(f"the final resume exited with {final_rc}")
    if len(tally.kills) < args.kills or survived < len(tally.kills):
        problems.append(f"{survived} of {args.kills} kills survived")
    figures.update({
        "kills": len(tally.kills), "survived": survived, "startup_kills": tally.startup_kills,
        "broker": tally.broker, "database": tally.database, "device": tally.device, "during": dict(tally.during),
        "own_exits": len(tally.own_exits), "wrong": len(wrong), **hostile,
    })
    return figures, problems


def raw_seqs(client: pymongo.MongoClient[dict[str, Any]], database: str, campaign: str) -> Counter[int]:
    """How many stored documents hold each seq of the campaign (the raw collection: a fork shows as 2)."""
    return Counter(d["seq"] for d in client[database]["events"].find(
        {"campaign_id": {"$eq": campaign}}, {"_id": 0, "seq": 1}))


def check_campaign(events: list[Any], raw: Counter[int], records: dict[str, Path],
                   budget: int) -> tuple[dict[str, Any], list[str]]:
    """The invariants of one campaign's log against its instruments' records (``records``: device
    id → record file): forks, results lost, executed twice, wrong values, finished with its budget.

    Returns the figures and the broken invariants (empty: all hold); ``figures["finished_ok"]``
    says whether it finished with ``budget_exhausted``, ``figures["wrong_list"]`` names the wrong values.
    """
    state = fold(events)
    seqs = [e.seq for e in events]
    forks = sum(n - 1 for n in raw.values() if n > 1) + (seqs != list(range(1, len(seqs) + 1)))

    dispatched: dict[str, TrialDispatched] = {e.request_id: e for e in events if isinstance(e, TrialDispatched)}
    logged: dict[str, Any] = {}
    for e in events:
        if isinstance(e, TrialCompleted | LateResultRecorded):
            logged.setdefault(e.request_id, e)
    # An attempt that failed and was retried: protocol v1 ignores its result if it comes later.
    superseded = {e.request_id for e in events if isinstance(e, TrialRetried)}
    completed_events = Counter(e.trial_id for e in events if isinstance(e, TrialCompleted))

    recorded: dict[str, dict[str, Any]] = {}  # request id → the device's completed result
    completions: Counter[str] = Counter()
    executions: Counter[str] = Counter()
    for record in records.values():
        completions.update(read_completions(record))
        executions.update(read_executions(record))
        for line in record.read_bytes().splitlines() if record.exists() else []:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            # This campaign's requests only (with --hostile, a twin of the same name shares the devices).
            if r.get("status") == "completed" and r.get("request_id") in dispatched:
                recorded.setdefault(r["request_id"], r)

    lost = sorted(rid for rid in recorded if rid not in logged and rid not in superseded)
    discarded = sorted(rid for rid in recorded if rid not in logged and rid in superseded)
    mismatched = sorted(
        rid for rid, e in logged.items() if rid in recorded
        and any(abs(e.measurements[k].mean - (v["mean"] if isinstance(v, dict) else v)) > 1e-9
                for k, v in recorded[rid]["measurements"].items()))
    twice_request = sorted(rid for rid, n in completions.items() if n > 1)
    # A trial whose result was in the log when another of its requests was dispatched and run.
    by_trial: dict[str, list[str]] = defaultdict(list)
    for rid in recorded:
        if rid in dispatched:
            by_trial[dispatched[rid].trial_id].append(rid)
    twice_trial, reruns = [], []
    for trial, rids in by_trial.items():
        rids.sort(key=lambda r: dispatched[r].seq)
        for earlier, later in zip(rids, rids[1:]):
            if earlier in logged and logged[earlier].seq < dispatched[later].seq:
                twice_trial.append(trial)
            else:
                reruns.append(trial)
    killed_runs = sum(max(0, n - completions.get(rid, 0)) for rid, n in executions.items())
    done, failed = state.count("completed"), state.count("failed")
    runs_started = [e.seq for e in events if isinstance(e, RunStarted)]
    wrong = wrong_values(events, records)
    finished_ok = state.status == "finished" and state.finished_reason == "budget_exhausted"

    problems = []
    if wrong:
        problems.append(f"wrong values recorded: {wrong[:10]}")
    if not finished_ok:
        problems.append(f"campaign status {state.status} ({state.finished_reason}), not finished/budget_exhausted")
    if done + failed != budget:
        problems.append(f"completed {done} + failed {failed} != budget {budget}")
    if any(n > 1 for n in completed_events.values()):
        problems.append("a trial has two TrialCompleted events")
    if mismatched:
        problems.append(f"logged measurements differ from the instruments' for {mismatched[:5]}")
    if not set(logged) <= set(dispatched):
        problems.append("a logged result's request id was never dispatched")
    for name, items in (("lost", lost), ("executed twice (request)", twice_request), ("executed twice (trial)", twice_trial)):
        if items:
            problems.append(f"{name}: {items[:10]}")
    if forks:
        problems.append(f"forks: seqs {len(seqs)} events, duplicates {[s for s, n in raw.items() if n > 1][:10]}")
    figures = {
        "events": len(events), "runs": len(runs_started), "completed": done, "failed": failed, "budget": budget,
        "recorded": len(recorded), "logged": len(logged), "late": sum(isinstance(e, LateResultRecorded) for e in logged.values()),
        "lost": len(lost), "discarded": len(discarded), "mismatched": len(mismatched),
        "twice": len(twice_request) + len(twice_trial), "reruns": len(reruns), "killed_runs": killed_runs,
        "resent": sum(e.kind == "RequestResent" for e in events), "rejected": state.rejected_messages,
        "anomalies": state.anomalies, "broker_outages": state.broker_outages, "forks": forks,
        "finished": f"{state.status}/{state.finished_reason}", "finished_ok": finished_ok,
        "wrong": len(wrong), "wrong_list": wrong,
    }
    return figures, problems


def rejection_events(events: list[Any]) -> int:
    """Events that record rejected device messages, one by one or as counted summaries."""
    return sum(e.kind in ("MessageRejected", "MessagesRejected") for e in events)


def rejections_per_run(events: list[Any]) -> list[int]:
    """Rejection events written by each orchestrator run (from one RunStarted to the next)."""
    counts = [0]
    for e in events:
        if isinstance(e, RunStarted):
            counts.append(0)
        elif e.kind in ("MessageRejected", "MessagesRejected"):
            counts[-1] += 1
    return counts


def report(f: dict[str, Any], problems: list[str], tally: Tally, wall_s: float) -> None:
    rows = [
        ("orchestrator SIGKILLs (of which during start-up)", f"{f['kills']} ({f['startup_kills']})"),
        ("  ... followed by a run that took over (survived)", f["survived"]),
        ("orchestrator runs in the log (RunStarted)", f["runs"]),
        ("orchestrator exits by itself (not killed)", f["own_exits"]),
        ("broker restarts (during a run)", f"{f['broker']} ({f['during'].get('broker', 0)})"),
        ("database SIGKILL + restarts (during a run)", f"{f['database']} ({f['during'].get('database', 0)})"),
        ("device SIGKILL + restarts (during a run)", f"{f['device']} ({f['during'].get('device', 0)})"),
        ("campaign", f"{f['finished']}: {f['completed']} completed + {f['failed']} failed of {f['budget']}"),
        ("events in the log", f["events"]),
        ("results the instruments recorded (completed)", f["recorded"]),
        ("results in the log (of which LateResultRecorded)", f"{f['logged']} ({f['late']})"),
        ("results lost", f["lost"]),
        ("results discarded as a superseded attempt", f["discarded"]),
        ("logged measurements differing from the device's", f["mismatched"]),
        ("trials executed twice", f["twice"]),
        ("trials re-run after a retry (failure_policy)", f["reruns"]),
        ("runs killed with their instrument (ran again)", f["killed_runs"]),
        ("requests re-sent (RequestResent)", f["resent"]),
        ("messages rejected / fold anomalies", f"{f['rejected']} / {f['anomalies']}"),
        ("broker outages seen by the orchestrator", f["broker_outages"]),
        ("forks", f["forks"]),
        ("wrong values recorded (both campaigns)", f["wrong"]),
        ("wall time", f"{wall_s:.0f} s"),
    ]
    if "rogue_sent" in f:
        sent = f["rogue_sent"]
        rows += [
            ("rogue: results on another device's topic / unknown device / replayed",
             f"{sent['wrong_device']} / {sent['unknown_device']} / {sent['replayed']}"),
            ("twin campaign (same name, other home): completed, events", f"{f['twin_completed']}, {f['twin_events']}"),
            ("rejection events in the log (twin's)", f"{f['rejection_events']} ({f['twin_rejection_events']})"),
            ("rejection events in one run, most (bound)", f"{f['per_run']} ({REJECTION_EVENTS_PER_RUN})"),
        ]
    width = max(len(r[0]) for r in rows)
    print()
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    for exit_line in tally.own_exits:
        print(f"  own exit: {exit_line}")
    for p in problems:
        print(f"  INVARIANT BROKEN: {p}")
    print(f"kills survived: {f['survived']}, broker restarts: {f['broker']}, database restarts: {f['database']}, "
          f"device kills: {f['device']}, results lost: {f['lost']}, trials executed twice: {f['twice']}, "
          f"forks: {f['forks']}" + (f", wrong values recorded: {f['wrong']}, rejection events: "
                                    f"{f['rejection_events']} (twin {f['twin_rejection_events']}; at most "
                                    f"{f['per_run']} per run, bound {REJECTION_EVENTS_PER_RUN}) for "
                                    f"{sum(f['rogue_sent'].values())} rogue messages" if "rogue_sent" in f else ""),
          flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="orchestrator SIGKILLs (default 20)")
    parser.add_argument("--trials", type=int, default=None,
                        help="the campaign's budget (default: 12 per kill + 30, so the kills come before its end; "
                             "with --service, each campaign's: 15 per kill + 60)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the chaos plan and the campaign (default 1)")
    parser.add_argument("--botorch", action="store_true", help="the real optimizer instead of Sobol")
    parser.add_argument("--retries", type=int, default=0, help="failure_policy.retries (default 0)")
    parser.add_argument("--trial-timeout", type=float, default=20.0, help="trial_timeout_s (default 20)")
    parser.add_argument("--final-timeout", type=float, default=900.0,
                        help="limit of the last resume (with --service: of the wait for every campaign to finish) (s)")
    parser.add_argument("--hostile", action="store_true",
                        help="also a same-named twin campaign in another home, and a rogue publisher")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    service = parser.add_argument_group("--service: deployed campaigns on Prefect workers (_service_chaos.py)")
    service.add_argument("--service", action="store_true",
                         help="campaigns deployed on a work pool; kills of flow runs and of whole workers")
    service.add_argument("--campaigns", type=int, default=4, help="campaigns deployed at once (default 4)")
    service.add_argument("--workers", type=int, default=2, help="process workers (default 2)")
    service.add_argument("--worker-kills", type=int, default=None,
                         help="how many of the kills are of a whole worker (default a quarter, at least 1)")
    service.add_argument("--kill-wait", type=float, default=400.0,
                         help="longest wait for something to kill before a kill (s, default 400)")
    args = parser.parse_args(argv)
    if args.service:
        if args.hostile:
            parser.error("--hostile is not part of --service")
        if args.campaigns < 1 or args.workers < 1 or args.kills < 1:
            parser.error("--campaigns, --workers and --kills must be at least 1")
        from _service_chaos import main as service_main

        return service_main(args)
    if args.trials is None:
        args.trials = 12 * args.kills + 30
    root = Path(tempfile.mkdtemp(prefix="closedloop-chaos-"))
    chaos = Chaos(args, root)
    say(f"chaos: {args.kills} kills, budget {args.trials} trials, seed {args.seed}, "
        f"{'botorch' if args.botorch else 'sobol'}, retries {args.retries}")
    ok = False
    try:
        chaos.start_all()
        rc = chaos.run()
        figures, problems = check(chaos, rc)
        ok = not problems
        if args.keep or not ok:
            print(f"(kept {root})")
        report(figures, problems, chaos.tally, time.monotonic() - T0)
    finally:
        chaos.stop_all()
        if not (args.keep or not ok):
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
