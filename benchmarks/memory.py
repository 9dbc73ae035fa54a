"""Resident memory of running and waiting campaigns, 1, 4 and 8 at once, run and deployed (issue 16).

Real parts in a temporary directory: Mosquitto and nx-27017 (``_stack.Stack``), one
``prefect server start`` (``startup._prefect_server``), and one standalone simulated Branin
instrument (``closedloop sim``) per campaign slot, shared by every cell and reported apart.
A campaign runs the two ways a lab runs one today:

- ``run``: ``closedloop run SPEC --no-simulators``, one process per campaign;
- ``deploy``: ``closedloop deploy SPEC --pool P --no-simulators`` on a process work pool of its
  own per cell with one ``prefect worker start --pool P --type process``; the campaign's process
  is its flow run's (the pid of its latest ``RunStarted``, if alive); the worker reported apart.

Each cell (way x state x N) starts N campaigns at once (one device each, batches of two, the
``fast`` engine after an opening batch of two, a budget they never reach) and waits on their
logs until each is

- ``running``: its first model batch (``engine: fast``) suggested, i.e. past its first GP fit,
  its trials on the instrument;
- ``waiting``: ``approval: every_batch``; the opening batch is approved with ``closedloop
  approve``, the first batch the model proposes is left unanswered.

Then ``--samples`` samples, a second apart, of every process of every campaign (the pid and
its descendants): RSS, and PSS and USS from ``/proc/PID/smaps_rollup`` (RSS counts the shared
pages of torch's libraries in every process; PSS splits them between the processes that map
them; USS is the process's own). A cell's figures are medians over the samples; per campaign
the median over its campaigns. Before the cells, fresh interpreters measure what importing
each of Python, the CLI, torch, BoTorch, Ax, Prefect and a run's flow costs in RSS.

Usage::

    python benchmarks/memory.py [--counts 1,4,8] [--ways run,deploy] [--states running,waiting]
        [--samples 3] [--repeat 3] [--method fast] [--no-imports] [--no-campaigns] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._stack import Stack
from benchmarks.chaos import stop_group
from benchmarks.startup import _prefect_server
from campaigns import CampaignState, RunStarted, fold
from storage import MongoEventStore

BIN = Path(sys.executable).parent
CLOSEDLOOP = str(BIN / "closedloop")
MB = 1024 * 1024
T0 = time.monotonic()
PREFECT_QUIET = {"PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}

#: Fresh interpreters: what each import costs in resident memory.
IMPORTS = {
    "python (bare interpreter)": "pass",
    "import flows.cli.main (light commands)": "import flows.cli.main",
    "import torch": "import torch",
    "import botorch": "import botorch",
    "import ax": "import ax",
    "import pandas": "import pandas",
    "import prefect (lazy: its top level only)": "import prefect",
    "from prefect import flow, task": "from prefect import flow, task",
    "import flows.prefect.flow (what a run imports)": "import flows.prefect.flow",
    "... and the fast engine (optimizer.fastbo)": "import flows.prefect.flow, optimizer.fastbo",
}
WATCHED = ("torch", "botorch", "ax", "prefect", "pandas")


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f} s] {message}", file=sys.stderr, flush=True)


# -- memory of processes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    """Resident memory of one or more processes, in bytes."""

    rss: int = 0
    pss: int = 0
    uss: int = 0
    processes: int = 0

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.rss + other.rss, self.pss + other.pss, self.uss + other.uss,
                      self.processes + other.processes)


def memory_of(pid: int) -> Memory:
    """RSS, PSS and USS of one process (``smaps_rollup``); nothing if it is gone."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB":
                    fields[name] = int(parts[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return Memory()
    if "Rss" not in fields:  # a zombie: no memory left
        return Memory()
    return Memory(fields["Rss"], fields.get("Pss", 0),
                  fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0), 1)


def children() -> dict[int, list[int]]:
    """Every process's children, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def with_descendants(pid: int, tree: dict[int, list[int]]) -> list[int]:
    """``pid`` and all its descendants (``pid`` alone if it is gone: then it counts nothing)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


# -- imports -------------------------------------------------------------------------------------------


def import_memory(code: str) -> tuple[Memory, list[str]]:
    """A fresh interpreter's memory after running ``code``, and which heavy packages it loaded."""
    probe = (f"{code}\nimport sys\nprint(' '.join(m for m in {WATCHED!r} if m in sys.modules))\n"
             "print(open('/proc/self/smaps_rollup').read())")
    out = subprocess.run([sys.executable, "-c", probe], check=True, cwd=ROOT, capture_output=True, text=True).stdout
    loaded, _, smaps = out.partition("\n")
    fields = {}
    for line in smaps.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[name] = int(parts[0]) * 1024
    return (Memory(fields["Rss"], fields["Pss"], fields["Private_Clean"] + fields["Private_Dirty"], 1),
            loaded.split())


def imports_table(repeat: int) -> list[tuple[str, Memory, list[str]]]:
    """Each import case, ``repeat`` fresh interpreters in turn with the others; medians."""
    runs: dict[str, list[Memory]] = {name: [] for name in IMPORTS}
    loaded: dict[str, list[str]] = {}
    for _ in range(repeat):
        for name, code in IMPORTS.items():
            memory, loaded[name] = import_memory(code)
            runs[name].append(memory)
    return [(name, median(v), loaded[name]) for name, v in runs.items()]


def median(samples: list[Memory]) -> Memory:
    if not samples:
        return Memory()
    return Memory(int(statistics.median(m.rss for m in samples)), int(statistics.median(m.pss for m in samples)),
                  int(statistics.median(m.uss for m in samples)), int(statistics.median(m.processes for m in samples)))


# -- the campaigns ----------------------------------------------------------------------------------


def spec(name: str, device: str, *, waiting: bool, method: str) -> dict[str, Any]:
    """A Branin campaign on one standalone instrument, batches of 2 (batch-synchronous): the opening
    batch (the centre and a Sobol point), then the model's (``method``) batches. ``waiting``: a person
    approves every batch."""
    return {
        "name": name, "seed": 1,
        "parameters": [{"name": "x1", "type": "float", "bounds": [-5.0, 10.0]},
                       {"name": "x2", "type": "float", "bounds": [0.0, 15.0]}],
        "objectives": [{"name": "branin", "minimize": True}],
        "budget": {"max_trials": 1000}, "batch_size": 2, "dispatch": "batch", "trial_timeout_s": 60,
        "devices": [{"id": device, "measures": ["branin"]}],
        "optimizer": {"method": method, "initialization_trials": 2},
        **({"approval": "every_batch"} if waiting else {}),
    }


def model_trials(state: CampaignState) -> int:
    return sum(t.engine not in ("sobol", "unknown") for t in state.trials.values())


def waiting_on_model(state: CampaignState) -> bool:
    """An unanswered approval of trials the model proposed."""
    return any(state.trials[t].engine not in ("sobol", "unknown") for a in state.open_approvals.values() for t in a.trial_ids
               if t in state.trials)


@dataclass
class Campaign:
    id: str
    proc: subprocess.Popen[bytes] | None = None  # `closedloop run` (or the `deploy` command)
    state: CampaignState | None = None
    approved: set[str] = field(default_factory=set)


@dataclass
class Cell:
    way: str
    state: str
    n: int
    campaigns: Memory
    per_campaign: Memory
    processes: int
    worker: Memory | None
    reached_s: float


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path, server: tuple[subprocess.Popen[bytes], str]) -> None:
        self.args, self.root = args, root
        self.server, url = server
        self.stack = Stack().start()
        os.environ.update({"PREFECT_API_URL": url, "PREFECT_HOME": str(root / "prefect"), **PREFECT_QUIET})
        say(f"mosquitto, nx-27017 and a prefect server ({url}) up in {root}")
        self.database = f"mem_{uuid.uuid4().hex[:8]}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CLOSEDLOOP_")}
        self.env.update({"CLOSEDLOOP_HOME": str(root / "home"), "CLOSEDLOOP_MONGODB_URI": self.stack.mongo_uri,
                         "CLOSEDLOOP_MONGODB_DATABASE": self.database, "CLOSEDLOOP_MQTT_URL": self.stack.mqtt_url,
                         "CLOSEDLOOP_MQTT_PREFIX": f"mem-{uuid.uuid4().hex[:6]}"})
        self.store = MongoEventStore(self.stack.mongo_uri, database=self.database)
        self.sims: list[subprocess.Popen[bytes]] = []
        self.logs = root / "logs"
        self.logs.mkdir()

    def popen(self, command: list[str], log: str, **env: str) -> subprocess.Popen[bytes]:
        with (self.logs / log).open("ab") as out:
            return subprocess.Popen(command, env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def start_sims(self, n: int) -> None:
        for i in range(len(self.sims), n):
            self.sims.append(self.popen([CLOSEDLOOP, "sim", "branin", "--device-id", f"dev-{i}",
                                         "--option", "duration_s=[1.0, 2.0]", "--option", f"seed={i + 1}"],
                                        f"sim-{i}.log"))

    def stop(self) -> None:
        for p in self.sims:
            stop_group(p, signal.SIGTERM)
        self.store.close()
        stop_server(self.server)
        self.stack.stop()

    # ---- one cell

    def cell(self, way: str, state: str, n: int) -> Cell:
        self.start_sims(n)
        tag = f"{way}-{state}-n{n}-{uuid.uuid4().hex[:4]}"
        campaigns = [Campaign(f"{tag}-{j}") for j in range(n)]
        for j, c in enumerate(campaigns):
            (self.root / f"{c.id}.yaml").write_text(yaml.safe_dump(spec(c.id, f"dev-{j}", waiting=state == "waiting",
                                                                   method=self.args.method)))
        worker, pool = None, f"pool-{tag}"
        started = time.monotonic()
        try:
            if way == "run":
                for c in campaigns:
                    c.proc = self.popen([CLOSEDLOOP, "run", str(self.root / f"{c.id}.yaml"), "--no-simulators",
                                         "--quiet"], f"{c.id}.log")
            else:
                self.create_pool(pool)
                worker = self.popen([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
                                    f"worker-{tag}.log", PREFECT_WORKER_QUERY_SECONDS="1")
                # Two `deploy` commands at a time: eight at once on 2 cores had the Prefect server
                # (SQLite) answer 503 to a deployment's creation.
                for i in range(0, n, 2):
                    deploys = [(c, self.popen([CLOSEDLOOP, "deploy", str(self.root / f"{c.id}.yaml"), "--pool", pool,
                                               "--no-simulators"], f"{c.id}.log")) for c in campaigns[i:i + 2]]
                    for c, p in deploys:
                        if p.wait(timeout=300) != 0:
                            raise RuntimeError(f"deploy {c.id} exited {p.returncode}: see {self.logs / (c.id + '.log')}")
            reached = self.wait_until(campaigns, state, way)
            say(f"{way} {state} x{n}: reached in {reached - started:.1f} s; sampling")
            samples: list[list[Memory]] = []
            workers: list[Memory] = []
            for i in range(self.args.samples):
                if i:
                    time.sleep(1.0)
                tree = children()
                samples.append([self.campaign_memory(c, way, tree) for c in campaigns])
                if worker is not None:
                    workers.append(memory_of(worker.pid))
            per = median([m for sample in samples for m in sample])  # over campaigns and samples
            total = median([sum(sample, Memory()) for sample in samples])
            return Cell(way, state, n, total, per, total.processes, median(workers) if worker else None,
                        reached - started)
        finally:
            stop_group(worker)  # first: a worker reports its flow runs killed, and Prefect would restart them
            for c in campaigns:
                stop_group(c.proc)
                if way == "deploy" and (pid := self.run_pid(c)) is not None and alive(pid):
                    os.kill(pid, signal.SIGKILL)

    def create_pool(self, pool: str) -> None:
        """`prefect work-pool create POOL --type process`, through Prefect's client (one per cell: the
        automations of a cell's campaigns restart their killed flow runs on its pool, which no worker
        serves afterwards)."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import WorkPoolCreate

        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))

    def run_pid(self, c: Campaign) -> int | None:
        runs = [e for e in self.store.read(c.id) if isinstance(e, RunStarted)] if c.state is not None else []
        return runs[-1].pid if runs else None

    def campaign_memory(self, c: Campaign, way: str, tree: dict[int, list[int]]) -> Memory:
        """All processes of the campaign: ``closedloop run`` and its descendants; or its flow run's
        process (the latest RunStarted's pid, if alive) and its descendants."""
        pid = c.proc.pid if way == "run" and c.proc is not None else self.run_pid(c)
        if pid is None or not alive(pid):
            return Memory()
        return sum((memory_of(p) for p in with_descendants(pid, tree)), Memory())

    def wait_until(self, campaigns: list[Campaign], state: str, way: str) -> float:
        """Poll the logs until every campaign is in ``state``; answer opening approvals on the way."""
        done: Callable[[CampaignState], bool] = (
            (lambda s: model_trials(s) >= 2) if state == "running" else waiting_on_model)
        approvals: list[subprocess.Popen[bytes]] = []
        deadline = time.monotonic() + self.args.timeout
        try:
            while True:
                for c in campaigns:
                    c.state = fold(self.store.read(c.id))
                    if way == "run" and c.proc is not None and c.proc.poll() is not None:
                        raise RuntimeError(f"{c.id} exited {c.proc.returncode}: see {self.logs / (c.id + '.log')}")
                    if state == "waiting":
                        for a in c.state.open_approvals.values():
                            if a.approval_id not in c.approved and not waiting_on_model(c.state):
                                c.approved.add(a.approval_id)
                                approvals.append(self.popen([CLOSEDLOOP, "approve", c.id, "--approval", a.approval_id,
                                                             "--reason", "memory benchmark: the opening"],
                                                            f"{c.id}-approve.log"))
                if all(c.state is not None and done(c.state) for c in campaigns):
                    if way == "deploy" and state == "waiting":
                        # A deployed campaign suspends its flow run on the approval: its process
                        # exits within seconds. Measured once they are gone (or after 60 s, with
                        # whatever still runs).
                        settle = time.monotonic() + 60
                        while time.monotonic() < settle and any(alive(self.run_pid(c)) for c in campaigns):
                            time.sleep(0.5)
                    return time.monotonic()
                if time.monotonic() > deadline:
                    late = [c.id for c in campaigns if c.state is None or not done(c.state)]
                    raise RuntimeError(f"not {state} within {self.args.timeout:g} s: {late} (logs in {self.logs})")
                time.sleep(0.5)
        finally:
            for p in approvals:
                try:
                    p.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    stop_group(p)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Stop a `prefect server start` (Prefect 3.8's server stops on SIGINT)."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        stop_group(proc)


def mb(value: int) -> str:
    return f"{value / MB:.0f}"


def report(imports: list[tuple[str, Memory, list[str]]], cells: list[Cell], sims: list[Memory]) -> None:
    if imports:
        bare = imports[0][1]
        rows = [(name, m, ", ".join(loaded) or "-") for name, m, loaded in imports]
        rows += [(f"a running campaign (closedloop run, {c.n} at once, past its first fits)", c.per_campaign,
                  "(all of its processes)") for c in cells if (c.way, c.state) == ("run", "running")][:1]
        # RSS only: a fresh interpreter's USS depends on which other processes map torch's libraries.
        print(tabulate([(name, mb(m.rss), f"+{mb(m.rss - bare.rss)}", loaded) for name, m, loaded in rows],
                       headers=["fresh interpreter", "RSS MB", "vs bare", "loads"],
                       colalign=("left", "right", "right", "left")))
        print()
    if sims:
        print(f"standalone instruments (closedloop sim, apart): {len(sims)} processes, RSS {mb(median(sims).rss)} MB "
              f"each (PSS {mb(median(sims).pss)}, USS {mb(median(sims).uss)})")
        print()
    if cells:
        print(tabulate([(c.way, c.state, c.n, c.processes, mb(c.per_campaign.rss), mb(c.per_campaign.pss),
                         mb(c.per_campaign.uss), mb(c.campaigns.rss), mb(c.campaigns.pss),
                         mb(c.worker.rss) if c.worker else "-") for c in cells],
                       headers=["way", "state", "N", "procs", "RSS/campaign", "PSS/campaign", "USS/campaign",
                                "RSS total", "PSS total", "worker RSS"],
                       colalign=("left", "left", "right", "right", "right", "right", "right", "right", "right",
                                 "right")))
        print("(MB; medians over samples and campaigns; procs: all processes of the N campaigns)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--counts", default="1,4,8", help="concurrent campaigns per cell (default 1,4,8)")
    parser.add_argument("--ways", default="run,deploy", help="run, deploy or both (default run,deploy)")
    parser.add_argument("--states", default="running,waiting", help="running, waiting or both")
    parser.add_argument("--samples", type=int, default=3, help="samples of each cell, a second apart (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="fresh interpreters per import case (default 3)")
    parser.add_argument("--no-imports", action="store_true", help="skip the import table")
    parser.add_argument("--no-campaigns", action="store_true", help="the import table only")
    parser.add_argument("--method", default="fast", choices=["fast", "ax", "ax_default"],
                        help="the campaigns' model (default fast, which a 2-D Branin gets with method auto)")
    parser.add_argument("--timeout", type=float, default=240.0, help="limit for a cell to reach its state (s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",") if c.strip().isdigit()]
    ways = args.ways.split(",")
    states = args.states.split(",")
    if (not set(ways) <= {"run", "deploy"} or not set(states) <= {"running", "waiting"} or not counts
            or len(counts) != len(args.counts.split(",")) or min(counts) < 1 or args.samples < 1 or args.repeat < 1):
        parser.error("--ways: run,deploy; --states: running,waiting; --counts: positive numbers, e.g. 1,4; "
                     "--samples, --repeat: 1 or more")

    cells: list[Cell] = []
    sims: list[Memory] = []
    root = Path(tempfile.mkdtemp(prefix="closedloop-memory-"))
    with ThreadPoolExecutor(1) as pool:  # the Prefect server starts (~20 s of CPU) while the imports are measured
        starting = None if args.no_campaigns else pool.submit(_prefect_server, root / "prefect")
        try:
            imports = [] if args.no_imports else imports_table(args.repeat)
            bench = None if starting is None else Bench(args, root, starting.result())
        except BaseException:
            if starting is not None and starting.exception() is None:
                stop_server(starting.result()[0])
            raise
    if bench is not None:
        try:
            for way in ways:
                for n in counts:
                    for state in states:
                        cells.append(bench.cell(way, state, n))
            sims = [memory_of(p.pid) for p in bench.sims if alive(p.pid)]
        finally:
            bench.stop()
    if args.keep:
        say(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    say(f"done in {time.monotonic() - T0:.0f} s; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    report(imports, cells, sims)
    return 0


if __name__ == "__main__":
    sys.exit(main())
