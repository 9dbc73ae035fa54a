"""The optimizer says what it is, and the log tells the whole story, on the command line
(issue 15): `validate` names the engine and why, `status`/`export`/`compare` show which engine
chose the trials, `closedloop log` prints the raw events; hostile input is one line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from campaigns import fold
from tests.e2e.cli import cli_env, read_events, run, shared_env, status, write_spec
from tests.e2e.test_cli_run import SPEC

SOLVENT = {"name": "solvent", "type": "choice", "values": ["water", "ethanol"]}
MANY_CHOICES = [{"name": f"c{i}", "type": "choice", "values": list("abcdef")} for i in range(2)]  # 36 combinations


@pytest.mark.parametrize(("changes", "line"), [
    ({}, ("engine: fast (auto: a continuous space, float parameters only and no parameter constraint); "
          "the first 5 trials: sobol")),
    ({"parameters": [*SPEC["parameters"], SOLVENT], "parameter_constraints": ["x1 + x2 <= 10"]},
     "engine: fast (auto: float and choice parameters (2 choice combinations, each optimized), 1 parameter constraint)"),
    ({"parameters": [*SPEC["parameters"], *MANY_CHOICES]},
     "engine: ax (auto: 36 combinations of choice values (the fast engine enumerates up to 32))"),
    ({"optimizer": {"method": "ax_default", "initialization_trials": 3}},
     "engine: ax_default (optimizer.method: ax_default); the first 3 trials: sobol"),
    ({"optimizer": {"method": "sobol"}}, "engine: sobol (optimizer.method: sobol; no model"),
    ({"optimizer": {"method": "botorch"}}, "engine: fast (auto: a continuous space"),  # an earlier name
])
def test_validate_names_the_engine_and_why(changes: dict, line: str, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", {**SPEC, **changes})
    out = run(["validate", str(spec)], cli_env(tmp_path / "home", {}), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].startswith(line), out.stdout


def test_validate_refuses_the_fast_engine_with_too_many_choice_combinations_in_one_line(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", {**SPEC, "parameters": [*SPEC["parameters"], *MANY_CHOICES],
                                            "optimizer": {"method": "fast"}})
    out = run(["validate", str(spec)], cli_env(tmp_path / "home", {}), timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "optimizer.method: fast" in lines[0] and "36 combinations of choice values" in lines[0]


@pytest.mark.timeout(600)
def test_each_trial_s_engine_is_logged_and_shown_and_the_log_prints_raw(tmp_path: Path, prefect_server: dict[str, str],
                                                                         mongo_uri: str, mosquitto_url: str) -> None:
    env = shared_env(tmp_path / "home", prefect_server, mongo_uri, mosquitto_url)
    # Ax's SQL store where no file can be: the run goes on, and says so in one line (issue 17).
    (tmp_path / "afile").write_text("not a directory")
    env["CLOSEDLOOP_AX_DB_URL"] = f"sqlite:///{tmp_path / 'afile' / 'ax.sqlite'}"
    # A choice parameter and a parameter constraint: the fast engine serves them too (issue 18).
    spec = write_spec(tmp_path / "s.yaml", {**SPEC, "name": "eng", "budget": {"max_trials": 6},
                                           "parameters": [*SPEC["parameters"], SOLVENT],
                                           "parameter_constraints": ["x1 + x2 <= 12"],
                                           "optimizer": {"initialization_trials": 2}})
    out = run(["run", str(spec), "--quiet"], env, timeout=480)
    assert out.returncode == 0, out.stderr
    [warning] = [line for line in out.stderr.splitlines() if "Ax's SQL store" in line]
    assert warning.startswith("warning: campaign eng: Ax's SQL store not updated: cannot write") and \
        "closedloop ax-store eng" in warning and "Traceback" not in out.stderr, out.stderr
    assert fold(read_events(env, "eng")).status == "finished"
    events = read_events(env, "eng")
    state = fold(events)
    engines = [t.engine for t in sorted(state.trials.values(), key=lambda t: t.index)]
    # The opening is Sobol; the model takes over once a result is in (when: the devices' pace).
    assert len(engines) == 6 and engines[:2] == ["sobol", "sobol"] and engines[-1] == "fast"
    assert engines == sorted(engines, key=lambda e: e == "fast")  # never back to Sobol after the model
    assert all(t.parameters["solvent"] in SOLVENT["values"] and float(t.parameters["x1"]) + float(t.parameters["x2"]) <= 12
               for t in state.trials.values())
    counts = {e: engines.count(e) for e in ("sobol", "fast")}
    # status: JSON and text
    s = status("eng", env)
    assert s["optimizer"] == {"method": "auto", "engines": counts}
    assert s["best"]["engine"] == state.trials[s["best"]["trial_id"]].engine
    picked = s["model_best"]["trial_id"]  # the best by the model's posterior mean (issue 18), mixed space too
    assert s["model_best"]["objectives"]["branin"]["observed"] == state.trials[picked].measurements["branin"].mean
    assert f"best by the model: trial {picked} (branin " in out.stdout  # the run's last words
    text = run(["status", "eng"], env, timeout=60).stdout
    assert f"chosen by: sobol {counts['sobol']}, fast {counts['fast']} (optimizer.method: auto)" in text
    assert f"best by the model: trial {picked} (branin " in text
    # export
    rows = list(csv.DictReader(io.StringIO(run(["export", "eng"], env, timeout=60).stdout)))
    assert [r["engine"] for r in rows] == engines
    assert [r["trial_id"] for r in rows if r["model.pick"] == "True"] == [picked]
    # compare: which engine found the best trial
    cmp = run(["compare", "eng", "-o", str(tmp_path / "cmp")], env, timeout=120)
    assert cmp.returncode == 0, cmp.stderr
    head, _rule, row = cmp.stdout.splitlines()[:3]
    assert "best by" in head and "engines" in head and row.rstrip().endswith(f"sobol {counts['sobol']}, fast {counts['fast']}")
    # RunStarted has the versions that decided what the run did
    [started] = [e for e in events if e.kind == "RunStarted"]
    assert set(started.versions) == {"closedloop", "ax", "botorch", "prefect"}
    assert all(v and v != "not installed" for v in started.versions.values())
    # closedloop log: one line per event, in order; --json: one object per line, the same events
    plain = run(["log", "eng"], env, timeout=60)
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert len(lines) == len(events)
    assert [int(line.split()[0]) for line in lines] == [e.seq for e in events]
    assert all(e.kind in line for e, line in zip(events, lines, strict=True))
    as_json = run(["log", "eng", "--json"], env, timeout=60)
    docs = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [d["seq"] for d in docs] == [e.seq for e in events]
    suggested = [t for d in docs if d["kind"] == "TrialsSuggested" for t in d["trials"]]
    assert [t["engine"] for t in suggested] == engines


@pytest.mark.parametrize(("args", "code", "says"), [
    (["log", "no-such-campaign"], 1, "no campaigns in"),  # no store under this home: says where it looked
    (["log"], 2, "campaign"),
    (["log", "x", "--bogus"], 2, "unrecognized arguments"),
    (["log", "x", "--json=--"], 2, "'--' is not a value"),
    (["log", "a\nb\rc"], 1, "no campaign"),
])
def test_log_refuses_hostile_input_in_one_line(args: list[str], code: int, says: str, tmp_path: Path) -> None:
    out = run(args, cli_env(tmp_path / "home", {}), timeout=120)
    assert out.returncode == code, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ") or (ln.startswith("closedloop") and ": error: " in ln)]
    # One error line, the last (argparse prints its usage above it), saying what is wrong.
    assert "Traceback" not in out.stderr and errors == [lines[-1]] and says in lines[-1], out.stderr
