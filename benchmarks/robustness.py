"""No data a device can legally send stops the optimizer (issue 14, item 8; must-show 5).

Short campaigns of BoTorch test problems (Branin, Hartmann3, Hartmann6, Ackley3), driven
in-process through ``AxOptimizer`` (suggest, complete; no broker, no database), whose
measurements are:

- ``noise-1%``, ``noise-10%``, ``noise-50%``: Gaussian noise, sd a fraction of the problem's
  spread (the sd of its values over 256 Sobol points);
- ``student-t``, ``cauchy``: heavy-tailed noise (Student-t with 2 degrees of freedom, Cauchy),
  scaled to 10% of the spread;
- ``constant``: every measurement 3.0;
- ``repeated``: values rounded to a quarter of the spread (long runs of equal readings);
- ``extreme``: one reading in ten replaced by 1e200, -1e200, 1e300 or -1e300 (finite, legal).

Engines (every ``optimizer.method``): ``botorch`` (the default; a continuous space takes the
fast NumPy path), ``botorch/int`` (the default on a space whose first parameter is an int
in 0..20: Ax's BoTorch generator with the fast settings), ``botorch_default`` (Ax's own
generation; slow, so it gets ~1 campaign in 22) and ``sobol``. Halfway through, each campaign
is rebuilt from its records as a resume would rebuild it. A campaign is **stopped by the
optimizer** when ``suggest`` or ``complete`` raises; a **fallback** is a trial whose
generator is ``sobol (fallback: ...)``: the model failed numerically and the optimizer went
on with its Sobol sequence. Printed per engine and data kind: campaigns, stopped, campaigns
that needed a fallback (share) and fallback trials.

Usage::

    nice .venv/bin/python benchmarks/robustness.py [--campaigns 504] [--seed 0] [--trials 20]
        [--quick] [--part K/N --results FILE] [--report FILE ...]

``--quick``: 48 campaigns of 16 trials. ``--part K/N`` runs every N-th campaign of the plan
(parts in parallel processes), ``--results`` appends a JSON line per campaign, and
``--report`` prints the table of one or more results files.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import argparse
import json
import logging
import time
import warnings
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from botorch.test_functions import Ackley, Branin, Hartmann
from botorch.test_functions.synthetic import SyntheticTestFunction

from campaigns import CampaignSpec, Measurement, parse_spec
from campaigns.state import TrialRecord
from optimizer import AxOptimizer

PROBLEMS: dict[str, Callable[[], SyntheticTestFunction]] = {
    "branin": Branin,
    "hartmann3": lambda: Hartmann(dim=3),
    "hartmann6": lambda: Hartmann(dim=6),
    "ackley3": lambda: Ackley(dim=3),
}
KINDS = ["noise-1%", "noise-10%", "noise-50%", "student-t", "cauchy", "constant", "repeated", "extreme"]
#: Engines and their weights in the mix (botorch_default costs ~1 s per suggestion).
ENGINES = {"botorch": 12, "botorch/int": 3, "sobol": 6, "botorch_default": 1}
EXTREMES = (1e200, -1e200, 1e300, -1e300)
INT_STEPS = 20


def _spec(problem: SyntheticTestFunction, name: str, engine: str, seed: int, trials: int, batch: int) -> CampaignSpec:
    parameters: list[dict[str, Any]] = [
        {"name": f"x{i}", "type": "float", "bounds": [float(lo), float(hi)]} for i, (lo, hi) in enumerate(problem.bounds.T)
    ]
    if engine == "botorch/int":
        parameters[0] = {"name": "x0", "type": "int", "bounds": [0, INT_STEPS]}
    data: dict[str, Any] = {
        "name": name, "seed": seed, "parameters": parameters,
        "objectives": [{"name": "y", "minimize": True}], "budget": {"max_trials": trials}, "batch_size": batch,
        "devices": [{"id": "d", "measures": ["y"]}],
    }
    if engine != "botorch":
        data["optimizer"] = {"method": engine.split("/")[0]}
    return parse_spec(data)


def _x(problem: SyntheticTestFunction, engine: str, parameters: dict[str, Any]) -> torch.Tensor:
    x = [float(parameters[f"x{i}"]) for i in range(problem.dim)]
    if engine == "botorch/int":
        lo, hi = (float(b) for b in problem.bounds[:, 0])
        x[0] = lo + (hi - lo) * x[0] / INT_STEPS
    return torch.tensor([x], dtype=torch.float64)


def _spread(problem: SyntheticTestFunction) -> float:
    u = torch.quasirandom.SobolEngine(problem.dim, scramble=True, seed=0).draw(256, dtype=torch.float64)
    lo, hi = problem.bounds
    return float(problem(lo + u * (hi - lo)).std())


def _measure(kind: str, value: float, spread: float, rng: np.random.Generator) -> float:
    if kind.startswith("noise-"):
        return value + float(kind[6:-1]) / 100 * spread * float(rng.standard_normal())
    if kind == "student-t":
        return value + 0.1 * spread * float(rng.standard_t(2))
    if kind == "cauchy":
        return value + 0.1 * spread * float(rng.standard_cauchy())
    if kind == "constant":
        return 3.0
    if kind == "repeated":
        step = spread / 4
        return round(value / step) * step
    if rng.random() < 0.1:  # extreme
        return EXTREMES[int(rng.integers(len(EXTREMES)))]
    return value


def _records(opt: AxOptimizer) -> list[TrialRecord]:
    """The optimizer's trials as the log would fold them (for a rebuild, as on resume)."""
    now = datetime.now(UTC)
    out = []
    for t in opt._trials:  # the benchmark reads the records it needs; no public accessor
        status = "completed" if t.status == "completed" else "suggested"
        out.append(TrialRecord(t.trial_id, int(t.trial_id), dict(t.parameters), t.generator, t.sobol_position,
                               now, status=status, measurements=dict(t.measurements)))
    return out


def run_campaign(engine: str, kind: str, problem_name: str, seed: int, trials: int, batch: int,
                 spread: dict[str, float]) -> tuple[str | None, int]:
    """One campaign: (what stopped it, or None; how many trials came from a fallback)."""
    problem = PROBLEMS[problem_name]()
    spec = _spec(problem, f"{problem_name}-{kind.replace('%', 'pct')}-{seed}", engine, seed, trials, batch)
    rng = np.random.default_rng(seed)
    opt = AxOptimizer(spec, threads=1)
    fallbacks = 0
    rebuilt = False
    try:
        while opt.num_trials < trials:
            if not rebuilt and opt.num_trials >= trials // 2:
                opt, rebuilt = AxOptimizer.rebuild(spec, _records(opt), threads=1), True
            for t in opt.suggest(min(batch, trials - opt.num_trials)):
                fallbacks += t.generator.startswith("sobol (fallback")
                value = float(problem(_x(problem, engine, t.parameters)))
                opt.complete(t.trial_id, {"y": Measurement(mean=_measure(kind, value, spread[problem_name], rng))})
    except Exception as exc:  # a benchmark counts what stops a campaign, whatever it is
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}", fallbacks
    return None, fallbacks


def plan(campaigns: int, seed: int) -> list[tuple[str, str, str, int, int]]:
    """(engine, kind, problem, seed, batch) per campaign: kinds and problems in turn, engines
    drawn by weight, batch sizes 1-4 (all from ``seed``)."""
    engines = list(ENGINES)
    weights = np.array([ENGINES[e] for e in engines], dtype=float)
    problems = list(PROBLEMS)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(campaigns):
        engine = engines[int(rng.choice(len(engines), p=weights / weights.sum()))]
        kind = KINDS[i % len(KINDS)]
        problem = problems[(i // len(KINDS)) % len(problems)]
        out.append((engine, kind, problem, seed * 100_003 + i, int(rng.integers(1, 5))))
    return out


def report(rows: list[dict[str, Any]], header: str) -> None:
    """The table per engine and data kind, the reasons of any stop, and the totals."""
    count: Counter[tuple[str, str]] = Counter()
    stopped: Counter[tuple[str, str]] = Counter()
    fell: Counter[tuple[str, str]] = Counter()
    fell_trials: Counter[tuple[str, str]] = Counter()
    for r in rows:
        key = (r["engine"], r["kind"])
        count[key] += 1
        stopped[key] += r["stopped"] is not None
        fell[key] += r["fallbacks"] > 0
        fell_trials[key] += r["fallbacks"]
    print(f"\n{header}\n")
    print(f"{'engine':<16}{'data':<11}{'campaigns':>10}{'stopped':>9}{'fallback':>10}{'share':>8}{'fb trials':>11}")

    def line(engine: str, kind: str, keys: list[tuple[str, str]]) -> None:
        n = sum(count[k] for k in keys)
        if n:
            f = sum(fell[k] for k in keys)
            print(f"{engine:<16}{kind:<11}{n:>10}{sum(stopped[k] for k in keys):>9}{f:>10}{f / n:>8.0%}"
                  f"{sum(fell_trials[k] for k in keys):>11}")

    for engine in ENGINES:
        for kind in KINDS:
            line(engine, kind, [(engine, kind)])
    for engine in ENGINES:
        line(engine, "all", [(engine, kind) for kind in KINDS])
    for r in rows:
        if r["stopped"] is not None:
            print(f"stopped ({r['engine']}): {r['problem']} {r['kind']} seed {r['seed']} batch {r['batch']}: {r['stopped']}")
    total = sum(count.values())
    print(f"\ncampaigns {total}, stopped by the optimizer {sum(stopped.values())}, "
          f"needed a fallback {sum(fell.values())} ({sum(fell.values()) / max(total, 1):.1%})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--campaigns", type=int, default=504, help="campaigns in all (default 504)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trials", type=int, default=20, help="trials per campaign")
    ap.add_argument("--quick", action="store_true", help="48 campaigns of 16 trials")
    ap.add_argument("--part", default="0/1", metavar="K/N", help="run only campaigns i with i %% N == K")
    ap.add_argument("--results", metavar="FILE", help="append one JSON line per campaign to FILE")
    ap.add_argument("--report", nargs="+", metavar="FILE", help="print the table of results files, run nothing")
    ap.add_argument("--done", nargs="+", default=[], metavar="FILE",
                    help="skip the campaigns already in these results files (a run resumed in other parts)")
    args = ap.parse_args()
    if args.report:
        rows = [json.loads(x) for f in args.report for x in Path(f).read_text().splitlines() if x.strip()]
        report(rows, f"{len(rows)} campaigns from {', '.join(args.report)}")
        return
    if args.quick:
        args.campaigns, args.trials = 48, 16
    k, n = (int(v) for v in args.part.split("/"))
    logging.basicConfig(level=logging.ERROR)  # each fallback's warning line is counted, not shown
    warnings.simplefilter("ignore")  # Ax's and BoTorch's warnings about odd data are expected here
    spread = {name: _spread(make()) for name, make in PROBLEMS.items()}
    done = {json.loads(x)["seed"] for f in args.done if Path(f).exists() for x in Path(f).read_text().splitlines() if x.strip()}
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for i, (engine, kind, problem, seed, batch) in enumerate(plan(args.campaigns, args.seed)):
        if i % n != k or seed in done:
            continue
        why, fallbacks = run_campaign(engine, kind, problem, seed, args.trials, batch, spread)
        row = {"engine": engine, "kind": kind, "problem": problem, "seed": seed, "batch": batch,
               "trials": args.trials, "stopped": why, "fallbacks": fallbacks}
        rows.append(row)
        if args.results:
            with open(args.results, "a") as out:
                out.write(json.dumps(row) + "\n")
        if len(rows) % 25 == 0:
            print(f"  {len(rows)} campaigns, {time.perf_counter() - started:.0f} s: "
                  f"stopped {sum(r['stopped'] is not None for r in rows)}, "
                  f"needed a fallback {sum(r['fallbacks'] > 0 for r in rows)}", flush=True)
    report(rows, f"{len(rows)} campaigns of {args.trials} trials, seed {args.seed}, part {args.part}, "
                 f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
