"""What a `closedloop` process costs before it does anything: CPU of imports, side by side.

Each row is a fresh interpreter, run --repeat times in turn with the others (the machine is
shared and noisy), and its median user+system CPU is printed beside a bare interpreter's::

    python benchmarks/startup.py [--repeat 5]
    python benchmarks/startup.py --run [--repeat 5]

The rows: the CLI's light commands (importing ``flows.cli.main``), what a campaign run loads
for its optimizer on the fast engine (closedloop's Sobol opening and NumPy GP, no Ax), Ax
itself (what an ``ax`` campaign loads besides), and Prefect (the flow).

``--run``: a whole ``closedloop run`` of an 8-trial Branin campaign (5 Sobol, 3 fast) on
Mosquitto, nx-27017 and a Prefect server started here, as shipped and with Python's garbage
collector left at its defaults during start-up (no ``gc.disable``/``gc.freeze``), interleaved.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "python (bare interpreter)": "pass",
    "import flows.cli.main (light commands)": "import flows.cli.main",
    "import optimizer.ax_optimizer + fast engine": "import optimizer.ax_optimizer, optimizer.fastbo",
    "import ax": "import ax",
    "import prefect": "import prefect",
    "import flows.prefect.flow (a run's flow)": "import flows.prefect.flow",
}


def cpu_of(code: str) -> float:
    """User + system CPU seconds of one fresh interpreter running ``code``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


RUN_SPEC = """name: startup
seed: 7
parameters:
  - {name: x1, type: float, bounds: [-5.0, 10.0]}
  - {name: x2, type: float, bounds: [0.0, 15.0]}
objectives: [{name: branin, minimize: true}]
budget: {max_trials: 8}
batch_size: 2
devices:
  - {id: sim-1, simulator: branin, options: {seed: 1}}
  - {id: sim-2, simulator: branin, options: {seed: 2}}
"""

RUN_CASES = {
    "closedloop run (as shipped)": "",
    "closedloop run, collector at Python's defaults": "import gc; gc.disable = gc.freeze = lambda: None; ",
}


def _prefect_server(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A `prefect server start` of this benchmark's own, and its API URL once it answers."""
    import time
    import urllib.request

    sys.path.insert(0, str(ROOT))
    from benchmarks._stack import _free_port

    url = f"http://127.0.0.1:{(port := _free_port())}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("prefect server did not start within 180 s")


def run_cases(repeat: int) -> None:
    """``--run``: whole campaign runs, as shipped and with the collector at its defaults."""
    import signal
    import tempfile

    sys.path.insert(0, str(ROOT))
    from benchmarks._stack import Stack

    root = Path(tempfile.mkdtemp(prefix="closedloop-startup-"))
    (root / "spec.yaml").write_text(RUN_SPEC)
    stack = Stack().start()
    server, url = _prefect_server(root / "prefect")
    try:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFECT_API_URL": url, "PREFECT_HOME": str(root / "prefect"),
               "CLOSEDLOOP_MQTT_URL": stack.mqtt_url, "CLOSEDLOOP_MONGODB_URI": stack.mongo_uri,
               "CLOSEDLOOP_HOME": str(root / "home")}
        runs: dict[str, list[float]] = {name: [] for name in RUN_CASES}
        for i in range(repeat):
            for j, (name, patch) in enumerate(RUN_CASES.items()):
                code = (f"{patch}from flows.cli.main import main; "
                        f"raise SystemExit(main(['run', 'spec.yaml', '--campaign-id', 'c{i}-{j}', '--quiet']))")
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env, stdout=subprocess.DEVNULL)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                runs[name].append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    finally:
        os.killpg(server.pid, signal.SIGINT)  # Prefect 3.8's server stops on SIGINT
        server.wait(timeout=60)
        stack.stop()
    base = statistics.median(runs["closedloop run (as shipped)"])
    rows = [(name, f"{statistics.median(v):.2f}", f"{statistics.median(v) / base:.2f}x") for name, v in runs.items()]
    print(tabulate(rows, headers=["process", "CPU s (median)", "vs as shipped"], colalign=("left", "right", "right")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each case, interleaved (default 5)")
    parser.add_argument("--run", action="store_true", help="whole campaign runs instead of imports")
    args = parser.parse_args()
    if args.run:
        run_cases(args.repeat)
        return
    runs: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.repeat):
        for name, code in CASES.items():
            runs[name].append(cpu_of(code))
    bare = statistics.median(runs["python (bare interpreter)"])
    ax = statistics.median(runs["import ax"])
    rows = [(name, f"{statistics.median(v):.2f}", f"{statistics.median(v) / bare:.1f}x",
             f"{statistics.median(v) / ax:.2f}") for name, v in runs.items()]
    print(tabulate(rows, headers=["process", "CPU s (median)", "vs bare python", "vs import ax"],
                   colalign=("left", "right", "right", "right")))


if __name__ == "__main__":
    main()
