"""Each class of malformed campaign file is refused before anything runs: one line, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.cli import cli_env, run, write_spec
from tests.e2e.test_cli_run import SPEC


def variant(**changes: object) -> dict:
    return {**SPEC, **changes}


CASES = {
    "unknown key": (variant(objectivs=SPEC["objectives"]), "objectivs: unknown key — did you mean 'objectives'?"),
    "bad bounds": (variant(parameters=[{"name": "x1", "type": "float", "bounds": [10, -5]},
                                       SPEC["parameters"][1]]), "parameters[0]: lower bound 10 is not below upper bound -5"),
    "unknown simulator": (variant(devices=[{"id": "d", "simulator": "brannin"}]),
                          "devices[0].simulator: unknown simulator 'brannin' — did you mean 'branin'?"),
    "objective not measured": (variant(objectives=[{"name": "purity", "minimize": False}]),
                               "objectives[0].name: device 'sim-a' (devices[0]) does not measure 'purity'"),
    "bad simulator option": (variant(devices=[{"id": "d", "simulator": "branin", "options": {"noise": 1}}]),
                             "devices[0].options: noise"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_spec_exit_2_one_line(case: str, tmp_path: Path) -> None:
    data, expected = CASES[case]
    spec = write_spec(tmp_path / "bad.yaml", data)
    out = run(["run", str(spec)], cli_env(tmp_path / "home", {}), timeout=120)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]
    # Refused before anything ran: no database was created.
    assert not (tmp_path / "home" / "mongo.json").exists()


def test_not_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [oops\n")
    out = run(["run", str(bad)], cli_env(tmp_path / "home", {}), timeout=120)
    assert out.returncode == 2 and "not valid YAML" in out.stderr and len(out.stderr.strip().splitlines()) == 1
