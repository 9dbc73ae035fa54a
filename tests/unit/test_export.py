"""Exports: one row per trial, with parameters, means and SEMs, from a folded state."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from campaigns import (
    CampaignCreated,
    CampaignState,
    Measurement,
    SuggestedTrial,
    TrialCompleted,
    TrialDispatched,
    TrialFailed,
    TrialsSuggested,
    fold,
    parse_spec,
)
from storage import export_columns, export_rows, write_csv, write_json

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def _at(seq: int) -> dict[str, Any]:
    return {"campaign_id": "c-x", "seq": seq, "time": T0 + timedelta(minutes=seq)}


@pytest.fixture
def state() -> CampaignState:
    """Four trials: completed, failed, running, and suggested only."""
    spec = parse_spec(
        {
            "name": "export",
            "parameters": [
                {"name": "x1", "type": "float", "bounds": [0.0, 1.0]},
                {"name": "solvent", "type": "choice", "values": ["water", "ethanol"]},
            ],
            "objectives": [{"name": "yield_", "minimize": False}],
            "outcome_constraints": ["purity >= 0.5"],
            "budget": {"max_trials": 4},
            "devices": [{"id": "dev-1", "measures": ["yield_", "purity"]}],
        }
    )
    trials = [
        SuggestedTrial(trial_id=f"t{i}", parameters={"x1": i / 10, "solvent": "water"}, generator="sobol")
        for i in range(4)
    ]
    return fold(
        [
            CampaignCreated(**_at(1), actor="user:ada", spec=spec),
            TrialsSuggested(**_at(2), actor="optimizer", trials=trials),
            TrialDispatched(**_at(3), actor="orchestrator", trial_id="t0", device_id="dev-1", request_id="r0"),
            TrialDispatched(**_at(4), actor="orchestrator", trial_id="t1", device_id="dev-1", request_id="r1"),
            TrialDispatched(**_at(5), actor="orchestrator", trial_id="t2", device_id="dev-1", request_id="r2"),
            TrialCompleted(
                **_at(6),
                actor="device:dev-1",
                trial_id="t0",
                device_id="dev-1",
                request_id="r0",
                measurements={"yield_": Measurement(mean=0.8, sem=0.05), "purity": Measurement(mean=0.9)},
            ),
            TrialFailed(**_at(7), actor="orchestrator", trial_id="t1", reason="timeout", detail="no result in 60 s"),
        ]
    )


def test_one_row_per_trial_with_status_times_parameters_and_metrics(state: CampaignState) -> None:
    rows = export_rows(state)
    assert [(r["trial_id"], r["index"], r["status"]) for r in rows] == [
        ("t0", 0, "completed"),
        ("t1", 1, "failed"),
        ("t2", 2, "running"),
        ("t3", 3, "suggested"),
    ]
    done, failed, running, suggested = rows
    assert done["yield_"] == 0.8 and done["yield_.sem"] == 0.05
    assert done["purity"] == 0.9 and done["purity.sem"] is None
    assert done["param.x1"] == 0.0 and done["param.solvent"] == "water"
    assert done["device_id"] == "dev-1" and done["request_id"] == "r0"
    assert done["suggested_at"] == "2026-03-01T12:02:00+00:00"
    assert done["dispatched_at"] == "2026-03-01T12:03:00+00:00"
    assert done["finished_at"] == "2026-03-01T12:06:00+00:00"
    assert failed["failure_reason"] == "timeout" and failed["failure_detail"] == "no result in 60 s"
    assert failed["yield_"] is None and failed["finished_at"] == "2026-03-01T12:07:00+00:00"
    assert running["finished_at"] is None and running["dispatched_at"] == "2026-03-01T12:05:00+00:00"
    assert suggested["device_id"] is None and suggested["param.x1"] == 0.3
    assert all(list(r) == export_columns(state) for r in rows)
    assert export_columns(state)[-6:] == ["param.x1", "param.solvent", "yield_", "yield_.sem", "purity", "purity.sem"]


def test_csv_has_a_header_and_one_line_per_trial(state: CampaignState, tmp_path: Path) -> None:
    path = tmp_path / "trials.csv"
    write_csv(state, path)
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert rows[0]["yield_"] == "0.8" and rows[1]["yield_"] == ""
    assert rows[1]["failure_reason"] == "timeout"
    stream = io.StringIO()
    write_csv(state, stream)
    assert stream.getvalue() == path.read_text(encoding="utf-8")


def test_json_holds_campaign_spec_and_trials(state: CampaignState, tmp_path: Path) -> None:
    path = tmp_path / "trials.json"
    write_json(state, path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["campaign_id"] == "c-x"
    assert doc["spec"]["name"] == "export"
    assert doc["trials"] == export_rows(state)


def test_an_empty_state_exports_a_header_only() -> None:
    empty = CampaignState()
    assert export_rows(empty) == []
    stream = io.StringIO()
    write_csv(empty, stream)
    assert stream.getvalue().splitlines() == [",".join(export_columns(empty))]


def test_a_late_result_is_exported_beside_the_failure(state: CampaignState) -> None:
    from campaigns import LateResultRecorded, apply

    apply(state, LateResultRecorded(**_at(8), actor="device:dev-1", trial_id="t1", device_id="dev-1",
                                    request_id="r1", measurements={"yield_": Measurement(mean=0.4)}))
    rows = {r["trial_id"]: r for r in export_rows(state)}
    assert rows["t1"]["status"] == "failed" and rows["t1"]["late.yield_"] == 0.4 and rows["t1"]["yield_"] is None
    assert rows["t0"]["late.yield_"] is None and export_columns(state)[-1] == "late.yield_"
