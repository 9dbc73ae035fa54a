"""`closedloop sim` serves a campaign as a standalone instrument, in its own process."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.cli import CLOSEDLOOP, branin, cli_env, run, status, write_spec

SPEC = {
    "name": "standalone",
    "seed": 2,
    "parameters": [{"name": "x1", "type": "float", "bounds": [-5.0, 10.0]},
                   {"name": "x2", "type": "float", "bounds": [0.0, 15.0]}],
    "objectives": [{"name": "branin", "minimize": True}],
    "budget": {"max_trials": 4},
    "trial_timeout_s": 60,
    "devices": [{"id": "bench-1", "measures": ["branin"]}],
    "optimizer": {"method": "sobol"},
}


@pytest.mark.timeout(300)
def test_standalone_sim_serves_campaign(tmp_path: Path, mosquitto_url: str, prefect_server: dict[str, str]) -> None:
    env = cli_env(tmp_path / "home", prefect_server, CLOSEDLOOP_MQTT_URL=mosquitto_url)
    sim = subprocess.Popen([CLOSEDLOOP, "sim", "branin", "--device-id", "bench-1", "--option", "seed=3"],
                           env=env, stderr=subprocess.PIPE, text=True)
    try:
        out = run(["run", str(write_spec(tmp_path / "s.yaml", SPEC)), "--no-simulators"], env)
        assert out.returncode == 0, out.stderr
    finally:
        sim.terminate()
        _, sim_err = sim.communicate(timeout=30)
    assert sim.returncode == 0, sim_err
    s = status("standalone", env)
    assert s["trials"]["completed"] == 4
    p = s["best"]["parameters"]
    assert s["best"]["measurements"]["branin"] == pytest.approx(branin(p["x1"], p["x2"]), rel=1e-9)


def test_sim_unknown_simulator_is_usage_error(tmp_path: Path) -> None:
    out = run(["sim", "brainn", "--device-id", "d"], cli_env(tmp_path / "home", {}), timeout=60)
    assert out.returncode == 2 and "unknown simulator 'brainn'" in out.stderr
