"""Resume time against the length of a campaign's log (issue 3).

A resume reads the log, folds it, rebuilds the Ax optimizer from the folded trials and asks for
the next trial. This benchmark builds synthetic logs of N completed trials, as the loop writes
them (``CampaignCreated``, then per batch ``TrialsSuggested``, ``TrialDispatched`` and
``TrialCompleted`` per trial), for Hartmann6 (6-D) and Branin, and times side by side:

- ``fold``: ``campaigns.fold(events)``;
- ``rebuild``: ``AxOptimizer.rebuild(spec, trials)``, the bulk replay (best of ``--repeat``);
- ``per-trial``: the same with ``replay="per_trial"``, the replay through Ax's ``Client`` one
  trial at a time that resumes used before (one run; skip with ``--no-baseline``);
- ``suggest``: the first ``suggest(1)`` after the rebuild, a BoTorch fit and candidate on all
  N trials (with ``--suggest``; ~10 s at 1,000 trials with exact GPs);
- ``read``: ``MongoEventStore.read`` of the whole log from an embedded MongoDB-wire server in
  a temporary directory (with ``--store``).

The first Sobol trials are the campaign's own Sobol points; the rest stand in for BoTorch
trials with seeded uniform points (generating 1,000 real BoTorch trials would take hours).
Times are wall-clock seconds on this machine, one process, ``OMP_NUM_THREADS`` as set.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/resume.py [--sizes 100,300,1000]
        [--problems hartmann6,branin] [--suggest] [--store] [--no-baseline] [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from campaigns import (
    CampaignCreated,
    CampaignSpec,
    Measurement,
    SuggestedTrial,
    TrialCompleted,
    TrialDispatched,
    TrialRecord,
    TrialsSuggested,
    fold,
    load_spec,
)
from campaigns.events import EventBase
from optimizer import AxOptimizer, SobolSampler, default_initialization_trials
from simulators import branin, hartmann6
from storage import EmbeddedMongo, MongoEventStore

EXAMPLES = Path(__file__).resolve().parents[1] / "campaigns" / "examples"
PROBLEMS: dict[str, tuple[str, Callable[..., float], float | None]] = {
    # name: (example campaign, function, reported sem)
    "hartmann6": ("hartmann6.yaml", hartmann6, 0.01),
    "branin": ("branin.yaml", branin, None),
}
T = TypeVar("T")


@dataclass
class Row:
    """One problem at one size: the log's length and the times, in seconds."""

    problem: str
    trials: int
    events: int
    fold_s: float
    rebuild_s: float
    per_trial_s: float | None = None
    suggest_s: float | None = None
    read_s: float | None = None


def synthetic_log(problem: str, n: int, seed: int = 0) -> tuple[CampaignSpec, list[EventBase]]:
    """A campaign of ``n`` completed trials, logged as the loop logs them.

    Args:
        problem: A key of ``PROBLEMS``.
        n: How many trials, all completed.
        seed: Seeds the uniform points that stand in for BoTorch trials.
    """
    file, function, sem = PROBLEMS[problem]
    spec = load_spec(EXAMPLES / file)
    spec = spec.model_copy(update={"budget": spec.budget.model_copy(update={"max_trials": max(n, 1) * 2})})
    init = min(n, default_initialization_trials(spec))
    points: list[tuple[dict[str, float], str, int | None]] = [
        ({k: float(v) for k, v in p.parameters.items()}, "sobol", p.position)
        for p in SobolSampler(spec).next_points(0, init)
    ]
    rng = np.random.default_rng(seed)
    bounds = [(float(p.bounds[0]), float(p.bounds[1])) for p in spec.parameters]  # type: ignore[union-attr]
    names = [p.name for p in spec.parameters]
    for _ in range(n - init):
        points.append(({name: float(rng.uniform(lo, hi)) for name, (lo, hi) in zip(names, bounds)}, "botorch", None))

    events: list[EventBase] = [CampaignCreated(campaign_id="bench", seq=1, actor="user:bench", spec=spec)]

    def seq() -> int:
        return len(events) + 1

    metric = spec.objectives[0].name
    for start in range(0, n, spec.batch_size):
        batch = [
            SuggestedTrial(trial_id=str(i), parameters=points[i][0], generator=points[i][1], sobol_position=points[i][2])
            for i in range(start, min(n, start + spec.batch_size))
        ]
        events.append(TrialsSuggested(campaign_id="bench", seq=seq(), actor="optimizer", trials=batch))
        for t in batch:
            device = f"dev-{int(t.trial_id) % 3}"
            events.append(TrialDispatched(
                campaign_id="bench", seq=seq(), actor="orchestrator", trial_id=t.trial_id,
                device_id=device, request_id=f"r{t.trial_id}",
            ))
        for t in batch:
            value = function(*(float(t.parameters[name]) for name in names))
            events.append(TrialCompleted(
                campaign_id="bench", seq=seq(), actor=f"device:dev-{int(t.trial_id) % 3}", trial_id=t.trial_id,
                device_id=f"dev-{int(t.trial_id) % 3}", request_id=f"r{t.trial_id}",
                measurements={metric: Measurement(mean=value, sem=sem)},
            ))
    return spec, events


def timed(call: Callable[[], T], repeat: int = 1) -> tuple[T, float]:
    """The call's result and its best wall time over ``repeat`` runs."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = call()
        best = min(best, time.perf_counter() - t0)
    return result, best  # type: ignore[return-value]


def measure(problem: str, n: int, args: argparse.Namespace, store: MongoEventStore | None) -> Row:
    """Time fold, rebuild, the per-trial replay and (optionally) suggest and read for one log."""
    spec, events = synthetic_log(problem, n)
    state, fold_s = timed(lambda: fold(events), args.repeat)
    assert state.spec is not None and state.anomalies == 0 and len(state.trials) == n
    trials = list(state.trials.values())
    opt, rebuild_s = timed(lambda: AxOptimizer.rebuild(state.spec, trials, threads=1), args.repeat)  # type: ignore[arg-type]
    row = Row(problem, n, len(events), fold_s, rebuild_s)
    if not args.no_baseline:
        old, row.per_trial_s = timed(lambda: AxOptimizer.rebuild(state.spec, trials, threads=1, replay="per_trial"))  # type: ignore[arg-type]
        assert (old.num_trials, old.phase) == (opt.num_trials, opt.phase)
    if args.suggest:
        suggested, row.suggest_s = timed(lambda: opt.suggest(1))
        assert suggested[0].trial_id == str(n)
    if store is not None:
        row.read_s = time_read(store, f"{problem}-{n}", events)
    return row


def time_read(store: MongoEventStore, campaign_id: str, events: Sequence[EventBase]) -> float:
    """Append the log under ``campaign_id`` and time reading it back."""
    renamed = [e.model_copy(update={"campaign_id": campaign_id}) for e in events]
    for start in range(0, len(renamed), 500):
        store.append(renamed[start:start + 500])
    read, read_s = timed(lambda: store.read(campaign_id))
    assert len(read) == len(events)
    return read_s


def fmt(seconds: float | None) -> str:
    """Seconds with three decimals, or ``-`` when not measured."""
    return "-" if seconds is None else f"{seconds:.3f}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one row per problem and size, then a summary line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="100,300,1000", help="numbers of completed trials (default 100,300,1000)")
    parser.add_argument("--problems", default="hartmann6,branin", help="among: " + ", ".join(PROBLEMS))
    parser.add_argument("--repeat", type=int, default=3, help="runs of fold and rebuild; the best counts (default 3)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the per-trial replay")
    parser.add_argument("--suggest", action="store_true", help="also time the first suggest(1) after the rebuild")
    parser.add_argument("--store", action="store_true", help="also time reading the log from an embedded MongoDB")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    problems = [p for p in args.problems.split(",") if p]
    unknown = sorted(set(problems) - set(PROBLEMS))
    if unknown or not sizes or min(sizes) < 1 or args.repeat < 1:
        parser.error(f"unknown problem {unknown[0]!r}" if unknown else "sizes and --repeat must be >= 1")

    # Third-party deprecation chatter is not what this measures.
    warnings.simplefilter("ignore")
    logging.getLogger("ax").setLevel(logging.ERROR)
    AxOptimizer.rebuild(*_warm_up())  # imports and first-call costs out of the first row

    header = ("problem", "trials", "events", "read_s", "fold_s", "rebuild_s", "per_trial_s", "old/new", "suggest_s")
    print(f"{header[0]:<10}" + "".join(f"{h:>12}" for h in header[1:]))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="closedloop-bench-") as tmp, ExitStack() as stack:
        store = None
        if args.store:  # one embedded server in the temporary directory for the whole run
            mongo = stack.enter_context(EmbeddedMongo(Path(tmp)))
            store = stack.enter_context(MongoEventStore(mongo.uri))
        for problem in problems:
            for n in sizes:
                r = measure(problem, n, args, store)
                rows.append(r)
                ratio = f"{r.per_trial_s / r.rebuild_s:.0f}x" if r.per_trial_s is not None else "-"
                cells = (r.trials, r.events, fmt(r.read_s), fmt(r.fold_s), fmt(r.rebuild_s),
                         fmt(r.per_trial_s), ratio, fmt(r.suggest_s))
                print(f"{r.problem:<10}" + "".join(f"{c:>12}" for c in cells), flush=True)
    print(summary(rows))
    return 0


def summary(rows: Sequence[Row]) -> str:
    """One line: resume time at the largest size, per problem, before and after."""
    n = max(r.trials for r in rows)
    parts = []
    for r in (r for r in rows if r.trials == n):
        resume = (r.read_s or 0.0) + r.fold_s + r.rebuild_s
        part = f"{r.problem} {resume:.2f} s"
        if r.per_trial_s is not None:
            before = resume - r.rebuild_s + r.per_trial_s
            part += f" (was {before:.1f} s, {before / resume:.0f}x)"
        if r.suggest_s is not None:
            part += f" + first suggest(1) {r.suggest_s:.1f} s"
        parts.append(part)
    what = "read + fold + rebuild" if rows[0].read_s is not None else "fold + rebuild"
    return f"resume ({what}) at {n} completed trials: " + "; ".join(parts)


def _warm_up() -> tuple[CampaignSpec, list[TrialRecord]]:
    spec, events = synthetic_log("branin", 8)
    return spec, list(fold(events).trials.values())


if __name__ == "__main__":
    sys.exit(main())
