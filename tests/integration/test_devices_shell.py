"""A device made of mosquitto_sub and mosquitto_pub only: protocol v1 needs none of our code.

The script is the one docs/protocol.md shows instrument authors.
"""

from __future__ import annotations

import subprocess

from devices import MqttDeviceHub, MqttSettings, ResultReceived, RunTrial, StatusChanged
from tests.conftest_brokers import unique, wait_for

DEVICE_SCRIPT = r"""
set -eu
prefix=$1; device=$2; host=$3; port=$4; shift 4   # remaining args: -u USER -P PASS, if any
base="$prefix/devices/$device"
# A persistent session (-c, fixed -i) makes the broker keep requests sent while we are away.
opts="-h $host -p $port -q 1 -i shell-$device"
mosquitto_sub $opts "$@" -c -t "$base/requests" -E
mosquitto_pub -h "$host" -p "$port" "$@" -q 1 -r -t "$base/status" \
  -m "{\"state\": \"idle\", \"device_id\": \"$device\", \"measures\": [\"y\"]}"
request=$(mosquitto_sub $opts "$@" -c -t "$base/requests" -C 1 -W 20)
request_id=$(printf '%s' "$request" | sed -E 's/.*"request_id": *"([^"]*)".*/\1/')
trial_id=$(printf '%s' "$request" | sed -E 's/.*"trial_id": *"([^"]*)".*/\1/')
mosquitto_pub -h "$host" -p "$port" "$@" -q 1 -t "$base/results" \
  -m "{\"kind\": \"trial_result\", \"request_id\": \"$request_id\", \"trial_id\": \"$trial_id\", \"status\": \"completed\", \"measurements\": {\"y\": {\"mean\": 42.5, \"sem\": 0.1}}}"
"""


def test_a_device_of_mosquitto_clients_answers_a_request(
    hub: MqttDeviceHub, mqtt_settings: MqttSettings
) -> None:
    device_id = unique("shell")
    address = mqtt_settings.address
    auth: list[str] = []
    if address.username is not None:
        auth = ["-u", address.username]
        if address.password is not None:
            auth += ["-P", address.password.get_secret_value()]
    with subprocess.Popen(
        ["bash", "-c", DEVICE_SCRIPT, "device",
         mqtt_settings.prefix, device_id, address.host, str(address.port), *auth],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as device:
        try:
            wait_for(hub, lambda e: isinstance(e, StatusChanged) and e.device_id == device_id)
            assert hub.devices()[device_id].measures == ["y"]
            hub.dispatch(device_id, RunTrial(request_id="req-1", campaign_id="c", trial_id="t-7",
                                             parameters={"x1": 0.25}))
            event = wait_for(hub, lambda e: isinstance(e, ResultReceived), timeout_s=60)
            _, stderr = device.communicate(timeout=60)
            assert device.returncode == 0, stderr.decode(errors="replace")
        finally:
            device.kill()  # no-op once it has exited
    assert isinstance(event, ResultReceived)
    assert event.device_id == device_id
    assert (event.result.request_id, event.result.trial_id) == ("req-1", "t-7")
    assert event.result.measurements["y"].mean == 42.5
    assert event.result.measurements["y"].sem == 0.1
