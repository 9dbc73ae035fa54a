"""What the Prefect UI shows of a campaign, computed from a log built here: artifact keys,
progress, the trials table, the summary, the lines told in the flow run's logs; and a Prefect
that does not answer costs one warning, never the campaign."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from campaigns import (
    ApprovalGiven,
    ApprovalRequested,
    CampaignChange,
    CampaignChanged,
    CampaignCreated,
    CampaignPaused,
    Measurement,
    SuggestedTrial,
    TrialCompleted,
    TrialDispatched,
    TrialsSuggested,
    fold,
    load_spec,
)
from campaigns.events import EventBase, RunStarted
from campaigns.waiting import wait_for
from flows.prefect.artifacts import (
    artifact_key,
    best_so_far_png,
    best_so_far_points,
    progress_percent,
    summary_markdown,
    trials_table,
)
from flows.prefect.live import LiveCampaign, run_labels, tell

EXAMPLES = Path(__file__).parents[2] / "campaigns" / "examples"
SPEC = load_spec(EXAMPLES / "branin.yaml")
CID = "lab-a"


def numbered(*events: EventBase) -> list[EventBase]:
    return [e.model_copy(update={"seq": i}) for i, e in enumerate(events, start=1)]


def story() -> list[EventBase]:
    """Three trials: 0 completed, 1 edited by ana then completed, 2 waiting for approval; a change."""
    f = {"campaign_id": CID, "seq": 1}
    return numbered(
        CampaignCreated(**f, actor="user:ana", spec=SPEC),
        RunStarted(**f, actor="orchestrator", host="h", pid=1),
        TrialsSuggested(**f, actor="optimizer", trials=[
            SuggestedTrial(trial_id="0", parameters={"x1": 1.0, "x2": 2.0}, generator="sobol", sobol_position=0),
            SuggestedTrial(trial_id="1", parameters={"x1": 3.0, "x2": 4.0}, generator="sobol", sobol_position=1)]),
        ApprovalRequested(**f, actor="orchestrator", approval_id="a1", trial_ids=["1"], why="every batch",
                          answer_with="closedloop approve ..."),
        ApprovalGiven(**f, actor="user:ana", approval_id="a1", edited={"1": {"x1": 2.5}}, reason="safer x1"),
        TrialDispatched(**f, actor="orchestrator", trial_id="0", device_id="sim-branin-1", request_id="r0"),
        TrialDispatched(**f, actor="orchestrator", trial_id="1", device_id="sim-branin-2", request_id="r1"),
        TrialCompleted(**f, actor="device:sim-branin-1", trial_id="0", device_id="sim-branin-1", request_id="r0",
                       measurements={"branin": Measurement(mean=5.123456789)}),
        TrialCompleted(**f, actor="device:sim-branin-2", trial_id="1", device_id="sim-branin-2", request_id="r1",
                       measurements={"branin": Measurement(mean=0.5)}),
        CampaignChanged(**f, actor="user:bo", change=CampaignChange(trial_timeout_s=90), reason="slow reagent"),
        TrialsSuggested(**f, actor="optimizer", trials=[
            SuggestedTrial(trial_id="2", parameters={"x1": 7.0, "x2": 8.0}, generator="sobol", sobol_position=2)]),
        ApprovalRequested(**f, actor="orchestrator", approval_id="a2", trial_ids=["2"], why="every batch",
                          answer_with="closedloop approve ..."),
    )


def test_keys_are_prefects_alphabet_and_never_shared() -> None:
    assert artifact_key("branin-2", "trials") == "branin-2-trials"
    odd = [artifact_key(c, "trials") for c in ("Branin_2", "branin.2", "Ünï")]
    assert all(re.fullmatch(r"[a-z0-9-]+", k) for k in odd)
    assert len({*odd, "branin-2-trials"}) == 4


def test_progress_and_one_row_per_trial_with_the_logs_values() -> None:
    state = fold(story())
    assert progress_percent(state) == pytest.approx(100 * 2 / SPEC.budget.max_trials)
    rows = trials_table(state)
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert rows[0] == {"trial": "0", "status": "completed", "x1": 1.0, "x2": 2.0, "branin": 5.12346,
                       "device": "sim-branin-1", "engine": "sobol", "chosen by": "optimizer", "approved by": None}
    assert rows[1]["x1"] == 2.5 and rows[1]["chosen by"] == "user:ana" and rows[1]["branin"] == 0.5
    assert rows[2]["status"] == "suggested" and rows[2]["branin"] is None and rows[2]["device"] is None


def test_summary_says_the_best_what_waits_for_whom_and_the_commands() -> None:
    events = story()
    text = summary_markdown(fold(events))
    assert "# Campaign lab-a: running" in text and "**2** of 30 trials completed" in text
    assert "| 1 | 2.5 | 4 | 0.5 |" in text  # the best trial, as edited
    assert "**Approval a2** waits for a person" in text and "closedloop approve lab-a --approval a2" in text
    assert "Changes: 1" in text and "closedloop stop lab-a" in text
    paused = fold([*events, CampaignPaused(campaign_id=CID, seq=len(events) + 1, actor="user:bo", reason="user",
                                           detail="lunch")])
    assert "**Paused** (user): lunch" in summary_markdown(paused)
    assert "closedloop resume lab-a" in summary_markdown(paused)


def test_best_so_far_by_result_and_plots() -> None:
    state = fold(story())
    assert best_so_far_points(state) == [("0", 5.123456789), ("1", 0.5)]
    png = best_so_far_png(state)
    assert png is not None and png.startswith(b"\x89PNG")
    assert best_so_far_png(fold(story()[:3])) is None  # nothing completed yet
    two = load_spec(EXAMPLES / "two_objectives.yaml")
    created = CampaignCreated(campaign_id="two", seq=1, actor="user:ana", spec=two)
    assert best_so_far_png(fold([created])) is None


def test_flow_run_names_and_lines_told() -> None:
    events = story()
    assert run_labels(fold(events[:1])) == ("lab-a", ["closedloop", "campaign:lab-a", "engine:auto"])
    assert run_labels(fold(events))[0] == "lab-a · resume 1"
    told = [line for e in events if (line := tell(e)) is not None]
    assert "approval a1 decided by user:ana via cli: edited 1 (x1=2.5) — safer x1" in told
    assert "changed by user:bo: trial_timeout_s=90 — slow reagent" in [t.replace("90.0", "90") for t in told]
    assert "trial 0 completed on sim-branin-1: branin=5.12346" in told
    assert not any("a2" in line for line in told)  # a request is the loop's own warning, not told twice


def test_a_prefect_that_does_not_answer_costs_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    from uuid import uuid4

    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_CLIENT_MAX_RETRIES,
        temporary_settings,
    )

    from flows.prefect.artifacts import ArtifactPublisher

    events = story()
    said: list[str] = []
    caplog.set_level(logging.WARNING, logger="closedloop.prefect")
    # A port nobody listens on (a closed socket's), and no retries: the failure comes at once.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{port}/api", PREFECT_CLIENT_MAX_RETRIES: 0}):
        live = LiveCampaign(events[:5], ArtifactPublisher(CID, uuid4()), lambda line, level: said.append(line),
                            interval_s=0.01)
        with live:
            live.appended(events[5:8])
            wait_for(lambda: caplog.records, 30, interval_s=0.01)
            live.appended(events[8:])  # the loop goes on; the lines are still told
    warnings = [r.getMessage() for r in caplog.records if r.name == "closedloop.prefect"]
    assert len(warnings) == 1 and "the campaign goes on" in warnings[0], warnings
    assert live.state.last_seq == len(events) and live.state.changes == 1
    assert any("changed by user:bo" in line for line in said)
