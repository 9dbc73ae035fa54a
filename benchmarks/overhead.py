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
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pymongo  # noqa: E402

from benchmarks._stack import Stack, branin_spec, run_campaign  # noqa: E402
from campaigns import (  # noqa: E402
    Measurement,
    SuggestedTrial,
    TrialCompleted,
    TrialDispatched,
    TrialsSuggested,
    event_to_doc,
)
from devices import connect  # noqa: E402
from optimizer import AxOptimizer, SobolSampler  # noqa: E402
from simulators import branin  # noqa: E402


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


def mqtt_round_trip(stack: Stack, n: int) -> float:
    """(b): median ms of a QoS 1 request answered at QoS 1 by another client."""
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
    return 1000 * statistics.median(times)


def log_appends(stack: Stack, n: int) -> float:
    """(b): median ms of the three inserts of one trial's events (raw pymongo)."""
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(stack.mongo_uri)
    coll = client.get_database("floor").get_collection("events")
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
    return 1000 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--devices", default="1,4", help="device counts to run, comma-separated")
    parser.add_argument("--no-prefect", action="store_true", help="CampaignLoop only, no Prefect flow")
    args = parser.parse_args()
    counts = [int(c) for c in args.devices.split(",")]
    rows: list[tuple[str, int, float, float, float]] = []
    with Stack() as stack:
        sobol_ms, ax_ms = plain_loop(args.trials)
        rt_ms = mqtt_round_trip(stack, 300)
        log_ms = log_appends(stack, 200)
        floor_ms = rt_ms + log_ms
        run_campaign(stack, branin_spec("warm-up", 1, max_trials=5))  # imports, first connections
        modes = [("loop", False)] + ([] if args.no_prefect else [("prefect", True)])
        for label, prefect in modes:
            for n in counts:
                spec = branin_spec(f"o-{label}-{n}", n, max_trials=args.trials, batch_size=n)
                r = run_campaign(stack, spec, prefect=prefect)
                assert r.state.count("completed") == args.trials, r.state.count("completed")
                rows.append((label, n, 1000 * r.loop_s / args.trials, args.trials / r.loop_s, r.wall_s - r.loop_s))
    print(f"\nfloor (a) plain in-process loop, Sobol + Branin:        {sobol_ms:8.3f} ms/trial")
    print(f"floor (a) in-process AxOptimizer(sobol) + Branin:       {ax_ms:8.3f} ms/trial")
    print(f"floor (b) MQTT QoS 1 request/response round trip:      {rt_ms:8.3f} ms (median of 300)")
    print(f"floor (b) the trial's 3 log appends (insert_one each):  {log_ms:8.3f} ms (median of 200)")
    print(f"floor (b) MQTT round trip + log appends:                {floor_ms:8.3f} ms/trial\n")
    print(f"{'stack':10}{'devices':>8}{'ms/trial':>10}{'trials/s':>10}{'x floor':>9}{'start-up s':>12}")
    for label, n, ms, tps, startup in rows:
        print(f"{label:10}{n:>8}{ms:>10.2f}{tps:>10.1f}{ms / floor_ms:>9.2f}{startup:>12.1f}")
    full = [r for r in rows if r[0] == ("loop" if args.no_prefect else "prefect")]
    one = next((r for r in full if r[1] == 1), full[0])
    best = max(full, key=lambda r: r[3])
    what = "CampaignLoop" if args.no_prefect else "Prefect flow"
    ok1 = one[2] <= 3 * floor_ms
    ok2 = best[3] >= 50
    print(f"\n{'PASS' if ok1 else 'FAIL'}: full stack ({what}, {one[1]} device) {one[2]:.2f} ms/trial "
          f"<= 3 x floor ({3 * floor_ms:.2f} ms): ratio {one[2] / floor_ms:.2f}")
    print(f"{'PASS' if ok2 else 'FAIL'}: full stack ({what}, {best[1]} devices) {best[3]:.1f} trials/s >= 50")
    return 0 if ok1 and ok2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
