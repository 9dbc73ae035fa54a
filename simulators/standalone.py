"""Serve one simulated instrument until told to stop: the one way every entry point starts one.

``closedloop sim NAME``, ``closedloop sim --from-campaign C`` (an emulator) and
``python -m simulators.standalone`` (as a lab device would run, without the closedloop CLI)
all call :func:`serve`, which stops cleanly (``offline``) on SIGTERM or SIGINT, and take
simulator options one way, ``--option KEY=VALUE`` (:func:`parse_options`)::

    echo '{"url": "mqtt://user:pass@host:1883", "prefix": "closedloop"}' | \\
        python -m simulators.standalone branin sim-1 --record sim-1.jsonl --option noise_sd=0.1

Run this way, the :class:`~devices.MqttSettings` come as one JSON line on standard input, so
the broker password never shows in ``ps``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from campaigns.assignments import option_value, split_assignment
from campaigns.errors import ClosedLoopError
from devices import MqttSettings

from .catalog import SimulatorOptions
from .instrument import SimInstrument
from .model import SimModel

__all__ = ["StopSignal", "parse_options", "run_standalone", "serve"]


class StopSignal(Protocol):
    """Anything with ``wait()`` and ``set()`` (``threading.Event``): set it to stop."""

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stop is requested."""
        ...

    def set(self) -> None:
        """Request the stop."""
        ...


def parse_options(items: Iterable[str] | None) -> dict[str, Any]:
    """``--option KEY=VALUE`` items as options; a value is read as JSON when it parses
    (``noise_sd=0.1``, ``duration_s=[1, 2]``), and the simulator's options model checks it.

    Raises:
        ValueError: an item that is not KEY=VALUE, or a number too large to hold (one line).
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, value = split_assignment(item)
        out[key] = option_value(value)
    return out


@contextmanager
def _stopping_on_signals(stop: StopSignal) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` while inside (signal handlers belong to the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def serve(
    simulator: str | SimModel,
    device_id: str,
    settings: MqttSettings,
    options: Mapping[str, Any] | SimulatorOptions,
    *,
    record_path: Path | None = None,
    stop: StopSignal | None = None,
    announce: str | None = None,
) -> None:
    """Serve trials as ``device_id`` until SIGTERM, SIGINT or ``stop``, then go ``offline``.

    Args:
        simulator: Catalog name (e.g. ``branin``), or a model (an emulator).
        device_id: The device id to serve as.
        settings: Broker URL and protocol prefix.
        options: Simulator options.
        record_path: Optional JSON lines record of answered results (answers repeats after a restart).
        stop: Set it to stop (default: only a signal stops it).
        announce: A line for standard error once the instrument is online.

    Raises:
        BrokerError: The broker cannot be reached at start.
        SpecError: Unknown simulator.
    """
    stop = threading.Event() if stop is None else stop
    with _stopping_on_signals(stop), SimInstrument(device_id, simulator, options, settings, record_path=record_path):
        if announce:
            print(announce, file=sys.stderr, flush=True)
        stop.wait()


def run_standalone(
    simulator: str,
    device_id: str,
    settings: MqttSettings,
    options: Mapping[str, Any] | SimulatorOptions,
    stop_event: StopSignal,
    *,
    record_path: Path | None = None,
) -> None:
    """:func:`serve` with a stop signal of the caller's (kept for existing callers)."""
    serve(simulator, device_id, settings, options, record_path=record_path, stop=stop_event)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m simulators.standalone``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m simulators.standalone")
    parser.add_argument("simulator")
    parser.add_argument("device_id")
    parser.add_argument("--record", type=Path, default=None)
    parser.add_argument("--option", action="append", metavar="KEY=VALUE", help="simulator option, e.g. noise_sd=0.1")
    args = parser.parse_args(argv)
    try:
        options = parse_options(args.option)
    except ValueError as exc:
        parser.error(f"--option {exc}")
    try:
        settings = MqttSettings.model_validate(json.loads(sys.stdin.readline()))
    except ValueError as exc:  # malformed JSON or settings (pydantic's ValidationError is one)
        print(f"error: standard input: expected the MQTT settings as one JSON line ({_first_line(exc)})",
              file=sys.stderr)
        return 2
    try:
        serve(args.simulator, args.device_id, settings, options, record_path=args.record,
              announce=f"simulator {args.simulator} serving as device {args.device_id}; SIGTERM or Ctrl-C to stop")
    except ClosedLoopError as exc:  # broker unreachable, unknown simulator, bad options: one line
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


if __name__ == "__main__":
    sys.exit(main())
