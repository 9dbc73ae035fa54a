"""Run one simulated instrument until told to stop (``closedloop sim <simulator>``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from devices import MqttSettings

from .catalog import SimulatorOptions
from .instrument import SimInstrument

__all__ = ["StopSignal", "run_standalone"]


class StopSignal(Protocol):
    """Anything with ``wait()`` that returns once stop is requested (``threading.Event``)."""

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stop is requested."""
        ...


def run_standalone(
    simulator: str,
    device_id: str,
    settings: MqttSettings,
    options: Mapping[str, Any] | SimulatorOptions,
    stop_event: StopSignal,
    *,
    record_path: Path | None = None,
) -> None:
    """Serve trials as ``device_id`` until ``stop_event`` is set, then go ``offline``.

    Args:
        simulator: Catalog name, e.g. ``branin``.
        device_id: The device id to serve as.
        settings: Broker URL and protocol prefix.
        options: Simulator options.
        stop_event: Set it (e.g. from a signal handler) to stop.
        record_path: Optional JSON lines record of answered results.

    Raises:
        BrokerError: The broker cannot be reached at start.
        SpecError: Unknown simulator.
    """
    with SimInstrument(device_id, simulator, options, settings, record_path=record_path):
        stop_event.wait()
