"""Helpers for running the `closedloop` CLI as a user does: a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

CLOSEDLOOP = str(Path(sys.executable).parent / "closedloop")


def cli_env(home: Path, prefect: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOSEDLOOP_")}
    env.update(prefect)
    env["CLOSEDLOOP_HOME"] = str(home)
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def shared_env(home: Path, prefect: dict[str, str], mongo_uri: str, broker: str) -> dict[str, str]:
    """`cli_env` on the session's database server and broker, under a database and topic prefix
    of this test's own: no command starts an embedded server (each `status` did), which the
    tests of the embedded defaults (test_cli_run, test_stops, test_crash_resume) still cover."""
    import uuid

    return cli_env(home, prefect, CLOSEDLOOP_MONGODB_URI=mongo_uri, CLOSEDLOOP_MQTT_URL=broker,
                   CLOSEDLOOP_MONGODB_DATABASE=f"cl_e2e_{uuid.uuid4().hex[:8]}",
                   CLOSEDLOOP_MQTT_PREFIX=f"e2e-{uuid.uuid4().hex[:8]}")


def read_events(env: dict[str, str], campaign: str) -> list[Any]:
    """The campaign's log on the database of a `shared_env`."""
    from storage import MongoEventStore

    with MongoEventStore(env["CLOSEDLOOP_MONGODB_URI"], database=env["CLOSEDLOOP_MONGODB_DATABASE"]) as store:
        return store.read(campaign)


def log_of(env: dict[str, str], campaign: str) -> list[Any]:
    """The campaign's log as the CLI with ``env`` reads it: the configured database, or the
    embedded server of its home while one runs (none running: no log yet, and none is started)."""
    from storage import EmbeddedMongo, MongoEventStore

    if "CLOSEDLOOP_MONGODB_URI" in env:
        with MongoEventStore(env["CLOSEDLOOP_MONGODB_URI"],
                             database=env.get("CLOSEDLOOP_MONGODB_DATABASE", "closedloop")) as store:
            return store.read(campaign)
    home = Path(env["CLOSEDLOOP_HOME"])
    if not (home / "mongo.json").exists():
        return []
    with EmbeddedMongo(home) as mongo, MongoEventStore(mongo.uri) as store:
        return store.read(campaign)


def status_now(campaign: str, env: dict[str, str]) -> dict[str, Any] | None:
    """What `closedloop status CAMPAIGN --json` prints, computed in this process from the log
    (the same ``status_dict``): the condition a test's wait polls, without a CLI process per poll
    (~0.7 s of CPU each). None while the campaign has no log yet. The `status` command itself
    is tested where its output is the point (test_cli_run)."""
    from campaigns import fold
    from flows.cli.report import status_dict

    events = log_of(env, campaign)
    return status_dict(fold(events)) if events else None


def run(args: list[str], env: dict[str, str], timeout: float = 240, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLOSEDLOOP, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def status(campaign: str, env: dict[str, str]) -> dict[str, Any]:
    out = run(["status", campaign, "--json"], env, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def branin(x1: float, x2: float) -> float:
    """Branin, written out here independently of the simulator."""
    import math

    b, c, r, s, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 6.0, 10.0, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - r) ** 2 + s * (1 - t) * math.cos(x1) + s
