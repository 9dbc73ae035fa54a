"""The `closedloop` command line.

Exit codes: 0 success; 1 a runtime error (database or broker unreachable, a refused command,
...); 2 a usage or campaign-file error (`UsageError`, `SpecError`; the classes are mapped to
codes in one place, `EXIT_CODES`); 130 interrupted (SIGINT, Ctrl-C); 143 terminated (SIGTERM, e.g. a service
manager's stop), which stops exactly as Ctrl-C does; 141 the reader of the output went away
(`closedloop status c | grep -q x`, `export | head`): quietly, as a Unix tool killed by SIGPIPE.
Every error of the user's is one line, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pydantic import ValidationError

from campaigns import (
    AppendConflictError,
    CampaignCreated,
    CampaignNotFoundError,
    CampaignStateError,
    ClosedLoopError,
    OutputError,
    SpecError,
    UsageError,
    event_to_doc,
    fold,
    load_spec,
)
from campaigns.identity import new_instance
from flows.app.runtime import (
    event_store,
    mqtt_settings,
    running_broker_url,
)
from flows.app.settings import Settings, settings_problem
from flows.cli.drive import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    append_resume,
    drive,
    finished_error,
    startup_finished,
)
from flows.cli.people import add_commands, current_user
from flows.cli.replay import add_replay_commands, parse_options
from flows.cli.report import (
    engine_line,
    log_line,
    model_columns,
    model_of,
    status_dict,
    status_text,
)
from flows.cli.tables import campaigns_table, table

if TYPE_CHECKING:
    from campaigns import CampaignSpec, CampaignState
    from storage import MongoEventStore

__all__ = ["EXIT_CODES", "exit_code", "main"]


#: The exit code of each kind of error, the most specific class first; the rest of the tree exits 1.
EXIT_CODES: tuple[tuple[type[ClosedLoopError], int], ...] = (
    (UsageError, EXIT_USAGE),
    (SpecError, EXIT_USAGE),
    (ClosedLoopError, EXIT_ERROR),
)


#: `closedloop export c | head`: the reader closed the pipe. 128 + SIGPIPE, what the shell reports
#: for `cat`, `seq` or `git log` there, so `set -o pipefail` scripts see what they see for those.
EXIT_BROKEN_PIPE = 141


def exit_code(error: ClosedLoopError) -> int:
    """The CLI's exit code for an error: 2 for a usage or campaign-file error, 1 for the rest."""
    return next(code for kind, code in EXIT_CODES if isinstance(error, kind))


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds exactly as Ctrl-C does."""


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let the stop finish
    raise _Terminated


def _cmd_validate(args: argparse.Namespace) -> int:
    # the simulator catalog, loaded only where a spec is accepted
    from flows.engine.catalog import check_spec_devices

    spec = load_spec(args.spec)
    check_spec_devices(spec)
    print(f"{args.spec}: campaign {spec.name!r} is valid ({len(spec.parameters)} parameters, "
          f"{len(spec.objectives)} objective(s), {len(spec.devices)} device(s))")
    print(engine_line(spec))
    if spec.prior_data:
        print("prior data, read when `run` creates the campaign (each point counts as an opening trial): "
              + "; ".join(p.describe() for p in spec.prior_data))
    return EXIT_OK


def _cmd_log(args: argparse.Namespace) -> int:
    settings = Settings()
    with event_store(settings, create=False) as store:
        events = store.read(args.campaign)
    if not events:
        raise _not_found(args.campaign, settings)
    for event in events:
        print(json.dumps(event_to_doc(event), sort_keys=True) if args.json else log_line(event))
    return EXIT_OK


def _not_found(campaign_id: str, settings: Settings) -> CampaignNotFoundError:
    return CampaignNotFoundError(f"no campaign {campaign_id!r} in {settings.store_named()}", "see `closedloop list`",
                                 campaign_id=campaign_id)


def _spec_of(path: str) -> CampaignSpec:
    """The spec file's campaign, its devices checked against the simulators and drivers."""
    from flows.engine.catalog import check_spec_devices

    spec = load_spec(path)
    check_spec_devices(spec)
    return spec


def _created(store: MongoEventStore, spec: CampaignSpec, spec_path: str, campaign_id: str,
             settings: Settings) -> CampaignState:
    """The campaign of a spec file in the log (created now if new), folded."""
    state = fold(store.read(campaign_id))
    if state.spec is None:
        from flows.app.prior import read_prior_data

        actor = f"user:{current_user()}"
        prior = read_prior_data(spec, campaign_id, store, settings, actor)  # refused before anything is written
        try:
            store.append([CampaignCreated(campaign_id=campaign_id, seq=1, actor=actor, spec=spec,
                                          instance=new_instance()), *([prior] if prior else [])])
        except AppendConflictError:
            pass  # created a moment ago by a concurrent `run`: the lease decides who runs it
        else:
            print(f"campaign {campaign_id}: created from {spec_path}")
            if prior is not None:
                print(f"campaign {campaign_id}: starts from {len(prior.trials)} prior trial(s): "
                      + "; ".join(f"{sum(1 for t in prior.trials if t.source == i)} from {s.describe()}"
                                  for i, s in enumerate(prior.sources)))
        state = fold(store.read(campaign_id))
    if state.spec != spec:
        raise UsageError(
            f"campaign {campaign_id!r} exists with a different spec than {spec_path}",
            "pass --campaign-id NEW_ID for a new campaign, or `closedloop resume` it",
            campaign_id=campaign_id,
        )
    return state


def _cmd_run(args: argparse.Namespace) -> int:
    spec = _spec_of(args.spec)
    campaign_id = args.campaign_id or spec.name
    settings = Settings()
    with event_store(settings) as store:
        state = _created(store, spec, args.spec, campaign_id, settings)
        if state.deployed_flow_run is not None:
            raise CampaignStateError(f"campaign {campaign_id!r} is deployed: the workers of its Prefect pool run it",
                                     f"`closedloop status {campaign_id}` shows it; `closedloop resume {campaign_id}` "
                                     "wakes it if it waits", campaign_id=campaign_id)
        return drive(store, settings, campaign_id, args, resume=False)


def _cmd_deploy(args: argparse.Namespace) -> int:
    from flows.prefect.server import quiet_prefect_defaults
    from flows.prefect.service import (
        asking_prefect,
        check_pool_name,
        deploy_campaign,
        deployment_name,
        require_work_pool,
    )

    check_pool_name(args.pool)
    spec = _spec_of(args.spec)
    campaign_id = deployment_name(args.campaign_id or spec.name)
    quiet_prefect_defaults()
    from flows.prefect.approval import prefect_server_configured

    if not prefect_server_configured():
        raise UsageError("deploy needs a Prefect server: PREFECT_API_URL is not set",
                         "start one (`prefect server start`) and export PREFECT_API_URL=http://HOST:4200/api")
    require_work_pool(args.pool)  # all refused before anything is written
    settings = Settings()
    with event_store(settings) as store:
        state = _created(store, spec, args.spec, campaign_id, settings)
    if state.status == "finished":
        raise finished_error(state)
    with asking_prefect("deploy"):
        deployed = deploy_campaign(campaign_id, args.pool, simulators=not args.no_simulators,
                                   current_flow_run=state.deployed_flow_run)
    if not deployed.started:
        print(f"campaign {campaign_id}: deployment campaign/{campaign_id} updated on work pool {args.pool}; "
              f"its flow run {deployed.flow_run_name} ({deployed.flow_run_id}) has not ended: no second one started")
        return EXIT_OK
    print(f"campaign {campaign_id}: deployed as campaign/{campaign_id} on work pool {args.pool}; "
          f"flow run {deployed.flow_run_name} ({deployed.flow_run_id}) starts on its next free worker "
          f"(`prefect worker start --pool {args.pool}`)")
    return EXIT_OK


def _cmd_resume(args: argparse.Namespace) -> int:
    settings = Settings()
    with event_store(settings) as store:
        state = fold(store.read(args.campaign))
        if state.deployed_flow_run is not None:
            return _resume_deployed(store, settings, state, args.reason)
        return drive(store, settings, args.campaign, args, resume=True)


def _resume_deployed(store: MongoEventStore, settings: Settings, state: CampaignState, reason: str | None) -> int:
    """`resume` of a deployed campaign: the resume is logged here, as for any campaign, and its
    flow run (suspended while paused) is woken to go on, on a worker of its pool."""
    from flows.app.lease import hold_lease
    from flows.cli.people import wake_deployed

    campaign_id = state.campaign_id
    if state.status == "finished":
        raise finished_error(state)
    if state.status == "paused":
        # wait: the flow run that paused holds the lease until it has suspended itself.
        with hold_lease(store.uri, settings.mongodb_database, campaign_id, wait=True):
            state = fold(store.read(campaign_id))
            if state.status == "paused":
                resumed = append_resume(store, state, reason)
                print(f"{campaign_id}: resumed (logged as event {resumed.seq})")
    print(f"campaign {campaign_id} is deployed: {wake_deployed(fold(store.read(campaign_id)))}")
    return EXIT_OK


def _load_state(campaign_id: str):  # type: ignore[no-untyped-def]
    settings = Settings()
    with event_store(settings, create=False) as store:
        state = fold(store.read(campaign_id))
    if state.spec is None:
        raise _not_found(campaign_id, settings)
    return state


def _cmd_status(args: argparse.Namespace) -> int:
    state = _load_state(args.campaign)
    model = model_of(state)  # the model-based best beside the observed one
    if args.json:
        print(json.dumps(status_dict(state, model), indent=2))
    else:
        print(status_text(state, model))
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from storage import write_csv, write_json

    state = _load_state(args.campaign)
    writer = write_csv if args.format == "csv" else write_json
    model = model_of(state)  # which trial the model picks, its mean and sd at each
    columns = None if model is None else model_columns(state.spec, model)
    if args.output in (None, "-"):
        writer(state, sys.stdout, columns)
    else:
        try:
            writer(state, Path(args.output), columns)
        except OSError as exc:
            raise OutputError(f"cannot write {args.output!r}: {exc.strerror or exc}",
                                  "give a file path you can write, or - for standard output") from None
        print(f"wrote {len(state.trials)} trial(s) to {args.output}", file=sys.stderr)
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from flows.app.runtime import has_store

    settings = Settings()
    rows, states = [], []
    if has_store(settings):  # a home with no database stays without one: nothing is created to be listed
        with event_store(settings, create=False) as store:
            rows = store.list_campaigns()
            states = [fold(store.read(r.campaign_id)) for r in rows]
    if args.json:
        print(json.dumps([{**r.model_dump(mode="json"), **_listed(s)} for r, s in zip(rows, states, strict=True)],
                         indent=2, default=str))
        return EXIT_OK
    if not rows:
        print(f"No campaigns in {settings.store_named()}: start one with `closedloop run SPEC.yaml`")
        return EXIT_OK
    print(campaigns_table(states, datetime.now(UTC)))
    return EXIT_OK


def _listed(state: CampaignState) -> dict[str, object]:
    """`list --json`'s fields of a campaign beside its summary: what `status --json` says of it."""
    full = status_dict(state)
    return {k: full[k] for k in ("status", "finished_reason", "budget", "trials", "best", "updated_at")}


def _cmd_sim(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from simulators import SIMULATORS, serve

    if args.from_campaign is not None:
        from flows.cli.replay import serve_emulator

        return serve_emulator(args)
    if args.list:
        print(table(["simulator", "what it simulates"], [(n, i.description) for n, i in SIMULATORS.items()]))
        return EXIT_OK
    if args.simulator is None:
        raise UsageError("sim: which simulator?", "name one, e.g. `closedloop sim branin --device-id d1`; "
                        "`closedloop sim --list` lists them")
    if args.simulator not in SIMULATORS:
        raise UsageError(f"unknown simulator {args.simulator!r}", f"choose one of: {', '.join(sorted(SIMULATORS))}")
    options = parse_options(args.option)
    info = SIMULATORS[args.simulator]
    try:
        validated = info.options(options)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "options"
        raise UsageError(f"--option {where}: {first['msg']}", f"see `closedloop sim {args.simulator} --describe`") from None
    if args.describe:
        print(info.describe(validated))
        return EXIT_OK
    if args.plot is not None:
        from simulators import ColourMixingOptions, plot_spectra

        if not isinstance(validated, ColourMixingOptions):
            raise UsageError(f"--plot: {args.simulator} has no spectra to plot", "use it with colour_mixing")
        print(f"wrote {plot_spectra(Path(args.plot), validated)}")
        return EXIT_OK
    if args.device_id is None:
        raise UsageError("sim: --device-id is required to serve as an instrument", "e.g. --device-id bench-1")
    settings = Settings()
    if args.broker is not None:
        from devices import parse_broker_url

        try:
            parse_broker_url(args.broker)
        except ClosedLoopError as exc:
            raise UsageError(f"--broker: {exc.message}", exc.hint) from None
    url = running_broker_url(settings, args.broker)
    startup_finished()
    serve(args.simulator, args.device_id, mqtt_settings(settings, url), options,
          record_path=None if args.record is None else Path(args.record),
          announce=f"simulator {args.simulator} serving as device {args.device_id}; Ctrl-C to stop")
    return EXIT_OK


def _cmd_ax_store(args: argparse.Namespace) -> int:
    # Ax's SQL store, (re)written from the log (flows.app.ax_store); Ax loads only here.
    from flows.app.ax_store import write_ax_store
    from optimizer.ax_store import check_url

    if args.url is not None:
        from sqlalchemy.engine import make_url

        try:
            check_url(args.url)
        except ClosedLoopError as exc:
            raise UsageError(f"--url: {exc.message}", exc.hint) from None
        if make_url(args.url).password is not None:
            raise UsageError("--url: a password on the command line is visible to every user of this machine (ps)",
                             "set the URL with its password in CLOSEDLOOP_AX_DB_URL instead")
    settings = Settings()
    with event_store(settings, create=False) as store:
        events = store.read(args.campaign)
    print(write_ax_store(settings, args.campaign, events, url=args.url).line())
    return EXIT_OK


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage error on one line (``closedloop: error: ... (see closedloop CMD
    --help)``, exit 2) whatever the argument held (a newline, a carriage return); the root parser
    hands it to every subcommand's parser (``parser_class``)."""

    def error(self, message: str) -> NoReturn:
        root = self.prog.split()[0]
        self.exit(EXIT_USAGE, f"{root}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


#: The help of each positional argument that its command left without one, by its name.
_POSITIONAL_HELP = {
    "campaign": "campaign id (`closedloop list` lists them)",
    "campaigns": "campaign ids (`closedloop list` lists them)",
    "spec": "campaign YAML file (e.g. campaigns/examples/branin.yaml)",
    "source": "the recorded campaign (only read)",
}


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="closedloop", description="Run closed-loop experiment campaigns for self-driving labs.")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the loop does")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="create (or continue) a campaign from a spec file and run it to its budget")
    r.add_argument("spec", help="campaign YAML file")
    r.add_argument("--campaign-id", help="campaign id (default: the spec's name)")
    r.add_argument("--no-simulators", action="store_true", help="do not start the spec's simulated devices here")
    r.add_argument("--max-runtime", type=float, default=None, metavar="S", help="stop this run after S seconds")
    r.add_argument("--quiet", action="store_true", help="no progress display")
    r.set_defaults(func=_cmd_run, reason=None)

    dp = sub.add_parser("deploy", help="create (or continue) a campaign and hand it to a Prefect work pool's workers")
    dp.add_argument("spec", help="campaign YAML file")
    dp.add_argument("--campaign-id", help="campaign id (default: the spec's name)")
    dp.add_argument("--pool", default="closedloop", help="the Prefect work pool whose workers run it (default: closedloop)")
    dp.add_argument("--no-simulators", action="store_true",
                    help="the spec's simulated devices run elsewhere (`closedloop sim`), not in the flow run")
    dp.set_defaults(func=_cmd_deploy)

    rs = sub.add_parser("resume", help="continue a campaign from its log (after a crash, a stop, or a pause)")
    rs.add_argument("campaign")
    rs.add_argument("--reason", help="why a paused campaign may go on (recorded in the log)")
    rs.add_argument("--no-simulators", action="store_true", help="do not start the campaign's simulated devices here")
    rs.add_argument("--max-runtime", type=float, default=None, metavar="S", help="stop this run after S seconds")
    rs.add_argument("--quiet", action="store_true", help="no progress display")
    rs.set_defaults(func=_cmd_resume)

    v = sub.add_parser("validate", help="check a campaign file without running anything")
    v.add_argument("spec")
    v.set_defaults(func=_cmd_validate)

    lg = sub.add_parser("log", help="the campaign's events as logged, one a line (--json: one JSON object a line)")
    lg.add_argument("campaign")
    lg.add_argument("--json", action="store_true", help="each event as a JSON object, as this version reads it (older shapes upcast)")
    lg.set_defaults(func=_cmd_log)

    s = sub.add_parser("status", help="where a campaign stands")
    s.add_argument("campaign")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_status)

    e = sub.add_parser("export", help="one row per trial: parameters, measurements, status, device, times")
    e.add_argument("campaign")
    e.add_argument("--format", choices=["csv", "json"], default="csv")
    e.add_argument("--output", "-o", help="file to write (default: standard output)")
    e.set_defaults(func=_cmd_export)

    ls = sub.add_parser("list", help="all campaigns in the log")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_cmd_list)

    ax = sub.add_parser("ax-store", help="(re)write the campaign's Ax experiment to Ax's SQL store from its log")
    ax.add_argument("campaign", help="the campaign id (also the experiment's name in the store)")
    ax.add_argument("--url", help="a SQLAlchemy URL, no password (default: CLOSEDLOOP_AX_DB_URL or HOME/ax.sqlite)")
    ax.set_defaults(func=_cmd_ax_store)

    add_commands(sub)
    add_replay_commands(sub)

    from flows.cli.html_report import (
        add_report_command,  # `closedloop report`: the HTML page
    )

    add_report_command(sub)

    sm = sub.add_parser("sim", help="run a simulated instrument that speaks MQTT protocol v1")
    sm.add_argument("simulator", nargs="?", help="catalog name (see --list)")
    sm.add_argument("--device-id", help="the device id to serve as")
    sm.add_argument("--list", action="store_true", help="list the simulators and exit")
    sm.add_argument("--describe", action="store_true", help="show the simulator's inputs (bounds), metrics and optimum")
    sm.add_argument("--plot", metavar="PNG", help="colour_mixing: draw LED spectra, channel responses and readings")
    sm.add_argument("--broker", help="mqtt[s]://[user@]host[:port], no password: it comes from CLOSEDLOOP_MQTT_PASSWORD or "
                    "CLOSEDLOOP_MQTT_PASSWORD_FILE (default: CLOSEDLOOP_MQTT_URL or the local run's broker)")
    sm.add_argument("--option", action="append", metavar="KEY=VALUE", help="simulator option, e.g. noise_sd=0.1")
    sm.add_argument("--record", metavar="PATH", help="keep the results here, to answer repeated requests after a restart")
    sm.add_argument("--from-campaign", metavar="CAMPAIGN",
                    help="serve an emulator: a GP fitted to CAMPAIGN's results, with noise (no simulator name)")
    sm.add_argument("--save", metavar="FILE", help="with --from-campaign: write the emulator to FILE "
                    "(for `simulator: emulator` devices, `options: {file: FILE}`)")
    sm.set_defaults(func=_cmd_sim)
    for command in sub.choices.values():  # every command's, those of people.py and replay.py too
        for action in command._actions:
            if not action.option_strings and action.help is None:
                action.help = _POSITIONAL_HELP.get(action.dest)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `closedloop` console script."""
    collecting = gc.isenabled()
    gc.disable()  # while the command imports what it needs: see `startup_finished`
    try:
        code = _main(argv)
        sys.stdout.flush()  # a reader gone shows here, not as a traceback at the interpreter's exit
        return code
    except BrokenPipeError:
        # `closedloop status c | grep -q x`: the reader has what it wanted. Python's recipe: what
        # is still buffered goes to /dev/null, so the interpreter's own flush at exit is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    finally:
        if collecting:
            gc.enable()


def _main(argv: Sequence[str] | None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    # argparse reads `--flag=--` as an empty list, not a value: every command would then meet
    # a list where it expects text. Refused here, once, for every flag.
    given = next((w for w in words if w.startswith("-") and w.endswith("=--")), None)
    if given is not None:
        print(f"error: argument {given[:-3][:60]}: '--' is not a value; give one, e.g. {given[:-3][:60]}=VALUE",
              file=sys.stderr)
        return EXIT_USAGE
    parser = _parser()
    args, extra = parser.parse_known_args(words)
    if extra:  # refused by the command's own parser, so that the line names that command's --help
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        commands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM unwinds like Ctrl-C (signal handlers can be set from the main thread only).
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() else None
    try:
        settings = Settings()  # every command reads them: a malformed one is this one line, not a traceback later
    except ValidationError as exc:
        print(f"error: {settings_problem(exc)}", file=sys.stderr)
        return EXIT_USAGE
    hint = settings.legacy_home_hint(Path.cwd())
    if hint is not None:
        print(hint, file=sys.stderr)
    try:
        return int(args.func(args))
    except ClosedLoopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt as exc:
        how = "terminated (SIGTERM)" if isinstance(exc, _Terminated) else "interrupted"
        print(f"{how}: the campaign's log is intact; `closedloop run` the same spec to continue", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, _Terminated) else EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
