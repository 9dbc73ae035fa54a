"""A deployed campaign's waits for a person: no process while it waits, and how soon an answer runs.

Real parts in a temporary directory: Mosquitto, nx-27017, a ``prefect server start``, a
process work pool and one ``prefect worker start`` (``--query-seconds``, Prefect's default 10).
One campaign is deployed (``closedloop deploy``, simulated instruments in its flow run) with
``approval: every_batch``; each approval is answered in turn through Prefect's API, as the
UI's form does (``resume_flow_run`` with the form's input), or with ``closedloop approve``.

For each wait it checks that the campaign's flow run is suspended, its process has exited and
the worker has no child process, then answers and measures the time from the answer to the
next ``TrialDispatched`` in the log. The last line: the waits, processes found while waiting,
and the median and maximum time from an answer to a dispatch, per path::

    python benchmarks/waits.py [--approvals 6] [--query-seconds 10]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._service_chaos import _descendants, _proc_table
from benchmarks._stack import Stack
from benchmarks.startup import _prefect_server
from campaigns import RunStarted, TrialDispatched, fold
from storage import MongoEventStore

BIN = Path(sys.executable).parent


def _spec(approvals: int) -> dict[str, Any]:
    return {
        "name": "waits", "seed": 3,
        "parameters": [{"name": "x1", "type": "float", "bounds": [-5.0, 10.0]},
                       {"name": "x2", "type": "float", "bounds": [0.0, 15.0]}],
        "objectives": [{"name": "branin", "minimize": True}],
        "budget": {"max_trials": 2 * approvals}, "batch_size": 2, "trial_timeout_s": 60,
        "approval": "every_batch", "optimizer": {"method": "sobol"},
        "devices": [{"id": f"sim-{i}", "simulator": "branin", "options": {"duration_s": [0.1, 0.3], "seed": i}}
                    for i in (1, 2)],
    }


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _wait(pred: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := pred():
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--approvals", type=int, default=6, help="approval waits, answered in turn (default 6)")
    parser.add_argument("--query-seconds", type=int, default=10, help="the worker's PREFECT_WORKER_QUERY_SECONDS")
    args = parser.parse_args()

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.flow_runs import resume_flow_run

    root = Path(tempfile.mkdtemp(prefix="closedloop-waits-"))
    (root / "spec.yaml").write_text(yaml.safe_dump(_spec(args.approvals), sort_keys=False))
    stack = Stack().start()
    server, url = _prefect_server(root / "prefect")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFECT_API_URL": url, "PREFECT_HOME": str(root / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "CLOSEDLOOP_MQTT_URL": stack.mqtt_url,
           "CLOSEDLOOP_MONGODB_URI": stack.mongo_uri, "CLOSEDLOOP_HOME": str(root / "home")}
    os.environ.update({"PREFECT_API_URL": url, "PREFECT_HOME": str(root / "prefect")})
    worker: subprocess.Popen[bytes] | None = None
    store = MongoEventStore(stack.mongo_uri)
    times: dict[str, list[float]] = {"prefect": [], "cli": []}
    found: list[int] = []
    try:
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name="bench", type="process"))
        with (root / "worker.log").open("wb") as log:
            worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "bench", "--type", "process"],
                                      env={**env, "PREFECT_WORKER_QUERY_SECONDS": str(args.query_seconds)},
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        subprocess.run([str(BIN / "closedloop"), "deploy", "spec.yaml", "--pool", "bench"], cwd=root, env=env,
                       check=True, stdout=subprocess.DEVNULL)
        children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children")
        for i in range(args.approvals):
            def suspended() -> RunStarted | None:
                state = fold(store.read("waits"))
                runs = [e for e in store.read("waits") if isinstance(e, RunStarted)]
                if not state.open_approvals or not runs:
                    return None
                with get_client(sync_client=True) as client:
                    run = client.read_flow_run(UUID(str(runs[-1].flow_run_id)))
                return runs[-1] if run.state is not None and run.state.name == "Suspended" else None

            started = _wait(suspended, 300, f"approval wait {i + 1}")
            _wait(lambda s=started: not _alive(s.pid) and not children.read_text().split(), 60, "the process to exit")
            found.append(len(children.read_text().split()) + _alive(started.pid))
            dispatched_before = sum(isinstance(e, TrialDispatched) for e in store.read("waits"))
            path = "prefect" if i % 2 == 0 else "cli"
            answered = time.time()
            if path == "prefect":
                resume_flow_run(UUID(str(started.flow_run_id)), run_input={"decision": "approve", "reason": "bench",
                                                                           "by": "bench"})
            else:
                subprocess.run([str(BIN / "closedloop"), "approve", "waits", "--reason", "bench"], cwd=root, env=env,
                               check=True, stdout=subprocess.DEVNULL)
            def dispatches() -> list[TrialDispatched]:
                return [e for e in store.read("waits") if isinstance(e, TrialDispatched)]

            _wait(lambda n=dispatched_before: len(dispatches()) > n, 300, "the next dispatch")
            times[path].append(dispatches()[dispatched_before].time.timestamp() - answered)
            print(f"wait {i + 1}: answered via {path}, next dispatch after {times[path][-1]:.1f} s", flush=True)
    finally:
        if worker is not None:  # and its flow runs: each runs in a session of its own
            for pid in [worker.pid, *_descendants(worker.pid, _proc_table())]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            worker.wait(timeout=30)
        os.killpg(server.pid, signal.SIGINT)
        server.wait(timeout=60)
        store.close()
        stack.stop()
    figures = ", ".join(f"answer via {p} -> dispatch median {statistics.median(v):.1f} s max {max(v):.1f} s (n={len(v)})"
                        for p, v in times.items() if v)
    print(f"waits {len(found)}, campaign processes while waiting {sum(found)}, worker query {args.query_seconds} s; "
          f"{figures}")
    return 0 if sum(found) == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
