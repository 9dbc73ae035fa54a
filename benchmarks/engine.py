"""The engine's own cost per trial, apart from MQTT, MongoDB, the optimizer and the instruments.

Runs a Branin campaign of ``--trials`` Sobol trials end to end through ``CampaignLoop`` —
suggest, log, dispatch, simulated run, result, log — on the engine's in-memory backends
(``MemoryEventLog``, ``MemoryDeviceHub`` driving the ``branin`` SimModel in-process, a
``ManualClock`` on which the instruments' run times elapse), then, in the same process, a small
campaign (``--real-trials``) on real Mosquitto + nx-27017 with ``SimInstrument``s, and prints
per trial: the whole run, the optimizer's calls, the simulated instruments' evaluations, and
what is left: the engine (and, on the real stack, MQTT and MongoDB).

    .venv/bin/python benchmarks/engine.py                  # 10,000 in memory + 200 on the real stack
    .venv/bin/python benchmarks/engine.py --real-trials 0  # in memory only
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tabulate import tabulate

from benchmarks._stack import Stack, branin_spec, run_campaign
from campaigns import (
    CampaignCreated,
    CampaignSpec,
    Measurement,
    SuggestedTrial,
    TrialRecord,
)
from flows.engine.loop import CampaignLoop, LoopOptions
from flows.engine.memory import ManualClock, MemoryEventLog
from flows.engine.memory_hub import MemoryDeviceHub
from flows.engine.ports import Clock, SystemClock
from optimizer import AxOptimizer
from simulators.catalog import SIMULATORS


@dataclass
class Spent:
    """Seconds spent in the optimizer and in the instruments' models, and how often."""

    optimizer_s: float = 0.0
    suggest_calls: int = 0
    model_s: float = 0.0
    evaluations: int = 0
    trials_suggested: list[int] = field(default_factory=list)


class TimedOptimizer:
    """``AxOptimizer``, with the time of each call added to ``spent``."""

    def __init__(self, inner: AxOptimizer, spent: Spent) -> None:
        self.inner, self.spent = inner, spent

    def suggest(self, n: int) -> list[SuggestedTrial]:
        started = time.perf_counter()
        try:
            return self.inner.suggest(n)
        finally:
            self.spent.optimizer_s += time.perf_counter() - started
            self.spent.suggest_calls += 1

    def complete(self, trial_id: str, measurements: dict[str, Measurement]) -> None:
        started = time.perf_counter()
        self.inner.complete(trial_id, measurements)
        self.spent.optimizer_s += time.perf_counter() - started

    def fail(self, trial_id: str, reason: str) -> None:
        started = time.perf_counter()
        self.inner.fail(trial_id, reason)
        self.spent.optimizer_s += time.perf_counter() - started


class TimedModel:
    """A ``SimModel`` whose evaluations are timed into ``spent``."""

    def __init__(self, inner: Any, spent: Spent) -> None:
        self.inner, self.spent = inner, spent
        self.inputs, self.metrics = list(inner.inputs), list(inner.metrics)

    def evaluate(self, parameters: Mapping[str, Any]) -> dict[str, float]:
        started = time.perf_counter()
        try:
            return dict(self.inner.evaluate(parameters))
        finally:
            self.spent.model_s += time.perf_counter() - started
            self.spent.evaluations += 1


def timed_rebuild(spent: Spent) -> Any:
    def make(spec: CampaignSpec, trials: Iterable[TrialRecord]) -> TimedOptimizer:
        return TimedOptimizer(AxOptimizer.rebuild(spec, trials, threads=1), spent)
    return make


def in_memory(spec: CampaignSpec, threaded: bool) -> tuple[float, int, Spent]:
    """Run ``spec`` on the in-memory backends; returns (wall seconds, events logged, spent).

    ``threaded``: as in production, the optimizer in its own thread, on the system clock (give
    the instruments no duration); else every call inline and the run times on a manual clock.
    """
    spent = Spent()
    clock: Clock = SystemClock() if threaded else ManualClock()
    log = MemoryEventLog()
    log.append([CampaignCreated(campaign_id=spec.name, seq=1, actor="user:bench", spec=spec)])
    hub = MemoryDeviceHub(clock)
    info = SIMULATORS["branin"]
    for d in spec.devices:
        options = info.options(d.options)
        hub.instrument(d.id, TimedModel(info.build(options), spent), options)
    loop = CampaignLoop(spec.name, log, hub, make_optimizer=timed_rebuild(spent), clock=clock,
                        options=LoopOptions(optimizer_in_thread=threaded),
                        run_info={"host": socket.gethostname(), "pid": 0})
    started = time.perf_counter()
    state = loop.run()
    wall = time.perf_counter() - started
    assert state.finished_reason == "budget_exhausted" and state.count("completed") == spec.budget.max_trials, state
    return wall, log.last_seq(spec.name), spent


def on_real_stack(spec: CampaignSpec) -> tuple[float, int, Spent]:
    """Run ``spec`` on Mosquitto + nx-27017 with ``SimInstrument``s (their models not timed)."""
    spent = Spent()
    with Stack() as stack:
        run = run_campaign(stack, spec, make_optimizer=timed_rebuild(spent))
    assert run.state.count("completed") == spec.budget.max_trials
    return run.wall_s, len(run.events), spent


def row(name: str, trials: int, wall: float, events: int, spent: Spent) -> list[object]:
    rest = wall - spent.optimizer_s - spent.model_s
    ms = 1000.0 / trials
    return [name, trials, events, spent.suggest_calls, f"{wall:.2f}", f"{wall * ms:.3f}", f"{spent.optimizer_s * ms:.3f}",
            f"{spent.model_s * ms:.3f}" if spent.evaluations else "(not timed)", f"{rest * ms:.3f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000, help="trials of the in-memory campaign")
    parser.add_argument("--devices", type=int, default=100, help="simulated instruments")
    parser.add_argument("--batch-size", type=int, default=100, help="trials per suggestion (batch dispatch)")
    parser.add_argument("--real-trials", type=int, default=200, help="trials on Mosquitto + nx-27017 (0: skip)")
    parser.add_argument("--real-devices", type=int, default=4)
    args = parser.parse_args()

    rows = []
    spec = branin_spec("engine-bench", args.devices, max_trials=args.trials, batch_size=args.batch_size,
                       dispatch="batch", duration_s=(1.0, 3.0))
    wall, events, spent = in_memory(spec, threaded=False)
    rows.append(row("in memory: manual clock, optimizer inline", args.trials, wall, events, spent))
    instant = branin_spec("engine-bench", args.devices, max_trials=args.trials, batch_size=args.batch_size,
                          dispatch="batch")
    wall, events, spent = in_memory(instant, threaded=True)
    rows.append(row("in memory: system clock, optimizer thread", args.trials, wall, events, spent))
    if args.real_trials:
        real = branin_spec("engine-bench-real", args.real_devices, max_trials=args.real_trials,
                           batch_size=args.real_devices, dispatch="batch")
        wall, events, spent = on_real_stack(real)
        rows.append(row("Mosquitto + nx-27017", args.real_trials, wall, events, spent))
    print(tabulate(rows, headers=["backends", "trials", "events", "suggest calls", "wall s", "ms/trial",
                                  "optimizer ms/trial", "instruments ms/trial", "engine (+ I/O) ms/trial"]))


if __name__ == "__main__":
    main()
