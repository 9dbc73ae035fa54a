"""closedloop's optimizer against Ax's default generation strategy: speed and quality (issue 6).

Side by side in one run, on Branin (2-D), Hartmann6 (6-D) and BraninCurrin (two objectives,
thresholds = BoTorch's reference point 18, 6), true values from ``botorch.test_functions``:

- **time per suggested batch** of 4 at N = 10, 30, 100, 300, 1000 completed trials. The N
  trials are scrambled Sobol points with their true values, given to both: closedloop's
  ``AxOptimizer.rebuild`` (``optimizer.method: botorch``, the default) then ``suggest(4)``;
  a plain ``ax.Client`` with the same data, ``configure_generation_strategy()`` (defaults)
  then ``get_next_trials(max_trials=4)``. Ax's default hands out one Sobol trial before its
  model takes over, so it gets N - 1 trials, one ``get_next_trials(max_trials=1)`` (completed
  with its true value) and then the timed call: 4 BoTorch trials from N completed ones. Ax's
  time at 1,000 is measured in a child process and given up after ``--cap`` seconds. Wall
  clock, median of ``--repeat`` for closedloop (each on a freshly rebuilt optimizer), one run
  for Ax; CPU seconds of the process are shown too (less sensitive to other load);
- **best-so-far regret** after a budget of trials (batches of 4) over ``--seeds`` seeds:
  ``best - optimum`` (one objective) or ``1 - HV / HV_max`` (BraninCurrin); the median of
  each and the closedloop/Ax ratio, and how many runs ended within 0.05 of the optimum. With
  ``--paired``, each seed again with Ax's own generation behind closedloop's opening
  (``optimizer.method: botorch_default``, same Sobol points and batches): how often the fast
  method did better, seed by seed. ``--no-ax`` runs closedloop alone (many seeds cheaply);
  ``--opening 4,1,1`` gives closedloop the batch sizes Ax's client hands out at the start
  (asked for 4, it returns the centre and 3 Sobol points, then 1 Sobol point, then 1 BoTorch
  trial, then 4 at a time); ``--no-center`` opens closedloop's campaigns without the centre
  point (``optimizer.center_first: false``). Each ratio of medians comes with a 90 % bootstrap
  interval (the seeds resampled): how far other seeds could move it.

Then one PASS/FAIL line per criterion of the issue: speed >= 5x at 30 and 100 trials; median
regret ratio <= 1.1.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/generation.py [--quick]
        [--problems branin,hartmann6,branin_currin] [--sizes 10,30,100,300,1000]
        [--seeds 5] [--first-seed 0] [--repeat 3] [--cap 300] [--no-timing] [--no-regret]
        [--paired] [--no-ax] [--opening 4,1,1] [--no-center]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import argparse
import logging
import math
import multiprocessing as mp
import queue as queues
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from ax import Client, RangeParameterConfig  # noqa: E402
from botorch.test_functions import Branin, Hartmann  # noqa: E402
from botorch.test_functions.multi_objective import BraninCurrin  # noqa: E402
from botorch.utils.multi_objective.hypervolume import Hypervolume  # noqa: E402

from campaigns import CampaignSpec, Measurement, TrialRecord, parse_spec, utcnow  # noqa: E402
from optimizer import AxOptimizer  # noqa: E402
from optimizer.ax_setup import quiet_ax  # noqa: E402
from optimizer.replay import attach_in_bulk, ordered_trials  # noqa: E402

BATCH = 4


@dataclass(frozen=True)
class Problem:
    """A benchmark problem: the botorch function, its metrics (minimized) and how to score it."""

    name: str
    make: Callable[[], Any]
    metrics: tuple[str, ...]
    budget: int
    optimum: float | None = None  # one objective: the known minimum
    thresholds: tuple[float, ...] = ()  # several objectives: Ax thresholds = HV reference point
    max_hv: float | None = None
    function: Any = field(default=None, compare=False)

    def fn(self) -> Any:
        """The botorch problem (created once)."""
        if self.function is None:
            object.__setattr__(self, "function", self.make())
        return self.function

    def bounds(self) -> list[tuple[float, float]]:
        """``(low, high)`` per input."""
        return [(float(lo), float(hi)) for lo, hi in self.fn().bounds.T.tolist()]

    def evaluate(self, x: list[float]) -> dict[str, float]:
        """True values (noise-free) of every metric at ``x``."""
        with torch.no_grad():
            y = self.fn().evaluate_true(torch.tensor([x], dtype=torch.float64)).reshape(-1)
        return {m: float(v) for m, v in zip(self.metrics, y, strict=True)}

    def regret(self, values: list[dict[str, float]]) -> float:
        """Best-so-far regret of the evaluated points (``1 - HV/HV_max`` for two objectives)."""
        if self.optimum is not None:
            return min(v[self.metrics[0]] for v in values) - self.optimum
        feasible = [[-v[m] for m in self.metrics] for v in values
                    if all(v[m] <= t for m, t in zip(self.metrics, self.thresholds, strict=True))]
        if not feasible:
            return 1.0
        hv = Hypervolume(ref_point=-torch.tensor(self.thresholds, dtype=torch.float64))
        return 1.0 - hv.compute(torch.tensor(feasible, dtype=torch.float64)) / float(self.max_hv or 1.0)


PROBLEMS = {
    "branin": Problem("branin", Branin, ("branin",), budget=32, optimum=0.397887),
    "hartmann6": Problem("hartmann6", lambda: Hartmann(dim=6), ("hartmann6",), budget=40, optimum=-3.32237),
    "branin_currin": Problem("branin_currin", BraninCurrin, ("branin", "currin"), budget=32,
                             thresholds=(18.0, 6.0), max_hv=BraninCurrin._max_hv),
}


def names(p: Problem) -> list[str]:
    """Parameter names ``x1 ... xd``."""
    return [f"x{i + 1}" for i in range(len(p.bounds()))]


def spec_for(p: Problem, seed: int, initialization_trials: int | None = None) -> CampaignSpec:
    """The closedloop campaign for a problem (default optimizer settings unless told)."""
    objectives: list[dict[str, Any]] = [{"name": m, "minimize": True} for m in p.metrics]
    for o, t in zip(objectives, p.thresholds, strict=False):
        o["threshold"] = t
    return parse_spec({
        "name": p.name, "seed": seed, "budget": {"max_trials": p.budget}, "objectives": objectives,
        "parameters": [{"name": n, "type": "float", "bounds": list(b)} for n, b in zip(names(p), p.bounds(), strict=True)],
        "devices": [{"id": "d", "measures": list(p.metrics)}],
        "optimizer": {"initialization_trials": initialization_trials},
    })


def ax_client(p: Problem, seed: int | None) -> Client:
    """A plain Ax ``Client`` for a problem: the same search space and optimization config."""
    client = Client(random_seed=seed)
    client.configure_experiment(parameters=[
        RangeParameterConfig(name=n, parameter_type="float", bounds=b) for n, b in zip(names(p), p.bounds(), strict=True)
    ])
    client.configure_optimization(
        objective=", ".join(f"-{m}" for m in p.metrics),
        outcome_constraints=[f"{m} <= {t}" for m, t in zip(p.metrics, p.thresholds, strict=False)] or None,
    )
    return client


def sobol_records(p: Problem, n: int) -> list[TrialRecord]:
    """``n`` completed trials: scrambled Sobol points (seed 1234) with their true values."""
    engine = torch.quasirandom.SobolEngine(len(p.bounds()), scramble=True, seed=1234)  # type: ignore[no-untyped-call]
    out = []
    for i, u in enumerate(engine.draw(n, dtype=torch.float64).tolist()):
        x = [lo + ui * (hi - lo) for ui, (lo, hi) in zip(u, p.bounds(), strict=True)]
        values = p.evaluate(x)
        out.append(TrialRecord(
            trial_id=str(i), index=i, parameters=dict(zip(names(p), x, strict=True)), generator="sobol",
            sobol_position=None, suggested_at=utcnow(), status="completed",
            measurements={m: Measurement(mean=v) for m, v in values.items()},
        ))
    return out


def clock() -> tuple[float, float]:
    """Wall and process CPU time now."""
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    """Wall and CPU seconds since ``start``."""
    wall, cpu = clock()
    return wall - start[0], cpu - start[1]


# ------------------------------------------------------------------------------ timing
def time_ours(p: Problem, n: int, repeat: int) -> tuple[float, float]:
    """Median wall and CPU seconds of closedloop's ``suggest(4)`` after ``n`` completed trials."""
    records = sobol_records(p, n)
    runs = []
    for r in range(repeat):
        # The attached trials stand for the initialization (Ax's default counts them too).
        opt = AxOptimizer.rebuild(spec_for(p, seed=r, initialization_trials=5), records, threads=1)
        start = clock()
        batch = opt.suggest(BATCH)
        runs.append(since(start))
        assert [t.generator for t in batch] == ["botorch"] * BATCH, batch
    return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)


def time_ax(p: Problem, n: int, started: Callable[[], None] = lambda: None) -> tuple[float, float]:
    """Wall and CPU seconds of Ax's default ``get_next_trials(max_trials=4)`` after ``n`` trials."""
    records = sobol_records(p, n)
    client = ax_client(p, seed=0)
    attach_in_bulk(client, spec_for(p, 0), ordered_trials(spec_for(p, 0), records[:-1]))
    client.configure_generation_strategy()
    quiet_ax(False)
    [index] = client.get_next_trials(max_trials=1)  # Ax's one Sobol trial after attached data
    client.complete_trial(trial_index=index, raw_data=p.evaluate([float(v) for v in client._experiment.trials[index].arm.parameters.values()]))  # type: ignore[attr-defined,arg-type]
    started()
    start = clock()
    trials = client.get_next_trials(max_trials=BATCH)
    took = since(start)
    keys = [client._experiment.trials[i].generator_runs[0]._generator_key for i in trials]
    assert len(trials) == BATCH and set(keys) == {"BoTorch"}, keys
    return took


def _time_ax_named(name: str, n: int, started: Callable[[], None]) -> tuple[float, float]:
    return time_ax(PROBLEMS[name], n, started)


def _ax_child(queue: Any, timer: Callable[..., tuple[float, float]], name: str, n: int) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    queue.put(("result", timer(name, n, lambda: queue.put(("started", None)))))


def time_ax_capped(p: Any, n: int, cap: float,
                   timer: Callable[..., tuple[float, float]] = _time_ax_named) -> tuple[float, float] | None:
    """``time_ax`` in a child process; None when the timed call takes longer than ``cap`` s.
    ``timer(name, n, started)``: a module-level function that times problem ``name`` (mixed.py's)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_ax_child, args=(queue, timer, p.name, n), daemon=True)
    child.start()
    try:
        kind, _ = queue.get(timeout=600)  # imports and attaching the data
        assert kind == "started"
        kind, took = queue.get(timeout=cap)
        return took  # type: ignore[no-any-return]
    except queues.Empty:  # over the cap (or the child died)
        return None
    finally:
        if child.is_alive():
            child.kill()
        child.join()


# ------------------------------------------------------------------------------ regret
def run_ours(p: Problem, seed: int, method: str = "botorch", opening: tuple[int, ...] = (),
             center: bool = True) -> tuple[float, list[float]]:
    """A closedloop campaign of ``p.budget`` trials in batches of 4: regret, wall s per BO batch.

    ``method="botorch_default"``: the same campaign (same opening, same batches) with Ax's own
    generation in place of the fast method, for the paired comparison. ``opening``: the sizes
    of the first batches (then 4 each), e.g. ``(4, 1, 1)`` as Ax's client hands them out.
    ``center=False``: no centre point first (``optimizer.center_first: false``).
    """
    spec = spec_for(p, seed)
    spec = spec.model_copy(update={"optimizer": spec.optimizer.model_copy(update={"method": method,
                                                                                  "center_first": center})})
    opt = AxOptimizer(spec, threads=1)
    values: list[dict[str, float]] = []
    times: list[float] = []
    sizes = list(opening)
    while len(values) < p.budget:
        start = clock()
        batch = opt.suggest(min(sizes.pop(0) if sizes else BATCH, p.budget - len(values)))
        if batch[-1].generator == "botorch":
            times.append(since(start)[0])
        for t in batch:
            v = p.evaluate([float(t.parameters[n]) for n in names(p)])
            opt.complete(t.trial_id, {m: Measurement(mean=y) for m, y in v.items()})
            values.append(v)
    return p.regret(values), times


def run_ax(p: Problem, seed: int) -> tuple[float, list[float]]:
    """The same with a plain Ax ``Client`` and its default generation strategy."""
    client = ax_client(p, seed)
    client.configure_generation_strategy()
    values: list[dict[str, float]] = []
    times: list[float] = []
    while len(values) < p.budget:
        start = clock()
        trials = client.get_next_trials(max_trials=min(BATCH, p.budget - len(values)))
        took = since(start)[0]
        keys = {client._experiment.trials[i].generator_runs[0]._generator_key for i in trials}
        if keys == {"BoTorch"}:
            times.append(took)
        for index, parameters in trials.items():
            v = p.evaluate([float(parameters[n]) for n in names(p)])  # type: ignore[arg-type]
            client.complete_trial(trial_index=index, raw_data=v)  # type: ignore[arg-type]
            values.append(v)
    return p.regret(values), times


def ratio_interval(ours: list[float], ax: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """90 % bootstrap interval of median(ours) / median(ax), each side's seeds resampled.

    How far the ratio could move with other seeds: a bimodal problem (Hartmann6: a run ends in
    the global basin or near a local optimum) makes the median of 30 seeds a coarse figure.
    """
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        mo = statistics.median(rng.choices(ours, k=len(ours)))
        ma = statistics.median(rng.choices(ax, k=len(ax)))
        ratios.append(mo / ma if ma > 0 else math.inf)
    ratios.sort()
    return ratios[int(0.05 * resamples)], ratios[int(0.95 * resamples) - 1]


# ------------------------------------------------------------------------------ main
def fmt(x: float | None, digits: int = 2) -> str:
    """A number for the tables (``-`` for None)."""
    return "-" if x is None else f"{x:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit code 0 iff every criterion passes."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="sizes 10,30,100; 2 seeds; half budgets")
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--sizes", default="10,30,100,300,1000")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3, help="closedloop timings per size (median)")
    ap.add_argument("--cap", type=float, default=300.0, help="give up Ax's timed call at 1,000 trials after this many s")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--no-regret", action="store_true")
    ap.add_argument("--paired", action="store_true",
                    help="also run each seed with Ax's generation behind closedloop's opening (method botorch_default)")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--no-ax", action="store_true", help="regret: closedloop only (no Ax runs, no ratio)")
    ap.add_argument("--opening", default="", help="regret: closedloop's first batch sizes, e.g. 4,1,1 (then 4 each)")
    ap.add_argument("--no-center", action="store_true", help="regret: closedloop without the centre point first")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("ax").setLevel(logging.WARNING)
    problems = [PROBLEMS[n] for n in args.problems.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    seeds = args.seeds
    if args.quick:
        sizes, seeds = [s for s in sizes if s <= 100], 2
        problems = [Problem(p.name, p.make, p.metrics, p.budget // 2, p.optimum, p.thresholds, p.max_hv) for p in problems]
    print(f"# generation benchmark: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, batch {BATCH}, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cores", flush=True)
    verdicts: dict[str, bool] = {}

    # Warm-up: the first generation in a process imports and compiles a lot; time neither.
    for p in problems:
        time_ours(p, 10, 1)
        if not (args.no_ax and args.no_timing):
            time_ax(p, 10)

    speed: dict[tuple[str, int], float] = {}
    if not args.no_timing:
        print("\n## time per suggested batch of 4 (s): closedloop vs Ax default", flush=True)
        print(f"{'problem':<14}{'trials':>7}{'ours_wall':>11}{'ax_wall':>10}{'ax/ours':>9}{'ours_cpu':>10}{'ax_cpu':>9}{'ax/ours':>9}")
        for p in problems:
            for n in sizes:
                ours = time_ours(p, n, args.repeat)
                ax = time_ax(p, n) if n < 1000 else time_ax_capped(p, n, args.cap)
                if ax is None:
                    print(f"{p.name:<14}{n:>7}{ours[0]:>11.2f}{'>' + fmt(args.cap, 0):>10}{'-':>9}{ours[1]:>10.2f}"
                          f"{'-':>9}{'-':>9}   Ax skipped: its call exceeded the {args.cap:.0f} s cap", flush=True)
                    continue
                speed[(p.name, n)] = ax[0] / ours[0]
                print(f"{p.name:<14}{n:>7}{ours[0]:>11.2f}{ax[0]:>10.2f}{ax[0] / ours[0]:>8.1f}x{ours[1]:>10.2f}"
                      f"{ax[1]:>9.2f}{ax[1] / ours[1]:>8.1f}x", flush=True)
        at = [(name, n) for (name, n) in speed if n in (30, 100)]
        if at:
            worst = min(at, key=lambda k: speed[k])
            verdicts["speed >= 5x at 30 and 100 trials"] = speed[worst] >= 5
            verdicts_detail = f"lowest {speed[worst]:.1f}x ({worst[0]} at {worst[1]})"
            print(f"speed at 30 and 100 trials: {verdicts_detail}")

    if not args.no_regret:
        print(f"\n## best-so-far regret after the budget, {seeds} seeds, batches of {BATCH}", flush=True)
        print(f"{'problem':<14}{'budget':>7}{'ours_median':>13}{'ax_median':>11}{'ours/ax':>9}"
              f"{'ours_s/batch':>14}{'ax_s/batch':>12}")
        ratios = {}
        seed_range = range(args.first_seed, args.first_seed + seeds)
        opening = tuple(int(x) for x in args.opening.split(",") if x)
        for p in problems:
            ours = [run_ours(p, s, opening=opening, center=not args.no_center) for s in seed_range]
            ax = [] if args.no_ax else [run_ax(p, s) for s in seed_range]
            mo = statistics.median(r for r, _ in ours)
            ma = statistics.median(r for r, _ in ax) if ax else math.nan
            if ax:
                ratios[p.name] = mo / ma if ma > 0 else (1.0 if mo == 0 else math.inf)
            to = statistics.median(t for _, ts in ours for t in ts)
            ta = statistics.median(t for _, ts in ax for t in ts) if ax else math.nan
            print(f"{p.name:<14}{p.budget:>7}{mo:>13.4g}{ma:>11.4g}{ratios.get(p.name, math.nan):>9.2f}{to:>14.2f}"
                  f"{ta:>12.2f}", flush=True)
            print(f"{'':<14}  per seed ours {[float(f'{r:.3g}') for r, _ in ours]}  ax {[float(f'{r:.3g}') for r, _ in ax]}")
            if ax:
                lo, hi = ratio_interval([r for r, _ in ours], [r for r, _ in ax])
                print(f"{'':<14}  ours/ax: 90 % bootstrap interval {lo:.2f}-{hi:.2f} (seeds resampled)")
            near = 0.05  # within 0.05 of the optimum (or of the largest hypervolume)
            print(f"{'':<14}  runs with regret < {near}: closedloop {sum(r < near for r, _ in ours)} of {seeds}"
                  + (f", Ax {sum(r < near for r, _ in ax)} of {seeds}" if ax else ""), flush=True)
            if args.paired:  # the same openings: the methods alone differ
                axgen = [run_ours(p, s, method="botorch_default", opening=opening, center=not args.no_center)[0]
                         for s in seed_range]
                wins = sum(o < a for (o, _), a in zip(ours, axgen, strict=True))
                print(f"{'':<14}  paired, closedloop's opening: Ax's generation median {statistics.median(axgen):.4g}, "
                      f"regret < {near} in {sum(a < near for a in axgen)}; closedloop better in {wins} of {seeds} seeds",
                      flush=True)
        if ratios:
            worst_name = max(ratios, key=lambda k: ratios[k])
            verdicts["median regret ratio <= 1.1"] = ratios[worst_name] <= 1.1
            print(f"median regret ratio: highest {ratios[worst_name]:.2f} ({worst_name})")

    return report_verdicts(verdicts)


def report_verdicts(verdicts: dict[str, bool]) -> int:
    """Print each verdict as PASS or FAIL; the exit code: 0 when all pass."""
    print()
    for what, ok in verdicts.items():
        print(f"{'PASS' if ok else 'FAIL'}: {what}")
    return 0 if all(verdicts.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
