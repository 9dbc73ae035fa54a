"""A full disk and a damaged database file: one line that says so, exit 1, nothing lost.

A full disk is made without root: the orchestrator (and the embedded database server it
starts) runs under ``RLIMIT_FSIZE``, so the kernel refuses to grow the database file past a
size, as a full filesystem refuses to (SQLite reports it as a disk that refuses writes).
"""

from __future__ import annotations

import resource
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from campaigns import TrialCompleted
from simulators import read_completions, read_executions
from tests.e2e.cli import CLOSEDLOOP, cli_env, run, write_spec
from tests.e2e.test_crash_resume import log_events

SPEC: dict[str, Any] = {
    "name": "fills-disk",
    "seed": 2,
    "parameters": [{"name": "x1", "type": "float", "bounds": [-5.0, 10.0]},
                   {"name": "x2", "type": "float", "bounds": [0.0, 15.0]}],
    "objectives": [{"name": "branin", "minimize": True}],
    "budget": {"max_trials": 60},
    "batch_size": 2,
    "trial_timeout_s": 60,
    "devices": [{"id": d, "simulator": "branin", "options": {"duration_s": [0.02, 0.05], "seed": i}}
                for i, d in enumerate(("dev-a", "dev-b"))],
    "optimizer": {"method": "sobol"},
}

FILE_LIMIT = 160 * 1024  # bytes; the database's write-ahead log passes it within a few trials


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


@pytest.mark.timeout(600)
def test_full_disk_is_one_line_and_loses_nothing(tmp_path: Path, mosquitto_url: str,
                                                 prefect_server: dict[str, str]) -> None:
    """Issue 14 item 13: a full disk crashed the loop with a traceback and a hint about
    permissions. Now: one line naming the disk and `closedloop resume`, exit 1; with space
    back, the resume finishes and every trial's result is in the log once."""
    home = tmp_path / "home"
    env = cli_env(home, prefect_server, CLOSEDLOOP_MQTT_URL=mosquitto_url)
    spec = write_spec(tmp_path / "spec.yaml", SPEC)
    full = subprocess.run([CLOSEDLOOP, "run", str(spec), "--quiet"], env=env, capture_output=True, text=True,
                          timeout=400, preexec_fn=_limit_file_size)
    assert full.returncode == 1, (full.returncode, full.stderr[-3000:])
    lines = [ln for ln in full.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, full.stderr[-3000:]
    assert f"the disk holding {home / 'data'} is full or refuses writes" in lines[0], lines[0]
    assert "free space on it, then `closedloop resume fills-disk`" in lines[0], lines[0]
    assert "permission" not in lines[0]

    resumed = run(["resume", "fills-disk", "--quiet"], env, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    events = log_events(home, "fills-disk")
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    completed = Counter(e.trial_id for e in events if isinstance(e, TrialCompleted))
    assert len(completed) == 60 and set(completed.values()) == {1}
    logged = {e.request_id for e in events if isinstance(e, TrialCompleted)}
    for device in ("dev-a", "dev-b"):  # the instruments' own records: nothing lost, nothing run twice
        record = home / "devices" / f"{device}.jsonl"
        assert set(read_completions(record)) <= logged
        assert set(read_executions(record).values()) == {1}


def test_damaged_database_file_is_one_line(tmp_path: Path, prefect_server: dict[str, str]) -> None:
    """Issue 14 item 13: a corrupt database file was reported as "check the user's
    permissions". Now one line saying the file is damaged and what to do, exit 1."""
    home = tmp_path / "home"
    env = cli_env(home, prefect_server)
    spec = write_spec(tmp_path / "spec.yaml", {**SPEC, "budget": {"max_trials": 2}})
    first = run(["run", str(spec), "--quiet"], env)
    assert first.returncode == 0, first.stderr[-3000:]
    (home / "data" / "closedloop.db").write_bytes(b"\x00garbage, not SQLite\n" * 512)
    for args in (["status", "fills-disk"], ["run", str(spec), "--quiet"]):
        out = run(args, env, timeout=120)
        assert out.returncode == 1, (args, out.stderr)
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, out.stderr
        assert f"a database file in {home / 'data'} is damaged" in lines[0], lines[0]
        assert "restore it from a backup" in lines[0] and "permission" not in lines[0]
