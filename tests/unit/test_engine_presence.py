"""A timeout's cause is in the log: a device's status appearing, going offline and coming back
are events (``DeviceOnline`` / ``DeviceOffline``), logged before the timeout they explain; a
flapping device cannot grow the log without limit. On the engine's in-memory backends."""

from __future__ import annotations

from campaigns import fold
from tests.unit.engine_rig import Events, Rig, kinds, spec

ONE = [{"id": "dev-d", "measures": ["branin"]}]


def test_a_device_going_offline_is_logged_before_its_trial_times_out() -> None:
    rig = Rig()
    rig.seed(spec(ONE, trial_timeout_s=30), {"0": "dev-d"})
    device = rig.hub.device("dev-d")
    device.status("busy", ["branin"])
    rig.when(lambda ev: bool(kinds(ev, "DeviceOnline")), lambda: device.status("offline", ["branin"]))
    rig.run(until=lambda ev: bool(kinds(ev, "TrialFailed")))
    events = rig.events()
    [online] = kinds(events, "DeviceOnline")
    assert (online.device_id, online.state, online.measures) == ("dev-d", "busy", ["branin"])
    [offline] = kinds(events, "DeviceOffline")
    [failed] = kinds(events, "TrialFailed")
    assert offline.device_id == "dev-d" and online.seq < offline.seq < failed.seq  # the cause, then the effect
    assert failed.reason == "timeout"
    assert fold(events).devices == {"dev-d": "offline"}


def test_a_flapping_device_is_logged_a_bounded_number_of_times_per_run() -> None:
    rig = Rig()
    rig.seed(spec(ONE, trial_timeout_s=3600), {"0": "dev-d"})
    device = rig.hub.device("dev-d")
    device.status("busy", ["branin"])

    def flap() -> None:
        for i in range(30):
            device.status("offline" if i % 2 == 0 else "busy", ["branin"])
        # Then a message the loop logs: once it is in the log, every status before it was read.
        device.result("r-unknown", "9", {"branin": 1.0})

    rig.when(lambda ev: bool(kinds(ev, "DeviceOnline")), flap)

    def rejected(ev: Events) -> bool:
        return bool(kinds(ev, "MessageRejected") or kinds(ev, "MessagesRejected"))

    rig.run(until=rejected)
    events = rig.events()
    transitions = kinds(events, "DeviceOnline") + kinds(events, "DeviceOffline")
    assert len(transitions) == 10, [e.kind for e in transitions]
