"""The optimizer's edges as a user meets them on the command line (issue 14 items 7, 10, 11)."""

from __future__ import annotations

from pathlib import Path

import pytest

from campaigns import TrialRecord, fold
from tests.e2e.cli import cli_env, read_events, run, shared_env, write_spec
from tests.e2e.test_cli_run import SPEC


@pytest.mark.parametrize(("parameter", "shown"), [
    ({"name": "n", "type": "int", "bounds": [0, 10**30]}, "int [0, 1e30]"),
    ({"name": "x", "type": "float", "bounds": [-1e308, 1e308]}, "float ±1e308"),
])
def test_validate_refuses_bounds_the_stack_cannot_hold(parameter: dict, shown: str, tmp_path: Path) -> None:
    """Issue 14 item 11: bounds the stack cannot hold passed `validate` (int [0, 1e30] then
    crashed `run` with MongoDB's "can only handle up to 8-byte ints"; float ±1e308 made every
    suggestion 1e308). Now `validate` and `run` refuse them in one line, exit 2."""
    spec = write_spec(tmp_path / "big.yaml", {**SPEC, "parameters": [parameter, SPEC["parameters"][1]]})
    env = cli_env(tmp_path / "home", {})
    for command in ("validate", "run"):
        out = run([command, str(spec)], env, timeout=120)
        assert out.returncode == 2, (shown, command, out.stdout, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "±1e15" in lines[0], out.stderr


def _stopped_campaign(tmp_path: Path, name: str, lab: dict[str, str]) -> tuple[dict[str, str], Path]:
    """A campaign whose first run stopped at once (--max-runtime): created, not finished (its
    six trials take at least 1.2 s). Two initialization trials: without a change, trials from
    the third on come from the model."""
    env = shared_env(tmp_path / "home", lab["prefect"], lab["mongo"], lab["broker"])
    spec = write_spec(tmp_path / "spec.yaml", {**SPEC, "name": name, "budget": {"max_trials": 6},
                                               "optimizer": {"initialization_trials": 2}})
    run(["run", str(spec), "--quiet", "--max-runtime", "0.1"], env)  # exit 1: stopped by its runtime
    assert fold(read_events(env, name)).status != "finished"
    return env, spec


@pytest.fixture
def lab(prefect_server: dict[str, str], mongo_uri: str, mosquitto_url: str) -> dict[str, str]:
    """The session's Prefect server, database server and broker (no run starts its own)."""
    return {"prefect": prefect_server, "mongo": mongo_uri, "broker": mosquitto_url}


def _trials(env: dict[str, str], name: str) -> dict[str, TrialRecord]:
    return fold(read_events(env, name)).trials


@pytest.mark.timeout(600)
def test_change_fix_of_every_parameter_then_resume_runs_replicates(tmp_path: Path, lab: dict[str, str]) -> None:
    """Issue 14 item 10: `change --fix` of every parameter was accepted, then every resume
    exited 1 ("no new point satisfying the parameter constraints"). Now the campaign runs
    the fixed point as replicates and finishes."""
    env, _ = _stopped_campaign(tmp_path, "fixall", lab)
    out = run(["change", "fixall", "--fix", "x1=1.5", "--fix", "x2=2.5", "--reason", "replicates"], env)
    assert out.returncode == 0, out.stderr
    before = set(_trials(env, "fixall"))
    out = run(["resume", "fixall", "--quiet"], env)
    assert out.returncode == 0, out.stderr
    trials = _trials(env, "fixall")
    new = [t for t in trials.values() if t.trial_id not in before]
    assert len(trials) == 6 and new, trials
    assert all(t.parameters == {"x1": 1.5, "x2": 2.5} and t.status == "completed" for t in new), new


@pytest.mark.timeout(600)
def test_change_method_sobol_is_on_the_record_and_applies(tmp_path: Path, lab: dict[str, str]) -> None:
    """Issue 14 item 7: a person must be able to change the optimizer's method mid-campaign,
    on the record (main's `change` had no such option and an edited spec is refused). The
    change is in `history` with who and why, and the trials after it are Sobol points."""
    env, _ = _stopped_campaign(tmp_path, "meth", lab)
    out = run(["change", "meth", "--method", "sobol", "--by", "ana", "--reason", "the model chases outliers"], env)
    assert out.returncode == 0, out.stderr
    history = run(["history", "meth"], env, timeout=60)
    assert "method=sobol" in history.stdout and "ana" in history.stdout and "outliers" in history.stdout
    before = set(_trials(env, "meth"))
    out = run(["resume", "meth", "--quiet"], env)
    assert out.returncode == 0, out.stderr
    new = [t for t in _trials(env, "meth").values() if t.trial_id not in before]
    after_opening = [t for t in new if t.index >= 2]  # from the model, had the method stayed botorch
    assert after_opening and all(t.generator == "sobol" for t in after_opening), new
