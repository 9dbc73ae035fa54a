"""Old event shapes still read: what an earlier version accepted and logged folds under this one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from campaigns import CampaignSpec, SpecError, event_from_doc, fold, parse_spec

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy"


def test_every_legacy_log_parses_and_folds_without_anomalies() -> None:
    for log in sorted(LEGACY.glob("*.jsonl")):
        docs = [json.loads(line) for line in log.read_text().splitlines()]
        state = fold(event_from_doc(d) for d in docs)
        assert state.last_seq == len(docs) and state.anomalies == 0, log.name
        assert state.instance is not None  # derived for logs written before instances existed


def test_a_logged_spec_with_bounds_now_refused_still_folds() -> None:
    """Issue 14 item 11 refuses bounds beyond ±1e15 in new specs; a campaign an older version
    created with them must still fold (and a new spec with them is refused)."""
    doc = json.loads((LEGACY / "finished.jsonl").read_text().splitlines()[0])
    doc["spec"]["parameters"][0]["bounds"] = [-1e308, 1e308]
    state = fold([event_from_doc(doc)])
    assert state.spec is not None and state.spec.parameters[0].bounds == (-1e308, 1e308)
    with pytest.raises(SpecError, match="1e15"):
        parse_spec(doc["spec"], "spec")
    assert isinstance(state.spec, CampaignSpec)
