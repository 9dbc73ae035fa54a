"""A spec's simulated devices checked against the simulator catalog, wherever a spec is
accepted (a new campaign, a change, a replay)."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError

from campaigns import CampaignSpec
from simulators import SIMULATORS

__all__ = ["check_spec_devices"]


def check_spec_devices(spec: CampaignSpec) -> None:
    """Check the spec's devices against the simulator catalog (unknown simulator, bad options,
    metrics no device measures). Raises SpecError."""

    def validate(name: str, options: Mapping[str, object]) -> list[str]:
        info = SIMULATORS[name]
        try:
            info.options_model.model_validate(dict(options))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"{where}: {first['msg']}") from None
        return list(info.measures(options))

    def inputs(name: str, options: Mapping[str, object]) -> list[str]:
        return list(SIMULATORS[name].inputs(options))

    spec.check_devices(SIMULATORS, validate, inputs)
