"""The event a deployed flow run emits about the flow run it took its campaign over from: in
Prefect's event feed, each takeover after a crash is on the record (a lab's own automations can
act on it, or on its absence)."""

from __future__ import annotations

from uuid import UUID

REPLACED_EVENT = "closedloop.flow-run.replaced"


def announce_takeover(previous_flow_run_id: str, flow_run_id: str, deployment_id: UUID) -> None:
    """Tell Prefect that ``flow_run_id`` took the campaign over from ``previous_flow_run_id`` (the
    event's resource is the previous run)."""
    from prefect.events import emit_event

    emit_event(REPLACED_EVENT, resource={"prefect.resource.id": f"prefect.flow-run.{previous_flow_run_id}"},
               related=[{"prefect.resource.id": f"prefect.deployment.{deployment_id}",
                         "prefect.resource.role": "deployment"},
                        {"prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
                         "prefect.resource.role": "flow-run"}])
