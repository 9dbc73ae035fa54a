"""Approvals in the loop on its in-memory backends: `every_batch` asks once per batch in async
mode, and a refused answer is logged (``AnswerRefused``) where `history` and `status` read it."""

from __future__ import annotations

from campaigns import AnswerRefused, ApprovalRequested
from tests.unit.engine_rig import Rig, kinds, spec


def answering(rig: Rig, payload_for: object) -> list[str]:
    """People who answer each approval as it opens, through the inbox (``payload_for(approval)``);
    the ids of the commands they send, as they send them."""
    answered: set[str] = set()
    sent: list[str] = []

    def open_unanswered(ev: list) -> bool:  # type: ignore[type-arg]
        decided = {e.approval_id for e in ev if e.kind in ("ApprovalGiven", "ApprovalRejected")}
        return any(e.approval_id not in decided | answered for e in kinds(ev, "ApprovalRequested"))

    def answer() -> None:
        events = rig.events()
        decided = {e.approval_id for e in events if e.kind in ("ApprovalGiven", "ApprovalRejected")}
        for request in kinds(events, "ApprovalRequested"):
            if request.approval_id not in decided | answered:
                answered.add(request.approval_id)
                for kind, payload in payload_for(request):  # type: ignore[operator]
                    sent.append(rig.inbox.submit(rig.campaign_id, kind, payload, by="ada", reason="looks fine").command_id)
        rig.when(open_unanswered, answer)  # and the next one

    rig.when(open_unanswered, answer)
    return sent


def test_every_batch_asks_once_per_batch_of_batch_size_in_async_mode() -> None:
    devices = [{"id": f"d{i}", "simulator": "branin"} for i in range(3)]
    rig = Rig(spec(devices, approval="every_batch", batch_size=3, budget={"max_trials": 9}))
    for i in range(3):
        rig.hub.instrument(f"d{i}", "branin", {"duration_s": [0.5 + i, 1.0 + 2 * i], "seed": i})
    answering(rig, lambda request: [("approve", {"approval_id": request.approval_id, "via": "cli"})])
    state = rig.run()
    assert state.finished_reason == "budget_exhausted" and state.count("completed") == 9
    requests: list[ApprovalRequested] = kinds(rig.events(), "ApprovalRequested")
    # 9 trials, batches of 3: a person is asked 3 times, not once per device that frees up.
    assert [len(r.trial_ids) for r in requests] == [3, 3, 3]
    assert [len(s.trials) for s in kinds(rig.events(), "TrialsSuggested")] == [3, 3, 3]


def test_the_last_batch_is_what_the_budget_has_left() -> None:
    devices = [{"id": f"d{i}", "simulator": "branin"} for i in range(2)]
    rig = Rig(spec(devices, approval="every_batch", batch_size=3, budget={"max_trials": 5}))
    for i in range(2):
        rig.hub.instrument(f"d{i}", "branin", {"duration_s": [0.5, 2.0], "seed": i})
    answering(rig, lambda request: [("approve", {"approval_id": request.approval_id, "via": "cli"})])
    state = rig.run()
    assert state.count("completed") == 5
    assert [len(r.trial_ids) for r in kinds(rig.events(), "ApprovalRequested")] == [3, 2]


def test_a_refused_answer_is_logged_with_who_where_what_and_why_then_a_good_one_applies() -> None:
    rig = Rig(spec([{"id": "d0", "simulator": "branin"}], approval="every_batch", batch_size=2,
                   budget={"max_trials": 2}))
    rig.hub.instrument("d0", "branin", {"duration_s": [0.5, 1.0], "seed": 1})

    def answers(request: ApprovalRequested) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
        first = request.trial_ids[0]
        return [("approve", {"approval_id": request.approval_id, "edit": {first: {"x1": 99.0}}, "via": "prefect"}),
                ("approve", {"approval_id": request.approval_id, "via": "prefect"})]

    sent = answering(rig, answers)
    state = rig.run()
    assert state.count("completed") == 2
    [refused] = kinds(rig.events(), "AnswerRefused")
    assert isinstance(refused, AnswerRefused)
    assert (refused.by, refused.via, refused.command, refused.approval_id) == ("ada", "prefect", "approve", "a0")
    assert "x1=99.0" in refused.what and "outside the bounds [-5, 10]" in refused.why
    assert state.refusals == [refused]
    bad, good = (rig.inbox.get(c) for c in sent)
    assert bad is not None and bad.state == "refused" and bad.error == refused.why  # what its author is told
    assert good is not None and good.state == "applied"
    [given] = kinds(rig.events(), "ApprovalGiven")
    assert given.via == "prefect" and given.seq > refused.seq and given.edited == {}
