"""An answer given in Prefect's form to a suspended deployed campaign becomes what the same
answer from the CLI is (`flows.prefect.suspension.apply_answer`), and a hostile one is refused
with a reason for the next form and logged as refused, nothing applied (issues 16, 17). The
forms require a reason and a name, as the CLI does; the form shows what a person decides on."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from campaigns import (
    AnswerRefused,
    ApprovalRequested,
    CampaignCreated,
    CampaignPaused,
    CampaignResumed,
    SuggestedTrial,
    TrialCompleted,
    TrialDispatched,
    TrialsSuggested,
    fold,
    load_spec,
)
from campaigns.events import Measurement, Prediction
from campaigns.review import approval_view
from flows.prefect.approval import ApprovalForm, closed_input, describe
from flows.prefect.suspension import Answer, ResumeForm, apply_answer, command_id

SPEC = load_spec(Path(__file__).parents[2] / "campaigns" / "examples" / "branin.yaml")
LOG = logging.getLogger("test")
RUN = uuid.uuid4()


def _state(paused: bool) -> Any:
    return fold(_events(paused))


def _events(paused: bool) -> list[Any]:
    trials = [SuggestedTrial(trial_id=i, parameters={"x1": 1.0, "x2": 2.0}, generator="sobol") for i in ("0", "1")]
    events: list[Any] = [
        CampaignCreated(campaign_id="c", seq=1, actor="user:a", spec=SPEC),
        TrialsSuggested(campaign_id="c", seq=2, actor="optimizer", trials=trials),
        ApprovalRequested(campaign_id="c", seq=3, actor="orchestrator", approval_id="a0", trial_ids=["0", "1"],
                          why="every batch", answer_with="closedloop approve c"),
    ]
    if paused:
        events.append(CampaignPaused(campaign_id="c", seq=4, actor="user:eve", reason="user", detail="lunch"))
    return events


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
    ("approval:a0", ApprovalForm(decision="approve", reason="r", by="ana\nbob")),
    ("approval:a0", ApprovalForm(decision="approve", edits="7: x1=1", reason="r", by="ana")),  # no trial 7
    ("approval:a0", ApprovalForm(decision="approve", edits="0: x1", reason="r", by="ana")),  # not name=value
])
def test_a_hostile_answer_is_refused_with_its_reason_logged_and_nothing_applied(what: str, form: Any) -> None:
    answer = Answer(what, "wait-1-x", form)
    problem, appended, submitted = _apply(answer, paused=what == "pause")
    assert problem and "\n" not in problem and submitted == []
    [refused] = appended  # in the log: `history` and `status` show it
    assert isinstance(refused, AnswerRefused) and refused.why == problem and refused.via == "prefect"
    assert refused.actor == "orchestrator" and refused.by == " ".join(form.by.split())
    assert refused.command_id == command_id(RUN, answer)
    # The same run started again with the same answer: refused again, logged once.
    state = fold([*_events(paused=what == "pause"), refused])
    again: list[Any] = []
    assert apply_answer(answer, state, RUN, append=again.append, submit=None, logger=LOG) == problem and again == []


def test_a_run_woken_by_a_cli_command_applies_nothing_itself() -> None:
    for what, form in [("pause", ResumeForm.model_validate(closed_input("the CLI"))),
                       ("approval:a0", ApprovalForm.model_validate(closed_input("the CLI")))]:
        assert _apply(Answer(what, "wait-1-x", form), paused=what == "pause") == (None, [], [])


@pytest.mark.parametrize("form", [ApprovalForm, ResumeForm])
def test_reason_and_name_are_required_and_not_blank(form: Any) -> None:
    schema = form.model_json_schema()  # what Prefect's UI renders and its server checks a resume against
    assert {"reason", "by"} <= set(schema["required"])
    for field in ("reason", "by"):
        assert schema["properties"][field]["minLength"] == 1 and schema["properties"][field]["pattern"] == r"\S"
    for missing in ({"by": "ada"}, {"reason": "ok"}, {"reason": "  ", "by": "ada"}, {"reason": "ok", "by": "\t"}):
        with pytest.raises(ValidationError):
            form.model_validate(missing)
    # The form shown keeps them required (no initial value makes them optional).
    shown = form.with_initial_data(description="d").model_json_schema()
    assert {"reason", "by"} <= set(shown["required"])


def test_the_form_shows_bounds_predictions_digits_and_the_best_so_far() -> None:
    trials = [SuggestedTrial(trial_id="2", parameters={"x1": 1.23456789, "x2": 2.0}, generator="botorch",
                             engine="fast", prediction={"branin": Prediction(mean=3.14159, sd=0.271828)}),
              SuggestedTrial(trial_id="3", parameters={"x1": -4.5, "x2": 14.99999}, generator="sobol", engine="sobol")]
    events = [*_events(paused=False),
              TrialDispatched(campaign_id="c", seq=4, actor="orchestrator", trial_id="0", device_id="d", request_id="r0"),
              TrialsSuggested(campaign_id="c", seq=5, actor="optimizer", trials=trials),
              ApprovalRequested(campaign_id="c", seq=6, actor="orchestrator", approval_id="a2", trial_ids=["2", "3"],
                                why="every batch", answer_with="closedloop approve c")]
    state = fold([*events, TrialCompleted(campaign_id="c", seq=7, actor="device:d", trial_id="0", device_id="d",
                                          request_id="r0", measurements={"branin": Measurement(mean=12.3456789)})])
    text = describe("c", "a2", [], "every batch", "closedloop approve c", view=approval_view(state, state.open_approvals["a2"]))
    assert "| x1 [-5, 10] | x2 [0, 15] | predicted branin (mean ± sd) |" in text
    assert "| 2 | 1.235 | 2 | 3.142 ± 0.2718 |" in text
    assert "| 3 | -4.5 | 15 | no model yet (Sobol) |" in text
    assert "**Best so far (observed):** branin = 12.35 (min, trial 0)" in text
