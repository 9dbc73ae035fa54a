"""The Prefect flow ``campaign``: one flow run per campaign run (or resume), the loop inside it.

Connection settings are handed over in-process by the CLI that starts the flow
(:mod:`flows.app.wiring`), or, for a flow run started elsewhere (a Prefect worker), read from
the environment (``CLOSEDLOOP_*``); never from flow parameters, so that no credential is ever
stored with the flow run in Prefect's database.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from uuid import UUID
from collections.abc import Iterable
from contextlib import nullcontext
from functools import partial
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context

from campaigns import CampaignLockedError, CampaignSpec, RunStarted, SuggestedTrial, TrialRecord, fold
from campaigns.events import software_versions
from campaigns.identity import client_id
from devices import MqttDeviceHub
from flows.app.ax_store import keep_ax_store
from flows.app.lease import hold_lease
from flows.app.runtime import broker_url, event_store, mqtt_settings, simulated_lab
from flows.app.wiring import current_wiring
from flows.engine.loop import CampaignLoop, LoopOptions
from flows.engine.replay import replay_wiring
from flows.prefect.artifacts import ArtifactPublisher
from flows.prefect.live import (
    LiveCampaign,
    ObservedLog,
    RunLogs,
    label_flow_run,
    run_labels,
)
from flows.prefect.standby import Standby, standby_of
from flows.prefect.suspension import (
    DEADLINE_TAG,
    apply_answer,
    command_id,
    deadline_dealt_with,
    fired,
    last_answer,
    suspend,
)
from flows.prefect.takeover import announce_takeover
from optimizer import AxOptimizer
from storage import MongoCommandInbox

__all__ = ["campaign"]


# NO_CACHE: inputs are live objects (the optimizer), not values worth hashing or caching.
@task(name="rebuild-optimizer", persist_result=False, cache_policy=NO_CACHE)
def rebuild_optimizer(spec: CampaignSpec, trials: list[TrialRecord], threads: int | None) -> AxOptimizer:
    """Rebuild the Ax optimizer by replaying the log's trials into a fresh client."""
    return AxOptimizer.rebuild(spec, trials, threads=threads)


@task(name="suggest-trials", persist_result=False, cache_policy=NO_CACHE)
def suggest_trials(optimizer: AxOptimizer, n: int) -> list[SuggestedTrial]:
    """Ask the optimizer for ``n`` trials (pending ones known)."""
    return optimizer.suggest(n)


class _TaskOptimizer:
    """The optimizer, with model-based suggestions run as Prefect tasks so they show in the flow run.

    Quasi-random (Sobol) suggestions cost microseconds and a Prefect task run 10-100 ms of API
    calls: they are made inline. The loop calls this from its optimizer thread, in the flow
    run's context.
    """

    def __init__(self, inner: AxOptimizer) -> None:
        self.inner = inner

    def suggest(self, n: int) -> list[SuggestedTrial]:
        # The optimizer decides whether a model runs (optimizer.engines.sobol_phase), once.
        if not self.inner.uses_model(n):
            return self.inner.suggest(n)
        return suggest_trials(self.inner, n)

    def complete(self, trial_id: str, measurements: dict) -> None:  # type: ignore[type-arg]
        self.inner.complete(trial_id, measurements)

    def fail(self, trial_id: str, reason: str) -> None:
        self.inner.fail(trial_id, reason)


def _make_optimizer(threads: int | None, spec: CampaignSpec, trials: Iterable[TrialRecord]) -> _TaskOptimizer:
    return _TaskOptimizer(rebuild_optimizer(spec, list(trials), threads))


def _prefect_notifier(campaign_id: str, inbox: MongoCommandInbox) -> Any:
    """With a Prefect server configured, approval requests also wait in the Prefect UI as paused
    flow runs with a form; an answer there becomes the same command a CLI answer is."""
    from flows.prefect.approval import (
        PrefectApprovals,
        answer_through,
        prefect_server_configured,
    )

    if not prefect_server_configured():
        return None
    # The answer's verdict is awaited: a refusal (e.g. an edit out of bounds) shows on the form at once.
    return PrefectApprovals(campaign_id, answer_through(inbox, campaign_id))


def _announce_takeover(events: Iterable[Any], flow_run_id: str, deployment_id: Any, logger: Any) -> None:
    """Tell Prefect this run took the campaign over from the flow run that ran it last (if any)."""
    previous = [e.flow_run_id for e in events if isinstance(e, RunStarted) and e.flow_run_id not in (None, flow_run_id)]
    if previous:
        try:
            announce_takeover(previous[-1], flow_run_id, deployment_id)
        except Exception as exc:  # Prefect's events are best effort: the campaign goes on
            logger.warning("could not tell Prefect this run took over from %s: %s", previous[-1], exc)


def _needless(flow_run: Any, state: Any, answer: Any) -> str | None:
    """Why this deployed run should end at once, writing nothing (None: it runs the campaign).

    A deadline's backup run (`schedule_deadline_run`) whose deadline was dealt with; a standby
    (`flows.prefect.standby`) of a run another one took over from; or, for a run with no answer
    of its own to apply, the campaign is finished, or waits for a person in the flow run that ran
    it last, suspended (two suspended runs would ask twice). That run is cancelled instead if an
    approval's deadline passed meanwhile: its form would answer a question already decided.
    """
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    if DEADLINE_TAG in (flow_run.tags or []) and (why := deadline_dealt_with(state, datetime.now(UTC))):
        return why
    if answer is None and state.status == "finished":  # a standby, say, of a run killed as it ended
        return f"campaign {state.campaign_id} is finished"
    last = state.deployed_flow_run  # the flow run that ran the campaign last
    if (of := standby_of(flow_run.tags)) is not None and last not in (of, str(flow_run.id)):
        return f"flow run {last} took campaign {state.campaign_id} over from {of}"
    if answer is not None or last in (None, str(flow_run.id)):
        return None
    with get_client(sync_client=True) as client:
        previous = client.read_flow_run(UUID(last))
        if previous.state is None or not previous.state.is_paused():
            return None
        if deadline_dealt_with(state, datetime.now(UTC)) is not None:
            return f"campaign {state.campaign_id} waits for a person in flow run {previous.name} ({last})"
        client.set_flow_run_state(previous.id, Cancelled(
            message=f"an approval's deadline passed: flow run {flow_run.name} ({flow_run.id}) applies its on_timeout"),
            force=True)
    return None


def _summary(campaign_id: str, state: Any) -> dict[str, object]:
    best = state.best()
    summary: dict[str, object] = {
        "campaign_id": campaign_id,
        "status": state.status,
        "finished_reason": state.finished_reason,
        "paused": state.paused_detail or state.paused_reason,
        "completed": state.count("completed"),
        "failed": state.count("failed"),
        "best": None if best is None else {"trial_id": best.trial_id, "parameters": best.parameters,
                                           "measurements": {k: v.mean for k, v in best.measurements.items()}},
    }
    if state.spec is not None and len(state.spec.objectives) > 1:  # no single best of several objectives
        summary["best"] = None
        summary["pareto_front"] = [t.trial_id for t in state.pareto_front()]
    return summary


# Named after the campaign however the run was created (a deployment's automation too); the
# run renames itself "<id> · resume N" once it has read the log (flows.prefect.live).
@flow(name="campaign", flow_run_name="{campaign_id}", persist_result=False, validate_parameters=True)
def campaign(campaign_id: str, max_runtime_s: float | None = None,
             simulated_instruments: bool = False) -> dict[str, object]:
    """Run a campaign from its log until its budget is spent.

    Args:
        campaign_id: The campaign, which must already exist in the event log.
        max_runtime_s: Stop this run (not the campaign) after so many seconds.
        simulated_instruments: Start the spec's ``simulator:`` devices in this process (a
            deployed campaign's; `closedloop run` starts them itself).

    Returns:
        A summary: status, trials completed/failed, best trial.
    """
    logger = get_run_logger()
    wiring = current_wiring()
    settings = wiring.settings
    flow_run = get_run_context().flow_run  # type: ignore[union-attr]
    flow_run_id = str(flow_run.id)
    # Started by a worker, maybe after a crash elsewhere: the dead run's lease expires within its
    # ttl. Such a run suspends while only a person can move the campaign on, and may have been
    # resumed from such a suspension with an answer (flows.prefect.suspension).
    deployed = flow_run.deployment_id is not None
    waits = fired(flow_run.id) if deployed else []
    answer = last_answer(waits)

    def took_over(previous: str) -> None:
        logger.warning("campaign %s: took over the stale lease of %s", campaign_id, previous)

    # A deadline's backup or a standby: no lease waited for if it has nothing to do.
    if deployed and (DEADLINE_TAG in (flow_run.tags or []) or standby_of(flow_run.tags) is not None):
        with event_store(settings) as store:
            before = fold(store.read(campaign_id))
        if (why := _needless(flow_run, before, answer)) is not None:
            logger.info("nothing for this flow run to do: %s", why)
            return {**_summary(campaign_id, before), "nothing_to_do": why}

    # What the orchestrator logs goes to the flow run's logs too (from any thread). The lease
    # first (one writer per campaign), then the run's resources under it.
    lease_refused = True  # until held: a lock refused at acquisition ends quietly, a lease lost later does not
    try:
        with RunLogs(flow_run.id).attached() as run_logs, event_store(settings) as store, \
                hold_lease(store.uri, settings.mongodb_database, campaign_id, took_over, leases=wiring.leases,
                           wait=deployed) as held, \
                MongoCommandInbox(store.uri, database=settings.mongodb_database) as inbox:
            lease_refused = False
            created = fold(store.read(campaign_id, limit=1))
            problem: str | None = None
            if answer is not None:
                def submit(kind: str, payload: dict[str, Any], by: str, reason: str, command_id: str) -> None:
                    if inbox.get(command_id) is None:
                        inbox.submit(campaign_id, kind, payload, by=by, reason=reason, command_id=command_id)  # type: ignore[arg-type]

                problem = apply_answer(answer, fold(store.read(campaign_id)), flow_run.id,
                                       append=lambda e: store.append([e]), submit=submit, logger=logger)
            events = store.read(campaign_id)
            if deployed and (why := _needless(flow_run, before := fold(events), answer)) is not None:
                logger.info("nothing for this flow run to do: %s", why)
                return {**_summary(campaign_id, before), "nothing_to_do": why}
            if deployed:  # Prefect's event that a run took over from a crashed one
                _announce_takeover(events, flow_run_id, flow_run.deployment_id, logger)
            live = LiveCampaign(events, ArtifactPublisher(campaign_id, flow_run.id), run_logs.say)
            live.first = partial(label_flow_run, flow_run, *run_labels(live.state))
            # Deployed: a scheduled flow run stands by in case this process dies (flows.prefect.standby).
            standby = Standby(flow_run.deployment_id, campaign_id, flow_run_id, ahead_s=settings.standby_s) if deployed else nullcontext()
            with standby, live, broker_url(settings) as url, (
                    simulated_lab(created.spec, mqtt_settings(settings, url), settings.home / "devices" / campaign_id)
                    if simulated_instruments and created.spec is not None else nullcontext()):
                # A client id per campaign instance, the same at every restart: the broker keeps the
                # session (and queues the results devices publish) while no orchestrator is
                # connected, and no other campaign, whatever its name, shares it.
                hub = MqttDeviceHub(mqtt_settings(settings, url),
                                    client_id=client_id(campaign_id, created.instance or campaign_id))
                # Its own devices only: the broker forwards and queues nothing of other campaigns'.
                hub.start(None if created.spec is None else [d.id for d in created.spec.devices])
                # A deployed run's suspended flow run is the approval's form itself.
                notifier = None if deployed else _prefect_notifier(campaign_id, inbox)
                # A replay campaign (its CampaignCreated says so): a scripted optimizer (faithful) or
                # its source's people (counterfactual).
                scripted, script = replay_wiring(created, store.read)
                finished = waiting = False
                try:
                    loop = CampaignLoop(
                        campaign_id, ObservedLog(store, live.appended), hub,
                        make_optimizer=scripted or partial(_make_optimizer, settings.optimizer_threads),
                        options=LoopOptions(max_runtime_s=max_runtime_s, leave_when_waiting=deployed),
                        run_info={"host": socket.gethostname(), "pid": os.getpid(), "flow_run_id": flow_run_id,
                                  "versions": software_versions(),
                                  "deployment": f"campaign/{campaign_id}" if deployed else None},
                        lease_lost=held.lost_error,
                        inbox=inbox,
                        notifier=notifier,
                        script=script,
                    )
                    state = loop.run()
                    finished = state.status == "finished"
                    waiting = deployed and (state.status == "paused" or loop.waits_for_a_person())
                finally:
                    if notifier is not None:
                        notifier.shutdown()
                    # A finished campaign never comes back: its session would hold queued messages
                    # forever. A stopped or paused one keeps it, to get what arrives meanwhile.
                    hub.stop(end_session=finished)
                    if deployed:  # `closedloop run` writes it itself (flows.cli.drive)
                        keep_ax_store(settings, store.read, campaign_id, logger.warning)
            if waiting:
                refused = inbox.get(command_id(flow_run.id, answer)) if answer is not None else None
                if refused is not None and refused.state == "refused":
                    problem = refused.error  # the loop refused it (e.g. an edit out of bounds)
                logger.info("campaign %s waits for a person: its flow run suspends until answered", campaign_id)
                # Still under the lease: a command sent meanwhile goes to the inbox, and its author
                # wakes this run once it is suspended (flows.cli.people).
                suspend(state, waits, problem, backup_after_s=settings.standby_s)
    except CampaignLockedError as exc:
        if not deployed or not lease_refused:
            raise
        # Another flow run (or a standby, or an automation's) holds the campaign: nothing to do here.
        logger.info("nothing for this flow run to do: %s", exc)
        return {"campaign_id": campaign_id, "nothing_to_do": str(exc)}
    summary = _summary(campaign_id, state)
    logger.info("campaign %s: %s", campaign_id, summary)
    return summary
