"""A 1,000-trial simulated campaign end to end: generation time, memory, log size, resume (issue 6).

The campaign: 2-D Branin on ``--devices`` instant simulated instruments (``duration_s: [0, 0]``),
``CampaignLoop`` on Mosquitto and an nx-27017 log, async dispatch, ``optimizer.method``
``--method`` (default ``botorch``, Sobol for the first trials) with ``batch_size``
``--batch``. Printed at 10, 30, 100, 300 and 1,000 trials (the first suggestion at or past
each): the time of that suggestion call (seconds, and per trial), the process's RSS.
Then the log's size (events, and BSON bytes as stored), and a resume as ``closedloop resume``
does it: read the log, fold it, rebuild the optimizer, and the first suggestion after it.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale.py [--trials 1000] [--method botorch]
        [--batch 4] [--devices 4] [--init N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bson  # noqa: E402
import pymongo  # noqa: E402

from benchmarks._stack import Stack, branin_spec  # noqa: E402
from campaigns import CampaignCreated, CampaignSpec, Measurement, SuggestedTrial, TrialRecord, fold  # noqa: E402
from devices import MqttDeviceHub  # noqa: E402
from flows.engine.loop import CampaignLoop  # noqa: E402
from optimizer import AxOptimizer  # noqa: E402
from simulators import SimInstrument  # noqa: E402

CHECKPOINTS = (10, 30, 100, 300, 1000)


def rss_mb() -> float:
    """This process's resident set size, MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Timed:
    """The real optimizer, with each suggestion's time, trial count and RSS noted."""

    def __init__(self, inner: AxOptimizer, known: int, notes: list[tuple[int, int, float, float, str]]) -> None:
        self.inner, self.known, self.notes = inner, known, notes

    def suggest(self, n: int) -> list[SuggestedTrial]:
        started = time.perf_counter()
        out = self.inner.suggest(n)
        self.notes.append((self.known, n, time.perf_counter() - started, rss_mb(), out[0].generator))
        self.known += n
        return out

    def complete(self, trial_id: str, measurements: dict[str, Measurement]) -> None:
        self.inner.complete(trial_id, measurements)

    def fail(self, trial_id: str, reason: str) -> None:
        self.inner.fail(trial_id, reason)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--method", default="botorch")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--init", type=int, default=None)
    args = parser.parse_args()
    print("load average at start: %.2f %.2f %.2f (2 cores; other work on the machine slows every figure)"
          % os.getloadavg(), flush=True)
    spec = branin_spec("scale", args.devices, max_trials=args.trials, batch_size=args.batch, method=args.method,
                       initialization_trials=args.init)
    notes: list[tuple[int, int, float, float, str]] = []

    def make(s: CampaignSpec, trials: Iterable[TrialRecord]) -> Timed:
        listed = list(trials)
        return Timed(AxOptimizer.rebuild(s, listed, threads=1), len(listed), notes)

    print(f"{args.trials} trials, {args.devices} instant devices, method {args.method}, batch {args.batch}; "
          f"RSS at start {rss_mb():.0f} MB", flush=True)
    with Stack() as stack:
        mqtt = stack.mqtt()
        store = stack.store("scale")
        store.append([CampaignCreated(campaign_id="scale", seq=1, actor="user:bench", spec=spec)])
        sims = [SimInstrument(d.id, "branin", d.options, mqtt) for d in spec.devices]
        for sim in sims:
            sim.start()
        started = time.perf_counter()
        try:
            with MqttDeviceHub(mqtt, client_id="scale-orchestrator") as hub:
                state = CampaignLoop("scale", store, hub, make_optimizer=make,
                                     run_info={"host": "bench", "pid": os.getpid()}).run()
        finally:
            for sim in sims:
                sim.stop()
        wall = time.perf_counter() - started
        print(f"campaign: {state.finished_reason}, {state.count('completed')} completed, "
              f"{state.count('failed')} failed, wall {wall:.1f} s", flush=True)
        print(f"\n{'trials':>8}{'batch':>7}{'generator':>10}{'suggest_s':>11}{'s/trial':>9}{'RSS_MB':>9}")
        for mark in (m for m in CHECKPOINTS if m <= args.trials):
            # The first suggestion at or past the mark; for the budget itself, the last one.
            hit = next((n for n in notes if n[0] >= mark), notes[-1] if mark == max(CHECKPOINTS) else None)
            if hit is not None:
                print(f"{hit[0]:>8}{hit[1]:>7}{hit[4]:>10}{hit[2]:>11.3f}{hit[2] / hit[1]:>9.3f}{hit[3]:>9.0f}")
        gen = sum(n[2] for n in notes)
        print(f"generation total {gen:.1f} s over {len(notes)} suggestions; peak RSS during the run "
              f"{max(n[3] for n in notes):.0f} MB")

        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(stack.mongo_uri)
        docs = list(client.get_database("scale").get_collection("events").find({"campaign_id": "scale"}))
        client.close()
        size = sum(len(bson.encode(d)) for d in docs)
        print(f"log: {len(docs)} events, {size / 1e6:.2f} MB as BSON ({size / max(1, len(docs)):.0f} B/event)")

        t0 = time.perf_counter()
        events = store.read("scale")
        t1 = time.perf_counter()
        folded = fold(events)
        t2 = time.perf_counter()
        assert folded.spec is not None
        optimizer = AxOptimizer.rebuild(folded.spec, list(folded.trials.values()), threads=1)
        t3 = time.perf_counter()
        first = optimizer.suggest(1)
        t4 = time.perf_counter()
        store.close()
    print(f"resume at {len(folded.trials)} trials: read {t1 - t0:.3f} s + fold {t2 - t1:.3f} s + rebuild "
          f"{t3 - t2:.3f} s = {t3 - t0:.3f} s; first suggestion after it ({first[0].generator}) {t4 - t3:.3f} s; "
          f"RSS {rss_mb():.0f} MB")
    last = next((n for n in reversed(notes)), None)
    if last is not None:
        print(f"suggestion time at {last[0]} trials: {last[2]:.3f} s for {last[1]} trial(s) ({last[4]})")
    return 0 if state.count("completed") == args.trials else 1


if __name__ == "__main__":
    raise SystemExit(main())
