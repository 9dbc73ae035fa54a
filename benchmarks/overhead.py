"""Per-trial overhead of the full stack against the floor measured in the same run (issue 6).

Full stack: the Prefect ``campaign`` flow (ephemeral Prefect; one flow run, suggestions as
Prefect tasks) — and, apart, ``CampaignLoop`` alone — on Mosquitto (``set_tcp_nodelay``),
an nx-27017 event log through pymongo, and instant simulated Branin instruments
(``duration_s: [0, 0]``), ``optimizer.method: sobol``, async dispatch. The time per trial is
read from the log: ``RunStarted`` to ``CampaignFinished`` over the trial count (start-up —
Prefect's ephemeral server, imports — is printed apart).

Floor, in the same process against the same servers:

- (a) a plain in-process loop producing the same trials: the campaign's Sobol points and
  Branin evaluated, no I/O; and the same through ``AxOptimizer`` (suggest + complete, what
  the optimizer costs per trial in-process);
- (b) the raw cost of one MQTT QoS 1 request/response round trip (a request published, a
  responder answering at QoS 1, the answer received) plus the log appends a trial needs (its
  ``TrialsSuggested``, ``TrialDispatched`` and ``TrialCompleted`` documents, one pymongo
  ``insert_one`` each).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/overhead.py [--trials 300] [--devices 1,4] [--no-prefect]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pymongo  # noqa: E402

from benchmarks._stack import Stack, branin_spec, run_campaign  # noqa: E402
from campaigns import (  # noqa: E402
    CampaignSpec,
    Measurement,
    TrialRecord,
    SuggestedTrial,
    TrialCompleted,
    TrialDispatched,
    TrialsSuggested,
    event_to_doc,
)
from devices import connect  # noqa: E402
from optimizer import AxOptimizer, SobolSampler  # noqa: E402
from simulators import branin  # noqa: E402


class PlainSobol:
    """A cheap generator for the loop: the campaign's own Sobol points, without Ax.

    The same points ``AxOptimizer`` suggests with ``method: sobol``, minus its Ax bookkeeping
    (each trial attached to and completed in an Ax experiment): what the stack costs with a
    generator that costs nothing.
    """

    def __init__(self, spec: CampaignSpec, trials: Iterable[TrialRecord]) -> None:
        listed = list(trials)
        self.sampler = SobolSampler(spec)
        self.count = len(listed)
        self.position = max((t.sobol_position for t in listed if t.sobol_position is not None), default=-1) + 1

    def suggest(self, n: int) -> list[SuggestedTrial]:
        points = self.sampler.next_points(self.position, n)
        self.position = points[-1].position + 1
        out = [SuggestedTrial(trial_id=str(self.count + i), parameters=p.parameters, generator="sobol",
                              sobol_position=p.position) for i, p in enumerate(points)]
        self.count += n
        return out

    def complete(self, trial_id: str, measurements: dict[str, Measurement]) -> None:
        """Nothing to learn."""

    def fail(self, trial_id: str, reason: str) -> None:
        """Nothing to learn."""


def plain_loop(trials: int) -> tuple[float, float]:
    """(a): ms per trial of Sobol + Branin in-process; and of AxOptimizer(sobol) + Branin."""
    spec = branin_spec("floor", 1, max_trials=trials)
    started = time.perf_counter()
    for p in SobolSampler(spec).next_points(0, trials):
        branin(float(p.parameters["x1"]), float(p.parameters["x2"]))
    sobol = (time.perf_counter() - started) / trials
    optimizer = AxOptimizer(spec, threads=1)
    started = time.perf_counter()
    for _ in range(trials):
        [t] = optimizer.suggest(1)
        value = branin(float(t.parameters["x1"]), float(t.parameters["x2"]))
        optimizer.complete(t.trial_id, {"branin": Measurement(mean=value)})
    ax = (time.perf_counter() - started) / trials
    return 1000 * sobol, 1000 * ax


def mqtt_round_trip(stack: Stack, n: int) -> list[float]:
    """(b): ms of each QoS 1 request answered at QoS 1 by another client."""
    settings = stack.mqtt()
    req, res = f"{settings.prefix}/req", f"{settings.prefix}/res"
    got = threading.Event()
    responder = None

    def answer(topic: str, payload: bytes, delivery: object) -> bool:
        assert responder is not None
        responder.publish(res, payload, qos=1, timeout_s=None)  # inside paho's callback: no waiting
        return False

    def received(topic: str, payload: bytes, delivery: object) -> bool:
        got.set()
        return False

    responder = connect(settings, client_id=f"resp-{uuid.uuid4().hex[:6]}", subscriptions=[req], on_message=answer)
    requester = connect(settings, client_id=f"req-{uuid.uuid4().hex[:6]}", subscriptions=[res], on_message=received)
    time.sleep(0.3)  # subscriptions settle
    times = []
    payload = b'{"kind": "run_trial", "request_id": "r", "trial_id": "1", "parameters": {"x1": 1.0, "x2": 2.0}}'
    try:
        for _ in range(n):
            got.clear()
            started = time.perf_counter()
            requester.publish(req, payload, qos=1, timeout_s=None)
            if not got.wait(5):
                raise SystemExit("no MQTT response within 5 s")
            times.append(time.perf_counter() - started)
    finally:
        requester.close()
        responder.close()
    return [1000 * t for t in times]


def log_appends(stack: Stack, n: int) -> list[float]:
    """(b): ms of the three inserts of one trial's events (raw pymongo), per trial."""
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(stack.mongo_uri)
    coll = client.get_database(f"floor_{uuid.uuid4().hex[:6]}").get_collection("events")
    coll.create_index([("campaign_id", 1), ("seq", 1)], unique=True)
    trial = SuggestedTrial(trial_id="0", parameters={"x1": 1.0, "x2": 2.0}, generator="sobol", sobol_position=0)
    times = []
    seq = 0
    for i in range(n):
        seq += 3
        docs = [
            event_to_doc(TrialsSuggested(campaign_id="floor", seq=seq - 2, actor="optimizer", trials=[trial])),
            event_to_doc(TrialDispatched(campaign_id="floor", seq=seq - 1, actor="orchestrator", trial_id="0",
                                         device_id="dev-0", request_id=f"floor:0:{i}")),
            event_to_doc(TrialCompleted(campaign_id="floor", seq=seq, actor="device:dev-0", trial_id="0",
                                        device_id="dev-0", request_id=f"floor:0:{i}",
                                        measurements={"branin": Measurement(mean=1.0)})),
        ]
        started = time.perf_counter()
        for d in docs:
            coll.insert_one(d)
        times.append(time.perf_counter() - started)
    client.close()
    return [1000 * t for t in times]


def round_trips(events: list[Any]) -> tuple[float, float]:
    """Medians (ms) of dispatched -> completed, and of completed -> the next dispatched (1 device)."""
    dispatched = {e.trial_id: e.time for e in events if e.kind == "TrialDispatched"}
    device = [1000 * (e.time - dispatched[e.trial_id]).total_seconds() for e in events if e.kind == "TrialCompleted"]
    order = [e for e in events if e.kind in ("TrialDispatched", "TrialCompleted")]
    loop = [1000 * (b.time - a.time).total_seconds() for a, b in zip(order, order[1:], strict=False)
            if a.kind == "TrialCompleted" and b.kind == "TrialDispatched"]
    return statistics.median(device), statistics.median(loop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--devices", default="1,4", help="device counts to run, comma-separated")
    parser.add_argument("--no-prefect", action="store_true", help="CampaignLoop only, no Prefect flow")
    args = parser.parse_args()
    print("load average at start: %.2f %.2f %.2f (2 cores; other work on the machine slows every figure)"
          % os.getloadavg(), flush=True)
    counts = [int(c) for c in args.devices.split(",")]
    rows: list[tuple[str, int, float, float, float]] = []
    paths: list[tuple[str, float, float]] = []
    with Stack() as stack:
        sobol_ms, ax_ms = plain_loop(args.trials)
        # The floor is measured before and after the full-stack runs (the machine's load moves).
        rts, logs = mqtt_round_trip(stack, 200), log_appends(stack, 100)
        run_campaign(stack, branin_spec("warm-up", 1, max_trials=5))  # imports, first connections
        modes = [("loop+plain", False, PlainSobol), ("loop+ax", False, None)]
        modes += [] if args.no_prefect else [("prefect+ax", True, None)]
        for label, prefect, make in modes:
            for n in counts:
                spec = branin_spec(f"o-{label.replace('+', '-')}-{n}", n, max_trials=args.trials, batch_size=n)
                r = run_campaign(stack, spec, prefect=prefect, make_optimizer=make)
                assert r.state.count("completed") == args.trials, r.state.count("completed")
                rows.append((label, n, 1000 * r.loop_s / args.trials, args.trials / r.loop_s, r.wall_s - r.loop_s))
                if n == 1:
                    paths.append((label, *round_trips(r.events)))
        rts += mqtt_round_trip(stack, 200)
        logs += log_appends(stack, 100)
    rt_ms, log_ms = statistics.median(rts), statistics.median(logs)
    floor_ms = rt_ms + log_ms
    print(f"\nfloor (a) plain in-process loop, Sobol + Branin:        {sobol_ms:8.3f} ms/trial")
    print(f"floor (a) in-process AxOptimizer(sobol) + Branin:       {ax_ms:8.3f} ms/trial")
    print(f"floor (b) MQTT QoS 1 request/response round trip:      {rt_ms:8.3f} ms (median of {len(rts)})")
    print(f"floor (b) the trial's 3 log appends (insert_one each):  {log_ms:8.3f} ms (median of {len(logs)})")
    print(f"floor (b) MQTT round trip + log appends:                {floor_ms:8.3f} ms/trial\n")
    print("stacks: loop = CampaignLoop alone, prefect = the Prefect campaign flow; +plain = the plain Sobol")
    print("generator (no Ax), +ax = AxOptimizer with method: sobol (Ax bookkeeping per trial)\n")
    print(f"{'stack':12}{'devices':>8}{'ms/trial':>10}{'trials/s':>10}{'x floor':>9}{'start-up s':>12}")
    for label, n, ms, tps, startup in rows:
        print(f"{label:12}{n:>8}{ms:>10.2f}{tps:>10.1f}{ms / floor_ms:>9.2f}{startup:>12.1f}")
    print("\nwhere a trial's time goes with 1 device (medians, from the log's event times): dispatched ->")
    print("completed = request, the instrument's run and messages, result; completed -> next dispatched = the loop")
    for label, device_ms, loop_ms in paths:
        print(f"  {label:12} dispatched -> completed {device_ms:6.2f} ms   completed -> next dispatched {loop_ms:6.2f} ms")
    ok = True
    for label in dict.fromkeys(r[0] for r in rows):
        full = [r for r in rows if r[0] == label]
        one = next((r for r in full if r[1] == 1), full[0])
        best = max(full, key=lambda r: r[3])
        ok1, ok2 = one[2] <= 3 * floor_ms, best[3] >= 50
        if label == rows[-1][0]:
            ok = ok1 and ok2  # the exit code follows the fullest stack
        print(f"{'PASS' if ok1 else 'FAIL'}: {label} ({one[1]} device) {one[2]:.2f} ms/trial <= 3 x floor "
              f"({3 * floor_ms:.2f} ms): ratio {one[2] / floor_ms:.2f}")
        print(f"{'PASS' if ok2 else 'FAIL'}: {label} ({best[1]} devices) {best[3]:.1f} trials/s >= 50")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
