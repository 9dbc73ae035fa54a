"""Property (issue 14, must-show 3, device side): whatever topics and payloads arrive, nothing is
recorded as a trial's measurement that is not a valid result from the device its request went
to, for that request, and for metrics that device announces.

The messages arrive as bytes on topics of the in-memory hub, which parses them as the MQTT hub
does (the hub contract, tests/integration/test_hub_contract.py, holds both to it), then the
loop handles them and logs to the in-memory log: hundreds of cases in a few seconds.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from campaigns import TrialFailed
from campaigns.errors import DeviceMessageError
from devices import Topics, parse_result
from tests.unit.engine_rig import Rig, kinds, spec

PREFIX = "t"  # the rig's hub prefix
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
def test_only_the_asked_device_answers_for_its_request(msgs: list[tuple[str, bytes]]) -> None:
    """Issue 14 item 2 and must-show 3: a late result on another device's topic was recorded as
    the trial's value. Over random topics and payloads, every TrialCompleted and
    LateResultRecorded is a valid result, from the device the request went to, for that request,
    with values equal to what it sent, only for metrics it announces; and the rejections stay
    within their bound."""
    campaign_id = f"prop-{uuid.uuid4().hex[:10]}"
    campaign = spec([{"id": "dev-d", "measures": ["branin", "purity"]}, {"id": "dev-e", "measures": ["branin", "purity"]}],
                    trial_timeout_s=10_000)
    rig = Rig(campaign_id=campaign_id)
    rig.seed(campaign, {t: d for t, d in SENT.values()}, after=lambda seq: [TrialFailed(
        campaign_id=campaign_id, seq=seq, actor="orchestrator", trial_id="2", reason="timeout", device_id="dev-d",
        request_id="r-2")])
    hub = rig.hub
    for topic, body in msgs:  # they wait for the loop, as a persistent session keeps them
        hub.publish(topic, body)
    rig.run(max_runtime_s=40, poll_s=1.0)
    events = rig.events()

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
