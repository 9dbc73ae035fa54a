"""Protocol v1 payloads: what parses, what is rejected and why, and nothing else escapes."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import devices
from campaigns.errors import BrokerError, DeviceMessageError
from devices import (
    MAX_PAYLOAD_BYTES,
    ConnectionLost,
    ConnectionRestored,
    Delivery,
    DeviceStatus,
    Measurement,
    MqttSettings,
    ResultReceived,
    RunTrial,
    Topics,
    TrialResult,
    encode,
    parse_broker_url,
    parse_request,
    parse_result,
    parse_status,
    redact_url,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def result_payload(**changes: Any) -> bytes:
    body: dict[str, Any] = {
        "kind": "trial_result",
        "request_id": "r-1",
        "trial_id": "t-1",
        "status": "completed",
        "measurements": {"branin": 1.5},
    }
    body.update(changes)
    return json.dumps(body).encode()


def test_all_is_exported() -> None:
    assert sorted(devices.__all__) == sorted(set(devices.__all__))
    for name in devices.__all__:
        assert hasattr(devices, name), name


def test_result_with_number_and_mean_sem_and_extra_fields() -> None:
    result = parse_result(
        result_payload(measurements={"a": 2, "b": {"mean": 1.25, "sem": 0.5, "n": 3}}, fw="1.2")
    )
    assert result.measurements == {
        "a": Measurement(mean=2.0, sem=None),
        "b": Measurement(mean=1.25, sem=0.5),
    }


def test_failed_result_needs_error_only() -> None:
    result = parse_result(result_payload(status="failed", measurements={}, error="lamp died"))
    assert (result.status, result.error) == ("failed", "lamp died")


def test_encode_round_trips() -> None:
    result = TrialResult(
        request_id="r", trial_id="t", status="completed",
        measurements={"y": Measurement(mean=-3.5, sem=0.1), "z": Measurement(mean=1.0)},
    )
    assert parse_result(encode(result)) == result
    assert b"null" not in encode(result)
    request = RunTrial(request_id="r", campaign_id="c", trial_id="t",
                       parameters={"x1": 0.5, "n": 3, "colour": "red", "flag": True})
    assert parse_request(encode(request)) == request
    status = DeviceStatus(state="idle", device_id="d1", measures=["y"])
    assert parse_status(encode(status)) == status


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'"text"', "not an object"),
        (result_payload(kind="run_trial"), "unknown kind"),
        (json.dumps({"request_id": "r"}).encode(), "'kind' is missing"),
        (b'{"kind":"trial_result","request_id":"r","trial_id":"t","status":"completed",'
         b'"measurements":{"y":NaN}}', "NaN is not valid JSON"),
        (b'{"kind":"trial_result","request_id":"r","trial_id":"t","status":"completed",'
         b'"measurements":{"y":-Infinity}}', "-Infinity is not valid JSON"),
        (b'{"kind":"trial_result","request_id":"r","trial_id":"t","status":"completed",'
         b'"measurements":{"y":1e999}}', "finite"),
        (result_payload(measurements={"y": True}), "boolean"),
        (result_payload(measurements={"y": {"mean": False}}), "boolean"),
        (result_payload(measurements={"y": "1.5"}), "measurements.y"),
        (result_payload(measurements={"y": {"mean": 1.0, "sem": -0.1}}), "sem"),
        (result_payload(measurements={}), "at least one measurement"),
        (result_payload(status="failed", measurements={}), "error"),
        (result_payload(status="done"), "status"),
        (result_payload(request_id=7), "request_id"),
        (json.dumps({"kind": "trial_result", "trial_id": "t", "status": "completed",
                     "measurements": {"y": 1}}).encode(), "request_id: Field required"),
        (b"{" + b" " * MAX_PAYLOAD_BYTES + b"}", "over the"),
    ],
)
def test_bad_results_are_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(DeviceMessageError) as caught:
        parse_result(payload)
    assert reason in caught.value.message
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"state": "sleeping", "device_id": "d", "measures": []}, "state"),
        ({"state": "idle", "measures": []}, "device_id"),
        ({"state": "idle", "device_id": "d"}, "measures"),
        ({"state": "idle", "device_id": "d", "measures": "y"}, "measures"),
    ],
)
def test_bad_statuses_are_rejected(body: dict[str, Any], reason: str) -> None:
    with pytest.raises(DeviceMessageError, match=reason):
        parse_status(json.dumps(body).encode())


def test_topics_build_and_parse() -> None:
    topics = Topics("lab/closedloop")
    assert topics.results("d1") == "lab/closedloop/devices/d1/results"
    assert topics.parse("lab/closedloop/devices/d1/results") == ("d1", "results")
    assert Topics().parse("closedloop/devices/hplc-2/status") == ("hplc-2", "status")
    for bad in ["closedloop/devices/d1/other", "other/devices/d1/status",
                "closedloop/devices/status", "lab/closedloop/devices/a/b/status"]:
        with pytest.raises(DeviceMessageError):
            topics.parse(bad)
    for bad_id in ["a/b", "a+", "#", ""]:
        with pytest.raises(DeviceMessageError):
            topics.requests(bad_id)
    with pytest.raises(DeviceMessageError):
        Topics("bad/#")


def test_broker_urls_and_redaction() -> None:
    address = parse_broker_url("mqtts://alice:s%40cret@broker.lab:9999")
    assert (address.host, address.port, address.tls, address.username) == (
        "broker.lab", 9999, True, "alice")
    assert address.password is not None and address.password.get_secret_value() == "s@cret"
    assert parse_broker_url("mqtts://broker.lab").port == 8883
    assert parse_broker_url("mqtt://broker.lab").port == 1883
    assert redact_url("mqtt://alice:hunter2@h:1883") == "mqtt://alice:***@h:1883"
    assert redact_url("mqtt://alice:p@ss@h") == "mqtt://alice:***@h"
    for bad in ["http://h", "mqtt://", "mqtt://u:hunter2@h:notaport", "mqtt://u:hunter2@h/x"]:
        with pytest.raises(BrokerError) as caught:
            parse_broker_url(bad)
        assert "hunter2" not in str(caught.value)


def test_settings_never_show_the_password() -> None:
    settings = MqttSettings(url="mqtt://alice:hunter2@h:1883")
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)
    with pytest.raises(ValueError) as caught:
        MqttSettings(url="mqtt://alice:hunter2@h:bad")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ValueError):
        MqttSettings(url="mqtt://h", extra_field=1)  # type: ignore[call-arg]


def test_settings_protocol_and_session_expiry() -> None:
    settings = MqttSettings(url="mqtt://h")
    assert (settings.protocol, settings.clean_session) == (4, False)
    assert settings.session_expiry_s == 7 * 24 * 3600
    assert MqttSettings(url="mqtt://h", protocol=5, session_expiry_s=0).protocol == 5
    for bad in [{"protocol": 3}, {"protocol": "5"}, {"session_expiry_s": -1},
                {"session_expiry_s": 2**32}]:
        with pytest.raises(ValueError):
            MqttSettings(url="mqtt://h", **bad)


def test_hub_events_carry_their_delivery() -> None:
    delivery = Delivery(message_id=7, qos=1, connection=3)
    result = parse_result(result_payload())
    event = ResultReceived(device_id="d", result=result, received_at=NOW, delivery=delivery)
    assert ResultReceived.model_validate_json(event.model_dump_json()) == event
    assert ResultReceived(device_id="d", result=result, received_at=NOW).delivery is None
    lost = ConnectionLost(detail="Unspecified error", at=NOW)
    back = ConnectionRestored(down_s=1.0, at=NOW, session_present=True)
    assert (lost.kind, back.kind) == ("connection_lost", "connection_restored")
    with pytest.raises(ValueError):
        ConnectionRestored(down_s=1.0, at=NOW)  # type: ignore[call-arg]


def test_simulators_all_is_exported() -> None:
    import simulators

    for name in simulators.__all__:
        assert hasattr(simulators, name), name


def test_execution_counts_survive_torn_lines(tmp_path: Path) -> None:
    from simulators import executions_path, read_completions, read_executions

    record = tmp_path / "sim.jsonl"
    assert (read_executions(record), read_completions(record)) == ({}, {})
    executions_path(record).write_bytes(
        b'{"request_id": "r1", "trial_id": "t1"}\n{"request_id": "r1", "trial_id": "t1"}\n'
        b'{"request_id": "r2", "trial_id": "t2"}\n{"request_id": "r3", "tri'
    )
    record.write_bytes(encode(parse_result(result_payload(request_id="r1"))) + b"\n{\"requ")
    assert read_executions(record) == {"r1": 2, "r2": 1}
    assert read_completions(record) == {"r1": 1}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
result_like = st.fixed_dictionaries(
    {},
    optional={
        "kind": st.sampled_from(["trial_result", "run_trial"]) | json_values,
        "request_id": st.text(max_size=5) | json_values,
        "trial_id": st.text(max_size=5) | json_values,
        "status": st.sampled_from(["completed", "failed"]) | json_values,
        "measurements": st.dictionaries(
            st.text(max_size=5),
            st.floats() | st.booleans() | st.integers()
            | st.fixed_dictionaries({"mean": json_values}, optional={"sem": json_values}),
            max_size=3,
        ) | json_values,
        "error": st.text(max_size=5) | json_values,
        "state": st.sampled_from(["idle", "busy", "offline"]) | json_values,
        "device_id": st.text(max_size=5) | json_values,
        "measures": st.lists(st.text(max_size=5), max_size=3) | json_values,
    },
)


def _parses_or_rejects(payload: bytes) -> None:
    for parse in (parse_result, parse_status, parse_request):
        try:
            model = parse(payload)
        except DeviceMessageError as exc:
            assert exc.message and "\n" not in exc.message
            continue
        if isinstance(model, TrialResult):
            for measurement in model.measured.values():
                assert math.isfinite(measurement.mean)
                assert measurement.sem is None or measurement.sem >= 0
            assert set(model.measured) | set(model.not_measured) == set(model.measurements)
            assert model.measurements or model.status == "failed"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_reject(payload: bytes) -> None:
    _parses_or_rejects(payload)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values | result_like)
def test_arbitrary_json_parses_or_rejects(value: Any) -> None:
    # allow_nan: Python's json emits NaN/Infinity literals, which the parser must refuse.
    _parses_or_rejects(json.dumps(value, allow_nan=True).encode())
