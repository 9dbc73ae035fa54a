"""The engine runs without its infrastructure: importing it (in-memory backends included)
loads no MQTT client, database driver or Prefect. import-linter checks the import statements;
this checks what a fresh interpreter really loads, lazy package attributes included."""

from __future__ import annotations

import json
import subprocess
import sys

ENGINE = ["flows.engine.loop", "flows.engine.outcomes", "flows.engine.commands", "flows.engine.replay",
          "flows.engine.memory", "flows.engine.memory_hub", "flows.engine.catalog", "flows.engine.writer",
          "flows.engine.ports", "flows.engine.ahead", "flows.engine.rejections"]
INFRASTRUCTURE = ["paho", "amqtt", "pymongo", "prefect", "storage", "nx_27017"]


def _loaded(modules: list[str]) -> list[str]:
    code = (f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(json.dumps(sorted({{n.split('.')[0] for n in sys.modules}} & set({INFRASTRUCTURE!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout))


def test_the_engine_loads_no_mqtt_client_database_driver_or_prefect() -> None:
    assert _loaded(ENGINE) == []


def test_the_check_sees_what_a_module_loads() -> None:
    assert "paho" in _loaded(["devices.hub"])
