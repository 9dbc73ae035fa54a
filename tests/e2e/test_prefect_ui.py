"""The campaign as a lab follows it in the Prefect UI, read through Prefect's API while it runs:
the flow run's name and tags, its logs (an approval waiting, a change), and its artifacts
(progress, one table row per trial, the summary) matching the campaign's log."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from campaigns import fold
from flows.prefect.artifacts import artifact_key
from tests.e2e.cli import read_events, run, shared_env, start, write_spec
from tests.e2e.test_approvals import SPEC, waiting
from tests.e2e.test_crash_resume import wait_for

CAMPAIGN = "ui-branin"
# Batch-synchronous, approval of every batch: the campaign waits for a person (and stands still)
# with nothing completed, then again with its first batch completed.
UI_SPEC: dict[str, Any] = {**SPEC, "name": CAMPAIGN, "dispatch": "batch", "budget": {"max_trials": 4}}


def _flow_run(client: Any) -> Any:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"campaign:{CAMPAIGN}"])))
    campaign_runs = [r for r in runs if r.parameters.get("campaign_id") == CAMPAIGN]
    return campaign_runs[0] if len(campaign_runs) == 1 and campaign_runs[0].name == CAMPAIGN else None


def _logs(client: Any, flow_run_id: Any) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    return [entry.message for entry in client.read_logs(
        log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)]


def _artifacts(client: Any) -> dict[str, Any]:
    from prefect.client.schemas.filters import (
        ArtifactCollectionFilter,
        ArtifactCollectionFilterKey,
    )

    keys = [artifact_key(CAMPAIGN, what) for what in ("progress", "trials", "summary", "best")]
    latest = client.read_latest_artifacts(
        artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=keys)))
    return {a.key.rsplit("-", 1)[1]: a for a in latest}


def _as_of(artifact: Any) -> int:
    return int(artifact.description.rsplit("as of event ", 1)[1].rstrip(")"))


def _current(client: Any, env: dict[str, str]) -> dict[str, Any] | None:
    """The artifacts once each says it shows the log as it stands (the loop waits for a person)."""
    last = read_events(env, CAMPAIGN)[-1].seq
    found = _artifacts(client)
    return found if {"progress", "trials", "summary"} <= found.keys() and all(
        _as_of(found[k]) == last for k in ("progress", "trials", "summary")) else None


@pytest.mark.timeout(600)
def test_a_running_campaign_in_prefect(tmp_path: Path, prefect_env: dict[str, str], mongo_uri: str,
                                       mosquitto_url: str) -> None:
    from prefect.client.orchestration import get_client

    env = shared_env(tmp_path / "home", prefect_env, mongo_uri, mosquitto_url)
    spec = write_spec(tmp_path / "spec.yaml", UI_SPEC)
    orchestrator = start(["run", str(spec), "--quiet"], env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with get_client(sync_client=True) as client:
            wait_for(lambda: waiting(CAMPAIGN, env, ["0", "1"]), 240, "the first approval request")
            out = run(["change", CAMPAIGN, "--trial-timeout", "90", "--reason", "the reagent is slow", "--by", "ana"],
                      env)
            assert out.returncode == 0, out.stderr
            out = run(["approve", CAMPAIGN, "--trial", "0", "--trial", "1", "--reason", "fine", "--by", "ana"], env)
            assert out.returncode == 0, out.stderr
            wait_for(lambda: waiting(CAMPAIGN, env, ["2", "3"]), 240, "the second batch's approval request")

            # The flow run: named after the campaign, tagged with it, running.
            flow_run = wait_for(lambda: _flow_run(client), 60, "the campaign's flow run, named and tagged")
            assert {"closedloop", f"campaign:{CAMPAIGN}", "engine:sobol"} <= set(flow_run.tags)
            assert flow_run.state.is_running()

            # Its logs: the approval request (the loop's warning) and the change (from the log).
            # Prefect's log handler ships records in batches: waited for until both are in.
            logs = wait_for(lambda: (m := _logs(client, flow_run.id)) and any("changed by user:ana" in x for x in m)
                            and any("approval a0 decided by user:ana" in x for x in m) and m, 60,
                            "the change and the decision in the flow run's logs")
            assert any("approval a0 waits for a person" in m for m in logs), logs
            assert any("trial_timeout_s" in m and "the reagent is slow" in m for m in logs), logs
            assert any("approval a0 decided by user:ana" in m for m in logs), logs

            # Its artifacts, as of the log's last event: progress = completed / budget, one row
            # per trial with the log's values.
            artifacts = wait_for(lambda: _current(client, env), 60, "artifacts as of the log's last event")
            state = fold(read_events(env, CAMPAIGN))
            assert state.count("completed") == 2
            assert artifacts["progress"].data == pytest.approx(100 * 2 / 4)
            rows = json.loads(artifacts["trials"].data)
            assert [r["trial"] for r in rows] == list(state.trials)
            for row in rows:
                t = state.trials[row["trial"]]
                assert row["status"] == t.status
                assert row["x1"] == pytest.approx(t.parameters["x1"], rel=1e-5)
                value = t.measurements["branin"].mean if "branin" in t.measurements else None
                assert row["branin"] == (None if value is None else pytest.approx(value, rel=1e-5))
                assert row["device"] == t.device_id
            summary = artifacts["summary"].data
            assert f"closedloop approve {CAMPAIGN} --approval a2" in summary
            assert "**2** of 4 trials completed" in summary
            assert artifacts["best"].data.startswith("data:image/png;base64,")

        out = run(["approve", CAMPAIGN, "--trial", "2", "--trial", "3", "--reason", "fine", "--by", "ana"], env)
        assert out.returncode == 0, out.stderr
        _, stderr = orchestrator.communicate(timeout=240)
        assert orchestrator.returncode == 0, stderr
        # The terminal shows each warning once (the Prefect logs have their own copy).
        assert stderr.count("approval a0 waits for a person") == 1, stderr
        assert "Prefect's view" not in stderr  # no publication failed
    finally:
        if orchestrator.poll() is None:
            orchestrator.kill()
            orchestrator.communicate()
