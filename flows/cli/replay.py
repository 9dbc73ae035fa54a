"""`closedloop replay`, `closedloop compare`, and `closedloop sim --from-campaign` (an emulator)."""

from __future__ import annotations

import argparse
import csv
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from campaigns import (
    CampaignCreated,
    CampaignNotFoundError,
    CampaignState,
    PriorTrialsAdded,
    UsageError,
    fold,
)
from campaigns.identity import new_instance
from flows.app.runtime import event_store
from flows.app.settings import Settings
from flows.cli.drive import drive, startup_finished
from flows.cli.people import current_user
from flows.cli.tables import table

__all__ = ["add_replay_commands", "faithful_report", "identical_trials", "parse_options", "serve_emulator"]


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``--option KEY=VALUE`` items as a mapping; a value is read as JSON when it parses
    (the simulator's options model types it).

    Raises:
        UsageError: an item that is not KEY=VALUE, or a value that is no finite number.
    """
    from simulators import parse_options as parse_simulator_options

    try:
        return parse_simulator_options(items)
    except ValueError as exc:
        raise UsageError(f"--option {exc}", "e.g. --option noise_sd=0.1") from None


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / math.sqrt(sxx * syy)


def faithful_report(source: CampaignState, replay: CampaignState) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Per-trial rows (recorded vs simulated for each metric) and a summary per metric.

    The replay's trial ``i`` re-ran the source's ``i``-th dispatched trial.
    """
    from flows.engine.replay import faithful_points

    assert source.spec is not None
    metrics = list(source.spec.metrics)
    rows: list[dict[str, Any]] = []
    for i, src in enumerate(faithful_points(source)):
        rep = replay.trials.get(str(i))
        row: dict[str, Any] = {"source_trial": src.trial_id, "replay_trial": str(i),
                               "source_status": src.status, "replay_status": rep.status if rep else "missing"}
        for m in metrics:
            rec = src.measurements.get(m)
            sim = rep.measurements.get(m) if rep is not None else None
            row[f"{m}.recorded"] = None if rec is None else rec.mean
            row[f"{m}.simulated"] = None if sim is None else sim.mean
            row[f"{m}.error"] = None if rec is None or sim is None else sim.mean - rec.mean
        rows.append(row)
    summary: dict[str, dict[str, Any]] = {}
    for m in metrics:
        pairs = [(r[f"{m}.recorded"], r[f"{m}.simulated"]) for r in rows
                 if r[f"{m}.recorded"] is not None and r[f"{m}.simulated"] is not None]
        errors = [s - r for r, s in pairs]
        summary[m] = {
            "n": len(pairs),
            "mae": sum(abs(e) for e in errors) / len(errors) if errors else None,
            "max_abs_error": max((abs(e) for e in errors), default=None),
            "correlation": _pearson([p[0] for p in pairs], [p[1] for p in pairs]),
        }
    return rows, summary


def identical_trials(source: CampaignState, replay: CampaignState) -> tuple[int, int, int]:
    """``(same parameters, same parameters and results, trials compared)``, trial by trial in index order."""
    n = min(len(source.trials), len(replay.trials))
    same_points = same_all = 0
    for i in range(n):
        s, r = source.trials[str(i)], replay.trials[str(i)]
        if s.parameters == r.parameters:
            same_points += 1
            if s.status == r.status and {k: v.mean for k, v in s.measurements.items()} == {
                k: v.mean for k, v in r.measurements.items()
            }:
                same_all += 1
    return same_points, same_all, n


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.6g}"


def _print_faithful(source: CampaignState, replay: CampaignState, report: Path | None) -> None:
    rows, summary = faithful_report(source, replay)
    assert source.spec is not None
    metric = source.spec.objectives[0].name
    print(f"\nfaithful replay: {len(rows)} recorded trial(s) re-run; {metric}, recorded vs simulated:")
    shown = rows if len(rows) <= 40 else rows[:30] + rows[-5:]
    cells = [(r["source_trial"], r["replay_trial"], _fmt(r[f"{metric}.recorded"]), _fmt(r[f"{metric}.simulated"]),
              _fmt(r[f"{metric}.error"])) for r in shown]
    if len(rows) > 40:
        cells.insert(30, ("...", f"{len(rows) - 35} more", "(all of them", "with --report", "FILE.csv)"))
    print(table(["source", "replay", "recorded", "simulated", "error"], cells, indent="  "))
    for m, s in summary.items():
        print(f"  {m}: {s['n']} pair(s), mean |error| {_fmt(s['mae'])}, max |error| {_fmt(s['max_abs_error'])}, "
              f"correlation {_fmt(s['correlation'])}")
    if report is not None:
        with report.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"  per-trial report: {report}")


def _cmd_replay(args: argparse.Namespace) -> int:
    from flows.cli.compare import best_so_far_curves, compare_table, write_compare
    from flows.engine.catalog import check_spec_devices
    from flows.engine.replay import plan_replay

    for flag, value in (("--batch-size", args.batch_size), ("--seed", args.seed)):
        if value is not None and abs(value) >= 2**63:  # the log stores 8-byte integers
            raise UsageError(f"{flag} {value:.3g}: too large a whole number", f"give {flag} below {2**63:.3g}")
    settings = Settings()
    with event_store(settings) as store:
        source_log = store.read(args.source)
        source = fold(source_log)
        if source.spec is None:
            raise CampaignNotFoundError(f"no campaign {args.source!r}", "see `closedloop list`", campaign_id=args.source)
        spec, link = plan_replay(source, mode=args.mode, simulator=args.simulator, options=parse_options(args.option),
                                 batch_size=args.batch_size, seed=args.seed, method=args.method)
        check_spec_devices(spec)
        campaign_id = args.campaign_id or f"{args.source}-{args.mode}-{datetime.now():%Y%m%d-%H%M%S}"
        if fold(store.read(campaign_id)).spec is not None:
            raise UsageError(f"campaign {campaign_id!r} exists already", "pass another --campaign-id")
        # A counterfactual replay decides from the data its source started from (the same prior trials).
        prior = [e.model_copy(update={"campaign_id": campaign_id, "seq": 2}) for e in source_log
                 if isinstance(e, PriorTrialsAdded) and args.mode == "counterfactual"][:1]
        store.append([CampaignCreated(campaign_id=campaign_id, seq=1, actor=f"user:{current_user()}", spec=spec,
                                      source=link, instance=new_instance()), *prior])
        print(f"campaign {campaign_id}: {args.mode} replay of {args.source} "
              f"({'its own simulators' if args.simulator is None else f'simulator {args.simulator}'})")
        code = drive(store, settings, campaign_id, args, resume=False)
        replay = fold(store.read(campaign_id))
    if args.mode == "faithful":
        _print_faithful(source, replay, None if args.report is None else Path(args.report))
    else:
        same_points, same_all, n = identical_trials(source, replay)
        print(f"\ncounterfactual replay: {same_points} of {n} trial(s) at the source's parameters, "
              f"{same_all} with the same results too")
    curves = best_so_far_curves([source, replay])
    print(compare_table(curves))
    if args.compare is not None:
        png, html = write_compare(curves, Path(args.compare))
        print(f"plot: {png}  page: {html}")
    return code


def _cmd_compare(args: argparse.Namespace) -> int:
    from flows.cli.compare import best_so_far_curves, compare_table, write_compare

    with event_store(Settings(), create=False) as store:
        states = [fold(store.read(c)) for c in args.campaigns]
    for c, s in zip(args.campaigns, states, strict=True):
        if s.spec is None:
            raise CampaignNotFoundError(f"no campaign {c!r}", "see `closedloop list`", campaign_id=c)
    curves = best_so_far_curves(states)
    if len({(c.metric, c.minimize) for c in curves}) > 1:
        print("note: the campaigns follow different objectives; their curves share one plot", flush=True)
    print(compare_table(curves))
    png, html = write_compare(curves, Path(args.output))
    print(f"plot: {png}  page: {html}")
    return 0


def add_replay_commands(sub: Any) -> None:
    """Add ``replay`` and ``compare`` to the ``closedloop`` sub-command parser."""
    r = sub.add_parser("replay", help="re-run a recorded campaign against a simulator, as a new linked campaign")
    r.add_argument("source", help="the recorded campaign (only read)")
    r.add_argument("--simulator", help="simulator answering every device (default: the source's own simulators)")
    r.add_argument("--option", action="append", metavar="KEY=VALUE", help="simulator option, e.g. noise_sd=0")
    r.add_argument("--mode", choices=["faithful", "counterfactual"], default="faithful",
                   help="faithful: the recorded trials again; counterfactual: the decision process again")
    r.add_argument("--batch-size", type=int, help="counterfactual: another batch size")
    r.add_argument("--seed", type=int, help="counterfactual: another seed")
    r.add_argument("--method", help="counterfactual: another optimizer.method (e.g. sobol)")
    r.add_argument("--campaign-id", help="id of the replay campaign (default: SOURCE-MODE-TIME)")
    r.add_argument("--report", metavar="FILE.csv", help="faithful: write the per-trial comparison here")
    r.add_argument("--compare", metavar="OUT", help="also write OUT.png and OUT.html: best so far, source and replay")
    r.add_argument("--max-runtime", type=float, default=None, metavar="S", help="stop this run after S seconds")
    r.add_argument("--quiet", action="store_true", help="no progress display")
    r.set_defaults(func=_cmd_replay, no_simulators=False, reason=None)

    c = sub.add_parser("compare", help="best so far vs trials and vs time, for several campaigns: PNG, HTML, table")
    c.add_argument("campaigns", nargs="+")
    c.add_argument("--output", "-o", default="compare", help="writes OUTPUT.png and OUTPUT.html (default: compare)")
    c.set_defaults(func=_cmd_compare)



def serve_emulator(args: argparse.Namespace) -> int:
    """`closedloop sim --from-campaign C --device-id D`: fit an emulator to C's results and serve it
    (``--save FILE`` keeps it, for ``simulator: emulator`` devices of a campaign file).

    The emulator (``simulators.Emulator``: a GP per metric through BoTorch) answers like any
    simulated instrument; ``--option`` takes the behaviour options (``noise_sd``, ``duration_s``,
    ``failures``, ``seed``, ...). Its own predictive noise is added to each measurement.
    """
    import sys

    from pydantic import ValidationError

    from flows.app.runtime import mqtt_settings, running_broker_url
    from simulators import SimulatorOptions, serve
    from simulators.emulator import Emulator

    if args.simulator is not None:
        raise UsageError(f"sim: --from-campaign serves an emulator, not {args.simulator!r}", "drop the simulator name")
    settings = Settings()
    with event_store(settings, create=False) as store:
        state = fold(store.read(args.from_campaign))
    if state.spec is None:
        raise CampaignNotFoundError(f"no campaign {args.from_campaign!r}", "see `closedloop list`",
                                    campaign_id=args.from_campaign)
    serving = not args.describe and not (args.save is not None and args.device_id is None)
    if serving:  # what a fit cannot change is checked before it
        try:
            options = SimulatorOptions.model_validate(parse_options(args.option))
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            raise UsageError(f"--option {'.'.join(str(p) for p in first['loc']) or 'options'}: {first['msg']}",
                            "see docs/simulators.md for the behaviour options") from None
        if args.device_id is None:
            raise UsageError("sim: --device-id is required to serve as an instrument", "e.g. --device-id emu-1")
        url = running_broker_url(settings, args.broker)
    emulator = Emulator.fit(state.spec, state.trials.values())
    print(f"emulator of {args.from_campaign}: {emulator.describe()}", file=sys.stderr)
    if args.describe:
        print(f"inputs: {', '.join(emulator.inputs)}; metrics: {', '.join(emulator.metrics)}")
    if args.save is not None:  # with --describe too: one fit, both asked for
        emulator.save(args.save)
        print(f"wrote {args.save}: serve it from a campaign file as "
              f"`simulator: emulator` with `options: {{file: {args.save}}}`", file=sys.stderr)
    if not serving:
        return 0
    startup_finished()
    serve(emulator, args.device_id, mqtt_settings(settings, url), options,
          record_path=None if args.record is None else Path(args.record),
          announce=f"emulator serving as device {args.device_id} (measures {', '.join(emulator.metrics)}); "
                   "Ctrl-C to stop")
    return 0
