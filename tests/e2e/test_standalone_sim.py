"""`closedloop sim` serves a campaign as a standalone instrument, in its own process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.cli import CLOSEDLOOP, branin, cli_env, run, start, status, write_spec

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
    sim = start(["sim", "branin", "--device-id", "bench-1", "--option", "seed=3"], env, stderr=subprocess.PIPE, text=True)
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


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("entry", ["cli", "module"])
def test_every_entry_point_serves_alike_and_stops_cleanly_on_a_signal(entry: str, how: signal.Signals, tmp_path: Path,
                                                                       mosquitto_url: str) -> None:
    """Issue 15: `closedloop sim` and `python -m simulators.standalone` start an instrument one way
    (simulators.serve): the same `--option KEY=VALUE`, the same clean stop on SIGINT and SIGTERM."""
    options = ["--option", "seed=3", "--option", "duration_s=[0.1, 0.2]"]
    if entry == "cli":
        argv = [CLOSEDLOOP, "sim", "branin", "--device-id", "bench-1", *options]
        env = cli_env(tmp_path / "home", {}, CLOSEDLOOP_MQTT_URL=mosquitto_url)
    else:
        argv = [sys.executable, "-m", "simulators.standalone", "branin", "bench-1", *options]
        env = cli_env(tmp_path / "home", {})
    sim = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=Path(__file__).parents[2])
    assert sim.stdin is not None and sim.stderr is not None
    sim.stdin.write(json.dumps({"url": mosquitto_url, "prefix": "closedloop"}) + "\n")
    sim.stdin.flush()
    try:
        seen = []  # until the line printed once the instrument is online (runpy may warn first)
        while not seen or ("serving as device bench-1" not in seen[-1] and seen[-1]):
            seen.append(sim.stderr.readline())
        assert "serving as device bench-1" in seen[-1], seen
        sim.send_signal(how)
        _, err = sim.communicate(timeout=60)
    finally:
        if sim.poll() is None:
            sim.kill()
    assert sim.returncode == 0 and "Traceback" not in err, err


@pytest.mark.parametrize("option", ["seed", "=3", "noise_sd=1e400"])
def test_a_malformed_option_is_one_line_from_every_entry_point(option: str, tmp_path: Path) -> None:
    out = run(["sim", "branin", "--device-id", "d", "--option", option], cli_env(tmp_path / "home", {}), timeout=60)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "--option" in out.stderr, out.stderr
    module = subprocess.run([sys.executable, "-m", "simulators.standalone", "branin", "d", "--option", option],
                            input="", capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert module.returncode == 2 and "--option" in module.stderr.strip().splitlines()[-1], module.stderr
    assert "Traceback" not in module.stderr
