"""How an orchestrator stops: SIGTERM like Ctrl-C, and nothing it started outlives it.

The demo's set-up (embedded broker and database, simulators inside the run) with Prefect in
its local mode (no PREFECT_API_URL): everything `closedloop run` starts is a process of its
own or in-process, and each must be gone once the orchestrator is, however it died.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from campaigns import RunStarted, TrialCompleted, fold
from simulators import read_completions
from tests.conftest import PREFECT_QUIET
from tests.e2e.cli import cli_env, run, start, write_spec
from tests.e2e.test_crash_resume import log_events, status_or_none, wait_for

SLOW_SPEC: dict[str, Any] = {
    "seed": 3,
    "parameters": [{"name": "x1", "type": "float", "bounds": [-5.0, 10.0]},
                   {"name": "x2", "type": "float", "bounds": [0.0, 15.0]}],
    "objectives": [{"name": "branin", "minimize": True}],
    # A budget no run reaches before the test stops it, however slow the machine (16 trials of
    # 2-3 s could finish before a slow `status` saw one running); the resume's budget is set
    # below by `change --max-trials`.
    "budget": {"max_trials": 1000},
    "batch_size": 2,
    "trial_timeout_s": 120,
    "devices": [{"id": d, "simulator": "branin", "options": {"duration_s": [0.3, 0.6], "seed": i}}
                for i, d in enumerate(("dev-a", "dev-b"))],
    "optimizer": {"method": "sobol"},
}


def descendants(pid: int) -> set[int]:
    """Every process whose chain of parents leads to ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie, dead but not reaped, counts as gone)."""
    running = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":
            running.add(pid)
    return running


def start_running(tmp_path: Path, name: str, spec: Path, env: dict[str, str], completed: int) -> tuple[subprocess.Popen[str], set[int]]:
    """Start ``closedloop run SPEC``; return it once ``completed`` trials are done and one runs,
    with its descendants at that moment (Prefect's API server, the database server, ...)."""
    # Files, not pipes: a process left behind would hold a pipe open, and reading it would hang.
    with (tmp_path / "out.txt").open("w") as out, (tmp_path / "err.txt").open("w") as err:
        orch = start(["run", str(spec), "--quiet"], env, text=True, stdout=out, stderr=err)
    wait_for(lambda: orch.poll() is not None or ((s := status_or_none(name, env))
                                                 and s["trials"]["completed"] >= completed and s["trials"]["running"] >= 1),
             300, f"{completed} trials completed and one running")
    assert orch.poll() is None, (tmp_path / "err.txt").read_text()[-3000:]
    kids = descendants(orch.pid)
    assert kids, "the run started no process at all?"
    return orch, kids


def gone_soon(kids: set[int]) -> None:
    """The kernel ends them (a parent-death signal; the database keeper's lock): a hang guard,
    not a race, for their shutdown on a loaded machine."""
    deadline = time.monotonic() + 300
    while alive(kids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(kids), [Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in alive(kids)]


@pytest.mark.timeout(900)
def test_sigkill_and_sigterm_leave_no_process_and_the_same_command_finishes(tmp_path: Path,
                                                                            prefect_server: dict[str, str]) -> None:
    """One campaign on the demo's set-up, stopped both ways and finished (one scenario, for the
    suite's time: each `run` here starts Prefect's local server and a database server).

    - Issue 14 item 12: every SIGKILL of an orchestrator orphaned Prefect's local API server
      (uvicorn); the embedded database server stayed up too. Now every process the run
      started is gone shortly after it.
    - Issue 14 item 12: SIGTERM (a service manager's stop) killed the run without cleanup (exit
      143 by signal) and left Prefect's local API server running with no parent. Now: exit
      code 143, one line, no process of the run left, the log intact.
    - The same `run` command after a SIGKILL continues the campaign from its log; a `resume`
      after the SIGTERM finishes it; no instrument ran a request twice, each trial's result is
      in the log once, seqs are contiguous.
    """
    name = "stopped"
    local = cli_env(tmp_path / "home", {**PREFECT_QUIET, "PREFECT_HOME": str(tmp_path / "prefect")})
    local.pop("PREFECT_API_URL", None)  # Prefect's local mode: the run starts its own API server
    spec = write_spec(tmp_path / "spec.yaml", {**SLOW_SPEC, "name": name})

    orch, kids = start_running(tmp_path, name, spec, local, completed=2)
    orch.kill()
    orch.wait(timeout=30)
    gone_soon(kids)
    assert not (tmp_path / "home" / "mongo.json").exists()

    # The same command again: it continues the campaign (the spec file is unchanged).
    done = sum(isinstance(e, TrialCompleted) for e in log_events(tmp_path / "home", name))
    orch, kids = start_running(tmp_path, name, spec, local, completed=done + 1)
    orch.send_signal(signal.SIGTERM)
    orch.wait(timeout=120)
    assert "continuing from event" in (tmp_path / "out.txt").read_text()
    err = (tmp_path / "err.txt").read_text()
    assert orch.returncode == 143, (orch.returncode, err)
    # One line for the stop; before it, the run took over the killed run's lease, and said so.
    lines = [ln for ln in err.splitlines() if ln.strip() and "is not running any more: taking over" not in ln]
    assert len(lines) == 1 and lines[0].startswith("terminated (SIGTERM): the campaign's log is intact"), err
    gone_soon(kids)

    env = cli_env(tmp_path / "home", prefect_server)  # the session's Prefect server: no third local one
    budget = fold(log_events(tmp_path / "home", name)).budget_used + 2
    out = run(["change", name, "--max-trials", str(budget), "--reason", "test"], env)
    assert out.returncode == 0, out.stderr
    resumed = run(["resume", name, "--quiet"], env, timeout=400)
    assert resumed.returncode == 0, resumed.stderr
    events = log_events(tmp_path / "home", name)
    assert fold(events).status == "finished"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert sum(isinstance(e, RunStarted) for e in events) == 3
    completed = Counter(e.trial_id for e in events if isinstance(e, TrialCompleted))
    assert len(completed) == budget and set(completed.values()) == {1}
    for device in ("dev-a", "dev-b"):
        finished = read_completions(tmp_path / "home" / "devices" / f"{device}.jsonl")
        assert finished and set(finished.values()) == {1}  # answered from the record, not run again
