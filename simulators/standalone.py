"""Run one simulated instrument until told to stop (``closedloop sim <simulator>``).

Also runnable without the closedloop CLI, as a lab device would be::

    echo '{"url": "mqtt://user:pass@host:1883", "prefix": "closedloop"}' | \
        python -m simulators.standalone branin sim-1 --record sim-1.jsonl --options '{}'

The :class:`~devices.MqttSettings` come as one JSON line on standard input, so the broker
password never shows in ``ps``. SIGTERM or SIGINT stops it cleanly (``offline``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m simulators.standalone``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m simulators.standalone")
    parser.add_argument("simulator")
    parser.add_argument("device_id")
    parser.add_argument("--record", type=Path, default=None)
    parser.add_argument("--options", default="{}", help="simulator options as a JSON object")
    args = parser.parse_args(argv)
    settings = MqttSettings.model_validate(json.loads(sys.stdin.readline()))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    run_standalone(args.simulator, args.device_id, settings, json.loads(args.options), stop,
                   record_path=args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
