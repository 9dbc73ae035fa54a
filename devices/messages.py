"""Payloads of MQTT protocol v1 between the orchestrator and lab devices.

Every payload is one JSON object, UTF-8, at most :data:`MAX_PAYLOAD_BYTES`. The parsers here
are the only way bytes from the network become models: they either return a valid model or
raise :class:`~campaigns.errors.DeviceMessageError` whose message is one line saying why.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from campaigns.errors import DeviceMessageError

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "PROTOCOL_VERSION",
    "DeviceStatus",
    "Measurement",
    "RunTrial",
    "TrialResult",
    "encode",
    "parse_request",
    "parse_result",
    "parse_status",
]

PROTOCOL_VERSION = 1
MAX_PAYLOAD_BYTES = 256 * 1024

# Protocol payloads tolerate unknown fields (extra="ignore"), the one exception to the house
# extra="forbid": instrument firmware written by users may add its own fields (a firmware
# version, a raw reading), and a newer minor revision of the protocol may add optional ones.
# Rejecting them would break devices for no gain; the fields we need are still required.
# `strict=True` keeps JSON types honest: "1.5" is not a number and true is not 1.
_WIRE = ConfigDict(extra="ignore", frozen=True, strict=True, allow_inf_nan=False)

ParameterValue = float | int | str | bool


class Measurement(BaseModel):
    """One measured metric: a mean and, when the device knows it, its standard error.

    Attributes:
        mean: The measured value; finite.
        sem: Standard error of the mean; ``None`` when unknown (noise to be inferred).
    """

    model_config = _WIRE

    mean: float = Field(description="The measured value: a finite JSON number (not a boolean, not a string).")
    sem: float | None = Field(
        default=None, ge=0.0,
        description="Standard error of the mean, >= 0; absent or null when unknown (the noise is then inferred).",
    )

    @field_validator("mean", "sem", mode="before")
    @classmethod
    def _no_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("a boolean is not a number")
        return value


class DeviceStatus(BaseModel):
    """Retained status a device publishes on ``{prefix}/devices/{device_id}/status``.

    Attributes:
        state: ``idle`` (ready for a trial), ``busy`` or ``offline`` (its last will).
        device_id: The device's id; must match the topic.
        measures: Names of the metrics the device measures.
    """

    model_config = _WIRE

    state: Literal["idle", "busy", "offline"] = Field(
        description="idle: ready for a trial (only an idle device is sent one); busy: running one; "
        "offline: gone (the device's last will, or said before a clean shutdown).",
    )
    device_id: str = Field(min_length=1, description="The device's id; must equal the device id in the topic.")
    measures: list[str] = Field(
        description="Names of the metrics the device reports. A device gets trials only from a campaign whose "
        "every objective and constrained metric is named here, and only these metrics of its results are recorded.",
    )


class RunTrial(BaseModel):
    """Request from the orchestrator to run one trial, on ``.../{device_id}/requests``.

    Attributes:
        kind: Always ``run_trial``.
        request_id: Unique per request; a device answers a repeated one from its store.
        campaign_id: The campaign the trial belongs to.
        trial_id: The trial to run.
        parameters: Parameter name to value.
    """

    model_config = _WIRE

    kind: Literal["run_trial"] = Field(default="run_trial", description='Always "run_trial"; required on the wire.')
    request_id: str = Field(
        min_length=1,
        description="Opaque, unique per attempt of a trial across every campaign that may share the device. "
        "The same id with the same campaign_id, trial_id and parameters is a repeat: answer it from your store.",
    )
    campaign_id: str = Field(min_length=1, description="The campaign the trial belongs to (its name, not unique).")
    trial_id: str = Field(
        min_length=1, description='The trial to run: always a JSON string (e.g. "3"); copy it into the result.',
    )
    parameters: dict[str, ParameterValue] = Field(
        description="Parameter name to value: a finite number, a string or a boolean.",
    )

    @field_validator("parameters")
    @classmethod
    def _finite(cls, value: dict[str, ParameterValue]) -> dict[str, ParameterValue]:
        for name, item in value.items():
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"parameter {name!r} is not finite")
        return value


class TrialResult(BaseModel):
    """A device's answer to a :class:`RunTrial`, on ``.../{device_id}/results``.

    On the wire a measurement is a number, ``{"mean": x, "sem": s}``, or ``null``: the device
    did not measure that metric this time (a reading it could not take). After parsing a
    measurement is a :class:`Measurement`, or ``None`` for ``null``: never a number.

    Attributes:
        kind: Always ``trial_result``.
        request_id: The request this answers.
        trial_id: The trial this answers.
        status: ``completed`` (with at least one metric, measured or ``null``) or ``failed``
            (with an error).
        measurements: Metric name to measurement; ``None`` for a metric not measured.
        error: Why the trial failed; required when ``status`` is ``failed``.
    """

    model_config = _WIRE

    kind: Literal["trial_result"] = Field(
        default="trial_result", description='Always "trial_result"; required on the wire.',
    )
    request_id: str = Field(min_length=1, description="The request_id of the request this answers, copied.")
    trial_id: str = Field(min_length=1, description="The trial_id of the request this answers, copied.")
    status: Literal["completed", "failed"] = Field(
        description="completed: with at least one metric in measurements; failed: with an error.",
    )
    measurements: dict[str, Measurement | None] = Field(
        default_factory=dict,
        description='Metric name to a number (the mean), {"mean": m, "sem": s}, or null (not measured this time).',
    )
    error: str | None = Field(default=None, description="Why the trial failed, one line; required when failed.")

    @property
    def measured(self) -> dict[str, Measurement]:
        """The metrics the device measured (``null`` ones left out)."""
        return {k: m for k, m in self.measurements.items() if m is not None}

    @property
    def not_measured(self) -> list[str]:
        """The metrics the device reported as ``null``: not measured this time."""
        return [k for k, m in self.measurements.items() if m is None]

    @field_validator("measurements", mode="before")
    @classmethod
    def _numbers_to_measurements(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        out: dict[Any, Any] = {}
        for name, item in value.items():
            if isinstance(item, bool):
                raise ValueError(f"measurement {name!r} is a boolean, not a number")
            # null stays None (not measured); a bare number is the mean.
            out[name] = {"mean": item} if isinstance(item, int | float) else item
        return out

    @model_validator(mode="after")
    def _consistent(self) -> TrialResult:
        if self.status == "completed" and not self.measurements:
            raise ValueError("a completed result must carry at least one measurement (a number, or null if not measured)")
        if self.status == "failed" and not self.error:
            raise ValueError("a failed result must say why in 'error'")
        return self


_M = TypeVar("_M", bound=BaseModel)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _load_object(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise DeviceMessageError(
            f"payload is {len(payload)} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit",
            "send measurements, not raw data; store large data elsewhere and send a link",
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DeviceMessageError(
            f"payload is not UTF-8 ({exc.reason} at byte {exc.start})", "encode JSON as UTF-8"
        ) from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DeviceMessageError(f"payload is not JSON: {reason}", "send one JSON object") from None
    if not isinstance(data, dict):
        raise DeviceMessageError(
            f"payload is a JSON {type(data).__name__}, not an object", "send one JSON object"
        )
    return data


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(parts)
    text = "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
    return " ".join(text.split())


def _parse(payload: bytes, model: type[_M], kind: str | None, what: str) -> _M:
    data = _load_object(payload)
    if kind is not None:
        got = data.get("kind")
        if got is None:
            raise DeviceMessageError(f"{what}: field 'kind' is missing", f'set "kind": "{kind}"')
        if got != kind:
            shown = repr(got)[:60]
            raise DeviceMessageError(f"{what}: unknown kind {shown}", f'expected "kind": "{kind}"')
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise DeviceMessageError(f"{what}: {_describe(exc)}", "see docs/protocol.md") from None


def parse_result(payload: bytes) -> TrialResult:
    """Parse a ``results`` payload.

    Args:
        payload: The raw MQTT payload.

    Returns:
        The validated result.

    Raises:
        DeviceMessageError: The payload breaks protocol v1; the message says why in one line.
    """
    return _parse(payload, TrialResult, "trial_result", "invalid trial_result")


def parse_status(payload: bytes) -> DeviceStatus:
    """Parse a ``status`` payload.

    Args:
        payload: The raw MQTT payload.

    Returns:
        The validated status.

    Raises:
        DeviceMessageError: The payload breaks protocol v1; the message says why in one line.
    """
    return _parse(payload, DeviceStatus, None, "invalid status")


def parse_request(payload: bytes) -> RunTrial:
    """Parse a ``requests`` payload (used on the device side).

    Args:
        payload: The raw MQTT payload.

    Returns:
        The validated request.

    Raises:
        DeviceMessageError: The payload breaks protocol v1; the message says why in one line.
    """
    return _parse(payload, RunTrial, "run_trial", "invalid run_trial")


def encode(model: BaseModel) -> bytes:
    """Encode a protocol model as a compact UTF-8 JSON payload.

    Unset optional fields (``error``, ``sem``) are left out rather than sent as ``null``; a
    metric not measured stays ``null`` (it is a value of ``measurements``, not a field).

    Args:
        model: A :class:`DeviceStatus`, :class:`RunTrial` or :class:`TrialResult`.

    Returns:
        The payload bytes.
    """
    return model.model_dump_json(exclude_none=True).encode("utf-8")


def parse_status_of(device_id: str, payload: bytes) -> DeviceStatus:
    """A status read from ``device_id``'s status topic: parsed, and naming that device.

    Raises:
        DeviceMessageError: Not a valid status, or it names another device than its topic.
    """
    status = parse_status(payload)
    if status.device_id != device_id:
        raise DeviceMessageError(
            f"invalid status: device_id {status.device_id[:60]!r} does not match the topic",
            "publish a device's status on its own topic",
            device_id=device_id,
        )
    return status
