"""A campaign as a lab service: `closedloop deploy` hands it to a Prefect work pool, a real
process worker runs it, and Prefect restarts it after its flow run is SIGKILLed, with nobody
typing anything."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate

from campaigns import (
    AnswerRefused,
    ApprovalGiven,
    CampaignPaused,
    CampaignResumed,
    RunStarted,
    TrialCompleted,
    TrialDispatched,
    fold,
)
from tests.conftest import free_port
from tests.e2e.cli import engine_command, read_events, run, shared_env, start, status_now, write_spec
from tests.e2e.test_crash_resume import (
    SPEC,
    assert_each_request_ran_once,
    start_sim,
    wait_for,
)

#: Two approvals (trials 0-1, then 2-3): every batch waits for a person; simulators in the flow run.
APPROVAL_SPEC: dict[str, Any] = {
    "name": "asks", "seed": 3, "parameters": SPEC["parameters"], "objectives": SPEC["objectives"],
    "budget": {"max_trials": 3}, "batch_size": 2, "trial_timeout_s": 60, "approval": "every_batch",
    "optimizer": {"method": "sobol"},
    "devices": [{"id": f"sim-{i}", "simulator": "branin", "options": {"duration_s": [0.1, 0.3], "seed": i}}
                for i in (1, 2)],
}


def _create_pool(pool: str) -> None:
    """`prefect work-pool create POOL --type process`; its flow runs are forked from this pytest
    worker's fork server (``tests.e2e.cli.engine_command``), or exec'd with ``CLOSEDLOOP_TEST_EXEC=1``."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    if (command := engine_command()) is not None:
        template["variables"]["properties"]["command"]["default"] = command
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template))


def _worker(pool: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`prefect worker start` as a lab runs it; it polls its pool every second (default 10 s), and
    its flow runs keep their standby 20 s ahead (the least allowed), and back up a deadline 20 s
    after it (default 120 s). It takes runs due within 1 s (default 10 s): a standby 20 s ahead,
    pushed every 3.3 s, stays out of its reach by as much as a lab's (120 s, pushed every 20 s)."""
    with log.open("wb") as out:
        return start(["worker", "start", "--pool", pool, "--type", "process"],
                     {**env, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1",
                      "CLOSEDLOOP_STANDBY_S": "20"},
                     stdout=out, stderr=subprocess.STDOUT,
                     start_new_session=True, program="prefect")


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and every process under it: its flow runs run in sessions of their own
    (Prefect's process worker), so killing its process group would leave them running."""
    def descendants(pid: int) -> list[int]:
        try:
            kids = [int(k) for t in Path(f"/proc/{pid}/task").iterdir() for k in (t / "children").read_text().split()]
        except OSError:
            return []
        return [d for k in kids for d in (k, *descendants(k))]

    for pid in [worker.pid, *descendants(worker.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    worker.wait(timeout=30)


def _ax_store_trials(path: Path, experiment: str) -> int | None:
    """How many trials Ax's SQL store holds for the experiment (None: no store yet)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return db.execute("SELECT COUNT(*) FROM trial_v2 JOIN experiment_v2 ON trial_v2.experiment_id = "
                              "experiment_v2.id WHERE experiment_v2.name = ?", (experiment,)).fetchone()[0]
    except sqlite3.Error:  # not created yet, or being written
        return None


def _story(campaign: str, worker_log: Path) -> str:
    """What Prefect saw of a deployed campaign, for a test that timed out: its flow runs and
    their states, the automations' actions, and the worker's and the server's last lines."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags, LogFilter, LogFilterFlowRunId
    from prefect.events.filters import EventFilter, EventNameFilter

    lines = []
    with get_client(sync_client=True) as client:
        for r in sorted(client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(
                all_=[f"campaign:{campaign}"]))), key=lambda r: r.created or 0):
            lines.append(f"flow run {r.name} {r.id} created {r.created} state {r.state_name}: "
                         f"{(r.state.message if r.state else '')!r}")
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id])), limit=30)
            lines += [f"    {log.timestamp} {log.level} {log.message}"[:400] for log in logs]
        page = client.read_events(EventFilter(event=EventNameFilter(prefix=["prefect.automation."])), limit=50)
        lines += [f"{e.occurred} {e.event} {e.resource.get('prefect.resource.name')} {e.payload}"[:400]
                  for e in page.events]
    server_log = Path(os.environ.get("PREFECT_HOME", "/nonexistent")) / "server.log"
    for log in (worker_log, server_log):
        with contextlib.suppress(OSError):
            lines += [f"--- {log} (end)", *log.read_text(errors="replace").splitlines()[-40:]]
    return "\n".join(lines)


def _wait_telling(pred, timeout: float, what: str, campaign: str, worker_log: Path) -> Any:  # type: ignore[no-untyped-def]
    """``wait_for``, whose timeout also says what Prefect saw (``_story``)."""
    try:
        return wait_for(pred, timeout, what)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{_story(campaign, worker_log)}") from None


def _freeze_holding_a_trial(sim: Any, record: Path, campaign: str, worker_log: Path) -> None:
    """SIGSTOP the simulator while it runs a trial it has not answered (its record says so: the
    journal of started runs has a line more than the record), trying again on the next trial if
    it answered the one it had just before it stopped."""
    from simulators.record import executions_path

    def lines(path: Path) -> int:
        return len(path.read_text().splitlines()) if path.exists() else 0

    started = executions_path(record)
    while True:  # a hang guard as long as the scenario's other waits (a takeover comes first)
        _wait_telling(lambda: lines(started) > lines(record), 300, f"{record.stem} to start a trial", campaign,
                      worker_log)
        os.killpg(sim.pid, signal.SIGSTOP)
        if lines(started) > lines(record):
            return
        os.killpg(sim.pid, signal.SIGCONT)


def _runs(env: dict[str, str], campaign: str) -> list[RunStarted]:
    return [e for e in read_events(env, campaign) if isinstance(e, RunStarted)]


@pytest.mark.timeout(600)
def test_a_deployed_campaign_survives_two_sigkills_of_its_flow_run(
        tmp_path: Path, prefect_env: dict[str, str], mongo_uri: str, mosquitto_url: str) -> None:
    env = shared_env(tmp_path / "home", prefect_env, mongo_uri, mosquitto_url)
    env.pop("CLOSEDLOOP_AX_DB_URL")  # the default store, under home: checked below
    pool = f"lab-{uuid.uuid4().hex[:8]}"
    budget = 14
    spec = write_spec(tmp_path / "spec.yaml", {**SPEC, "name": "served", "budget": {"max_trials": budget}})
    _create_pool(pool)
    sims = {d: start_sim(d, env, tmp_path / f"{d}.jsonl") for d in ("dev-a", "dev-b")}
    worker = _worker(pool, env, tmp_path / "worker.log")
    try:
        out = run(["deploy", str(spec), "--pool", pool, "--no-simulators"], env, timeout=180)
        assert out.returncode == 0, out.stderr
        assert f"deployed as campaign/served on work pool {pool}" in out.stdout, out.stdout
        # The restart automation paused now, while the first flow run starts on the worker and runs
        # 3 trials, as if Prefect's trigger lost the crash: the standby flow run that the killed
        # run kept scheduled 20 s ahead must replace it. The restart automation is resumed once
        # the standby's run has taken over (its RunStarted) and replaces the second crash (or,
        # had Prefect not applied the resumption yet, the second run's standby does).
        with get_client(sync_client=True) as client:
            restart, = client.read_automations_by_name("closedloop served: restart a crashed run")
            client.pause_automation(restart.id)

        killed: list[int] = []
        for completed_before_kill in (3, 7):
            # dev-b frozen while it holds a trial: the campaign has one in flight, however fast
            # dev-a answers the others and however slowly this test looks.
            _freeze_holding_a_trial(sims["dev-b"], tmp_path / "dev-b.jsonl", "served", tmp_path / "worker.log")
            # The current flow run (a worker's child process: its pid is in the log) mid-campaign.
            victim = _wait_telling(lambda n=completed_before_kill: (s := status_now("served", env)) is not None
                                   and s["trials"]["completed"] >= n and s["trials"]["running"] >= 1
                                   and (runs := _runs(env, "served")) and runs[-1].pid not in killed and runs[-1],
                                   300, f"{completed_before_kill} trials completed and more in flight",
                                   "served", tmp_path / "worker.log")
            if killed:  # the standby's run took over from the first one (its RunStarted)
                with get_client(sync_client=True) as client:
                    client.resume_automation(restart.id)
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(victim.pid)
            os.killpg(sims["dev-b"].pid, signal.SIGCONT)  # its result reaches the run that takes over
        final = _wait_telling(lambda: (s := status_now("served", env)) is not None and s["status"] == "finished" and s,
                              400, "the campaign to finish on its own", "served", tmp_path / "worker.log")
        # The flow run that finished rewrote Ax's SQL store from the log on its way out (issue 17).
        wait_for(lambda: _ax_store_trials(tmp_path / "home" / "ax.sqlite", "served") == budget, 120,
                 "Ax's SQL store to hold the campaign's trials")
        last = _runs(env, "served")[-1]
        ended = wait_for(lambda: (r := _flow_run(str(last.flow_run_id))).state.is_final() and r, 120,
                         "the flow run that finished the campaign to end")
    finally:
        _stop_worker(worker)
        for p in sims.values():
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=30)

    assert final["trials"]["completed"] == budget and final["trials"]["failed"] == 0
    events = read_events(env, "served")
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # no fork, no gap
    runs = [e for e in events if isinstance(e, RunStarted)]
    # Three flow runs of the deployment, the two killed ones and the one that finished (started by
    # the first one's standby, then by the restart automation); no person resumed anything (a
    # `resume` of a paused campaign logs CampaignResumed).
    assert len(runs) == 3 and len({r.flow_run_id for r in runs}) == 3 and [r.pid for r in runs[:2]] == killed
    assert not any(isinstance(e, CampaignResumed) for e in events)
    # Each flow run, started by `deploy`, by a standby or by the automation after a crash, is
    # named and tagged after the campaign (flows.prefect.live).
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterTags

    from flows.prefect.standby import STANDBY_TAG, standby_of

    with get_client(sync_client=True) as client:
        seen = {str(r.id): r for r in client.read_flow_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[uuid.UUID(r.flow_run_id) for r in runs if r.flow_run_id])))}
    assert [seen[str(r.flow_run_id)].name for r in runs] == ["served", "served · resume 1", "served · resume 2"]
    assert all({"closedloop", "campaign:served"} <= set(seen[str(r.flow_run_id)].tags) for r in runs)
    completed = Counter(e.trial_id for e in events if isinstance(e, TrialCompleted))
    assert len(completed) == budget and set(completed.values()) == {1}  # each trial's result once
    assert_each_request_ran_once(tmp_path, ("dev-a", "dev-b"), events)
    # Who started each replacement, from the flow run's own row: the first run's standby (tagged
    # with the run it stands in for) replaced the first crash; the second was replaced by the
    # restart automation (which keys its run "automation ID, action 0, invocation ID") or, had
    # Prefect not applied its resumption yet, by the second run's standby.
    first, second = (seen[str(r.flow_run_id)] for r in runs[1:])
    assert STANDBY_TAG in first.tags and standby_of(first.tags) == runs[0].flow_run_id, first.tags
    assert ((second.idempotency_key or "").startswith(f"automation {restart.id},")
            or standby_of(second.tags) == runs[1].flow_run_id), (second.idempotency_key, second.tags)
    # The run that finished deleted its standby on its way out (a killed run's stays until it
    # starts and ends).
    assert ended.state.is_completed(), ended.state
    with get_client(sync_client=True) as client:
        standbys = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[STANDBY_TAG, "campaign:served"])))
    assert [r for r in standbys if standby_of(r.tags) == runs[-1].flow_run_id] == [], standbys
    # The worker ran the crashed runs' hooks (there are none): it could load the flow.
    worker_log = (tmp_path / "worker.log").read_text()
    assert "ImportError" not in worker_log and "failed to retrieve flow" not in worker_log, worker_log[-3000:]


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
    # A Prefect server that does not answer (here: nothing listens) is one line too, exit 1.
    dead = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"}
    out = run(["deploy", str(spec)], dead, timeout=120)
    assert out.returncode == 1 and "the Prefect server at" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    # Refused before anything was written: no campaign under either id.
    assert read_events(env, "undeployed") == [] and read_events(env, "a/b") == []


def _flow_run(run_id: str) -> Any:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id))


def _keys(run_id: str) -> list[str]:
    return sorted(_flow_run(run_id).empirical_policy.pause_keys or [])


def _form_text(run_id: str, key: str) -> str:
    """The text above a suspended flow run's form, as the UI shows it."""
    from prefect.input.actions import read_flow_run_input

    return str(read_flow_run_input(f"suspended-{key}-description", flow_run_id=UUID(run_id)))


def _suspended_waiting(env: dict[str, str], campaign: str, *, trials: list[str] | None = None,
                       paused: bool = False) -> Any:
    """The campaign's last RunStarted once its flow run is suspended waiting for that approval
    (or paused), else None."""
    s = status_now(campaign, env)
    if s is None or (paused and s["status"] != "paused") or (
            trials is not None and not any(a["trial_ids"] == trials for a in s["approvals_waiting"])):
        return None
    runs = _runs(env, campaign)
    if not runs or runs[-1].flow_run_id is None:
        return None
    state = _flow_run(runs[-1].flow_run_id).state
    return runs[-1] if state is not None and state.name == "Suspended" else None


def _alive(pid: int) -> bool:
    try:  # a zombie (dead, not yet reaped) does not run
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _holds_no_process(started: RunStarted, worker: subprocess.Popen[bytes]) -> None:
    """Once suspended, the campaign's flow-run process exits and its worker runs no flow run
    (no child process): waited for, as the process cleans up (its lease, broker session)."""
    def children() -> list[str]:
        return Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()

    wait_for(lambda: not _alive(started.pid) and not children(), 60, "the suspended flow run's process to exit")
    assert worker.poll() is None  # the worker itself still runs, with its slot free


@pytest.mark.timeout(600)
def test_a_deployed_campaign_waiting_for_a_person_holds_no_process_and_any_answer_resumes_it(
        tmp_path: Path, prefect_env: dict[str, str], mongo_uri: str, mosquitto_url: str) -> None:
    from prefect.flow_runs import resume_flow_run

    env = shared_env(tmp_path / "home", prefect_env, mongo_uri, mosquitto_url)
    pool = f"lab-{uuid.uuid4().hex[:8]}"
    spec = write_spec(tmp_path / "spec.yaml", {**APPROVAL_SPEC, "name": "asks"})
    _create_pool(pool)
    worker = _worker(pool, env, tmp_path / "worker.log")
    try:
        out = run(["deploy", str(spec), "--pool", pool], env, timeout=180)  # its simulators run in its flow run
        assert out.returncode == 0, out.stderr

        # The first approval: the flow run suspends itself, and nothing of the campaign runs.
        first = wait_for(lambda: _suspended_waiting(env, "asks", trials=["0", "1"]), 300, "a suspended approval wait")
        _holds_no_process(first, worker)
        # Nobody runs it beside its deployment, nor deploys a second flow run of it.
        out = run(["run", str(spec)], env)
        assert out.returncode == 1 and "is deployed" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out
        out = run(["deploy", str(spec), "--pool", pool], env, timeout=180)
        assert out.returncode == 0 and "no second one started" in out.stdout, out
        # A wrong answer in Prefect's form (x1 out of bounds): refused, nothing logged but the
        # refusal; the run suspends again and its form says why.
        resume_flow_run(UUID(first.flow_run_id), run_input={"decision": "approve", "edits": "0: x1=99",
                                                            "reason": "typo", "by": "dee"})
        wait_for(lambda: _suspended_waiting(env, "asks", trials=["0", "1"]) and _keys(first.flow_run_id) == [
            "wait-1-approval-a0", "wait-2-approval-a0"], 300, "the approval asked again after a refused answer")
        form = _form_text(first.flow_run_id, "wait-2-approval-a0")
        assert "The previous answer was not accepted" in form and "x1" in form and "99" in form, form
        assert not [e for e in read_events(env, "asks") if isinstance(e, ApprovalGiven)]
        [refused] = [e for e in read_events(env, "asks") if isinstance(e, AnswerRefused)]  # history shows it
        assert (refused.by, refused.via, refused.approval_id) == ("dee", "prefect", "a0") and "x1=99" in refused.what
        # Answered in Prefect, as the UI's form does: the flow run resumes on the worker.
        resume_flow_run(UUID(first.flow_run_id), run_input={
            "decision": "approve", "edits": "0: x1=1.5", "reject": ["1"], "reason": "x1 above 5 risks a runaway",
            "by": "dee"})
        second = wait_for(lambda: _suspended_waiting(env, "asks", trials=["2", "3"]), 300, "the second approval wait")
        # The answer ran (time from an answer to the dispatch: benchmarks/waits.py): trial 0, never the rejected 1.
        assert [e.trial_id for e in read_events(env, "asks") if isinstance(e, TrialDispatched)] == ["0"]
        _holds_no_process(second, worker)

        # A pause while it waits: the CLI logs it and wakes the run, which suspends as paused.
        out = run(["pause", "asks", "--reason", "lunch", "--by", "eve"], env)
        assert out.returncode == 0 and "is deployed" in out.stdout and "resumes on a worker" in out.stdout, out
        paused = wait_for(lambda: _suspended_waiting(env, "asks", paused=True), 300, "a suspended pause")
        _holds_no_process(paused, worker)
        out = run(["resume", "asks", "--reason", "back"], env)
        assert out.returncode == 0 and "resumed (logged as event" in out.stdout, out
        again = wait_for(lambda: (r := _suspended_waiting(env, "asks", trials=["2", "3"])) and r.pid != paused.pid
                         and r, 300, "the approval wait again after the resume")
        # The CLI answers the second approval: logged at once, and the run is woken.
        out = run(["approve", "asks", "--reason", "looks safe", "--by", "dee"], env)
        assert out.returncode == 0 and "resumes on a worker" in out.stdout, out
        assert again.pid not in (first.pid, second.pid)
        wait_for(lambda: (s := status_now("asks", env)) is not None and s["status"] == "finished", 300, "the end")
        # The log says finished before the flow run ends (its last artifacts, the hub): waited for.
        final_id = _runs(env, "asks")[-1].flow_run_id
        final_run = wait_for(lambda: (r := _flow_run(final_id)).state is not None and r.state.is_final() and r, 120,
                             "the last flow run's end")
        assert final_run.state.is_completed(), final_run.state
    finally:
        _stop_worker(worker)
    events = read_events(env, "asks")
    state = fold(events)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert {t: s.status for t, s in state.trials.items()} == {
        "0": "completed", "1": "rejected", "2": "completed", "3": "completed"}
    assert state.trials["0"].parameters["x1"] == 1.5
    decisions = [(e.actor, e.via, e.reason) for e in events if isinstance(e, ApprovalGiven)]
    assert decisions[:2] == [("user:dee", "prefect", "x1 above 5 risks a runaway"), ("user:dee", "cli", "looks safe")]
    assert [(e.actor, e.detail) for e in events if isinstance(e, CampaignPaused)] == [("user:eve", "lunch")]
    assert [e.reason for e in events if isinstance(e, CampaignResumed)] == ["back"]
    # The flow run suspended and resumed, a process per stretch:
    # the first, after the refused answer, after the Prefect answer, after the resume, after the
    # CLI answer (woken by the pause, a run of a paused campaign suspends before any RunStarted).
    runs = _runs(env, "asks")
    assert len({r.pid for r in runs}) == len(runs) == 5
    # A stretch may be run by a standby of a run that ran one, and by nothing else: Prefect failed to
    # delete that standby as the run suspended (its SQLite locked, in a loaded run), and the
    # standby took the lease before the resumed run did; the resumed run then found the campaign
    # in hand and ended. (Each stretch still one process, as the pids show.)
    from flows.prefect.standby import standby_of

    ran = {r.flow_run_id for r in runs}
    for other in ran - {runs[0].flow_run_id}:
        assert standby_of(_flow_run(str(other)).tags) in ran, other


def _deadline_runs(campaign: str) -> list[Any]:
    """The flow runs scheduled to back up the campaign's approval deadlines."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from flows.prefect.suspension import DEADLINE_TAG

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[DEADLINE_TAG, f"campaign:{campaign}"])))


def _asked_and_left(env: dict[str, str], campaign: str) -> RunStarted | None:
    """The campaign's first run once it has suspended (Prefect's Suspended, or a final state
    after it: the deadline came), None before."""
    runs = _runs(env, campaign)
    if not runs or runs[0].flow_run_id is None:
        return None
    state = _flow_run(runs[0].flow_run_id).state
    return runs[0] if state is not None and (state.name == "Suspended" or state.is_final()) else None


@pytest.mark.timeout(600)
def test_a_suspended_approval_past_its_deadline_follows_its_timeout_policy(
        tmp_path: Path, prefect_env: dict[str, str], mongo_uri: str, mosquitto_url: str) -> None:
    """Prefect fails the suspended run at the deadline and the automation starts the run that
    applies on_timeout (campaign deadline-acts); if the automation's action is lost (its triggers
    on SQLite under load), the run the suspension scheduled for 20 s later (CLOSEDLOOP_STANDBY_S)
    does (deadline-lost, its automation paused). Whichever comes second writes nothing. The two
    campaigns run side by side on one worker: their waits for the deadline overlap."""
    from flows.prefect.standby import standby_of

    env = shared_env(tmp_path / "home", prefect_env, mongo_uri, mosquitto_url)
    pool = f"lab-{uuid.uuid4().hex[:8]}"
    names = {"acts": "deadline-acts", "lost": "deadline-lost"}
    _create_pool(pool)
    worker = _worker(pool, env, tmp_path / "worker.log")
    try:
        for automation, name in names.items():
            # 20 s: the run suspends within a second of asking; the deadline then passes while no process runs.
            spec = write_spec(tmp_path / f"{name}.yaml", {
                **APPROVAL_SPEC, "name": name, "budget": {"max_trials": 2},
                "approval": {"every_batch": True, "timeout_s": 20, "on_timeout": "approve"}})
            out = run(["deploy", str(spec), "--pool", pool], env, timeout=180)
            assert out.returncode == 0, out.stderr
            if automation == "lost":  # paused before the first run even asks
                with get_client(sync_client=True) as client:
                    deadline, = client.read_automations_by_name(f"closedloop {name}: an approval's deadline passed")
                    client.pause_automation(deadline.id)
        # The run that asked: suspended (or, if this test looked late, past its deadline already),
        # and its process gone while the deadline passes.
        first = {name: wait_for(lambda n=name: _asked_and_left(env, n), 300, f"a suspended approval of {name}")
                 for name in names.values()}
        for name, started in first.items():
            wait_for(lambda p=started.pid: not _alive(p), 60, f"the suspended flow run of {name} to exit")
        backups = {}
        for automation, name in names.items():
            _wait_telling(lambda n=name: (s := status_now(n, env)) is not None and s["status"] == "finished", 300,
                          f"the deadline of {name} to pass and the campaign to finish, nothing typed", name,
                          tmp_path / "worker.log")
            # The backup run of the deadline (one, however often the campaign suspended before it).
            backups[name], = _deadline_runs(name)
        # deadline-acts's backup comes 20 s after the deadline, finds it dealt with and ends.
        backup = backups[names["acts"]]
        ended = _wait_telling(lambda: (r := _flow_run(str(backup.id))).state.is_final() and r, 300,
                              "the deadline's backup run to end", names["acts"], tmp_path / "worker.log")
        assert ended.state.is_completed(), ended.state
    finally:
        _stop_worker(worker)
    for automation, name in names.items():
        events = read_events(env, name)
        assert [(e.actor, e.via) for e in events if isinstance(e, ApprovalGiven)] == [("orchestrator", "timeout")]
        assert fold(events).count("completed") == 2
        runs = _runs(env, name)  # the backup run that came second wrote nothing
        assert len(runs) == 2 and runs[0].flow_run_id != runs[1].flow_run_id
        # Prefect failed the suspended run at the deadline; the automation's run or the backup
        # (whichever came first: the backup only, with the automation paused) finished the campaign.
        # (Or a standby of the first run that a worker had started early, if that run's pushes
        # were late under load: it waits for the lease and acts as the backup would.)
        assert automation == "acts" or runs[1].flow_run_id == str(backups[name].id) or standby_of(
            _flow_run(runs[1].flow_run_id).tags) == first[name].flow_run_id, _story(name, tmp_path / "worker.log")
        # The suspended run: failed by Prefect at the deadline, or (Prefect's pause expiration not
        # there yet) cancelled by the backup that applied on_timeout, so that its form answers nothing.
        expired = _flow_run(first[name].flow_run_id).state
        assert expired is not None and (expired.is_failed() and "never resumed" in (expired.message or "") or (
            expired.is_cancelled() and "an approval's deadline passed" in (expired.message or ""))), (name, expired)
