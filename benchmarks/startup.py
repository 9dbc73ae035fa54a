"""What a `closedloop` process costs before it does anything: CPU of imports, side by side.

Each row is a fresh interpreter, run --repeat times in turn with the others (the machine is
shared and noisy), and its median user+system CPU is printed beside a bare interpreter's::

    python benchmarks/startup.py [--repeat 5]

The rows: the CLI's light commands (importing ``flows.cli.main``), what a campaign run loads
for its optimizer on the fast engine (closedloop's Sobol opening and NumPy GP, no Ax), Ax
itself (what an ``ax`` campaign loads besides), and Prefect (the flow).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each case, interleaved (default 5)")
    args = parser.parse_args()
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
