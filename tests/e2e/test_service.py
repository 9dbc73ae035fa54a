"""A campaign as a lab service: `closedloop deploy` hands it to a Prefect work pool, a real
process worker runs it, and Prefect restarts it after its flow run is SIGKILLed, with nobody
typing anything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate

from campaigns import (
    CampaignResumed,
    RunStarted,
    TrialCompleted,
)
from tests.e2e.cli import read_events, run, shared_env, status_now, write_spec
from tests.e2e.test_crash_resume import (
    SPEC,
    assert_each_request_ran_once,
    start_sim,
    wait_for,
)

BIN_DIR = Path(sys.executable).parent


def _worker(pool: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`prefect worker start` as a lab runs it; it polls its pool every second (default 10 s)."""
    with log.open("wb") as out:
        return subprocess.Popen([str(BIN_DIR / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
                                env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _runs(env: dict[str, str], campaign: str) -> list[RunStarted]:
    return [e for e in read_events(env, campaign) if isinstance(e, RunStarted)]


@pytest.mark.timeout(600)
def test_a_deployed_campaign_survives_two_sigkills_of_its_flow_run(
        tmp_path: Path, prefect_env: dict[str, str], mongo_uri: str, mosquitto_url: str) -> None:
    env = shared_env(tmp_path / "home", prefect_env, mongo_uri, mosquitto_url)
    pool = f"lab-{uuid.uuid4().hex[:8]}"
    budget = 14
    spec = write_spec(tmp_path / "spec.yaml", {**SPEC, "name": "served", "budget": {"max_trials": budget}})
    with get_client(sync_client=True) as client:  # `prefect work-pool create POOL --type process`
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    sims = {d: start_sim(d, env, tmp_path / f"{d}.jsonl") for d in ("dev-a", "dev-b")}
    worker = _worker(pool, env, tmp_path / "worker.log")
    try:
        out = run(["deploy", str(spec), "--pool", pool, "--no-simulators"], env, timeout=180)
        assert out.returncode == 0, out.stderr
        assert f"deployed as campaign/served on work pool {pool}" in out.stdout, out.stdout

        killed: list[int] = []
        for completed_before_kill in (3, 7):
            # The current flow run (a worker's child process: its pid is in the log) mid-campaign.
            victim = wait_for(lambda n=completed_before_kill: (s := status_now("served", env)) is not None
                              and s["trials"]["completed"] >= n and s["trials"]["running"] >= 1
                              and (runs := _runs(env, "served")) and runs[-1].pid not in killed and runs[-1], 300,
                              f"{completed_before_kill} trials completed and more in flight")
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(victim.pid)
        final = wait_for(lambda: (s := status_now("served", env)) is not None and s["status"] == "finished" and s, 400,
                         "the campaign to finish on its own")
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        for p in sims.values():
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=30)

    assert final["trials"]["completed"] == budget and final["trials"]["failed"] == 0
    events = read_events(env, "served")
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # no fork, no gap
    runs = [e for e in events if isinstance(e, RunStarted)]
    # Three flow runs of the deployment, the two killed ones and the one that finished; no person
    # resumed anything (a `resume` of a paused campaign logs CampaignResumed).
    assert len(runs) == 3 and len({r.flow_run_id for r in runs}) == 3 and [r.pid for r in runs[:2]] == killed
    assert not any(isinstance(e, CampaignResumed) for e in events)
    completed = Counter(e.trial_id for e in events if isinstance(e, TrialCompleted))
    assert len(completed) == budget and set(completed.values()) == {1}  # each trial's result once
    assert_each_request_ran_once(tmp_path, ("dev-a", "dev-b"), events)


def test_deploy_without_a_prefect_server_or_pool_is_one_line(tmp_path: Path, prefect_server: dict[str, str],
                                                              mongo_uri: str, mosquitto_url: str) -> None:
    env = shared_env(tmp_path / "home", prefect_server, mongo_uri, mosquitto_url)
    spec = write_spec(tmp_path / "spec.yaml", {**SPEC, "name": "undeployed"})
    no_server = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    cases: list[tuple[dict[str, str], list[str], str]] = [
        (no_server, [], "deploy needs a Prefect server"),
        (env, ["--pool", f"nope-{uuid.uuid4().hex[:6]}"], "no Prefect work pool 'nope-"),
        (env, ["--campaign-id", "a/b"], "cannot name a Prefect deployment"),
        *((env, ["--pool", pool], "cannot name a Prefect work pool") for pool in ("", "a/b", "x\ny", "p" * 300)),
    ]
    for case_env, extra, expected in cases:
        out = run(["deploy", str(spec), *extra], case_env, timeout=120)
        assert out.returncode == 2 and expected in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    # Refused before anything was written: no campaign under either id.
    assert read_events(env, "undeployed") == [] and read_events(env, "a/b") == []
