"""`closedloop replay`, `closedloop compare` and `closedloop sim --from-campaign` as a user runs them,
on the session's database server and Mosquitto."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from tests.e2e.cli import run, shared_env, status, write_spec

SPEC = {
    "name": "recorded",
    "seed": 7,
    "parameters": [
        {"name": "x1", "type": "float", "bounds": [-5.0, 10.0]},
        {"name": "x2", "type": "float", "bounds": [0.0, 15.0]},
    ],
    "objectives": [{"name": "branin", "minimize": True}],
    "budget": {"max_trials": 8},
    "batch_size": 2,
    "dispatch": "batch",
    "optimizer": {"initialization_trials": 4},
    "devices": [
        {"id": "sim-a", "simulator": "branin", "options": {"seed": 1}},
        {"id": "sim-b", "simulator": "branin", "options": {"seed": 2}},
    ],
}


@pytest.mark.timeout(900)
def test_faithful_and_counterfactual_replays_and_compare(tmp_path: Path, prefect_server: dict[str, str],
                                                         mongo_uri: str, mosquitto_url: str) -> None:
    env = shared_env(tmp_path / "home", prefect_server, mongo_uri, mosquitto_url)
    spec = write_spec(tmp_path / "recorded.yaml", SPEC)
    out = run(["run", str(spec), "--quiet"], env, timeout=600)
    assert out.returncode == 0, out.stderr
    source = status("recorded", env)

    # Faithful, noise off: every recorded trial measured again, error 0, the same best.
    report = tmp_path / "faithful.csv"
    out = run(["replay", "recorded", "--simulator", "branin", "--campaign-id", "faithful", "--quiet",
               "--report", str(report)], env, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(report.open()))
    assert len(rows) == 8
    assert all(float(r["branin.error"]) == 0.0 for r in rows), rows
    assert "branin: 8 pair(s), mean |error| 0, max |error| 0, correlation 1" in out.stdout
    # The same best trial, values and all; only who chose it differs (the replay, not the model).
    replayed_best = status("faithful", env)["best"]
    assert replayed_best["engine"] == "replay" and replayed_best["generator"] == "replay"
    without_origin = lambda best: {k: v for k, v in best.items() if k not in ("engine", "generator")}  # noqa: E731
    assert without_origin(replayed_best) == without_origin(source["best"])

    # Counterfactual with the same seed: the same campaign again, trial for trial.
    out = run(["replay", "recorded", "--mode", "counterfactual", "--campaign-id", "same", "--quiet"], env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "8 of 8 trial(s) at the source's parameters, 8 with the same results too" in out.stdout

    # Another batch size: another campaign, plotted beside the source.
    out = run(["replay", "recorded", "--mode", "counterfactual", "--batch-size", "1", "--campaign-id", "b1",
               "--quiet"], env, timeout=600)
    assert out.returncode == 0, out.stderr
    same = re.search(r"(\d+) of 8 trial\(s\) at the source's parameters", out.stdout)
    assert same is not None and int(same.group(1)) < 8, out.stdout
    out = run(["compare", "recorded", "b1", "faithful", "--output", str(tmp_path / "cmp")], env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:2] == ["campaign", "metric"] and set(lines[1]) <= {"-", " "}
    assert {line.split()[0] for line in lines[2:5]} == {"recorded", "b1", "faithful"}
    png = (tmp_path / "cmp.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    page = (tmp_path / "cmp.html").read_text()
    assert "data:image/png;base64," in page and "<td>b1</td>" in page and "<td>recorded</td>" in page

    # An emulator of the recorded campaign, as `closedloop sim --from-campaign` would serve it:
    # described and saved from one fit (--describe alone used to skip --save).
    emu = tmp_path / "emu.json"
    out = run(["sim", "--from-campaign", "recorded", "--describe", "--save", str(emu)], env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "inputs: x1, x2; metrics: branin" in out.stdout and "8 points" in out.stderr
    assert emu.exists() and f"wrote {emu}" in out.stderr, out.stderr
    served = write_spec(tmp_path / "served.yaml", dict(SPEC, name="served", devices=[
        {"id": "emu", "simulator": "emulator", "options": {"file": str(emu), "seed": 1}}]))
    out = run(["validate", str(served)], env, timeout=120)
    assert out.returncode == 0 and "is valid" in out.stdout, out.stderr

    # Bad input: one line each, nothing created.
    out = run(["replay", "nope", "--simulator", "branin"], env, timeout=120)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "no campaign 'nope'" in out.stderr
    out = run(["replay", "recorded", "--simulator", "branin", "--seed", "3"], env, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "use --mode counterfactual" in out.stderr
    out = run(["replay", "recorded", "--simulator", "branin", "--option", "noise_sd"], env, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "expected NAME=VALUE" in out.stderr
    out = run(["compare", "recorded", "nope", "-o", str(tmp_path / "x")], env, timeout=120)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "no campaign 'nope'" in out.stderr
    emu.unlink()
    out = run(["validate", str(served)], env, timeout=120)
    assert out.returncode != 0 and out.stderr.count("\n") == 1 and "emulator file" in out.stderr
    for serve in (["sim", "branin", "--device-id", "d1"], ["sim", "--from-campaign", "recorded", "--device-id", "d1"]):
        no_broker = {k: v for k, v in env.items() if k != "CLOSEDLOOP_MQTT_URL"}
        out = run(serve, no_broker, timeout=120)  # no `closedloop run` here, no broker configured
        assert out.returncode == 1 and "no MQTT broker to join" in out.stderr.splitlines()[-1], out.stderr
    out = run(["list"], env, timeout=120)
    header, rule, *rows = out.stdout.splitlines()
    assert re.split(r"\s{2,}", header) == ["campaign", "status", "trials", "best", "last activity"]
    assert set(rule) <= {"-", " "}
    assert sorted(line.split()[0] for line in rows) == ["b1", "faithful", "recorded", "same"]
    assert all(re.split(r"\s{2,}", line)[1] == "finished (budget_exhausted)" for line in rows), rows
