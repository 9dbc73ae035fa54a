"""Each class of malformed campaign file is refused before anything runs: one line, exit code 2."""

from __future__ import annotations

import uuid
from pathlib import Path

import pymongo
import pytest

from tests.e2e.cli import cli_env, run, write_spec
from tests.e2e.test_cli_run import SPEC

PRIOR = {"database": "lab", "collection": "runs", "filter": {"status": "done"},
         "parameters": {"x1": "c.x1", "x2": "c.x2"}, "metrics": {"branin": "result.yield"}}


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
    "server-side JavaScript in a prior-data filter": (
        variant(prior_data=[{"mongodb": {**PRIOR, "filter": {"$where": "this.x > 1"}}}]),
        "prior_data[0].mongodb.filter: $where runs JavaScript on the database server and is refused"),
    "a prior-data field that is no metric": (
        variant(prior_data=[{"mongodb": {**PRIOR, "metrics": {"yield": "result.yield"}}}]),
        "prior_data[0].mongodb.metrics: 'yield' is not a metric of this campaign"),
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


def test_prior_data_from_a_campaign_that_does_not_exist(tmp_path: Path, mongo_uri: str) -> None:
    # Valid as a file (validate says so); `run` reads the prior data before it writes anything.
    spec = write_spec(tmp_path / "seeded.yaml", variant(prior_data=[{"campaign": "nowhere"}]))
    database = f"cl_test_{uuid.uuid4().hex[:12]}"
    env = cli_env(tmp_path / "home", {}, CLOSEDLOOP_MONGODB_URI=mongo_uri, CLOSEDLOOP_MONGODB_DATABASE=database)
    assert run(["validate", str(spec)], env, timeout=120).returncode == 0
    out = run(["run", str(spec)], env, timeout=120)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.strip() == ("error: prior_data[0]: there is no campaign 'nowhere' in the log — "
                                  "see `closedloop list`"), out.stderr
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        assert client[database]["events"].count_documents({}) == 0  # nothing written
    finally:
        client.drop_database(database)
        client.close()
