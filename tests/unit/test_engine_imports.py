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


def _runs_loading(method: str) -> list[str]:
    """Which of Ax and BoTorch a fresh interpreter loads to run a campaign's first 8 trials
    (5 Sobol, then the model) with ``optimizer.method`` set."""
    code = f"""
import json, sys
from campaigns import parse_spec
from campaigns.events import Measurement
from optimizer import AxOptimizer
spec = parse_spec({{"name": "t", "seed": 3, "budget": {{"max_trials": 20}},
                   "parameters": [{{"name": "x", "type": "float", "bounds": [0, 1]}},
                                  {{"name": "z", "type": "float", "bounds": [0, 1]}}],
                   "objectives": [{{"name": "y", "minimize": True}}], "devices": [{{"id": "d", "measures": ["y"]}}],
                   "optimizer": {{"method": {method!r}}}}})
opt = AxOptimizer(spec, threads=1)
while opt.num_trials < 8:
    for t in opt.suggest(2):
        p = t.parameters
        opt.complete(t.trial_id, {{"y": Measurement(mean=(p["x"] - 0.3) ** 2 + p["z"])}})
assert opt.engine.engine == {method!r} and opt.phase == "botorch"
print(json.dumps(sorted({{n.split('.')[0] for n in sys.modules}} & {{"ax", "botorch"}})))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    return list(json.loads(out.stdout))


def test_a_campaign_on_the_fast_engine_never_loads_ax() -> None:
    # Ax takes seconds to import: every `closedloop run` of a continuous campaign saves them.
    # BoTorch is seen (the fast engine uses its optimizers): the check sees what a run loads.
    assert _runs_loading("fast") == ["botorch"]
