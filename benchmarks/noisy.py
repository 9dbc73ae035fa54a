"""closedloop's optimizer against Ax's client on noisy problems, scored by the recommended point.

A lab's measurements are noisy, so the best *observed* trial is often a lucky draw; what a
campaign delivers is the point its model recommends. Each side runs a campaign of
``--budget`` trials in batches of 4 on a problem whose measurements carry Gaussian noise of a
known sd (the same noise stream per seed for both sides), then recommends a point:

- Ax: ``Client.get_best_parameterization()`` (``use_model_predictions=True``, its default in
  Ax 1.x: the trial with the best model-predicted objective);
- closedloop: ``optimizer.model_best.entries_best`` (the completed trial with the best
  posterior mean of the fast engine's GP).

The score is the regret of the TRUE (noise-free) value there: ``f(recommended) - optimum``.
The regret of the true value at the best observed trial is recorded too. Per problem and
noise level: the median regret of each side, their ratio with a 90 % bootstrap interval
(``generation.ratio_interval``), and in how many seeds closedloop's regret was lower.

Every campaign's result goes to ``--out`` (JSON lines) as it finishes, and campaigns already
in it are skipped, so a run can be stopped and continued. Ax's campaigns do not change with
closedloop's code: they are run once and kept in the repository (``--ax-from``, by default
``benchmarks/data/noisy-ax.jsonl``: its Ax rows count as done and join the table), so a new
version of closedloop needs only ``--side ours --tag NAME`` and ``--summary --tag NAME``.
``--known-noise`` gives both sides the noise sd as each measurement's sem.

Usage::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/noisy.py --side ours --tag after --seeds 20 --out noisy.jsonl
    .venv/bin/python benchmarks/noisy.py --summary --tag after --out noisy.jsonl
    .venv/bin/python benchmarks/noisy.py --summary --tag after --seeds 20 --out noisy.jsonl   # seeds 0-19 only
    # Ax's campaigns for more seeds, added to the recorded ones
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/noisy.py --side ax --first-seed 20 --seeds 10 \
        --out benchmarks/data/noisy-ax.jsonl
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import argparse
import json
import logging
import statistics
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from botorch.test_functions import Branin, Hartmann  # noqa: E402
from generation import BATCH, Problem, ax_client, names, ratio_interval, spec_for  # noqa: E402

from campaigns import Measurement  # noqa: E402
from optimizer import AxOptimizer  # noqa: E402
from optimizer.ax_setup import quiet_ax  # noqa: E402
from optimizer.model_best import entries_best  # noqa: E402

PROBLEMS = {
    "branin": Problem("branin", Branin, ("branin",), budget=30, optimum=0.397887),
    "hartmann3": Problem("hartmann3", lambda: Hartmann(dim=3), ("hartmann3",), budget=30, optimum=-3.86278),
    "hartmann6": Problem("hartmann6", lambda: Hartmann(dim=6), ("hartmann6",), budget=30, optimum=-3.32237),
}
#: Two noise sds per problem: moderate and heavy against the function's spread over its domain
#: (sd of the values at random points: Branin ~51, Hartmann3 ~0.8, Hartmann6 ~0.4).
NOISE = {"branin": (2.0, 10.0), "hartmann3": (0.1, 0.3), "hartmann6": (0.05, 0.2)}


class Noisy:
    """``p``'s measurements with Gaussian noise of sd ``sd``; the stream is fixed by the seed."""

    def __init__(self, p: Problem, sd: float, seed: int) -> None:
        self.p, self.sd = p, sd
        self.rng = np.random.default_rng([seed, sum(map(ord, p.name)), round(sd * 1000)])

    def measure(self, x: list[float]) -> float:
        return self.p.evaluate(x)[self.p.metrics[0]] + self.sd * float(self.rng.normal())

    def regret(self, x: list[float]) -> float:
        return self.p.evaluate(x)[self.p.metrics[0]] - float(self.p.optimum)  # type: ignore[arg-type]


def run_ours(p: Problem, sd: float, seed: int, budget: int, known: bool) -> dict[str, Any]:
    """A closedloop campaign (the default fast engine) on the noisy problem."""
    noisy, metric = Noisy(p, sd, seed), p.metrics[0]
    opt = AxOptimizer(spec_for(replace(p, budget=budget), seed), threads=1)
    observed: list[tuple[float, list[float]]] = []
    start = time.perf_counter()
    while len(observed) < budget:
        for t in opt.suggest(min(BATCH, budget - len(observed))):
            x = [float(t.parameters[n]) for n in names(p)]  # type: ignore[arg-type]
            y = noisy.measure(x)
            opt.complete(t.trial_id, {metric: Measurement(mean=y, sem=sd if known else None)})
            observed.append((y, x))
    best = entries_best(opt.spec, opt._trials).pick  # noqa: SLF001 (the optimizer's records)
    assert best is not None
    recommended = [float(best.parameters[n]) for n in names(p)]  # type: ignore[arg-type]
    return {"regret": noisy.regret(recommended), "regret_observed": noisy.regret(min(observed)[1]),
            "seconds": time.perf_counter() - start}


def run_ax(p: Problem, sd: float, seed: int, budget: int, known: bool) -> dict[str, Any]:
    """The same with a plain Ax ``Client`` (default generation strategy)."""
    noisy, metric = Noisy(p, sd, seed), p.metrics[0]
    client = ax_client(p, seed)
    client.configure_generation_strategy()
    observed: list[tuple[float, list[float]]] = []
    start = time.perf_counter()
    while len(observed) < budget:
        quiet_ax(False)  # Ax makes its loggers lazily, at INFO
        for index, parameters in client.get_next_trials(max_trials=min(BATCH, budget - len(observed))).items():
            x = [float(parameters[n]) for n in names(p)]  # type: ignore[arg-type]
            y = noisy.measure(x)
            client.complete_trial(trial_index=index, raw_data={metric: (y, sd) if known else y})
            observed.append((y, x))
    quiet_ax(False)
    parameters, _, _, _ = client.get_best_parameterization(use_model_predictions=True)
    recommended = [float(parameters[n]) for n in names(p)]  # type: ignore[arg-type]
    return {"regret": noisy.regret(recommended), "regret_observed": noisy.regret(min(observed)[1]),
            "seconds": time.perf_counter() - start}


def key(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["side"], row["tag"], row["problem"], row["sd"], row["seed"], row["budget"], row["known"]


#: Ax's recorded campaigns (``--side ax``, seeds 0-119 of every row; Ax is deterministic per seed).
AX_RECORDED = Path(__file__).resolve().parent / "data" / "noisy-ax.jsonl"


def read(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def read_all(out: Path, ax_from: str) -> list[dict[str, Any]]:
    """``--out``'s rows and the Ax rows of the ``--ax-from`` files, each campaign once."""
    rows = {key(r): r for path in ax_from.split(",") if path for r in read(Path(path)) if r["side"] == "ax"}
    return list((rows | {key(r): r for r in read(out)}).values())


def summary(rows: list[dict[str, Any]], tag: str, known: bool, seeds: range | None = None, budget: int = 30) -> None:
    """The table: per problem and noise sd, the seeds both sides finished with ``budget`` trials
    (those in ``seeds`` if given)."""
    rows = [r for r in rows if (seeds is None or r["seed"] in seeds) and r["budget"] == budget]
    ours = {(r["problem"], r["sd"], r["seed"]): r for r in rows if r["side"] == "ours" and r["tag"] == tag and r["known"] == known}
    ax = {(r["problem"], r["sd"], r["seed"]): r for r in rows if r["side"] == "ax" and r["known"] == known}
    print(f"# noisy problems, closedloop '{tag}' vs Ax's client; regret of the true value at the recommended point"
          f"{' (sem given)' if known else ''}{f' (seeds {seeds.start}-{seeds.stop - 1})' if seeds else ''}")
    print(f"{'problem':<11}{'sd':>6}{'seeds':>6}{'ours':>9}{'ax':>9}{'ratio':>7}{'90% interval':>15}{'wins':>7}"
          f"{'  | by best observed: ours':>26}{'ax':>8}{'ratio':>7}")
    for name, sds in NOISE.items():
        for sd in sds:
            common = sorted(k[2] for k in ours if k[:2] == (name, sd) and k in ax)
            if not common:
                continue
            o = [ours[(name, sd, s)]["regret"] for s in common]
            a = [ax[(name, sd, s)]["regret"] for s in common]
            oo = [ours[(name, sd, s)]["regret_observed"] for s in common]
            ao = [ax[(name, sd, s)]["regret_observed"] for s in common]
            mo, ma = statistics.median(o), statistics.median(a)
            lo, hi = ratio_interval(o, a)
            wins = sum(x < y for x, y in zip(o, a, strict=True))
            print(f"{name:<11}{sd:>6g}{len(common):>6}{mo:>9.3f}{ma:>9.3f}{mo / ma:>7.2f}{f'{lo:.2f}-{hi:.2f}':>15}"
                  f"{f'{wins}/{len(common)}':>7}{statistics.median(oo):>26.3f}{statistics.median(ao):>8.3f}"
                  f"{statistics.median(oo) / statistics.median(ao):>7.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=["ours", "ax", "both"], default="both")
    ap.add_argument("--tag", default="current", help="names this version of closedloop in --out")
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--seeds", type=int, default=None,
                    help="how many seeds from --first-seed (15 when running; with --summary: all unless given)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--budget", type=int, default=30)
    ap.add_argument("--known-noise", action="store_true", help="each measurement's sem = the noise sd")
    ap.add_argument("--out", type=Path, default=Path("noisy.jsonl"))
    ap.add_argument("--ax-from", default=str(AX_RECORDED),
                    help="Ax's recorded campaigns (files, comma-separated; '' for none): done, and in the table")
    ap.add_argument("--summary", action="store_true", help="print the table from --out and exit")
    args = ap.parse_args(argv)
    if args.summary:
        chosen = range(args.first_seed, args.first_seed + args.seeds) if args.seeds is not None else None
        summary(read_all(args.out, args.ax_from), args.tag, args.known_noise, chosen, args.budget)
        return 0
    seeds = range(args.first_seed, args.first_seed + (15 if args.seeds is None else args.seeds))
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("ax").setLevel(logging.WARNING)
    done = {key(r) for r in read_all(args.out, args.ax_from)}
    sides = ["ours", "ax"] if args.side == "both" else [args.side]
    for seed in seeds:
        for name in args.problems.split(","):
            for sd in NOISE[name]:
                for side in sides:
                    row = {"side": side, "tag": args.tag if side == "ours" else "ax", "problem": name, "sd": sd,
                           "seed": seed, "budget": args.budget, "known": args.known_noise}
                    if key(row) in done:
                        continue
                    run = run_ours if side == "ours" else run_ax
                    row |= run(PROBLEMS[name], sd, seed, args.budget, args.known_noise)
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)
    summary(read_all(args.out, args.ax_from), args.tag, args.known_noise, seeds, args.budget)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
