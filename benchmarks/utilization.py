"""Device utilization: asynchronous versus batch-synchronous dispatch, N = 1, 4, 16 (issue 6).

N simulated Branin instruments with random trial durations, uniform over
``[lo, hi] x`` the suggestion time measured before the run (default ``[5, 15]``),
run a campaign through ``CampaignLoop`` on Mosquitto and an nx-27017 log, once with
``dispatch: async`` (suggestions computed ahead in the optimizer thread) and once with
``dispatch: batch`` (batches of N, the next once the whole batch is done).

Utilization is read from the log: a device is busy from a trial's ``TrialDispatched`` to its
``TrialCompleted``; the window runs from ``RunStarted`` to the last ``TrialDispatched`` (after
it the budget is spent and idle devices have nothing left to run: that tail is the budget
ending, not the loop). Utilization = busy device-time in the window / (N x window).

The generator is ``optimizer.method: botorch`` (Sobol for the first ``--init`` trials). The
suggestion time ``s`` is measured first, for each N, as the loop meets it in mid-campaign: the
median of 15 calls (``suggest(k)``, k = 1, 2, 3, 4, 1, three times: the sizes the loop asks
for) of an ``AxOptimizer`` with half the run's trials completed (at least ``--init`` + 2) and
N - 1 trials pending (the other devices' trials, which a suggestion accounts for); durations
are then ``[lo*s, hi*s]``. Each run also times its own suggestion calls and prints mean
duration / median call, to show whether durations were >= 5x the suggestion time in the run
itself (machine load moves it).

Each configuration runs ``--repeat`` times (default 3) and the median utilization is judged:
with sub-second trials a single run's figure moves by several points from run to run (the
machine is shared; trial durations and the optimizer's timing are random). Every run is
printed.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/utilization.py [--devices 1,4,16]
        [--trials-per-device 10] [--repeat 3] [--factor 5,15] [--init 4] [--method botorch|sobol]
        [--seconds S] [--suggest-ahead K]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._stack import Stack, branin_spec, run_campaign  # noqa: E402
from campaigns import Measurement, SuggestedTrial  # noqa: E402
from flows.engine.loop import LoopOptions  # noqa: E402
from optimizer import AxOptimizer  # noqa: E402
from simulators import branin  # noqa: E402


def suggestion_time(method: str, init: int, pending: int = 0, completed: int = 0) -> float:
    """Median seconds of 15 suggestion calls (1 to 4 trials) with ``max(init + 2, completed)``
    and more completed trials and ``pending`` trials running."""
    spec = branin_spec("s", 1, max_trials=1000, method=method, initialization_trials=init)
    optimizer = AxOptimizer(spec, threads=1)
    for _ in range(max(init + 2, completed)):
        [t] = optimizer.suggest(1)
        optimizer.complete(t.trial_id, {"branin": Measurement(mean=branin(float(t.parameters["x1"]),
                                                                          float(t.parameters["x2"])))})
    if pending:
        optimizer.suggest(pending)  # left running
    times = []
    for k in (1, 2, 3, 4, 1) * 3:  # the sizes the loop asks for, three rounds
        started = time.perf_counter()
        trials = optimizer.suggest(k)
        times.append(time.perf_counter() - started)
        for t in trials:
            optimizer.complete(t.trial_id, {"branin": Measurement(mean=1.0)})
    return statistics.median(times)


class Timed:
    """The real optimizer, each suggestion call timed (seconds, trials)."""

    def __init__(self, inner: AxOptimizer, calls: list[tuple[float, int]]) -> None:
        self.inner, self.calls = inner, calls

    def suggest(self, n: int) -> list[SuggestedTrial]:
        started = time.perf_counter()
        out = self.inner.suggest(n)
        self.calls.append((time.perf_counter() - started, n))
        return out

    def complete(self, trial_id: str, measurements: dict[str, Measurement]) -> None:
        self.inner.complete(trial_id, measurements)

    def fail(self, trial_id: str, reason: str) -> None:
        self.inner.fail(trial_id, reason)


def utilization(events: list, devices: int) -> tuple[float, float]:  # type: ignore[type-arg]
    """(busy fraction in the window, window seconds), from the log."""
    start = next(e.time for e in events if e.kind == "RunStarted")
    end = max(e.time for e in events if e.kind == "TrialDispatched")
    window = (end - start).total_seconds()
    dispatched = {e.trial_id: e.time for e in events if e.kind == "TrialDispatched"}
    busy = 0.0
    for e in events:
        if e.kind == "TrialCompleted":
            a, b = max(dispatched[e.trial_id], start), min(e.time, end)
            busy += max(0.0, (b - a).total_seconds())
    # Trials dispatched and still running at the window's end count up to the end.
    done = {e.trial_id for e in events if e.kind == "TrialCompleted"}
    busy += sum((end - t).total_seconds() for k, t in dispatched.items() if k not in done)
    return busy / (devices * window), window


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="1,4,16")
    parser.add_argument("--trials-per-device", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration (the median is judged)")
    parser.add_argument("--factor", default="5,15", help="durations as multiples of the suggestion time")
    parser.add_argument("--init", type=int, default=4, help="Sobol trials before BoTorch")
    parser.add_argument("--method", default="botorch")
    parser.add_argument("--seconds", type=float, default=None, help="use this suggestion time instead of measuring")
    parser.add_argument("--suggest-ahead", type=int, default=None,
                        help="trials kept suggested beyond the free devices (default: the loop's, ceil(devices / 5))")
    args = parser.parse_args()
    if args.suggest_ahead is not None and args.suggest_ahead < 0:
        parser.error(f"--suggest-ahead must be 0 or more, not {args.suggest_ahead}")
    print("load average at start: %.2f %.2f %.2f (2 cores; other work on the machine slows every figure)"
          % os.getloadavg(), flush=True)
    lo, hi = (float(x) for x in args.factor.split(","))
    rows = []
    with Stack() as stack:
        for n in (int(c) for c in args.devices.split(",")):
            trials = max(12, args.trials_per_device * n)
            # Mid-campaign: half the run's trials completed, the other devices' trials pending.
            s = args.seconds if args.seconds is not None else suggestion_time(args.method, args.init, n - 1, trials // 2)
            print(f"N={n}: generator {args.method} (Sobol for {args.init} trials); suggestion time s = {s:.3f} s "
                  f"({trials // 2} completed, {n - 1} pending); durations uniform [{lo * s:.2f}, {hi * s:.2f}] s",
                  flush=True)
            for mode in ("async", "batch"):
                spec = branin_spec(f"u-{mode}-{n}", n, max_trials=trials, batch_size=n, dispatch=mode,
                                   method=args.method, initialization_trials=args.init,
                                   duration_s=(lo * s, hi * s), trial_timeout_s=max(120.0, 50 * hi * s))
                runs = []
                for repeat in range(args.repeat):
                    calls: list[tuple[float, int]] = []
                    r = run_campaign(stack, spec.model_copy(update={"name": f"{spec.name}-{repeat}"}),
                                     make_optimizer=lambda sp, tr, calls=calls: Timed(
                                         AxOptimizer.rebuild(sp, list(tr), threads=1), calls),
                                     options=LoopOptions(suggest_ahead=args.suggest_ahead))
                    u, window = utilization(r.events, n)
                    bo = [c for c in calls[1:]] or calls  # the first call is the Sobol opening
                    call_s = statistics.median(c[0] for c in bo)
                    ratio = (lo + hi) / 2 * s / call_s  # mean duration / median call
                    runs.append((u, ratio))
                    print(f"  N={n:<3} {mode:6} {trials:4d} trials  utilization {u:6.1%}  window {window:6.1f} s  "
                          f"wall {r.wall_s:6.1f} s  suggestion calls: {len(calls)}, median {call_s:.3f} s for "
                          f"{statistics.median(c[1] for c in bo):g} trial(s); mean duration / median call "
                          f"{ratio:.1f}", flush=True)
                rows.append((n, mode, statistics.median(u for u, _ in runs), min(u for u, _ in runs),
                             max(u for u, _ in runs), min(ratio for _, ratio in runs)))
    print(f"\nmedian (min-max) of {args.repeat} run(s)")
    print(f"{'devices':>8}{'async':>24}{'batch':>24}")
    for n in sorted({r[0] for r in rows}):
        by = {r[1]: f"{r[2]:.1%} ({r[3]:.1%}-{r[4]:.1%})" for r in rows if r[0] == n}
        print(f"{n:>8}{by['async']:>24}{by['batch']:>24}")
    ok = True
    for n in (4, 16):
        hit = [r for r in rows if r[0] == n and r[1] == "async"]
        if hit:
            passed = hit[0][2] >= 0.9
            ok &= passed
            premise = "" if hit[0][5] >= 5 else f" (in a run durations were only {hit[0][5]:.1f}x the suggestion calls)"
            print(f"{'PASS' if passed else 'FAIL'}: {n} devices, async: median utilization {hit[0][2]:.1%} >= 90%{premise}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
