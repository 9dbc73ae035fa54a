"""What the orchestrator checks when a command reaches it through the inbox (not only the CLI's
own checks), and the approval policy's fail-safe for conditions it cannot evaluate."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from campaigns import ClosedLoopError, parse_spec
from flows.engine.commands import events_for
from storage import Command
from tests.unit.test_commands import fields_of, waiting_state

EXAMPLE = yaml.safe_load((Path(__file__).parents[2] / "campaigns" / "examples" / "branin.yaml").read_text())


def command(kind: str, payload: dict[str, Any]) -> Command:
    return Command(command_id="k9", campaign_id="c", kind=kind, payload=payload, by="ana", reason="because",  # type: ignore[arg-type]
                   submitted_at=datetime.now(UTC))


@pytest.mark.parametrize(("payload", "message"), [
    ({"approve": ["0", "1", "2"], "reject": ["0"]}, "trial 0 is given to both --trial and --reject"),
    ({"edit": {"1": {"x1": "2"}}, "reject": ["1", "0", "2"]}, "trial 1 is given to both --edit and --reject"),
    ({"approval_id": "a0", "trial_ids": ["0", "1"]}, "approval a0 holds trials 0, 1, 2, not the 0, 1"),
])
def test_the_orchestrator_refuses_decisions_that_do_not_match(payload: dict[str, Any], message: str) -> None:
    """Issue 14 item 6: a decision from the inbox (or the Prefect form) that names a trial twice,
    or was made on other trials than the approval holds, is refused, not logged both ways."""
    state = waiting_state()
    with pytest.raises(ClosedLoopError) as exc:
        events_for(state, command("approve", payload), fields_of(state))
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(("payload", "message"), [
    ({"batch_size": 0}, "--batch-size 0: must be at least 1"),
    ({"max_trials": 0}, "--max-trials 0: must be at least 1"),
    ({"trial_timeout_s": -1.0}, "--trial-timeout -1.0: must be above 0"),
    ({"trial_timeout_s": float("inf")}, "--trial-timeout inf: must be above 0"),
    ({"max_hours": 0}, "--max-hours 0: must be above 0"),
    ({"batch_size": "4"}, "--batch-size '4': not a whole number"),
    ({"max_trials": 2}, "3 trials already count against the budget"),
    ({"set_bounds": {"x1": "low"}}, "set_bounds.x1"),
])
def test_the_orchestrator_refuses_bad_change_numbers_in_one_line(payload: dict[str, Any], message: str) -> None:
    """Issue 14 item 14: a change from the inbox with numbers out of range raised a pydantic
    ValidationError in the loop; it is refused with one line."""
    state = waiting_state()
    with pytest.raises(ClosedLoopError) as exc:
        events_for(state, command("change", payload), fields_of(state))
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("condition", ["-'abc' == 1", "not " * 2000 + "x1 > 1"])
def test_a_logged_condition_that_cannot_be_evaluated_asks_a_person(condition: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Issue 14 item 9: a `when:` condition in a campaign created before conditions were checked
    (read from its log, as resume does) raised TypeError / RecursionError in the loop on every run.
    Now the trial waits for a person, with a log line saying why."""
    spec = parse_spec({**EXAMPLE, "approval": {"when": condition}})  # what an old log's spec reads as
    with caplog.at_level(logging.WARNING, logger="closedloop.approval"):
        needs = spec.approval.needs_approval({"x1": 1.0, "x2": 2.0}, 0)
    assert needs is True and "cannot be evaluated" in caplog.text
