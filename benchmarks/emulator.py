"""How well an emulator built from a recorded Hartmann6 campaign predicts the true function (issue 5).

A recorded campaign is an event log as the loop writes it (``CampaignCreated``, then per batch
``TrialsSuggested``, ``TrialDispatched``, ``TrialCompleted``), folded with ``campaigns.fold``;
``simulators.Emulator`` is fitted to the folded trials. Noise-free Hartmann6 values
(``botorch.test_functions.Hartmann(dim=6)``) throughout.

- ``sobol``: the trials are a scrambled Sobol design of N points (seeded); R² on
  ``--held-out`` points drawn uniformly at random over [0, 1]^6, the leave-one-out R² on the
  training data, and the fit time, for each model variant (kernel × output warp).
- ``ax`` (``--ax N``): the trials are what a real campaign chooses: ``optimizer.AxOptimizer``
  on ``campaigns/examples/hartmann6.yaml`` (Sobol initialization, then BoTorch; batches of 3),
  one campaign per ``--ax-seeds`` spec seed. The emulator of each is scored on uniform points
  and on the points of the other campaigns (held-out points where campaigns go);
  ``--save-campaigns FILE`` writes the campaigns' trials (the unit tests read such a file).
- ``serve`` (``--serve N``): a new N-trial Ax campaign (seed 99) whose instrument is the
  emulator of the first ``ax`` campaign (``matern/auto``) (values = ``Emulator.measure``); reports the best point
  it finds, by the emulator and by the true function.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/emulator.py [--sizes 60,300] [--seeds 3]
        [--held-out 500] [--variants matern/auto,matern/none,rbf/none] [--ax 60]
        [--ax-seeds 11,12,13,14,15] [--save-campaigns FILE] [--serve 30]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from botorch.test_functions import Hartmann
from torch.quasirandom import SobolEngine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from campaigns import (  # noqa: E402
    CampaignCreated,
    CampaignSpec,
    EventBase,
    Measurement,
    SuggestedTrial,
    TrialCompleted,
    TrialDispatched,
    TrialsSuggested,
    fold,
    load_spec,
)
from simulators.emulator import Emulator, r2_score  # noqa: E402

SPEC = load_spec(ROOT / "campaigns" / "examples" / "hartmann6.yaml")
HARTMANN = Hartmann(dim=6)
Point = dict[str, Any]


def truth(points: list[Point]) -> list[float]:
    x = torch.tensor([[float(p[f"x{j}"]) for j in range(1, 7)] for p in points], dtype=torch.float64)
    return HARTMANN(x).tolist()


def as_points(x: torch.Tensor) -> list[Point]:
    return [{f"x{j + 1}": float(v) for j, v in enumerate(row)} for row in x.tolist()]


def recorded(spec: CampaignSpec, batches: list[list[SuggestedTrial]], values: dict[str, float]) -> list[EventBase]:
    """The event log of a campaign that ran these batches and measured these values."""
    events: list[EventBase] = [CampaignCreated(campaign_id=spec.name, seq=1, actor="user:bench", spec=spec)]
    for batch in batches:
        events.append(TrialsSuggested(campaign_id=spec.name, seq=len(events) + 1, actor="optimizer", trials=batch))
        for i, t in enumerate(batch):
            device = spec.devices[i % len(spec.devices)].id
            events.append(TrialDispatched(campaign_id=spec.name, seq=len(events) + 1, actor="orchestrator",
                                          trial_id=t.trial_id, device_id=device, request_id=f"r{t.trial_id}"))
            events.append(TrialCompleted(campaign_id=spec.name, seq=len(events) + 1, actor=f"device:{device}",
                                         trial_id=t.trial_id, device_id=device, request_id=f"r{t.trial_id}",
                                         measurements={"hartmann6": Measurement(mean=values[t.trial_id])}))
    return events


def sobol_campaign(n: int, seed: int) -> Any:
    points = as_points(SobolEngine(6, scramble=True, seed=seed).draw(n, dtype=torch.float64))
    trials = [SuggestedTrial(trial_id=str(i), parameters=p, generator="sobol", sobol_position=i)
              for i, p in enumerate(points)]
    batches = [trials[i:i + SPEC.batch_size] for i in range(0, n, SPEC.batch_size)]
    return fold(recorded(SPEC, batches, dict(zip((t.trial_id for t in trials), truth(points), strict=True))))


def ax_campaign(n: int, seed: int, measure: Callable[[Point], float]) -> Any:
    """A real campaign: AxOptimizer suggests batches of 3, ``measure`` gives the values."""
    from optimizer import AxOptimizer

    spec = SPEC.model_copy(update={"seed": seed, "budget": SPEC.budget.model_copy(update={"max_trials": n})})
    opt = AxOptimizer(spec, threads=1)
    batches: list[list[SuggestedTrial]] = []
    values: dict[str, float] = {}
    while len(values) < n:
        batch = opt.suggest(min(spec.batch_size, n - len(values)))
        batches.append(batch)
        for t in batch:
            values[t.trial_id] = measure(t.parameters)
            opt.complete(t.trial_id, {"hartmann6": Measurement(mean=values[t.trial_id])})
    return fold(recorded(spec, batches, values))


def save_campaigns(campaigns: dict[int, Any], path: Path) -> None:
    """The trials of the Ax campaigns, in order: spec seed -> [{batch, parameters, hartmann6}]."""
    doc = {"about": "real AxOptimizer campaigns on campaigns/examples/hartmann6.yaml (noise-free, batches of 3), "
                    "written by benchmarks/emulator.py --save-campaigns",
           "campaigns": {str(seed): [{"parameters": t.parameters, "generator": t.generator,
                                      "hartmann6": t.measurements["hartmann6"].mean}
                                     for t in sorted(state.trials.values(), key=lambda t: t.index)]
                         for seed, state in campaigns.items()}}
    path.write_text(json.dumps(doc, indent=None, separators=(",", ":")) + "\n", encoding="utf-8")


def score(emulator: Emulator, points: list[Point]) -> float:
    return r2_score(truth(points), emulator.predict(points)["hartmann6"][0])


def fit(state: Any, variant: str, seed: int) -> tuple[Emulator, float]:
    kernel, warp = variant.split("/")
    t0 = time.perf_counter()
    emulator = Emulator.fit(state.spec, state.trials.values(), seed=seed, kernel=kernel, warp=warp)  # type: ignore[arg-type]
    return emulator, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="60,300")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--held-out", type=int, default=500)
    parser.add_argument("--variants", default="matern/auto,matern/none,rbf/none,rbf/auto")
    parser.add_argument("--ax", type=int, default=0, help="trials of the two real Ax campaigns (0: skip)")
    parser.add_argument("--ax-seeds", default="11,12", help="spec seeds of the Ax campaigns")
    parser.add_argument("--save-campaigns", default="", help="write the Ax campaigns' trials to this JSON file")
    parser.add_argument("--serve", type=int, default=0, help="trials of a campaign served by the emulator (needs --ax)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    variants = args.variants.split(",")
    print(f"torch threads {torch.get_num_threads()}; held-out: {args.held_out} uniform points per seed")
    print(f"{'design':<8} {'n':>4} {'seed':>4} {'variant':<12} {'R2 held-out':>11} {'R2 loo':>7} {'warp':>5} {'fit s':>6}")
    for n in map(int, args.sizes.split(",")):
        for seed in range(args.seeds):
            state = sobol_campaign(n, seed)
            held_out = as_points(torch.rand(args.held_out, 6, generator=torch.Generator().manual_seed(1000 + seed),
                                            dtype=torch.float64))
            for variant in variants:
                emulator, seconds = fit(state, variant, seed)
                warp = "log" if "log|y|" in emulator.describe() else "none"
                print(f"{'sobol':<8} {n:>4} {seed:>4} {variant:<12} {score(emulator, held_out):>11.3f} "
                      f"{emulator.loo_r2['hartmann6']:>7.3f} {warp:>5} {seconds:>6.2f}", flush=True)
    if args.ax:
        seeds = [int(v) for v in args.ax_seeds.split(",")]
        t0 = time.perf_counter()
        campaigns = {seed: ax_campaign(args.ax, seed, lambda p: truth([p])[0]) for seed in seeds}
        print(f"{len(seeds)} Ax campaigns of {args.ax} trials in {time.perf_counter() - t0:.0f} s; best found "
              + ", ".join(f"{c.best().measurements['hartmann6'].mean:.3f}" for c in campaigns.values())
              + " (optimum -3.322)")
        if args.save_campaigns:
            save_campaigns(campaigns, Path(args.save_campaigns))
        held_out = as_points(torch.rand(args.held_out, 6, generator=torch.Generator().manual_seed(999),
                                        dtype=torch.float64))
        print("ax: fitted on one campaign; held out: uniform points, and every point of the other campaigns")
        print(f"{'design':<8} {'n':>4} {'seed':>4} {'variant':<12} {'R2 uniform':>10} {'R2 other campaigns':>18} "
              f"{'R2 loo':>7} {'fit s':>6}")
        for seed, state in campaigns.items():
            others = [t.parameters for s, c in campaigns.items() if s != seed for t in c.trials.values()]
            for variant in variants:
                emulator, seconds = fit(state, variant, 0)
                print(f"{'ax':<8} {args.ax:>4} {seed:>4} {variant:<12} {score(emulator, held_out):>10.3f} "
                      f"{score(emulator, others) if others else float('nan'):>18.3f} "
                      f"{emulator.loo_r2['hartmann6']:>7.3f} {seconds:>6.2f}", flush=True)
        if args.serve:
            emulator, _ = fit(campaigns[seeds[0]], "matern/auto", 0)
            print(emulator.describe())
            rng = random.Random(0)
            t0 = time.perf_counter()
            served = ax_campaign(args.serve, 99, lambda p: emulator.measure(p, rng)["hartmann6"])
            best = served.best()
            print(f"a campaign of {args.serve} trials served by the emulator ({time.perf_counter() - t0:.0f} s): best "
                  f"{best.measurements['hartmann6'].mean:.3f} by the emulator, {truth([best.parameters])[0]:.3f} "
                  f"by the true function, at {', '.join(f'{k}={v:.2f}' for k, v in best.parameters.items())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
