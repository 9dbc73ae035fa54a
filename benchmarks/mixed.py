"""The fast engine on mixed and constrained spaces against Ax's default generation (issue 18).

Three problems, true values, minimized:

- ``branin_choice``: Branin plus a choice ``c`` of three values that shifts it:
  ``branin(x1 - s_c, x2) + o_c`` with ``s = (0, 1, 2)``, ``o = (0, 0.5, 1)`` (optimum 0.397887 at
  ``c = a``);
- ``hartmann6_int``: Hartmann6 with ``x6 = n / 10`` for an int ``n`` in 0..10 (optimum: the
  best of Hartmann6 with ``x6`` fixed at 0.6 and 0.7, found here by L-BFGS-B from its optimum);
- ``branin_constrained``: Branin under ``x1 + x2 <= 6`` (one of its three minima is feasible:
  the optimum stays 0.397887).

Measured as ``benchmarks/generation.py`` measures the continuous problems (its helpers):
time per suggested batch of 4 after N completed Sobol trials (closedloop ``AxOptimizer.rebuild``
then ``suggest(4)``, vs a plain Ax ``Client`` with the same space, default generation strategy,
``get_next_trials(max_trials=4)``; Ax at 1,000 given up after ``--cap`` s), and the
best-so-far regret after the budget over ``--seeds`` seeds (median ratio ours/Ax with a 90 %
bootstrap interval). Every suggested point is checked to be in the space and to satisfy
the constraint. ``--out FILE`` appends one JSON line per measurement as it finishes (a long
run can be stopped and its seeds continued with ``--first-seed``).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mixed.py [--problems branin_choice,...]
        [--sizes 30,100,1000] [--seeds 15] [--first-seed 0] [--cap 120] [--no-timing]
        [--no-regret] [--no-ax] [--out results.jsonl] [--ax-from results.jsonl,...]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import argparse
import json
import logging
import math
import statistics
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from botorch.test_functions import Hartmann
from scipy.optimize import minimize

from benchmarks.generation import BATCH, clock, ratio_interval, report_verdicts, since
from benchmarks.generation import time_ax_capped as capped
from campaigns import CampaignSpec, Measurement, TrialRecord, parse_spec, utcnow
from optimizer import AxOptimizer, model_engine
from optimizer.ax_setup import build_client, quiet_ax
from optimizer.replay import attach_in_bulk, ordered_trials
from optimizer.sobol import SobolSampler

_HARTMANN = Hartmann(dim=6)
SHIFT = {"a": (0.0, 0.0), "b": (1.0, 0.5), "c": (2.0, 1.0)}


def _branin(x1: float, x2: float) -> float:
    """Branin's formula (``botorch``'s refuses a point shifted off its bounds)."""
    return ((x2 - 5.1 / (4 * math.pi**2) * x1**2 + 5 / math.pi * x1 - 6) ** 2
            + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10)


def _hartmann(x: list[float]) -> float:
    with torch.no_grad():
        return float(_HARTMANN.evaluate_true(torch.tensor([x], dtype=torch.float64)))


def branin_choice(p: dict[str, Any]) -> float:
    """Branin shifted along x1 and up by the choice ``c``."""
    shift, offset = SHIFT[str(p["c"])]
    return _branin(float(p["x1"]) - shift, float(p["x2"])) + offset


def hartmann6_int(p: dict[str, Any]) -> float:
    """Hartmann6 with ``x6 = n / 10``."""
    return _hartmann([float(p[f"x{i}"]) for i in range(1, 6)] + [int(p["n"]) / 10])


def branin_constrained(p: dict[str, Any]) -> float:
    """Branin (the constraint is the spec's)."""
    return _branin(float(p["x1"]), float(p["x2"]))


def _hartmann6_int_optimum() -> float:
    best = math.inf
    start = np.array([0.20169, 0.150011, 0.476874, 0.275332, 0.311652])
    for x6 in (0.6, 0.7):
        res = minimize(lambda x, x6=x6: _hartmann([*x.tolist(), x6]), start, method="L-BFGS-B", bounds=[(0, 1)] * 5)
        best = min(best, float(res.fun))
    return best


FLOAT = {"type": "float"}


@dataclass(frozen=True)
class MixedProblem:
    """A problem: its parameters and constraints (spec syntax), function, budget and optimum."""

    name: str
    parameters: list[dict[str, Any]]
    fn: Callable[[dict[str, Any]], float]
    budget: int
    optimum: Callable[[], float]
    constraints: list[str] = field(default_factory=list)

    def spec(self, seed: int, method: str = "auto", initialization_trials: int | None = None) -> CampaignSpec:
        """The closedloop campaign (default settings unless told)."""
        return parse_spec({
            "name": self.name, "seed": seed, "budget": {"max_trials": self.budget},
            "objectives": [{"name": "y", "minimize": True}], "parameters": self.parameters,
            "parameter_constraints": self.constraints, "devices": [{"id": "d", "measures": ["y"]}],
            "optimizer": {"method": method, "initialization_trials": initialization_trials},
        })

    def check(self, p: dict[str, Any], slack: float = 0.0) -> None:
        """Fail loudly on a point outside the space or breaking a constraint (by more than
        ``slack``: Ax's own points break ``x1 + x2 <= 6`` by up to ~1e-8)."""
        spec = self.spec(0)
        for q in spec.parameters:
            v = p[q.name]
            if q.type == "choice":
                assert v in q.values, (q.name, v)  # type: ignore[union-attr]
            else:
                assert q.bounds[0] <= v <= q.bounds[1], (q.name, v)  # type: ignore[union-attr]
                if q.type == "int":
                    assert float(v) == int(v), (q.name, v)
        for c in spec.parsed_parameter_constraints:
            assert c.holds(p) or sum(k * float(p[n]) for n, k in c.coefficients.items()) <= c.bound + slack, p


BRANIN_X = [{"name": "x1", "type": "float", "bounds": [-5.0, 10.0]}, {"name": "x2", "type": "float", "bounds": [0.0, 15.0]}]
PROBLEMS = {
    "branin_choice": MixedProblem(
        "branin_choice", [*BRANIN_X, {"name": "c", "type": "choice", "values": ["a", "b", "c"]}], branin_choice, 32,
        lambda: 0.397887),
    "hartmann6_int": MixedProblem(
        "hartmann6_int", [{"name": f"x{i}", "type": "float", "bounds": [0.0, 1.0]} for i in range(1, 6)]
        + [{"name": "n", "type": "int", "bounds": [0, 10]}], hartmann6_int, 40, _hartmann6_int_optimum),
    "branin_constrained": MixedProblem("branin_constrained", BRANIN_X, branin_constrained, 32, lambda: 0.397887,
                                       ["x1 + x2 <= 6"]),
}


def sobol_records(p: MixedProblem, n: int) -> list[TrialRecord]:
    """``n`` completed trials: feasible scrambled Sobol points (seed 1234) with true values."""
    points = SobolSampler(p.spec(1234)).next_points(0, n)
    return [TrialRecord(trial_id=str(i), index=i, parameters=pt.parameters, generator="sobol", sobol_position=None,
                        suggested_at=utcnow(), status="completed",
                        measurements={"y": Measurement(mean=p.fn(pt.parameters))})
            for i, pt in enumerate(points)]


def time_ours(p: MixedProblem, n: int, repeat: int) -> tuple[float, float]:
    """Median wall and CPU s of closedloop's ``suggest(4)`` after ``n`` completed trials."""
    records = sobol_records(p, n)
    runs = []
    for r in range(repeat):
        opt = AxOptimizer.rebuild(p.spec(r, initialization_trials=5), records, threads=1)
        start = clock()
        batch = opt.suggest(BATCH)
        runs.append(since(start))
        assert [t.engine for t in batch] == ["fast"] * BATCH, batch
        for t in batch:
            p.check(t.parameters)
    return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)


def time_ax(p: MixedProblem, n: int, started: Callable[[], None] = lambda: None) -> tuple[float, float]:
    """Wall and CPU s of Ax's default ``get_next_trials(max_trials=4)`` after ``n`` trials."""
    records = sobol_records(p, n)
    spec = p.spec(0)
    client = build_client(spec)
    attach_in_bulk(client, spec, ordered_trials(spec, records[:-1]))
    client.configure_generation_strategy()
    quiet_ax(False)
    [(index, params)] = client.get_next_trials(max_trials=1).items()  # Ax's one Sobol trial after attached data
    client.complete_trial(trial_index=index, raw_data={"y": p.fn(params)})  # type: ignore[arg-type]
    started()
    start = clock()
    trials = client.get_next_trials(max_trials=BATCH)
    took = since(start)
    keys = [client._experiment.trials[i].generator_runs[0]._generator_key for i in trials]  # type: ignore[attr-defined]
    assert len(trials) == BATCH and set(keys) == {"BoTorch"}, keys
    return took


def _time_ax_named(name: str, n: int, started: Callable[[], None]) -> tuple[float, float]:
    return time_ax(PROBLEMS[name], n, started)


def time_ax_capped(p: MixedProblem, n: int, cap: float) -> tuple[float, float] | None:
    """``time_ax`` in a child process (generation.py's), None over ``cap`` s."""
    return capped(p, n, cap, timer=_time_ax_named)


def run_ours(p: MixedProblem, seed: int) -> tuple[float, list[float]]:
    """A closedloop campaign of ``p.budget`` trials in batches of 4: regret, CPU s per BO batch."""
    opt = AxOptimizer(p.spec(seed), threads=1)
    values: list[float] = []
    times: list[float] = []
    while len(values) < p.budget:
        start = clock()
        batch = opt.suggest(min(BATCH, p.budget - len(values)))
        if batch[-1].engine == "fast":
            times.append(since(start)[1])
        for t in batch:
            p.check(t.parameters)
            y = p.fn(t.parameters)
            opt.complete(t.trial_id, {"y": Measurement(mean=y)})
            values.append(y)
    return min(values) - p.optimum(), times


def run_ax(p: MixedProblem, seed: int) -> tuple[float, list[float]]:
    """The same with a plain Ax ``Client`` and its default generation strategy."""
    client = build_client(p.spec(seed))
    client._random_seed = seed  # type: ignore[attr-defined]
    client.configure_generation_strategy()
    values: list[float] = []
    times: list[float] = []
    while len(values) < p.budget:
        start = clock()
        trials = client.get_next_trials(max_trials=min(BATCH, p.budget - len(values)))
        took = since(start)[1]
        keys = {client._experiment.trials[i].generator_runs[0]._generator_key for i in trials}  # type: ignore[attr-defined]
        if keys == {"BoTorch"}:
            times.append(took)
        for index, parameters in trials.items():
            p.check(dict(parameters), slack=1e-6)
            y = p.fn(dict(parameters))
            client.complete_trial(trial_index=index, raw_data={"y": y})
            values.append(y)
    return min(values) - p.optimum(), times


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit code 0 iff every criterion passes."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--sizes", default="30,100,1000")
    ap.add_argument("--seeds", type=int, default=15)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cap", type=float, default=120.0, help="give up Ax's timed call at 1,000 trials after this many s")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--no-regret", action="store_true")
    ap.add_argument("--no-ax", action="store_true")
    ap.add_argument("--out", default="", help="append one JSON line per measurement to this file")
    ap.add_argument("--ax-from", default="", help="regret: Ax's runs as recorded by --out (files, comma-separated) "
                    "instead of running Ax; the seeds found there")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("ax").setLevel(logging.WARNING)
    problems = [PROBLEMS[n] for n in args.problems.split(",")]

    def record(**row: Any) -> None:
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")

    for p in problems:
        print(f"# {p.name}: {model_engine(p.spec(0)).why}", flush=True)
    verdicts: dict[str, bool] = {}
    for p in problems:  # warm-up: imports and first calls
        time_ours(p, 10, 1)
    if not args.no_timing:
        print(f"\n## CPU s per suggested batch of {BATCH}: closedloop vs Ax default", flush=True)
        print(f"{'problem':<20}{'trials':>7}{'ours_cpu':>10}{'ax_cpu':>9}{'ax/ours':>9}{'ours_wall':>11}{'ax_wall':>9}")
        speed = {}
        for p in problems:
            for n in [int(s) for s in args.sizes.split(",")]:
                ours = time_ours(p, n, args.repeat)
                ax = None if args.no_ax else (time_ax(p, n) if n < 1000 else time_ax_capped(p, n, args.cap))
                record(kind="timing", problem=p.name, trials=n, ours_wall=ours[0], ours_cpu=ours[1],
                       ax_wall=None if ax is None else ax[0], ax_cpu=None if ax is None else ax[1])
                if ax is None:
                    print(f"{p.name:<20}{n:>7}{ours[1]:>10.3f}{'-':>9}{'-':>9}{ours[0]:>11.3f}{'-':>9}"
                          + ("" if args.no_ax else f"   Ax over the {args.cap:.0f} s cap"), flush=True)
                    continue
                if n in (30, 100):
                    speed[(p.name, n)] = ax[1] / ours[1]
                print(f"{p.name:<20}{n:>7}{ours[1]:>10.3f}{ax[1]:>9.2f}{ax[1] / ours[1]:>8.1f}x{ours[0]:>11.3f}"
                      f"{ax[0]:>9.2f}", flush=True)
        if speed:
            worst = min(speed, key=lambda k: speed[k])
            verdicts[f"CPU speed >= 10x at 30 and 100 trials (lowest {speed[worst]:.1f}x, {worst[0]} at {worst[1]})"] = \
                speed[worst] >= 10
    if not args.no_regret:
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        print(f"\n## best-so-far regret after the budget, seeds {seeds.start}..{seeds.stop - 1}, batches of {BATCH}",
              flush=True)
        recorded: dict[tuple[str, int], float] = {}
        for path in [f for f in args.ax_from.split(",") if f]:
            for line in Path(path).read_text().splitlines():
                row = json.loads(line)
                if row.get("kind") == "regret" and row.get("engine") == "ax":
                    recorded[(row["problem"], row["seed"])] = row["regret"]
        for p in problems:
            ours, ax = [], []
            for s in seeds:
                if args.ax_from and (p.name, s) not in recorded:
                    continue  # compared seed by seed: only the seeds Ax ran
                r, ts = run_ours(p, s)
                ours.append(r)
                record(kind="regret", engine="fast", problem=p.name, seed=s, regret=r, cpu_per_batch=ts)
                if args.ax_from:
                    ax.append(recorded[(p.name, s)])
                elif not args.no_ax:
                    r_ax, ts_ax = run_ax(p, s)
                    ax.append(r_ax)
                    record(kind="regret", engine="ax", problem=p.name, seed=s, regret=r_ax, cpu_per_batch=ts_ax)
                print(f"  {p.name} seed {s}: ours {r:.4g}" + (f", ax {ax[-1]:.4g}" if ax else ""), flush=True)
            if not ours:
                print(f"{p.name:<20} no seed of {seeds.start}..{seeds.stop - 1} in --ax-from", flush=True)
                continue
            mo = statistics.median(ours)
            line = f"{p.name:<20} budget {p.budget}: median regret ours {mo:.4g}"
            if ax:
                ma = statistics.median(ax)
                ratio = mo / ma if ma > 0 else (1.0 if mo == 0 else math.inf)
                lo, hi = ratio_interval(ours, ax)
                line += f", Ax {ma:.4g}, ratio {ratio:.2f} (90 % bootstrap {lo:.2f}-{hi:.2f})"
                verdicts[f"median regret ratio <= 1.0 on {p.name} ({ratio:.2f})"] = ratio <= 1.0
            print(line, flush=True)
    return report_verdicts(verdicts)


if __name__ == "__main__":
    raise SystemExit(main())
