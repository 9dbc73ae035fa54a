"""Campaigns as a Prefect service: a deployment per campaign on a work pool, (re)started by Prefect.

`closedloop deploy` gives a campaign its deployment, ``campaign/<campaign id>``: the ``campaign``
flow by module path (any worker with closedloop installed runs it, wherever it is), the campaign
id as its only parameter, and automations that keep it going without a person:

- a flow run of the deployment that crashed (its process killed: the worker reports it at once)
  starts a new flow run of the same deployment;
- a running flow run whose heartbeats stopped (its worker or its machine died, so nobody
  reports the crash) is marked crashed, which then does the same;
- a flow run suspended on an approval whose deadline passed (Prefect fails it) starts a new
  flow run, which applies the approval's ``on_timeout``.

Prefect's triggers on a busy SQLite server can lose the events these act on, so each is backed
by a scheduled flow run that needs no trigger: a running flow run keeps a standby
(`flows.prefect.standby`), a suspension with a deadline schedules a run just after it
(`flows.prefect.suspension`).

A new flow run resumes from the log, as `closedloop resume` does; the lease keeps one writer.
Connection settings come from the worker's environment (or the work pool's job variables),
never from the deployment: Prefect stores parameters in its database.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from campaigns import ClosedLoopError, PrefectServerError, UsageError

__all__ = [
    "HEARTBEAT_S",
    "DeployedCampaign",
    "asking_prefect",
    "check_pool_name",
    "deploy_campaign",
    "deployment_name",
    "require_work_pool",
    "start_flow_run",
    "wake",
]

#: Seconds between a deployed flow run's heartbeats; one missing for three periods marks it crashed.
HEARTBEAT_S = 30  # Prefect allows no less
#: The messages of Prefect 3.8's Failed state for a pause or suspension whose timeout passed
#: (its pause-expiration service, or a resume that came too late).
PAUSE_EXPIRED = [f"The flow was {name} and never resumed." for name in ("paused", "suspended", "scheduled", "running")]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_POOL = re.compile(r"[^\x00-\x1f\x7f/%]{1,100}")  # what a work pool's API path can hold


def deployment_name(campaign_id: str) -> str:
    """The campaign's deployment name (the campaign id; Prefect allows a narrower alphabet)."""
    if not _NAME.fullmatch(campaign_id):
        raise UsageError(f"deploy: campaign id {campaign_id[:60]!r} cannot name a Prefect deployment",
                         "use letters, digits, '.', '_' and '-' (at most 100), e.g. --campaign-id branin-2")
    return campaign_id


@dataclass(frozen=True)
class DeployedCampaign:
    """What `deploy` made: the deployment (``campaign/<id>``) and the flow run it started."""

    deployment_id: UUID
    flow_run_id: UUID
    flow_run_name: str
    started: bool = True  # False: the campaign's flow run was alive (or suspended): kept, no second one


def check_pool_name(pool: str) -> str:
    """``pool`` if it can name a Prefect work pool, else UsageError (before anything is asked of Prefect)."""
    if not _POOL.fullmatch(pool):
        raise UsageError(f"--pool {pool[:60]!r} cannot name a Prefect work pool",
                         "use 1 to 100 printable characters without '/' or '%', e.g. --pool closedloop")
    return pool


@contextmanager
def asking_prefect(what: str) -> Iterator[None]:
    """Prefect's client errors (no server at ``PREFECT_API_URL``, an overloaded one answering 503,
    a refused request) as one line: PrefectServerError."""
    try:
        yield
    except ClosedLoopError:
        raise
    except Exception as exc:
        from prefect.settings import get_current_settings

        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise PrefectServerError(f"{what}: the Prefect server at {get_current_settings().api.url} failed: {detail}",
                                 "check that it runs (`prefect server start`), then run the command again "
                                 "(a deploy again updates what it made)") from None


def require_work_pool(pool: str) -> None:
    """Raise UsageError (saying how to create it) unless the Prefect server has work pool ``pool``."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    check_pool_name(pool)
    with asking_prefect("deploy"), get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise UsageError(f"no Prefect work pool {pool!r}",
                             f"create it with `prefect work-pool create {pool} --type process`, "
                             f"then start workers with `prefect worker start --pool {pool}`") from None


def deploy_campaign(campaign_id: str, pool: str, *, simulators: bool, current_flow_run: str | None = None
                    ) -> DeployedCampaign:
    """Create (or update) the campaign's deployment and automations on ``pool`` (which exists:
    `require_work_pool`), then start a flow run of it, unless ``current_flow_run`` (the campaign's
    last deployed flow run) has not ended: one flow run per campaign.

    Raises:
        UsageError: The campaign id cannot name a deployment.
    """
    from prefect.deployments.runner import RunnerDeployment
    from prefect.types.entrypoint import EntrypointType

    from flows.prefect.flow import campaign

    name = deployment_name(campaign_id)
    deployment = RunnerDeployment.from_flow(
        campaign, name=name, parameters={"campaign_id": campaign_id, "simulated_instruments": simulators},
        tags=["closedloop", f"campaign:{campaign_id}"],
        job_variables={"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}},
        entrypoint_type=EntrypointType.MODULE_PATH,
        description=f"closedloop campaign {campaign_id}: its flow runs resume it from the log",
    )
    deployment_id = deployment.apply(work_pool_name=pool)
    _ensure_automations(campaign_id, deployment_id)
    if current_flow_run is not None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            current = client.read_flow_run(UUID(current_flow_run))
        if current.state is not None and not current.state.is_final():
            return DeployedCampaign(deployment_id, current.id, current.name, started=False)
    run = start_flow_run(campaign_id)
    return DeployedCampaign(deployment_id, run.id, run.name)


def start_flow_run(campaign_id: str) -> Any:
    """A new flow run of the campaign's deployment (a worker of its pool picks it up)."""
    from prefect.deployments import run_deployment

    return run_deployment(f"campaign/{deployment_name(campaign_id)}", timeout=0,
                          flow_run_name=campaign_id, tags=["closedloop", f"campaign:{campaign_id}"])


def _ensure_automations(campaign_id: str, deployment_id: UUID) -> None:
    """The campaign's automations (restart a crashed run; a silent run is crashed; a suspension
    past its approval's deadline restarts), once each."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState, RunDeployment
    from prefect.events.schemas.automations import EventTrigger, Posture

    of_deployment = {"prefect.resource.id": f"prefect.deployment.{deployment_id}"}
    wanted = [
        Automation(
            name=f"closedloop {campaign_id}: restart a crashed run",
            description="A crashed flow run of this campaign starts a new one, which resumes it from the log.",
            trigger=EventTrigger(expect={"prefect.flow-run.Crashed"}, match_related=of_deployment,
                                 posture=Posture.Reactive, threshold=1),
            actions=[RunDeployment(source="selected", deployment_id=deployment_id)],
        ),
        Automation(
            name=f"closedloop {campaign_id}: a silent run has crashed",
            description=f"No heartbeat for {3 * HEARTBEAT_S} s (its worker or machine died): the flow run crashed.",
            trigger=EventTrigger(
                after={"prefect.flow-run.heartbeat"},
                expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                        "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed", "prefect.flow-run.Paused",
                        "prefect.flow-run.Suspended"},
                match={"prefect.resource.id": "prefect.flow-run.*"}, match_related=of_deployment,
                for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
                within=timedelta(seconds=3 * HEARTBEAT_S)),
            actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                        message=f"no heartbeat for {3 * HEARTBEAT_S} s: its worker or machine died")],
        ),
    ]
    wanted.append(Automation(
        name=f"closedloop {campaign_id}: an approval's deadline passed",
        description="A flow run suspended on an approval with a deadline fails when it passes (Prefect's "
                    "pause expiration): a new flow run applies the approval's on_timeout.",
        trigger=EventTrigger(expect={"prefect.flow-run.Failed"},
                             match={"prefect.resource.id": "prefect.flow-run.*", "prefect.state-message": PAUSE_EXPIRED},
                             match_related=of_deployment, posture=Posture.Reactive, threshold=1),
        actions=[RunDeployment(source="selected", deployment_id=deployment_id)],
    ))
    # Retired: a crashed run not replaced within 120 s was replaced by this automation until the
    # standby flow run (flows.prefect.standby) took its place.
    retired = [f"closedloop {campaign_id}: a crashed run was not replaced"]
    for name in [*(a.name for a in wanted), *retired]:  # deployed again: maybe a new deployment id
        try:
            Automation.read(name=name).delete()
        except ValueError:
            pass
    for automation in wanted:
        automation.create()


def wake(campaign_id: str, flow_run_id: str, *, finished: bool) -> str:
    """Make a deployed campaign act on a person's command; what happened, as a line for that person.

    The command is in the log or the inbox already: a suspended flow run is resumed with the
    "decided elsewhere" marker (never with a form's answer). A flow run that ended while the
    campaign has not (paused under an earlier version) gets a successor; a running one applies
    the command itself; a crashed one is restarted by the campaign's automation.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import NotPausedError
    from prefect.flow_runs import resume_flow_run

    from flows.prefect.approval import closed_input

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
    state = run.state
    if state is not None and state.is_paused():
        try:
            resume_flow_run(run.id, run_input=closed_input("answered from the CLI"))
            return f"its flow run {run.name} was suspended: it resumes on a worker of pool {run.work_pool_name}"
        except NotPausedError:
            return f"its flow run {run.name} was resumed meanwhile"
    if state is not None and state.type.value in ("COMPLETED", "CANCELLED", "FAILED") and not finished:
        new = start_flow_run(campaign_id)
        return f"its flow run had ended: flow run {new.name} ({new.id}) starts on a worker of pool {run.work_pool_name}"
    return f"its flow run {run.name} is {state.name if state else 'unknown'}: it applies the command"
