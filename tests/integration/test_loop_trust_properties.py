"""Property (issue 14, must-show 3, device side): whatever topics and payloads arrive, nothing is
recorded as a trial's measurement that is not a valid result from the device its request went
to, for that request, and for metrics that device announces.

The messages go in where paho hands them to the hub (its message callback), so every byte
takes the real path: topic parsing, payload parsing, hub events, the loop's handling, the log
(a MongoDB-wire server through pymongo). No broker: hundreds of cases run in seconds; the
broker-level cases are in test_loop_trust.py.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from campaigns import TrialFailed
from campaigns.errors import DeviceMessageError
from devices import MqttDeviceHub, MqttSettings, Topics, parse_result
from flows.engine.loop import CampaignLoop, LoopOptions
from optimizer import AxOptimizer
from storage import MongoEventStore
from tests.integration.loop_harness import kinds, seed, spec

PREFIX = "p"
SENT = {"r-0": ("0", "dev-d"), "r-1": ("1", "dev-e"), "r-2": ("2", "dev-d")}  # trial 2 timed out on dev-d
METRICS = ["branin", "purity", "zz"]
DEVICES = ["dev-d", "dev-e", "ghost", "dev-d "]

# Weighted towards what can go wrong: results on the devices' topics (right or wrong device)
# for real requests, with plausible values; and every kind of junk besides.
results_topics = st.sampled_from([f"{PREFIX}/devices/{d}/results" for d in DEVICES])
topics = results_topics | results_topics | st.sampled_from(
    [f"{PREFIX}/devices/{d}/{c}" for d in DEVICES for c in ("results", "status", "requests")]
    + [f"{PREFIX}/other/dev-d/results", f"{PREFIX}/devices/dev-d/results/x"]
)
numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**30, 10**30)
finite = st.floats(-1e6, 1e6)
values = finite | finite | finite | finite | finite | st.none() | numbers | st.booleans() | st.text(max_size=3) | st.fixed_dictionaries(
    {"mean": finite | numbers | st.none() | st.text(max_size=2)}, optional={"sem": finite | numbers | st.none()})
ids = st.sampled_from([(r, t) for r, (t, _) in SENT.items()]) | st.tuples(
    st.sampled_from([*SENT, "r-9", ""]), st.sampled_from(["0", "1", "2", "9"]))
results = st.builds(
    lambda rt, rest: {"request_id": rt[0], "trial_id": rt[1], **rest},
    ids,
    st.fixed_dictionaries({
        "kind": st.sampled_from(["trial_result", "trial_result", "run_trial"]),
        "status": st.sampled_from(["completed", "completed", "failed", "done"]),
        "measurements": st.dictionaries(st.sampled_from(METRICS), values, max_size=3),
    }, optional={"error": st.text(max_size=4)}),
)
statuses = st.fixed_dictionaries({
    "state": st.sampled_from(["idle", "busy", "offline"]),
    "device_id": st.sampled_from(DEVICES),
    "measures": st.lists(st.sampled_from(METRICS), max_size=3, unique=True),
})
payloads = (st.binary(max_size=30) | st.just(b"") | statuses.map(lambda body: json.dumps(body).encode())
            | results.map(lambda body: json.dumps(body, allow_nan=True).encode())
            | results.map(lambda body: json.dumps(body, allow_nan=True).encode()))
messages = st.lists(st.tuples(topics, payloads), min_size=1, max_size=12)


@pytest.fixture(scope="module")
def store(mongo_uri: str) -> Iterator[MongoEventStore]:
    with MongoEventStore(mongo_uri, database=f"cl_prop_{uuid.uuid4().hex[:8]}") as s:
        yield s


def _results_from(msgs: list[tuple[str, bytes]]) -> list[tuple[str, Any]]:
    """Every well-formed result among the messages, with the device its topic names."""
    out = []
    for topic, body in msgs:
        try:
            device_id, channel = Topics(PREFIX).parse(topic)
            if channel == "results":
                out.append((device_id, parse_result(body)))
        except DeviceMessageError:
            continue
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(msgs=messages)
# The reproduction: trial 2 timed out on dev-d; its late result comes on dev-e's topic,
# then on a topic of a device not in the spec, then from dev-d.
@example(msgs=[(f"{PREFIX}/devices/{d}/results", json.dumps(
    {"kind": "trial_result", "request_id": "r-2", "trial_id": "2", "status": "completed",
     "measurements": {"branin": value}}).encode()) for d, value in (("dev-e", 1.0), ("ghost", 2.0), ("dev-d", 3.0))])
def test_only_the_asked_device_answers_for_its_request(store: MongoEventStore, msgs: list[tuple[str, bytes]]) -> None:
    """Issue 14 item 2 and must-show 3: a late result on another device's topic was recorded as
    the trial's value. Over random topics and payloads, every TrialCompleted and
    LateResultRecorded is a valid result, from the device the request went to, for that request,
    with values equal to what it sent, only for metrics it announces; and the rejections stay
    within their bound."""
    campaign_id = f"prop-{uuid.uuid4().hex[:10]}"
    campaign = spec([{"id": "dev-d", "measures": ["branin", "purity"]}, {"id": "dev-e", "measures": ["branin", "purity"]}],
                    trial_timeout_s=10_000)
    seed(store, campaign, {t: d for t, d in SENT.values()}, campaign_id=campaign_id, after=lambda seq: [TrialFailed(
        campaign_id=campaign_id, seq=seq, actor="orchestrator", trial_id="2", reason="timeout", device_id="dev-d",
        request_id="r-2")])
    # Never connected: what paho would hand it is handed to it directly, then the loop runs.
    hub = MqttDeviceHub(MqttSettings(url="mqtt://127.0.0.1:9", prefix=PREFIX), client_id="property")
    for topic, body in msgs:
        hub._on_message(topic, body, None)
    ticks = itertools.count()
    CampaignLoop(campaign_id, store, hub, make_optimizer=AxOptimizer.rebuild,
                 options=LoopOptions(poll_s=0.0, max_runtime_s=40), clock=lambda: float(next(ticks)),
                 run_info={"host": "property", "pid": 1}).run()
    events = store.read(campaign_id)

    announced = {d: set(s.measures) for d, s in hub.devices().items()}
    sent_results = _results_from(msgs)
    recorded = kinds(events, "TrialCompleted") + kinds(events, "LateResultRecorded")
    for e in recorded:
        assert SENT[e.request_id] == (e.trial_id, e.device_id), e
        assert e.measurements, e
        assert all(k in announced.get(e.device_id, METRICS) for k in e.measurements), (e, announced)
        assert any(
            device_id == e.device_id and r.request_id == e.request_id and r.trial_id == e.trial_id
            and r.status == "completed"
            and all(r.measurements.get(k) is not None
                    and (r.measurements[k].mean, r.measurements[k].sem) == (m.mean, m.sem)
                    for k, m in e.measurements.items())
            for device_id, r in sent_results
        ), e
    for e in kinds(events, "TrialCompleted"):
        assert set(campaign.metrics) <= set(e.measurements), e
    assert len({e.trial_id for e in kinds(events, "TrialCompleted")}) == len(kinds(events, "TrialCompleted"))
    assert len({e.trial_id for e in kinds(events, "LateResultRecorded")}) == len(kinds(events, "LateResultRecorded"))
    rejections = kinds(events, "MessageRejected") + kinds(events, "MessagesRejected")
    # flows.engine.rejections: 32 in a run, then one summary per (device of the spec or none) x kind.
    assert len(rejections) <= 32 + 3 * 11


def test_a_flapping_status_does_not_grow_the_log(store: MongoEventStore) -> None:
    """Issue 14 item 19: every "idle" status of a device running a trial re-sent the request and
    logged a RequestResent (at most every 5 s), so a status flapping busy/idle — or anyone
    publishing on the device's status topic — grew the log for as long as it went on. Now a
    trial is re-sent on "idle" a few times per run at most."""
    campaign_id = f"flap-{uuid.uuid4().hex[:10]}"
    campaign = spec([{"id": "dev-d", "measures": ["branin"]}], trial_timeout_s=10**9)
    seed(store, campaign, {"0": "dev-d"}, campaign_id=campaign_id)
    hub = MqttDeviceHub(MqttSettings(url="mqtt://127.0.0.1:9", prefix=PREFIX), client_id="flapping")
    for _ in range(40):
        for state in ("busy", "idle"):
            hub._on_message(f"{PREFIX}/devices/dev-d/status", json.dumps(
                {"state": state, "device_id": "dev-d", "measures": ["branin"]}).encode(), None)
    ticks = itertools.count(step=10)  # every look at the clock is 10 s later: no re-send is too soon
    CampaignLoop(campaign_id, store, hub, make_optimizer=AxOptimizer.rebuild,
                 options=LoopOptions(poll_s=0.0, max_runtime_s=2000), clock=lambda: float(next(ticks)),
                 run_info={"host": "property", "pid": 1}).run()
    resent = [e for e in kinds(store.read(campaign_id), "RequestResent") if e.reason == "device_idle"]
    assert 1 <= len(resent) <= 5, len(resent)
