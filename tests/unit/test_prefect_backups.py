"""What a deadline's backup flow run and a standby decide from the log alone (flows.prefect):
the Prefect side of both runs in tests/e2e/test_service.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from campaigns import CampaignState, parse_spec
from campaigns.state import OpenApproval
from flows.prefect.standby import STANDBY_OF, STANDBY_TAG, standby_of
from flows.prefect.suspension import deadline_dealt_with

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


SPEC = parse_spec({"name": "c", "parameters": [{"name": "x", "type": "float", "bounds": [0, 1]}],
                   "objectives": [{"name": "y", "minimize": True}], "budget": {"max_trials": 4},
                   "approval": {"every_batch": True, "timeout_s": 60, "on_timeout": "approve"},
                   "devices": [{"id": "dev-1", "simulator": "branin"}]})


def _waiting(deadline: datetime | None, on_timeout: str = "approve") -> CampaignState:
    state = CampaignState(campaign_id="c", spec=SPEC)
    state.open_approvals["a0"] = OpenApproval("a0", ["0", "1"], NOW - timedelta(minutes=5), deadline, on_timeout, "why")
    return state


def test_a_backup_acts_only_on_an_unanswered_approval_past_its_deadline() -> None:
    assert deadline_dealt_with(_waiting(NOW - timedelta(seconds=1)), NOW) is None
    assert deadline_dealt_with(_waiting(NOW), NOW) is None  # at the deadline itself
    assert "no approval" in (deadline_dealt_with(_waiting(NOW + timedelta(seconds=1)), NOW) or "")
    assert "no approval" in (deadline_dealt_with(_waiting(None), NOW) or "")
    # keep_waiting: the deadline never ends the wait, so no backup acts on it
    assert "no approval" in (deadline_dealt_with(_waiting(NOW - timedelta(hours=1), "keep_waiting"), NOW) or "")
    assert "no approval" in (deadline_dealt_with(CampaignState(campaign_id="c", spec=SPEC), NOW) or "")  # answered


def test_a_finished_campaign_needs_no_backup() -> None:
    state = _waiting(NOW - timedelta(seconds=1))
    state.finished_reason = "budget_exhausted"
    assert state.status == "finished"
    assert deadline_dealt_with(state, NOW) == "campaign c is finished"


def test_a_standby_names_the_run_it_stands_in_for() -> None:
    assert standby_of(["closedloop", "campaign:c", STANDBY_TAG, f"{STANDBY_OF}1234"]) == "1234"
    assert standby_of(["closedloop", "campaign:c"]) is None
    assert standby_of(None) is None
