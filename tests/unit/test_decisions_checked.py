"""What the orchestrator checks when a command reaches it through the inbox (not only the CLI's
own checks), and the approval policy's fail-safe for conditions it cannot evaluate."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from campaigns import ClosedLoopError, CommandRefusedError, parse_spec
from flows.engine.commands import events_for
from storage import Command
from tests.unit.test_commands import fields_of, waiting_state

EXAMPLE = yaml.safe_load((Path(__file__).parents[2] / "campaigns" / "examples" / "branin.yaml").read_text())


def command(kind: str, payload: dict[str, Any]) -> Command:
    return Command(command_id="k9", campaign_id="c", kind=kind, payload=payload, by="ana", reason="because",  # type: ignore[arg-type]
                   submitted_at=datetime.now(UTC))


@pytest.mark.parametrize(("payload", "message"), [
    ({"approve": ["0", "1", "2"], "reject": ["0"]}, "trial 0 is both approved and rejected"),
    ({"edit": {"1": {"x1": "2"}}, "reject": ["1", "0", "2"]}, "trial 1 is both edited and rejected"),
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
    ({"batch_size": 0}, "batch size 0: must be at least 1"),
    ({"max_trials": 0}, "max trials 0: must be at least 1"),
    ({"trial_timeout_s": -1.0}, "trial timeout -1.0: must be above 0"),
    ({"trial_timeout_s": float("inf")}, "trial timeout inf: must be above 0"),
    ({"max_hours": 0}, "max hours 0: must be above 0"),
    ({"batch_size": "4"}, "batch size '4': not a whole number"),
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


@pytest.mark.parametrize(("payload", "message"), [
    ({"approve": ["0", "1", "2"], "reject": ["0"]}, "trial 0 is both approved and rejected"),
    ({"edit": {"0": {"x1": "99"}}}, "edit of trial 0: x1=99 is outside the bounds"),
    ({"edit": {"0": {"x1": "warm"}}}, "edit of trial 0: x1='warm': not a number"),
    ({"edit": {"0": {"x9": "1"}}}, "edit of trial 0: 'x9' is not a parameter of this campaign"),
    ({"approve": ["0"]}, "trial 1 is not decided"),
    ({"approval_id": "a0", "trial_ids": ["0", "1"]}, "not the 0, 1 the decision was made on"),
])
def test_a_refused_answer_from_the_prefect_form_or_a_replay_speaks_no_cli_flags(payload: dict[str, Any],
                                                                                 message: str) -> None:
    """Issue 15: an answer given in the Prefect UI (or replayed) was refused in the CLI's words
    (`--edit 0 x1=...`); the refusal is a CommandRefusedError in the campaign's words."""
    state = waiting_state()
    with pytest.raises(CommandRefusedError) as exc:
        events_for(state, command("approve", {**payload, "via": "prefect"}), fields_of(state))
    assert message in str(exc.value) and "--" not in str(exc.value), str(exc.value)


def test_the_cli_maps_each_error_class_to_its_exit_code_in_one_place() -> None:
    from campaigns import (
        CampaignStateError,
        SpecError,
        StorageUnavailableError,
        UsageError,
    )
    from flows.cli.main import exit_code

    assert [exit_code(e("m")) for e in (UsageError, SpecError, CommandRefusedError, CampaignStateError,
                                        StorageUnavailableError, ClosedLoopError)] == [2, 2, 1, 1, 1, 1]
