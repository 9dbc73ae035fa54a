"""A device written by someone else: nothing but `mosquitto_sub`, `mosquitto_pub`, sed and awk,
answering on the protocol v1 topics of docs/protocol.md, serves a campaign over real Mosquitto."""

from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.cli import cli_env, run, status, write_spec

DEVICE_SH = r"""
set -u
H="$1"; P="$2"; D=closedloop/devices/shell-dev
mosquitto_pub -h "$H" -p "$P" -q 1 -r -t "$D/status" -m '{"state": "idle", "device_id": "shell-dev", "measures": ["y"]}'
mosquitto_sub -h "$H" -p "$P" -q 1 -t "$D/requests" | while read -r line; do
  rid=$(printf '%s' "$line" | sed -E 's/.*"request_id": *"([^"]*)".*/\1/')
  tid=$(printf '%s' "$line" | sed -E 's/.*"trial_id": *"([^"]*)".*/\1/')
  x=$(printf '%s' "$line" | sed -E 's/.*"x": *([-0-9.eE+]+).*/\1/')
  y=$(awk -v x="$x" 'BEGIN { printf "%.12f", (x - 1.5) * (x - 1.5) }')
  mosquitto_pub -h "$H" -p "$P" -q 1 -t "$D/results" -m "{\"kind\": \"trial_result\", \"request_id\": \"$rid\", \"trial_id\": \"$tid\", \"status\": \"completed\", \"measurements\": {\"y\": $y}}"
done
"""

SPEC = {
    "name": "foreign-device",
    "seed": 1,
    "parameters": [{"name": "x", "type": "float", "bounds": [0.0, 4.0]}],
    "objectives": [{"name": "y", "minimize": True}],
    "budget": {"max_trials": 5},
    "trial_timeout_s": 30,
    "devices": [{"id": "shell-dev", "measures": ["y"]}],
    "optimizer": {"method": "sobol"},
}


@pytest.mark.timeout(300)
def test_shell_device_serves_a_campaign(tmp_path: Path, mosquitto_url: str, prefect_server: dict[str, str]) -> None:
    u = urlsplit(mosquitto_url)
    script = tmp_path / "device.sh"
    script.write_text(DEVICE_SH)
    device = subprocess.Popen(["bash", str(script), str(u.hostname), str(u.port)], start_new_session=True)
    try:
        env = cli_env(tmp_path / "home", prefect_server, CLOSEDLOOP_MQTT_URL=mosquitto_url)
        out = run(["run", str(write_spec(tmp_path / "spec.yaml", SPEC)), "--no-simulators"], env)
        assert out.returncode == 0, out.stderr
    finally:
        import os
        import signal

        os.killpg(device.pid, signal.SIGTERM)
        device.wait(timeout=10)
    s = status("foreign-device", env)
    assert s["trials"]["completed"] == 5 and s["trials"]["failed"] == 0
    x = s["best"]["parameters"]["x"]
    assert s["best"]["measurements"]["y"] == pytest.approx((x - 1.5) ** 2, abs=1e-9)
