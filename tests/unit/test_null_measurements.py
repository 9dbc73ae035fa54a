"""``null`` measurements (protocol v1): a metric not measured, never a number."""

from __future__ import annotations

import json
from typing import Any

import pytest

from campaigns.errors import DeviceMessageError
from devices import Measurement, encode, parse_result


def payload(measurements: Any, **changes: Any) -> bytes:
    body = {"kind": "trial_result", "request_id": "r-1", "trial_id": "t-1", "status": "completed",
            "measurements": measurements, **changes}
    return json.dumps(body).encode()


def test_null_metric_parses_as_not_measured() -> None:
    """Issue 14 item 4: docs/protocol.md allows ``"metric": null``; the parser rejected the whole
    result. Now the result parses, the null metric has no value, the others keep theirs."""
    result = parse_result(payload({"yield_pct": 81.5, "purity": None, "colour": {"mean": 2.0, "sem": None}}))
    assert result.measured == {"yield_pct": Measurement(mean=81.5), "colour": Measurement(mean=2.0)}
    assert result.not_measured == ["purity"]
    assert "purity" not in result.measured


def test_every_metric_null_is_still_a_result() -> None:
    """Issue 14 item 4: a completed result whose only metric is null is a well-formed answer (the
    device could not measure): it reaches the loop, which fails the trial with a reason."""
    result = parse_result(payload({"yield_pct": None}))
    assert result.measured == {} and result.not_measured == ["yield_pct"]


@pytest.mark.parametrize(("measurements", "reason"), [
    ({}, "at least one measurement"),
    ({"y": {"mean": None}}, "measurements.y.mean"),
    ({"y": {"sem": 0.1}}, "measurements.y.mean"),
    ({"y": "null"}, "measurements.y"),
])
def test_what_null_does_not_excuse(measurements: dict[str, Any], reason: str) -> None:
    """Issue 14 item 4: only a metric's whole value may be null; a null mean is still invalid."""
    with pytest.raises(DeviceMessageError) as caught:
        parse_result(payload(measurements))
    assert reason in caught.value.message


def test_null_survives_encode() -> None:
    """Issue 14 item 4: a device built on our models sends a metric it did not measure as null."""
    result = parse_result(payload({"a": None, "b": 1.0}))
    assert json.loads(encode(result))["measurements"] == {"a": None, "b": {"mean": 1.0}}
    assert parse_result(encode(result)) == result


def test_a_trial_completed_of_an_old_log_still_reads() -> None:
    """Old logs fold: a TrialCompleted written before ``not_measured`` existed reads as none."""
    from campaigns import event_from_doc

    doc = {"schema_version": 1, "campaign_id": "c", "seq": 5, "time": "2026-01-02T03:04:05Z", "actor": "device:d",
           "kind": "TrialCompleted", "trial_id": "0", "device_id": "d", "request_id": "r-0",
           "measurements": {"y": {"mean": 1.0, "sem": None}}}
    event = event_from_doc(doc)
    assert event.not_measured == [] and event.measurements["y"].mean == 1.0  # type: ignore[union-attr]
