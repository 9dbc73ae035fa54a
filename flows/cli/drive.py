"""The run path shared by `closedloop run`, `resume` and `replay`: under the campaign's lease,
with its broker, simulated instruments and Prefect API, the campaign flow until it finishes or
pauses.

Every CLI command imports this module (for its exit codes); what only a run needs (the lease,
the wiring, the broker, the simulators, Prefect) is imported by ``drive`` itself."""

from __future__ import annotations

import argparse
import gc
import sys
from contextlib import nullcontext
from typing import TYPE_CHECKING

from campaigns import CampaignNotFoundError, CampaignResumed, CampaignStateError, fold
from flows.app.settings import Settings
from flows.cli.people import current_user
from flows.cli.report import model_of, status_text

if TYPE_CHECKING:
    from campaigns import CampaignState
    from storage import MongoEventStore

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TERMINATED", "EXIT_USAGE", "append_resume", "drive",
           "finished_error", "startup_finished"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


def startup_finished() -> None:
    """The collector back on, for a command that runs on (a campaign, a simulator serving).

    ``main`` turns it off while a command starts: torch, Prefect and BoTorch create about a million
    long-lived objects on import, and collections would only re-scan them. Frozen here, later
    collections skip them too; a campaign's `run` spends ~20% less CPU (benchmarks/README.md).
    A short command (status, approve, ...) ends before it matters and never calls this."""
    gc.freeze()
    gc.enable()


def finished_error(state: CampaignState) -> CampaignStateError:
    """The refusal to run (or deploy, or resume) a campaign that has finished."""
    return CampaignStateError(f"campaign {state.campaign_id!r} has already finished ({state.finished_reason})",
                              "pass --campaign-id NEW_ID to run the spec again as a new campaign",
                              campaign_id=state.campaign_id)


def append_resume(store: MongoEventStore, state: CampaignState, reason: str | None) -> CampaignResumed:
    """Log that the person typing resumes the paused campaign ``state`` (under its lease)."""
    resumed = CampaignResumed(campaign_id=state.campaign_id, seq=state.last_seq + 1, actor=f"user:{current_user()}",
                              reason=reason or "resumed from the command line")
    store.append([resumed])
    return resumed


def drive(store: MongoEventStore, settings: Settings, campaign_id: str, args: argparse.Namespace, *, resume: bool) -> int:
    """Run a campaign that exists, under its lease, until it finishes or pauses."""
    from flows.app.ax_store import keep_ax_store
    from flows.app.lease import hold_lease
    from flows.app.runtime import broker_url, mqtt_settings, simulated_lab
    from flows.app.wiring import Wiring, wired

    wiring = Wiring(settings)
    with hold_lease(store.uri, settings.mongodb_database, campaign_id,
                    lambda prev: print(f"campaign {campaign_id}: took over the stale lease of {prev}"),
                    leases=wiring.leases):
        state = fold(store.read(campaign_id))  # re-read: we are the only writer from here on
        spec = state.spec
        if spec is None:
            raise CampaignNotFoundError(f"no campaign {campaign_id!r}", "see `closedloop list`", campaign_id=campaign_id)
        if state.status == "finished":
            print(status_text(state))
            raise finished_error(state)
        if state.status == "paused":
            if not resume:
                raise CampaignStateError(
                    f"campaign {campaign_id!r} is paused: {state.paused_detail or state.paused_reason}",
                    f"fix the cause, then `closedloop resume {campaign_id} --reason ...`",
                    campaign_id=campaign_id,
                )
            append_resume(store, state, args.reason)
        elif state.last_seq > (2 if state.prior_count else 1):  # more than its creation (and prior data)
            print(f"campaign {campaign_id}: continuing from event {state.last_seq} "
                  f"({state.count('completed')} completed, {len(state.in_flight)} in flight)")
        with broker_url(settings) as url:
            # The flow gets this run's broker, database and lease handed over in-process (no
            # credentials in Prefect's flow-run parameters, nothing set into the environment).
            wiring = wiring.connected_to(mqtt_url=url, mongodb_uri=store.uri)
            lab = nullcontext() if args.no_simulators else simulated_lab(spec, mqtt_settings(settings, url), settings.home / "devices")
            with lab:
                from flows.cli.progress import ProgressReporter
                from flows.prefect.server import (
                    local_prefect_api,
                    quiet_prefect_defaults,
                )

                quiet_prefect_defaults()

                with local_prefect_api():
                    from flows.prefect.flow import campaign

                    startup_finished()
                    with ProgressReporter(store.uri, settings.mongodb_database, campaign_id, quiet=args.quiet), \
                            wired(wiring):
                        campaign(campaign_id, max_runtime_s=args.max_runtime)
                    # Finished, stopped or paused (an interrupted run stops at once): Ax's SQL
                    # store follows the log.
                    keep_ax_store(settings, store.read, campaign_id, lambda line: print(line, file=sys.stderr))
    final = fold(store.read(campaign_id))
    print(status_text(final, model_of(final)))  # the best observed and the best by the model
    if final.status == "paused" and final.paused_reason == "user":
        print(f"campaign {campaign_id} paused on request: {final.paused_detail} — "
              f"`closedloop resume {campaign_id}` to go on", file=sys.stderr)
        return EXIT_OK
    if final.status == "paused":
        print(f"error: campaign {campaign_id} paused: {final.paused_detail or final.paused_reason} — "
              f"fix the cause, then `closedloop resume {campaign_id}`", file=sys.stderr)
    return EXIT_OK if final.status == "finished" else EXIT_ERROR
