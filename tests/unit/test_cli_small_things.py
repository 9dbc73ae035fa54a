"""Issue 17, "smaller things a user meets": the progress bar on an 80-column terminal, `list`,
`sim --describe`, `--help` and usage errors, and the default home. In-process, on logs built
here; the console script's side (a closed pipe) is in tests/e2e/test_hostile_cli.py.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress

from campaigns import (
    ApprovalRequested,
    CampaignCreated,
    CampaignFinished,
    CampaignState,
    Measurement,
    RunStarted,
    SuggestedTrial,
    TrialCompleted,
    TrialDispatched,
    TrialsSuggested,
    fold,
    load_spec,
)
from flows.app.settings import Settings
from flows.cli import main as cli
from flows.cli.progress import bar_columns, detail_line, logs_above, starting_line
from flows.cli.tables import ago, campaigns_table
from simulators import SIMULATORS

SPEC = load_spec(Path(__file__).parents[2] / "campaigns" / "examples" / "branin.yaml")  # budget 30
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def campaign(campaign_id: str, completed: int, *, finished: bool = False, approval: bool = False) -> CampaignState:
    """A Branin campaign with ``completed`` trials done (values 0.3979 + i) and one more running
    (or waiting for approval)."""
    trials = [SuggestedTrial(trial_id=str(i), parameters={"x1": 3.14159265358979 + i, "x2": 2.2750000001},
                             generator="sobol") for i in range(completed + 1)]
    events: list[object] = [CampaignCreated(campaign_id=campaign_id, seq=1, actor="user:a", spec=SPEC, time=T0),
                            TrialsSuggested(campaign_id=campaign_id, seq=2, actor="optimizer", trials=trials, time=T0)]
    for i in range(completed + (0 if approval else 1)):
        events.append(TrialDispatched(campaign_id=campaign_id, seq=len(events) + 1, actor="orchestrator",
                                      trial_id=str(i), device_id="d", request_id=f"r{i}",
                                      time=T0 + timedelta(minutes=i)))
        if i < completed:
            events.append(TrialCompleted(campaign_id=campaign_id, seq=len(events) + 1, actor="device:d",
                                         trial_id=str(i), device_id="d", request_id=f"r{i}",
                                         measurements={"branin": Measurement(mean=0.39788735772973816 + i)},
                                         time=T0 + timedelta(minutes=i)))
    if approval:
        events.append(ApprovalRequested(campaign_id=campaign_id, seq=len(events) + 1, actor="orchestrator",
                                        approval_id="a0", trial_ids=[str(completed)], why="every batch",
                                        answer_with="closedloop approve", time=T0 + timedelta(minutes=completed)))
    if finished:
        events.append(CampaignFinished(campaign_id=campaign_id, seq=len(events) + 1, actor="orchestrator",
                                       reason="stopped", time=T0 + timedelta(minutes=completed)))
    return fold(events)  # type: ignore[arg-type]


def shown(text: str) -> list[str]:
    """The lines a terminal shows of what rich wrote: control sequences out, carriage returns as new lines."""
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    return [line for line in re.split(r"[\r\n]", plain) if line.strip()]


def draw(state: CampaignState, width: int, log_line: str | None = None) -> list[str]:
    """The bar of ``state`` drawn on a terminal of ``width`` columns (12 of 30 done), a log line written meanwhile."""
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=True, color_system=None)
    logger = logging.getLogger(f"closedloop.test.bar{width}")
    handler = logging.StreamHandler(out)  # a handler made before the bar, as logging.basicConfig's is
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with Progress(*bar_columns(), console=console, auto_refresh=False) as bar, logs_above(console, set()):
            bar.add_task("a-rather-long-campaign-name-2024", total=30, completed=12, detail=detail_line(state))
            bar.refresh()
            if log_line is not None:
                logger.warning(log_line)
                bar.refresh()
    finally:
        logger.removeHandler(handler)
    return shown(out.getvalue())


def test_at_80_columns_the_count_and_clock_stay_and_the_parameters_go_first() -> None:
    state = campaign("c", 12)
    narrow = draw(state, 80)[-1]
    assert len(narrow) <= 80
    assert "12/30" in narrow and "0:00:00" in narrow  # never cut
    assert "best 0.3979 (#0)" in narrow and "x2=" not in narrow and narrow.endswith("…")
    wide = draw(state, 140)[-1]
    assert wide.endswith("best 0.3979 (#0) | 1 running, 0 failed | x1=3.142 x2=2.275")  # 4 significant digits


def test_a_log_line_goes_above_the_bar_not_into_it() -> None:
    lines = draw(campaign("c", 12), 80, log_line="broker slow: retrying")
    assert "broker slow: retrying" in lines  # a line of its own
    assert all("12/30" in line for line in lines if line != "broker slow: retrying")
    assert "12/30" in lines[-1]  # the bar drawn again below it


def test_the_bar_says_what_the_run_is_starting_until_its_first_dispatch() -> None:
    assert starting_line(None).startswith("starting: Prefect")
    started = RunStarted(campaign_id="c", seq=2, actor="orchestrator", host="lab-pc", pid=42)
    assert "first trials" in starting_line(started)
    suggested = TrialsSuggested(campaign_id="c", seq=3, actor="optimizer",
                                trials=[SuggestedTrial(trial_id="0", parameters={"x1": 0.0, "x2": 0.0}, generator="center")])
    assert "sending the first trials" in starting_line(suggested)


def test_list_shows_status_trials_best_and_last_activity() -> None:
    states = [campaign("running-one", 12), campaign("stopped-one", 3, finished=True),
              campaign("asking", 1, approval=True)]
    now = T0 + timedelta(minutes=14)
    header, _, *rows = campaigns_table(states, now).splitlines()
    assert re.split(r"\s{2,}", header) == ["campaign", "status", "trials", "best", "last activity"]
    cells = [re.split(r"\s{2,}", row) for row in rows]
    assert cells[0] == ["running-one", "running", "12/30", "branin 0.397887 (trial 0)", "2 min ago"]
    assert cells[1] == ["stopped-one", "finished (stopped)", "3/30", "branin 0.397887 (trial 0)", "11 min ago"]
    assert cells[2][:3] == ["asking", "waiting for approval", "1/30"]
    assert ago(T0, T0 + timedelta(seconds=20)) == "just now"
    assert ago(T0, T0 + timedelta(hours=5, minutes=59)) == "5 h ago"
    assert ago(T0, T0 + timedelta(days=3)) == f"{T0.astimezone():%Y-%m-%d %H:%M}"  # local time, to the minute


def test_describe_gives_ranges_units_and_an_optimum_the_model_reaches() -> None:
    colour = SIMULATORS["colour_mixing"].describe({})
    assert "input  R  in [0, 1]" in colour and "metric ch415  counts (0-65535)" in colour
    assert "optimum colour_distance 0 at the target R=0.55, G=0.3, B=0.7" in colour
    model = SIMULATORS["colour_mixing"].model({})
    assert model.evaluate({"R": 0.55, "G": 0.3, "B": 0.7})["colour_distance"] == 0.0

    reaction = SIMULATORS["reaction_yield"].describe({"temperature": "T"})
    assert "input  T  in [20, 140] °C" in reaction and "input  solvent  one of toluene, thf, dmf, ethanol" in reaction
    # The optima it states are the model's own values at the stated points.
    model = SIMULATORS["reaction_yield"].model({})
    best = model.evaluate({"temperature": 55, "time": 140, "concentration": 0.45, "solvent": "toluene",
                           "catalyst": "pd_xphos"})
    assert "optimum yield_pct 93.9 (impurity_pct 5.1)" in reaction
    assert (round(best["yield_pct"], 1), round(best["impurity_pct"], 1)) == (93.9, 5.1)
    held = model.evaluate({"temperature": 45.8, "time": 149, "concentration": 0.45, "solvent": "toluene",
                           "catalyst": "pd_xphos"})
    assert "impurity_pct <= 3: yield_pct 90.4" in reaction
    assert round(held["yield_pct"], 1) == 90.4 and held["impurity_pct"] <= 3


def test_describe_of_a_sized_function_gives_its_size() -> None:
    text = SIMULATORS["ackley"].describe({"dim": 4})
    assert text.splitlines()[0] == "ackley: botorch Ackley: 4 inputs (option dim), 1 objective(s)"
    assert [line.split()[1] for line in text.splitlines() if line.startswith("  input")] == ["x1", "x2", "x3", "x4"]


def test_every_positional_of_every_command_has_help() -> None:
    parser = cli._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [(name, a.dest) for name, p in commands.items() for a in p._actions if not a.option_strings and not a.help]
    assert missing == []


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(("argv", "says"), [
    (["approve"], "the following arguments are required: campaign, --reason (see closedloop approve --help)"),
    (["status", "c", "--jsn"], "unrecognized arguments: --jsn (see closedloop status --help)"),
    (["export", "c", "--format", "xml"], "argument --format: invalid choice: 'xml'"),
    (["run", "x.yaml", "--max-runtime", "soon"], "argument --max-runtime: invalid float value: 'soon'"),
    (["bogus"], "argument command: invalid choice: 'bogus'"),
])
def test_a_usage_error_is_one_line_naming_the_help_to_read(argv: list[str], says: str) -> None:
    code, out, err = run_main(argv)
    assert code == 2 and out == ""
    [line] = err.splitlines()
    assert line.startswith("closedloop: error: ") and says in line and line.endswith("--help)")


@pytest.fixture
def no_home_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No CLOSEDLOOP_* variable, the per-user data directory under tmp_path, the working directory elsewhere."""
    for name in [n for n in __import__("os").environ if n.startswith("CLOSEDLOOP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path


def test_the_default_home_is_the_per_user_data_directory(no_home_set: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().home == no_home_set / "data" / "closedloop"  # whatever the working directory
    monkeypatch.setenv("CLOSEDLOOP_HOME", str(no_home_set / "mine"))
    assert Settings().home == no_home_set / "mine"


def test_reading_an_empty_home_says_where_it_looked_and_creates_nothing(no_home_set: Path) -> None:
    home = no_home_set / "data" / "closedloop"
    code, out, err = run_main(["list"])
    assert code == 0 and err == ""
    assert out.strip() == (f"No campaigns in {home} (the default home; CLOSEDLOOP_HOME sets another): "
                           "start one with `closedloop run SPEC.yaml`")
    code, out, err = run_main(["status", "branin"])
    assert code == 1 and err.startswith(f"error: no campaigns in {home} (the default home")
    assert not home.exists() and not (no_home_set / "work" / ".closedloop").exists()


def test_an_earlier_versions_home_in_the_working_directory_is_named(no_home_set: Path) -> None:
    legacy = no_home_set / "work" / ".closedloop"
    (legacy / "data").mkdir(parents=True)
    code, out, err = run_main(["list"])
    assert code == 0 and "No campaigns in" in out
    [note] = err.splitlines()
    assert note.startswith(f"note: {legacy} holds the campaigns of an earlier closedloop")
    assert note.endswith(f"`export CLOSEDLOOP_HOME={legacy}` to use it")


def test_readme_names_the_campaign_make_demo_creates() -> None:
    """Issue 17: `make demo` created `branin-demo-<time>` while README's next commands named `branin`."""
    root = Path(__file__).parents[2]
    makefile = (root / "Makefile").read_text()
    [demo] = re.findall(r"^DEMO \?= (\S+)$", makefile, flags=re.MULTILINE)
    assert "--campaign-id $(DEMO)" in makefile
    readme = " ".join((root / "README.md").read_text().split())
    assert f"The campaign is `{demo}`: `closedloop status {demo}`" in readme
