"""``chaos.py --service``: deployed campaigns on Prefect workers survive kills of their flow runs
and of whole workers, with nobody typing anything (issue 16).

Everything is real and lives in a temporary directory, as in ``chaos.py`` (whose servers and
per-campaign checks this reuses): Mosquitto with ``persistence true``, nx-27017, one
``prefect server start``, a process work pool, ``--workers`` (2) ``prefect worker start --pool P
--type process`` processes (each in its own session; ``PREFECT_WORKER_QUERY_SECONDS=1``), and
``--campaigns`` (4) campaigns deployed with ``closedloop deploy SPEC --pool P --campaign-id ID
--no-simulators``, each with two standalone instruments of its own recording their executions.
After the deploys the benchmark runs no command: no ``resume``, no ``approve``, nothing.

The chaos plan, seeded: ``--kills`` kills, about a quarter of them (``--worker-kills``) of a
whole worker with its flow runs (a machine dying: the worker's process group and every process
under it; a process worker starts each flow run in a session of its own, so killing the
worker's group alone would leave them running), followed after a seeded 5-30 s by a new worker
(the machine rebooted), and the rest of one campaign's current flow run (the pid of its latest
``RunStarted``, only while that process is alive under a live worker). A campaign is killed
again only after it has dispatched a trial since its last kill, so every kill has its own
"kill → next dispatch" time. Between kills (a seeded 4-15 s) the plan restarts Mosquitto,
SIGKILLs and restarts the database, and SIGKILLs and restarts an instrument, each at least
``max(2, kills // 4)`` times, as ``chaos.py`` does.

Then it waits until every campaign has finished, and checks each campaign's log against its
instruments' records with ``chaos.check_campaign`` (forks, results lost, executed twice, wrong
values, finished with its budget), that every kill was followed by a new run of each campaign
it hit, and that no person typed anything: no command after the deploys, and no event in any
log written by a user (``CampaignResumed``, an approval, ...) besides ``CampaignCreated``.

The kill → dispatch time of a kill is, for each campaign it hit, from the kill (the benchmark's
clock, UTC) to that campaign's first ``TrialDispatched`` after it (the event's time, written by
the flow run on the same machine's clock).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import chaos as base
import pymongo
import yaml
from chaos import BIN, CLOSEDLOOP, Device, say, stop_group
from tabulate import tabulate

from campaigns import CampaignResumed, RunStarted, TrialDispatched
from storage import MongoEventStore

DATABASE = "closedloop"
POOL = "chaos"
#: A flow-run kill with no RunStarted/dispatch since: the campaign has not recovered yet.
_KINDS = ("RunStarted", "TrialDispatched", "TrialCompleted", "CampaignFinished")


# -- processes ---------------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, state letter) of every process, from /proc."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def _descendants(pid: int, table: dict[int, tuple[int, str]]) -> list[int]:
    """Every live (not zombie) process under ``pid``, parents first."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop(0)
        kids = [p for p, (pp, state) in table.items() if pp == parent and state != "Z"]
        found += kids
        frontier += kids
    return found


class Worker:
    """`prefect worker start --pool P --type process` in a session of its own, as a machine runs it."""

    def __init__(self, name: str, directory: Path, env: dict[str, str]) -> None:
        self.name, self.log = name, directory / f"{name}.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--name", name],
                env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def flow_runs(self, table: dict[int, tuple[int, str]]) -> list[int]:
        """Its live child processes: the flow runs it started (each exec'd into `prefect.engine`)."""
        return [p for p, (pp, state) in table.items() if pp == self.proc.pid and state != "Z"]

    def kill_machine(self) -> list[int]:
        """SIGKILL the worker and every process under it, as a machine dying would; the pids killed."""
        table = _proc_table()
        under = _descendants(self.proc.pid, table)
        groups = set()
        for p in under:
            try:
                groups.add(os.getpgid(p))
            except ProcessLookupError:
                pass
        os.killpg(self.proc.pid, signal.SIGKILL)  # first: a live worker would report its runs crashed
        for g in groups - {self.proc.pid}:
            try:
                os.killpg(g, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in under:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)
        return under


@dataclass
class Campaign:
    id: str
    spec: Path
    devices: list[Device]
    budget: int


@dataclass
class View:
    """What the benchmark reads of a campaign's log between kills (raw documents, cheap)."""

    run_pid: int | None = None  # the pid of its latest RunStarted
    recovered: bool = False  # a TrialDispatched after its latest RunStarted
    completed: int = 0
    finished: bool = False


@dataclass
class Kill:
    number: int
    kind: str  # "flow run" | "worker"
    at: datetime  # UTC
    target: str
    hit: dict[str, int]  # campaign → the pid of its flow run that died


@dataclass
class Tally:
    kills: list[Kill] = field(default_factory=list)
    broker: int = 0
    database: int = 0
    device: int = 0
    reboots: int = 0
    commands: list[str] = field(default_factory=list)  # every command the benchmark ran
    commands_after_deploy: list[str] = field(default_factory=list)


# -- the chaos ---------------------------------------------------------------------------------


class ServiceChaos:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args, self.root = args, root
        self.rng = random.Random(args.seed)
        self.broker, self.db, self.prefect, self.env = base.servers(root)
        (root / "workers").mkdir()
        self.campaigns: list[Campaign] = []
        for k in range(1, args.campaigns + 1):
            cid = f"svc-{k}"
            ids = (f"{cid}-dev-1", f"{cid}-dev-2")
            spec = root / f"{cid}.yaml"
            spec.write_text(yaml.safe_dump(base.spec_dict(args, cid, args.seed * 100 + k, ids), sort_keys=False))
            devices = [Device(d, args.seed * 100 + 10 * k + i, root / "devices", self.env) for i, d in enumerate(ids)]
            self.campaigns.append(Campaign(cid, spec, devices, args.trials))
        self.workers: list[Worker] = []
        self.reboots: list[float] = []  # monotonic times at which a killed worker's machine is back
        self.tally = Tally()
        self.deployed = False
        self._client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            self.db.uri, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000, socketTimeoutMS=5000)

    # ---- the parts

    def command(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run a command as a person types it (counted: after the deploys there must be none)."""
        line = " ".join(argv)
        self.tally.commands.append(line)
        if self.deployed:
            self.tally.commands_after_deploy.append(line)
        out = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{line} exited with {out.returncode}: {out.stderr[-1500:]}")
        return out

    def start_worker(self) -> None:
        worker = Worker(f"worker-{len(self.workers) + 1}", self.root / "workers", self.env)
        self.workers.append(worker)

    def start_all(self) -> None:
        self.prefect.start()
        say(f"prefect server on :{self.prefect.port}")
        self.broker.start()
        self.db.start()
        say(f"mosquitto on :{self.broker.port}, nx-27017 on :{self.db.port}, in {self.root}")
        for c in self.campaigns:
            for d in c.devices:
                d.start()
        say(f"{sum(len(c.devices) for c in self.campaigns)} simulated instruments started")
        self.command(str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process")
        for _ in range(self.args.workers):
            self.start_worker()
        say(f"work pool {POOL!r} and {self.args.workers} process workers started")
        for c in self.campaigns:
            out = self.command(CLOSEDLOOP, "deploy", str(c.spec), "--pool", POOL, "--campaign-id", c.id,
                               "--no-simulators")
            say(out.stdout.strip().splitlines()[-1][:140])
        self.deployed = True

    def stop_all(self) -> None:
        for w in self.workers:
            if w.alive():
                w.kill_machine()
        for c in self.campaigns:
            for d in c.devices:
                stop_group(d.proc, signal.SIGTERM)
        self.broker.stop()
        self.db.kill()
        self.prefect.stop()
        self._client.close()

    def restart(self, kind: str) -> None:
        if kind == "broker":
            self.broker.stop()
            time.sleep(self.rng.uniform(0.3, 2.0))
            self.broker.start()
            self.tally.broker += 1
            say(f"broker restarted #{self.tally.broker}")
        elif kind == "database":
            self.db.kill()
            time.sleep(self.rng.uniform(0.3, 2.0))
            self.db.start()
            self.tally.database += 1
            say(f"database SIGKILLed and restarted #{self.tally.database}")
        else:
            d = self.rng.choice([d for c in self.campaigns for d in c.devices])
            d.kill()
            time.sleep(self.rng.uniform(0.0, 1.5))
            d.start()
            self.tally.device += 1
            say(f"device {d.id} SIGKILLed and restarted #{self.tally.device}")

    def tick(self) -> None:
        """Bring back the machines whose reboot is due."""
        now = time.monotonic()
        for due in [t for t in self.reboots if t <= now]:
            self.reboots.remove(due)
            self.start_worker()
            self.tally.reboots += 1
            say(f"a machine is back: {self.workers[-1].name} started")

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.tick()
            time.sleep(min(0.5, left))

    # ---- what the log says

    def views(self) -> dict[str, View] | None:
        """Each campaign's view, or None while the database is unreachable."""
        try:
            docs = list(self._client[DATABASE]["events"].find(
                {"kind": {"$in": list(_KINDS)}}, {"_id": 0, "campaign_id": 1, "kind": 1, "seq": 1, "pid": 1}))
        except pymongo.errors.PyMongoError:
            return None
        by: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for d in docs:
            by[d["campaign_id"]].append(d)
        views = {}
        for c in self.campaigns:
            mine = sorted(by.get(c.id, []), key=lambda d: d["seq"])
            runs = [d for d in mine if d["kind"] == "RunStarted"]
            v = View(completed=sum(d["kind"] == "TrialCompleted" for d in mine),
                     finished=any(d["kind"] == "CampaignFinished" for d in mine))
            if runs:
                v.run_pid = runs[-1]["pid"]
                v.recovered = any(d["kind"] == "TrialDispatched" and d["seq"] > runs[-1]["seq"] for d in mine)
            views[c.id] = v
        return views

    def targets(self, kind: str) -> list[tuple[str, Worker | None, list[tuple[str, int]]]]:
        """What can be killed now: (label, worker or None, [(campaign, flow-run pid)]).

        A campaign can be hit once it has recovered from its last kill (a dispatch since its
        latest RunStarted) and while it has trials left; its flow run must be alive under a
        live worker. A worker can be killed when it runs flow runs and all of them are such.
        """
        views = self.views()
        if views is None:
            return []
        table = _proc_table()
        killed = {pid for k in self.tally.kills for pid in k.hit.values()}
        ready = {v.run_pid: cid for cid, v in views.items()
                 if v.recovered and not v.finished and v.run_pid not in killed
                 and v.completed < self.args.trials - 12}
        found = []
        for w in self.workers:
            if not w.alive():
                continue
            runs = w.flow_runs(table)
            if kind == "worker":
                if runs and all(p in ready for p in runs) and len([x for x in self.workers if x.alive()]) == self.args.workers:
                    found.append((w.name, w, [(ready[p], p) for p in runs]))
            else:
                found += [(f"{ready[p]} flow run pid {p} on {w.name}", None, [(ready[p], p)]) for p in runs if p in ready]
        return sorted(found, key=lambda t: t[0])

    def all_finished(self) -> bool:
        views = self.views()
        return views is not None and all(v.finished for v in views.values())

    # ---- the loop

    def plan(self) -> tuple[list[str], dict[int, list[str]]]:
        n = self.args.kills
        n_workers = min(n, self.args.worker_kills if self.args.worker_kills is not None else max(1, round(n / 4)))
        kinds = ["worker"] * n_workers + ["flow run"] * (n - n_workers)
        self.rng.shuffle(kinds)
        restarts: dict[int, list[str]] = defaultdict(list)
        for kind in ("broker", "database", "device"):
            for slot in self.rng.sample(range(n), min(n, max(2, n // 4))):
                restarts[slot].append(kind)
        return kinds, restarts

    def run(self) -> list[str]:
        """The chaos; returns what went wrong while it ran (empty: nothing)."""
        kinds, restarts = self.plan()
        say(f"plan: {kinds.count('flow run')} flow-run kills, {kinds.count('worker')} worker kills, "
            f"restarts {dict(Counter(k for ks in restarts.values() for k in ks))}")
        for i, kind in enumerate(kinds):
            gap = self.rng.uniform(4.0, 15.0)
            t0 = time.monotonic()
            for offset, what in sorted((self.rng.uniform(0.0, gap), what) for what in restarts.get(i, [])):
                self.sleep(max(0.0, t0 + offset - time.monotonic()))
                self.restart(what)
            self.sleep(max(0.0, t0 + gap - time.monotonic()))
            deadline = time.monotonic() + self.args.kill_wait
            while not (found := self.targets(kind)):
                if self.all_finished():
                    return [f"every campaign finished before kill {i + 1}: raise --trials"]
                if time.monotonic() > deadline:
                    return [f"no {kind} to kill for {self.args.kill_wait:g} s before kill {i + 1}"]
                self.sleep(1.0)
            label, worker, hit = self.rng.choice(found)
            at = datetime.now(UTC)
            if worker is not None:
                pids = worker.kill_machine()
                self.reboots.append(time.monotonic() + self.rng.uniform(5.0, 30.0))
                what = f"worker {label} and the {len(pids)} processes under it"
            else:
                os.kill(hit[0][1], signal.SIGKILL)
                what = label
            self.tally.kills.append(Kill(i + 1, kind, at, label, dict(hit)))
            say(f"kill {i + 1}/{len(kinds)} ({kind}): SIGKILLed {what}; campaigns hit: "
                f"{', '.join(c for c, _ in hit)}")
        say(f"{len(kinds)} kills done; waiting for every campaign to finish, typing nothing")
        deadline = time.monotonic() + self.args.final_timeout
        while not self.all_finished():
            if time.monotonic() > deadline:
                return [f"the campaigns did not all finish within {self.args.final_timeout:g} s of the last kill"]
            self.sleep(2.0)
        say("every campaign finished")
        return []

    # ---- Prefect's side, for the report

    def api(self, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"{self.prefect.env['PREFECT_API_URL']}{path}", method="GET" if body is None else "POST",
            data=None if body is None else json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())

    def flow_runs(self) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = []
        while page := self.api("/flow_runs/filter", {"limit": 200, "offset": len(runs)}):
            runs += page
        return runs


# -- the checks and the report -----------------------------------------------------------------


def _after(at: datetime, then: datetime | float | None) -> str:
    """Seconds from ``at`` to ``then`` (a time, or already seconds), '' if it never came."""
    if then is None:
        return ""
    return f"{then if isinstance(then, float) else (then - at).total_seconds():.1f}"


def _median_max(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} s / {max(values):.1f} s" if values else "-"


def check(chaos: ServiceChaos, loop_problems: list[str]) -> tuple[dict[str, Any], list[str], list[list[Any]], list[list[Any]]]:
    args, tally = chaos.args, chaos.tally
    problems = list(loop_problems)
    per: dict[str, dict[str, Any]] = {}
    events_of: dict[str, list[Any]] = {}
    for c in chaos.campaigns:
        with MongoEventStore(chaos.db.uri, database=DATABASE) as store:
            events = store.read(c.id)
        events_of[c.id] = events
        figures, broken = base.check_campaign(events, base.raw_seqs(chaos._client, DATABASE, c.id),
                                              {d.id: d.record for d in c.devices}, c.budget)
        person = [e for e in events if e.actor_kind == "user" and e.seq > 1]
        figures["person_events"] = len(person) + sum(isinstance(e, CampaignResumed) and e.actor_kind != "user"
                                                     for e in events)
        if figures["person_events"]:
            broken.append(f"events written by a person: {[(e.seq, e.kind, e.actor) for e in person][:5]}")
        per[c.id] = figures
        problems += [f"{c.id}: {p}" for p in broken]
    if tally.commands_after_deploy:
        problems.append(f"commands typed after the deploys: {tally.commands_after_deploy}")

    # Prefect's side: each flow run of the deployments, and the state of the killed ones.
    try:
        prefect_runs = chaos.flow_runs()
    except OSError as e:
        prefect_runs = []
        problems.append(f"could not read the flow runs from Prefect: {e}")
    run_by_id = {r["id"]: r for r in prefect_runs}
    deployments = {d["id"]: d["name"] for d in chaos.api("/deployments/filter", {"limit": 200})} if prefect_runs else {}
    states: dict[str, Counter[str]] = defaultdict(Counter)
    created: dict[str, list[datetime]] = defaultdict(list)  # campaign → when each of its flow runs was created
    for r in prefect_runs:
        name = deployments.get(r.get("deployment_id"), "?")
        states[name][(r.get("state") or {}).get("name", "?")] += 1
        created[name].append(datetime.fromisoformat(r["created"]))
    # A flow run that failed: a second run for one crash, which waited out the lease and gave up.
    failed_runs = sorted((deployments.get(r.get("deployment_id"), "?"), r["created"][11:19],
                          ((r.get("state") or {}).get("message") or "")[:110])
                         for r in prefect_runs if (r.get("state") or {}).get("type") == "FAILED")
    # Each crash should start one flow run (besides the deploy's): more means an automation fired twice.
    extra_runs = {cid: len(created[cid]) - 1 - states[cid]["Crashed"] for cid in per}
    locked = (chaos.prefect.home / "server.log").read_text(errors="replace").count("database is locked")

    kill_rows, latencies = [], {"flow run": [], "worker": []}
    detect: list[float] = []
    for k in tally.kills:
        for cid, pid in k.hit.items():
            events = events_of[cid]
            run = next((e for e in events if isinstance(e, RunStarted) and e.pid == pid), None)
            later_runs = [e for e in events if isinstance(e, RunStarted) and e.time > k.at]
            next_run = min((t for t in created[cid] if t > k.at), default=None)
            dispatch = next((e for e in events if isinstance(e, TrialDispatched) and e.time > k.at), None)
            latency = None if dispatch is None else (dispatch.time - k.at).total_seconds()
            if latency is not None:
                latencies[k.kind].append(latency)
            state = (run_by_id.get(run.flow_run_id or "", {}).get("state") or {}) if run else {}
            crashed_after = None
            if state.get("type") == "CRASHED" and state.get("timestamp"):
                crashed_after = datetime.fromisoformat(state["timestamp"])
                if k.kind == "worker":
                    detect.append((crashed_after - k.at).total_seconds())
            if not later_runs:
                problems.append(f"kill {k.number} ({k.kind}) of {cid}: no flow run took the campaign over")
            elif latency is None:
                problems.append(f"kill {k.number} ({k.kind}) of {cid}: no dispatch after it")
            kill_rows.append([k.number, k.kind, k.target if k.kind == "worker" else f"pid {pid}", cid,
                              state.get("name", "?"), _after(k.at, crashed_after), _after(k.at, next_run),
                              _after(k.at, later_runs[0].time if later_runs else None), _after(k.at, latency),
                              (state.get("message") or "")[:50]])
    if len(tally.kills) < args.kills:
        problems.append(f"{len(tally.kills)} of {args.kills} kills done")

    def total(key: str) -> int:
        return sum(f[key] for f in per.values())

    every = latencies["flow run"] + latencies["worker"]
    figures = {
        "kills": len(tally.kills), "flow_run_kills": sum(k.kind == "flow run" for k in tally.kills),
        "worker_kills": sum(k.kind == "worker" for k in tally.kills), "reboots": tally.reboots,
        "broker": tally.broker, "database": tally.database, "device": tally.device,
        "lost": total("lost"), "twice": total("twice"), "forks": total("forks"), "wrong": total("wrong"),
        "mismatched": total("mismatched"), "finished": sum(f["finished_ok"] for f in per.values()),
        "campaigns": len(per), "person": len(tally.commands_after_deploy) + total("person_events"),
        "all": _median_max(every), "fr": _median_max(latencies["flow run"]), "wk": _median_max(latencies["worker"]),
        "detect": _median_max(detect), "samples": (len(latencies["flow run"]), len(latencies["worker"])),
        "flow_runs": len(prefect_runs), "states": {k: dict(v) for k, v in states.items()},
        "extra_runs": sum(extra_runs.values()), "locked": locked, "rejected": total("rejected"),
        "failed_runs": failed_runs,
    }
    campaign_rows = [[cid, f["finished"], f"{f['completed']}+{f['failed']}/{f['budget']}", f["runs"],
                      ", ".join(f"{n} {s}" for s, n in sorted(states.get(cid, {}).items())),
                      sum(cid in k.hit for k in tally.kills), f["lost"], f["twice"], f["forks"], f["wrong"],
                      f["mismatched"], f["killed_runs"], f["resent"], f["rejected"], extra_runs[cid], f["events"],
                      f["person_events"]]
                     for cid, f in per.items()]
    return figures, problems, campaign_rows, kill_rows


def report(f: dict[str, Any], problems: list[str], campaign_rows: list[list[Any]], kill_rows: list[list[Any]],
           wall_s: float) -> None:
    print()
    print(tabulate(kill_rows, headers=["kill", "kind", "target", "campaign", "its flow run", "→Crashed s",
                                       "→next flow run s", "→RunStarted s", "→dispatch s", "state message"]))
    print()
    print(tabulate(campaign_rows, headers=["campaign", "status", "done+failed/budget", "runs", "flow runs (Prefect)",
                                           "kills", "lost", "twice", "forks", "wrong", "≠ device", "killed w/ device",
                                           "re-sent", "rejected msgs", "extra flow runs", "events",
                                           "person events"]))
    print()
    rows = [
        ("kills: flow runs / whole workers (machines rebooted)",
         f"{f['flow_run_kills']} / {f['worker_kills']} ({f['reboots']})"),
        ("broker restarts / database SIGKILL+restarts / device SIGKILL+restarts",
         f"{f['broker']} / {f['database']} / {f['device']}"),
        ("kill → next dispatch, median / max: all", f["all"]),
        ("  after a flow-run kill (samples)", f"{f['fr']} ({f['samples'][0]})"),
        ("  after a worker kill (samples)", f"{f['wk']} ({f['samples'][1]})"),
        ("worker kill → its flow run marked Crashed, median / max", f["detect"]),
        ("flow runs in Prefect (extra: an automation fired twice for one crash)",
         f"{f['flow_runs']} ({f['extra_runs']})"),
        ("'database is locked' in the Prefect server's log (SQLite)", f["locked"]),
        ("device messages rejected by the campaigns (other campaigns' results, duplicates)", f["rejected"]),
        ("wall time", f"{wall_s:.0f} s"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    for cid, created, message in f["failed_runs"]:
        print(f"  failed flow run of {cid} (created {created} UTC): {message}")
    for p in problems:
        print(f"  INVARIANT BROKEN: {p}")
    print(f"kills: {f['kills']} ({f['flow_run_kills']} flow runs, {f['worker_kills']} workers), broker restarts: "
          f"{f['broker']}, database restarts: {f['database']}, device kills: {f['device']}, results lost: {f['lost']}, "
          f"executed twice: {f['twice']}, forks: {f['forks']}, wrong values: {f['wrong']}, campaigns finished: "
          f"{f['finished']}/{f['campaigns']}, person commands typed: {f['person']}, kill→dispatch median/max: "
          f"{f['all']} (flow-run kills {f['fr']}, worker kills {f['wk']})", flush=True)


def main(args: argparse.Namespace) -> int:
    if args.trials is None:
        args.trials = 15 * args.kills + 60
    root = Path(tempfile.mkdtemp(prefix="closedloop-service-chaos-"))
    chaos = ServiceChaos(args, root)
    say(f"service chaos: {args.campaigns} campaigns on {args.workers} workers, {args.kills} kills, "
        f"budget {args.trials} trials each, seed {args.seed}, load average {os.getloadavg()[0]:.2f}")
    ok = False
    try:
        chaos.start_all()
        loop_problems = chaos.run()
        figures, problems, campaign_rows, kill_rows = check(chaos, loop_problems)
        ok = not problems
        if args.keep or not ok:
            print(f"(kept {root})")
        say(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        report(figures, problems, campaign_rows, kill_rows, time.monotonic() - base.T0)
    finally:
        chaos.stop_all()
        if ok and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1
