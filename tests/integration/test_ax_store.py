"""Ax's SQL store follows the log (issue 17): what Ax's own ``Client.load_from_database`` finds
in it is the log's trials, parameters, statuses, values and who chose each trial; writing it
again, or after more trials, leaves one copy that matches; a store that cannot be written is
one line. Logs built here, written and read in-process through SQLite files (the fresh-process
load of a real run's store: tests/e2e/test_cli_run.py)."""

from __future__ import annotations

import contextlib
import math
import os
import uuid
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from campaigns import (
    ApprovalGiven,
    ApprovalRequested,
    CampaignCreated,
    CampaignFinished,
    CampaignSpec,
    Measurement,
    OutputError,
    SuggestedTrial,
    TrialCompleted,
    TrialDispatched,
    TrialFailed,
    TrialsSuggested,
    fold,
    load_spec,
    parse_spec,
)
from campaigns.events import EventBase
from flows.app.ax_store import keep_ax_store, write_ax_store
from flows.app.settings import Settings
from optimizer.ax_store import read_experiment

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

EXAMPLES = Path(__file__).parents[2] / "campaigns" / "examples"
CAMPAIGN = "branin-demo-20261206-1530"  # the shape of `make demo`'s campaign ids
AX_STATUS = {"completed": "COMPLETED", "failed": "FAILED", "rejected": "ABANDONED",
             "running": "RUNNING", "suggested": "RUNNING"}


class Log:
    """A campaign's log, written event by event as the loop would."""

    def __init__(self, spec: CampaignSpec, campaign_id: str = CAMPAIGN) -> None:
        self.campaign_id = campaign_id
        self.events: list[EventBase] = []
        self.add(CampaignCreated, actor="user:ana", spec=spec)

    def add(self, kind: type[EventBase], **fields: Any) -> None:
        self.events.append(kind(campaign_id=self.campaign_id, seq=len(self.events) + 1, **fields))

    def suggest(self, *points: dict[str, Any], generator: str = "sobol", engine: str = "sobol") -> list[str]:
        first = len(fold(self.events).trials)
        ids = [str(first + i) for i in range(len(points))]
        self.add(TrialsSuggested, actor="optimizer", trials=[
            SuggestedTrial(trial_id=t, parameters=p, generator=generator, engine=engine) for t, p in zip(ids, points)])
        return ids

    def dispatch(self, trial_id: str, device: str = "d1") -> None:
        self.add(TrialDispatched, actor="orchestrator", trial_id=trial_id, device_id=device, request_id=f"r{trial_id}")

    def complete(self, trial_id: str, device: str = "d1", **values: float | tuple[float, float]) -> None:
        self.dispatch(trial_id, device)
        measurements = {k: Measurement(mean=v[0], sem=v[1]) if isinstance(v, tuple) else Measurement(mean=v)
                        for k, v in values.items()}
        self.add(TrialCompleted, actor=f"device:{device}", trial_id=trial_id, device_id=device,
                 request_id=f"r{trial_id}", measurements=measurements)


def branin_log() -> Log:
    """Every way a trial ends: completed (with a sem, and a metric beyond the spec's), failed,
    edited by a person then completed, rejected by a person, still running; then finished."""
    log = Log(load_spec(EXAMPLES / "branin.yaml"))
    log.suggest({"x1": 2.5, "x2": 7.5}, {"x1": -1.25, "x2": 3.75}, generator="center")
    log.complete("0", branin=(24.13, 0.5), cost=1.0)
    log.dispatch("1", "d2")
    log.add(TrialFailed, actor="orchestrator", trial_id="1", reason="timeout", device_id="d2", request_id="r1")
    log.suggest({"x1": 9.0, "x2": 2.0}, {"x1": 0.0, "x2": 0.0}, generator="botorch", engine="fast")
    log.add(ApprovalRequested, actor="orchestrator", approval_id="a0", trial_ids=["2", "3"], why="every batch",
            answer_with="closedloop approve")
    log.add(ApprovalGiven, actor="user:ana", approval_id="a0", edited={"2": {"x1": 9.5}}, rejected=["3"],
            reason="9.5 is where the last good one was")
    log.complete("2", "d2", branin=1.5)
    log.suggest({"x1": 3.0, "x2": 3.0}, generator="botorch", engine="fast")
    log.dispatch("4")
    log.add(CampaignFinished, actor="user:ana", reason="stopped")
    return log


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings(home=tmp_path / "home", **env)  # type: ignore[arg-type]


def ax_trials(url: str, name: str) -> dict[str, dict[str, Any]]:
    """What Ax's ``Client.load_from_database`` finds: each trial as a user would read it."""
    client = read_experiment(url, name)
    experiment = client._experiment
    df = experiment.lookup_data().df
    out = {}
    for index, trial in experiment.trials.items():
        rows = df[df["trial_index"] == index]
        out[str(index)] = {
            "status": trial.status.name,
            "reason": trial.status_reason,
            "parameters": trial.arm.parameters,  # type: ignore[attr-defined]
            "chosen_by": trial.generation_method_str,
            "metadata": trial.run_metadata,
            "values": {m: (v, None if math.isnan(s) else s) for m, v, s in zip(rows["metric_name"], rows["mean"],
                                                                                 rows["sem"], strict=True)},
        }
    return out


def expected(log: Log) -> dict[str, dict[str, Any]]:
    """The same, read from the log."""
    state = fold(log.events)
    return {t.trial_id: {
        "status": AX_STATUS[t.status],
        "reason": t.failure_reason if t.status in ("failed", "rejected") else None,
        "parameters": t.parameters,
        "chosen_by": t.generator,
        "values": {k: (m.mean, m.sem) for k, m in t.measurements.items()} if t.status == "completed" else {},
    } for t in state.trials.values()}


def without_metadata(trials: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t: {k: v for k, v in row.items() if k != "metadata"} for t, row in trials.items()}


def test_ax_finds_the_log_s_trials_statuses_values_and_who_chose_them(tmp_path: Path) -> None:
    log = branin_log()
    home = settings(tmp_path)
    written = write_ax_store(home, CAMPAIGN, log.events)
    url = home.ax_store_url()
    assert (tmp_path / "home" / "ax.sqlite").is_file() and url == f"sqlite:///{tmp_path / 'home' / 'ax.sqlite'}"
    assert written.experiment == CAMPAIGN and written.trials == 5 and written.url == url
    assert f"Client.load_from_database({CAMPAIGN!r}" in written.line() and url in written.line()

    found = ax_trials(url, CAMPAIGN)
    assert without_metadata(found) == expected(log)
    # The person's edit, and who the other trials came from, in the run metadata.
    assert found["2"]["metadata"] == {"chosen_by": "human", "decided_by": "user:ana",
                                      "suggested_parameters": {"x1": 9.0, "x2": 2.0}, "generator": "human",
                                      "engine": "fast", "status": "completed", "device_id": "d2"}
    assert found["3"]["metadata"] == {"generator": "botorch", "engine": "fast", "status": "rejected", "device_id": None}
    assert found["4"]["metadata"]["status"] == "running" and found["4"]["metadata"]["device_id"] == "d1"

    client = read_experiment(url, CAMPAIGN)
    experiment = client._experiment
    assert experiment.name == CAMPAIGN
    objective = experiment.optimization_config.objective  # type: ignore[union-attr]
    assert objective.metric_weights == [("branin", -1.0)]  # minimized
    assert {n: (p.lower, p.upper) for n, p in experiment.search_space.parameters.items()} == {  # type: ignore[attr-defined]
        "x1": (-5.0, 10.0), "x2": (0.0, 15.0)}
    # When each trial ran, as the log says (Ax keeps whole seconds, in local time).
    state = fold(log.events)
    for tid, t in state.trials.items():
        assert experiment.trials[int(tid)].time_created.timestamp() == pytest.approx(t.suggested_at.timestamp(), abs=1)


def table_counts(path: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}


def test_the_store_follows_the_log_and_a_rewrite_never_appends(tmp_path: Path) -> None:
    log = branin_log()
    home = settings(tmp_path)
    path = tmp_path / "home" / "ax.sqlite"
    prefix = log.events[:8]  # trials 0-3 suggested, 0 completed, 1 failed, the approval asked
    write_ax_store(home, CAMPAIGN, prefix)
    once = table_counts(path)
    write_ax_store(home, CAMPAIGN, prefix)
    assert table_counts(path) == once and once["experiment_v2"] == 1 and once["trial_v2"] == 4
    assert without_metadata(ax_trials(home.ax_store_url(), CAMPAIGN)) == expected(_at(prefix))

    # Another campaign in the same store is left alone.
    other = Log(load_spec(EXAMPLES / "branin.yaml"), campaign_id="other")
    other.suggest({"x1": 1.0, "x2": 1.0})
    write_ax_store(home, "other", other.events)

    write_ax_store(home, CAMPAIGN, log.events)  # the log went on
    write_ax_store(home, CAMPAIGN, log.events)
    grown = table_counts(path)
    assert grown["experiment_v2"] == 2 and grown["trial_v2"] == 5 + 1
    assert without_metadata(ax_trials(home.ax_store_url(), CAMPAIGN)) == expected(log)
    assert set(ax_trials(home.ax_store_url(), "other")) == {"0"}

    # A fresh store of the whole log holds exactly the same rows.
    fresh = settings(tmp_path / "fresh")
    write_ax_store(fresh, "other", other.events)
    write_ax_store(fresh, CAMPAIGN, log.events)
    assert table_counts(tmp_path / "fresh" / "home" / "ax.sqlite") == grown


def _at(events: list[EventBase]) -> Log:
    log = Log.__new__(Log)
    log.campaign_id, log.events = CAMPAIGN, list(events)
    return log


def test_values_keep_every_digit(tmp_path: Path) -> None:
    """Ax 1.3.1 alone would keep 10 decimal places (a 1.2e-12 reading stored as 0)."""
    log = Log(load_spec(EXAMPLES / "branin.yaml"))
    readings = [24.129964413622268, 1.234567890123e-12, -3.3333333333333335, 123456789.12345679]
    ids = log.suggest(*[{"x1": float(i), "x2": 1.0} for i in range(len(readings))])
    for tid, value in zip(ids, readings, strict=True):
        log.complete(tid, branin=(value, abs(value) / 3))
    home = settings(tmp_path)
    write_ax_store(home, CAMPAIGN, log.events)
    found = ax_trials(home.ax_store_url(), CAMPAIGN)
    for tid, value in zip(ids, readings, strict=True):
        mean, sem = found[tid]["values"]["branin"]
        # pandas' JSON reader may round the last bit (Ax's decoder reads the data with it)
        assert mean == pytest.approx(value, rel=4e-16) and sem == pytest.approx(abs(value) / 3, rel=4e-16)


@pytest.mark.parametrize("name", ["two_objectives.yaml", "choice"])
def test_two_objectives_and_a_choice_parameter_round_trip(name: str, tmp_path: Path) -> None:
    if name == "choice":
        spec = parse_spec({
            "name": "mix", "seed": 1,
            "parameters": [{"name": "solvent", "type": "choice", "values": ["water", "ethanol", "dmso"]},
                           {"name": "n", "type": "int", "bounds": [1, 9]},
                           {"name": "t", "type": "float", "bounds": [20, 80]}],
            "objectives": [{"name": "purity", "minimize": False}],
            "budget": {"max_trials": 4}, "trial_timeout_s": 30, "devices": [{"id": "d1", "simulator": "branin"}],
        })
        points = [{"solvent": "water", "n": 3, "t": 25.0}, {"solvent": "dmso", "n": 9, "t": 80.0}]
        values = [{"purity": 0.25}, {"purity": 0.75}]
    else:
        spec = load_spec(EXAMPLES / name)
        points = [{"x1": 0.5, "x2": 0.5}, {"x1": 0.25, "x2": 0.75}]
        values = [{"branin": 26.5, "currin": 7.1}, {"branin": 40.0, "currin": 9.5}]
    log = Log(spec, campaign_id=spec.name)
    ids = log.suggest(*points)
    for tid, v in zip(ids, values, strict=True):
        log.complete(tid, **v)
    home = settings(tmp_path)
    write_ax_store(home, spec.name, log.events)

    found = ax_trials(home.ax_store_url(), spec.name)
    assert without_metadata(found) == expected(log)
    experiment = read_experiment(home.ax_store_url(), spec.name)._experiment
    objective = experiment.optimization_config.objective  # type: ignore[union-attr]
    if name == "choice":
        assert experiment.search_space.parameters["solvent"].values == ["water", "ethanol", "dmso"]  # type: ignore[attr-defined]
        assert type(found["0"]["parameters"]["n"]) is int and objective.metric_weights == [("purity", 1.0)]
    else:
        assert sorted(objective.metric_weights) == [("branin", -1.0), ("currin", -1.0)]
        thresholds = {t.metric_names[0]: t.bound  # type: ignore[union-attr]
                      for t in experiment.optimization_config.objective_thresholds}  # type: ignore[union-attr]
        assert thresholds == {"branin": 150.0, "currin": 12.0}
        assert len(experiment.search_space.parameter_constraints) == 1


def test_a_store_that_cannot_be_written_is_one_warning_line_and_the_explicit_write_an_error(tmp_path: Path) -> None:
    log = branin_log()
    (tmp_path / "afile").write_text("a file, not a directory")
    bad = settings(tmp_path, ax_db_url=f"sqlite:///{tmp_path / 'afile' / 'ax.sqlite'}")
    lines: list[str] = []
    keep_ax_store(bad, lambda _: log.events, CAMPAIGN, lines.append)
    [line] = lines
    assert line.startswith(f"warning: campaign {CAMPAIGN}: Ax's SQL store not updated: cannot write")
    assert "afile" in line and f"closedloop ax-store {CAMPAIGN}" in line and "\n" not in line
    with pytest.raises(OutputError, match="cannot write Ax's SQL store"):
        write_ax_store(bad, CAMPAIGN, log.events)
    # The same process writes a good store afterwards (Ax's engine is process-global).
    good = settings(tmp_path)
    keep_ax_store(good, lambda _: log.events, CAMPAIGN, lines.append)
    assert lines == [line] and set(ax_trials(good.ax_store_url(), CAMPAIGN)) == {"0", "1", "2", "3", "4"}


# ------------------------------------------------------------------ the command and the setting
def cli(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`closedloop ARGV` in-process with only ``env``'s CLOSEDLOOP_* variables set."""
    from flows.cli.main import main

    for name in [k for k in os.environ if k.startswith("CLOSEDLOOP_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_closedloop_ax_store_writes_the_log_s_experiment_and_says_where(
        tmp_path: Path, mongo_uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from storage import MongoEventStore

    env = {"CLOSEDLOOP_HOME": str(tmp_path / "home"), "CLOSEDLOOP_MONGODB_URI": mongo_uri,
           "CLOSEDLOOP_MONGODB_DATABASE": f"cl_axstore_{uuid.uuid4().hex[:8]}"}
    log = branin_log()
    with MongoEventStore(mongo_uri, database=env["CLOSEDLOOP_MONGODB_DATABASE"]) as store:
        store.append(log.events)
    url = f"sqlite:///{tmp_path / 'elsewhere.sqlite'}"
    for _ in range(2):
        code, out, err = cli(["ax-store", CAMPAIGN, "--url", url], env, monkeypatch, capsys)
        assert (code, err) == (0, "") and out.count("\n") == 1, (code, out, err)
        assert out.startswith(f"campaign {CAMPAIGN}: Ax experiment {CAMPAIGN!r} (5 trial(s)) written to {url}")
    assert without_metadata(ax_trials(url, CAMPAIGN)) == expected(log)
    assert table_counts(tmp_path / "elsewhere.sqlite")["trial_v2"] == 5

    # The setting names the store; no --url.
    code, out, err = cli(["ax-store", CAMPAIGN], {**env, "CLOSEDLOOP_AX_DB_URL": url}, monkeypatch, capsys)
    assert code == 0 and f"written to {url}" in out and table_counts(tmp_path / "elsewhere.sqlite")["trial_v2"] == 5

    code, out, err = cli(["ax-store", "no-such-campaign"], env, monkeypatch, capsys)
    assert code == 1 and err.strip().splitlines() == [err.strip()] and "no campaign 'no-such-campaign'" in err

    # Off: runs keep none, and the command asks for a place rather than writing one.
    code, out, err = cli(["ax-store", CAMPAIGN], {**env, "CLOSEDLOOP_AX_DB_URL": "off"}, monkeypatch, capsys)
    assert code == 2 and out == "" and err.splitlines() == [err.strip()] and "CLOSEDLOOP_AX_DB_URL=off" in err, err
    assert "--url" in err and not (tmp_path / "home" / "ax.sqlite").exists()


@pytest.mark.parametrize(("value", "says"), [
    ("not a url", "not a SQLAlchemy database URL"),
    ("foo://h/db", "SQLAlchemy knows no database 'foo'"),
    ("postgresql://ana:s3cret@h:notaport/db", "not a SQLAlchemy database URL"),
    ("sqlite://", "an in-memory SQLite database keeps nothing"),
    ("", "not a SQLAlchemy database URL"),
])
def test_a_malformed_store_url_is_one_line_exit_2(value: str, says: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    home = {"CLOSEDLOOP_HOME": str(tmp_path / "home")}
    code, out, err = cli(["list"], {**home, "CLOSEDLOOP_AX_DB_URL": value}, monkeypatch, capsys)
    assert code == 2 and out == "" and "s3cret" not in err
    assert err.splitlines() == [err.strip()] and err.startswith("error: CLOSEDLOOP_AX_DB_URL: ") and says in err, err
    code, out, err = cli(["ax-store", CAMPAIGN, "--url", value], home, monkeypatch, capsys)
    assert code == 2 and err.splitlines() == [err.strip()] and err.startswith("error: --url: ") and says in err, err
    assert "s3cret" not in err


def test_a_password_in_url_on_the_command_line_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["ax-store", CAMPAIGN, "--url", "postgresql://ana:s3cret@db.lab/ax"],
                         {"CLOSEDLOOP_HOME": str(tmp_path / "home")}, monkeypatch, capsys)
    assert code == 2 and "s3cret" not in err and "CLOSEDLOOP_AX_DB_URL" in err and len(err.splitlines()) == 1
