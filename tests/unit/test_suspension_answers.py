"""An answer given in Prefect's form to a suspended deployed campaign becomes what the same
answer from the CLI is (`flows.prefect.suspension.apply_answer`), and a hostile one is refused
with a reason for the next form, nothing logged (issue 16)."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from campaigns import (
    ApprovalRequested,
    CampaignCreated,
    CampaignPaused,
    CampaignResumed,
    SuggestedTrial,
    TrialsSuggested,
    fold,
    load_spec,
)
from flows.prefect.approval import CLOSED_KEY, ApprovalForm
from flows.prefect.suspension import Answer, ResumeForm, apply_answer, command_id

SPEC = load_spec(Path(__file__).parents[2] / "campaigns" / "examples" / "branin.yaml")
LOG = logging.getLogger("test")
RUN = uuid.uuid4()


def _state(paused: bool) -> Any:
    trials = [SuggestedTrial(trial_id=i, parameters={"x1": 1.0, "x2": 2.0}, generator="sobol") for i in ("0", "1")]
    events: list[Any] = [
        CampaignCreated(campaign_id="c", seq=1, actor="user:a", spec=SPEC),
        TrialsSuggested(campaign_id="c", seq=2, actor="optimizer", trials=trials),
        ApprovalRequested(campaign_id="c", seq=3, actor="orchestrator", approval_id="a0", trial_ids=["0", "1"],
                          why="every batch", answer_with="closedloop approve c"),
    ]
    if paused:
        events.append(CampaignPaused(campaign_id="c", seq=4, actor="user:eve", reason="user", detail="lunch"))
    return fold(events)


def _apply(answer: Answer, paused: bool) -> tuple[str | None, list[Any], list[Any]]:
    appended: list[Any] = []
    submitted: list[Any] = []
    problem = apply_answer(answer, _state(paused), RUN, append=appended.append,
                           submit=lambda *command: submitted.append(command), logger=LOG)
    return problem, appended, submitted


def test_a_resume_form_logs_the_resume_with_its_author() -> None:
    answer = Answer("pause", "wait-1-pause", ResumeForm(reason=" back ", by=" ada "))
    assert _apply(answer, paused=True)[0] is None
    [resumed] = _apply(answer, paused=True)[1]
    assert isinstance(resumed, CampaignResumed) and (resumed.actor, resumed.reason, resumed.seq) == ("user:ada", "back", 5)


def test_an_approval_form_becomes_the_cli_s_approve_command_once() -> None:
    answer = Answer("approval:a0", "wait-1-approval-a0",
                    ApprovalForm(decision="approve", reject=["1"], edits="0: x1=2", reason="ok", by="dee"))
    problem, appended, [(kind, payload, by, reason, cid)] = _apply(answer, paused=False)
    assert problem is None and appended == []
    assert (kind, by, reason, cid) == ("approve", "dee", "ok", command_id(RUN, answer))
    assert payload["reject"] == ["1"] and payload["edit"] == {"0": {"x1": "2"}} and payload["via"] == "prefect"


@pytest.mark.parametrize(("what", "form"), [
    ("pause", ResumeForm(reason="r", by="ana\nbob")),
    ("approval:a0", ApprovalForm(decision="approve", by="ana\nbob")),
    ("approval:a0", ApprovalForm(decision="approve", edits="7: x1=1")),  # no trial 7 in the request
    ("approval:a0", ApprovalForm(decision="approve", edits="0: x1")),  # not name=value
])
def test_a_hostile_answer_is_refused_with_its_reason_and_nothing_logged(what: str, form: Any) -> None:
    problem, appended, submitted = _apply(Answer(what, "wait-1-x", form), paused=what == "pause")
    assert problem and "\n" not in problem and appended == [] and submitted == []


def test_a_run_woken_by_a_cli_command_applies_nothing_itself() -> None:
    for what, form in [("pause", ResumeForm.model_validate({CLOSED_KEY: "the CLI"})),
                       ("approval:a0", ApprovalForm.model_validate({CLOSED_KEY: "the CLI"}))]:
        assert _apply(Answer(what, "wait-1-x", form), paused=what == "pause") == (None, [], [])
