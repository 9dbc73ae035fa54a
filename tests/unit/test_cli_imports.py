"""The light commands (`status`, `list`, `log`, `validate`, `approve`, ...) start without what
only a run, a simulator or a database needs: the end-to-end suite starts hundreds of them, and
each import of an MQTT client, a database driver or the simulator catalog was paid by every one.
What a fresh interpreter really loads, lazy package attributes included (import-linter only
reads import statements)."""

from __future__ import annotations

import json
import subprocess
import sys

#: What importing the CLI must not load: the MQTT client and broker, the database driver,
#: the simulators, Prefect, the optimizer's numerical stack, the table formatter, the YAML reader.
RUN_ONLY = ["paho", "amqtt", "pymongo", "bson", "storage", "simulators", "prefect", "torch", "botorch", "ax",
            "numpy", "tabulate", "yaml", "flows.prefect", "flows.app.lease", "flows.app.wiring", "flows.engine.commands"]

_SNAPSHOTS = f"""
import json, sys
watched = {RUN_ONLY + ["simulators.catalog", "simulators.colour", "simulators.instrument"]!r}

def loaded():
    return sorted(w for w in watched if w in sys.modules)

snapshots = {{}}
import flows.cli.main
snapshots["cli"] = loaded()
from flows.engine.catalog import check_spec_devices  # what `validate` adds
snapshots["catalog"] = loaded()
import devices.hub  # the control: a module that does load the MQTT client
snapshots["hub"] = loaded()
print(json.dumps(snapshots))
"""


def test_importing_the_cli_loads_no_mqtt_client_database_driver_simulator_or_prefect() -> None:
    out = subprocess.run([sys.executable, "-c", _SNAPSHOTS], capture_output=True, text=True, check=True)
    snapshots = json.loads(out.stdout)
    assert snapshots["cli"] == []
    # `validate` checks a spec against the catalog: its entries, not the simulators' MQTT side
    # nor the models of simulators the spec does not name.
    assert snapshots["catalog"] == ["simulators", "simulators.catalog"]
    assert "paho" in snapshots["hub"]  # the check sees what a module loads
