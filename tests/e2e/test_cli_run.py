"""`closedloop run` end to end on the embedded broker and database, watched from a second process."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.cli import branin, cli_env, run, start, status, write_spec

SPEC = {
    "name": "branin-e2e",
    "seed": 7,
    "parameters": [
        {"name": "x1", "type": "float", "bounds": [-5.0, 10.0]},
        {"name": "x2", "type": "float", "bounds": [0.0, 15.0]},
    ],
    "objectives": [{"name": "branin", "minimize": True}],
    "budget": {"max_trials": 8},
    "batch_size": 2,
    "trial_timeout_s": 60,
    "devices": [
        {"id": "sim-a", "simulator": "branin", "options": {"duration_s": [0.4, 0.8], "seed": 1}},
        {"id": "sim-b", "simulator": "branin", "options": {"duration_s": [0.4, 0.8], "seed": 2}},
    ],
}


@pytest.mark.timeout(600)
def test_run_status_export(tmp_path: Path, prefect_server: dict[str, str]) -> None:
    env = cli_env(tmp_path / "home", prefect_server)
    env.pop("CLOSEDLOOP_AX_DB_URL")  # the default store, under home: checked below
    # The first three trials wait for a person: while trial 2's approval is open the campaign
    # cannot finish, so the second process sees it running, by construction, however slow.
    spec = write_spec(tmp_path / "branin.yaml", {**SPEC, "approval": {"first_n": 3}})
    proc = start(["run", str(spec)], env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen_while_running: list[dict] = []
    approved: set[str] = set()
    try:
        # `status` in a second process until it has seen the campaign running with a trial
        # completed and the three approvals are given; then the run is left to finish (each
        # `status` is a process: polling to the end cost ~60 of them).
        while proc.poll() is None and not (approved >= {"0", "1", "2"} and any(
                s["status"] == "running" and s["trials"]["completed"] >= 1 for s in seen_while_running)):
            time.sleep(0.5)
            if not (tmp_path / "home" / "mongo.json").exists():
                continue
            out = run(["status", "branin-e2e", "--json"], env, timeout=60)
            if out.returncode == 0 and proc.poll() is None:
                seen = json.loads(out.stdout)
                seen_while_running.append(seen)
                waiting = [t for a in seen["approvals_waiting"] for t in a["trial_ids"]]
                # Trials 0 and 1 at once; trial 2 once a trial has completed (seen above).
                if waiting and ("0" in waiting or seen["trials"]["completed"] >= 1):
                    approve = run(["approve", "branin-e2e", "--reason", "ok", "--by", "tester"], env, timeout=120)
                    assert approve.returncode == 0, approve.stderr
                    approved.update(waiting)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "best branin =" in stdout

    # A second process saw the campaign while it ran, with counts a user would check.
    assert any(s["status"] == "running" and s["trials"]["completed"] >= 1 for s in seen_while_running), seen_while_running
    for s in seen_while_running:
        assert set(s["trials"]) >= {"completed", "running", "failed"} and "best" in s

    final = status("branin-e2e", env)
    assert final["status"] == "finished" and final["finished_reason"] == "budget_exhausted"
    assert final["trials"] == {"total": 8, "waiting": 0, "running": 0, "completed": 8, "failed": 0, "rejected": 0, "prior": 0}

    # Export: one row per trial, with parameters, measurements, status, device and timestamps.
    out = run(["export", "branin-e2e", "--format", "csv"], env)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == 8
    for row in rows:
        assert row["status"] == "completed" and row["device_id"] in {"sim-a", "sim-b"}
        assert row["suggested_at"] and row["dispatched_at"] and row["finished_at"]
        assert float(row["branin"]) == pytest.approx(branin(float(row["param.x1"]), float(row["param.x2"])), rel=1e-9)
    assert {row["device_id"] for row in rows} == {"sim-a", "sim-b"}  # both instruments worked
    best = min(float(r["branin"]) for r in rows)
    assert final["best"]["measurements"]["branin"] == pytest.approx(best)

    out = run(["export", "branin-e2e", "--format", "json"], env)
    assert out.returncode == 0 and len(json.loads(out.stdout)["trials"]) == 8
    check_ax_store(tmp_path / "home" / "ax.sqlite", json.loads(out.stdout)["trials"])

    listed = run(["list"], env)
    assert listed.returncode == 0 and "branin-e2e" in listed.stdout

    # The embedded broker's generated password never reaches the console or the event log.
    password = (tmp_path / "home" / "broker" / "password").read_text().strip()
    assert len(password) >= 16
    for text in (stdout, stderr, out.stdout, (tmp_path / "home" / "mongo.log").read_text()):
        assert password not in text

    # Running a finished campaign again is refused with a hint, and the log is untouched.
    again = run(["run", str(spec)], env)
    assert again.returncode == 1 and "already finished" in again.stderr and "--campaign-id" in again.stderr
    assert status("branin-e2e", env)["last_seq"] == final["last_seq"]


#: What a person types in a plain Python session to open a campaign with Ax (README, "Ax's SQL store").
_AX_LOAD = """
import json, sys
from ax import Client
from ax.api.configs import StorageConfig
client = Client.load_from_database(sys.argv[2], storage_config=StorageConfig(url=sys.argv[1]))
experiment = client._experiment
df = experiment.lookup_data().df
print(json.dumps([{"trial_id": str(i), "status": t.status.name, "parameters": t.arm.parameters,
                   "chosen_by": t.generation_method_str, "device_id": t.run_metadata.get("device_id"),
                   "values": dict(zip(df[df["trial_index"] == i]["metric_name"], df[df["trial_index"] == i]["mean"]))}
                  for i, t in experiment.trials.items()]))
"""


def check_ax_store(path: Path, exported: list[dict]) -> None:
    """Issue 17 must-show 4: the finished campaign, opened by Ax's own
    ``Client.load_from_database`` in a fresh Python process, has the log's trials, parameters,
    statuses, values and who chose them (the `run` wrote the store when it ended)."""
    import sys

    assert path.is_file()
    loaded = subprocess.run([sys.executable, "-c", _AX_LOAD, f"sqlite:///{path}", "branin-e2e"],
                            capture_output=True, text=True, timeout=180)
    assert loaded.returncode == 0, loaded.stderr
    found = json.loads(loaded.stdout)
    # pandas' JSON reader (Ax's decoder reads the data with it) may round a value's last bit.
    values = [t.pop("values") for t in found]
    assert values == [{"branin": pytest.approx(r["branin"], rel=4e-16)} for r in exported]
    assert found == [{"trial_id": r["trial_id"], "status": "COMPLETED",
                      "parameters": {"x1": r["param.x1"], "x2": r["param.x2"]}, "chosen_by": r["generator"],
                      "device_id": r["device_id"]} for r in exported]
