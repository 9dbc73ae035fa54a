"""What the engine's unit tests share: the loop on its in-memory backends and a manual clock.

A :class:`Rig` holds a ``MemoryEventLog``, a ``MemoryDeviceHub`` (hand-driven devices and
in-process simulated instruments), a ``MemoryCommandInbox`` and a ``ManualClock``. The loop runs
in the test's own thread with the optimizer inline, so a run is deterministic: the test's device
and people act from inside the loop (``Rig.when``: at the first pass where the log shows
something; ``hub.call_at``: at a time on the clock), and the run ends the way a lost lease ends
it — at the start of a pass, writing nothing — once ``until`` holds of the log.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from campaigns import (
    CampaignCreated,
    CampaignSpec,
    CampaignState,
    EventBase,
    SuggestedTrial,
    TrialDispatched,
    TrialsSuggested,
    fold,
    parse_spec,
)
from flows.engine.loop import CampaignLoop, LoopOptions
from flows.engine.memory import ManualClock, MemoryCommandInbox, MemoryEventLog
from flows.engine.memory_hub import MemoryDeviceHub
from optimizer import AxOptimizer

CAMPAIGN = "trust"
Events = list[EventBase]


def spec(devices: list[dict[str, Any]], **extra: object) -> CampaignSpec:
    """A Branin campaign of 5 Sobol trials on ``devices`` (``extra`` overrides any field)."""
    return parse_spec({
        "name": CAMPAIGN, "seed": 5,
        "parameters": [{"name": "x1", "type": "float", "bounds": [-5, 10]},
                       {"name": "x2", "type": "float", "bounds": [0, 15]}],
        "objectives": [{"name": "branin", "minimize": True}],
        "budget": {"max_trials": 5}, "trial_timeout_s": 30, "optimizer": {"method": "sobol"},
        "devices": devices, **extra,
    })


def kinds(events: Events, kind: str) -> list[Any]:
    """The events of one kind, in log order."""
    return [e for e in events if e.kind == kind]  # type: ignore[attr-defined]


class _Stopped(Exception):
    """Ends a run as a lost lease would: at the start of a pass, writing nothing."""


class Rig:
    """One campaign's world in memory: log, devices, inbox, clock.

    Args:
        campaign: The spec to create the campaign with (None: create nothing yet).
        campaign_id: Its id.
    """

    def __init__(self, campaign: CampaignSpec | None = None, campaign_id: str = CAMPAIGN) -> None:
        self.campaign_id = campaign_id
        self.clock = ManualClock()
        self.log = MemoryEventLog()
        self.hub = MemoryDeviceHub(self.clock, prefix="t")
        self.inbox = MemoryCommandInbox(self.clock.now)
        if campaign is not None:
            self.create(campaign)

    def create(self, campaign: CampaignSpec, campaign_id: str | None = None, **fields: Any) -> None:
        """Log the campaign's ``CampaignCreated``."""
        self.log.append([CampaignCreated(campaign_id=campaign_id or self.campaign_id, seq=1, actor="user:test",
                                         spec=campaign, **fields)])

    def seed(self, campaign: CampaignSpec, dispatched: dict[str, str],
             after: Callable[[int], Events] = lambda seq: []) -> None:
        """Log a campaign whose trial ``i`` went to ``dispatched[str(i)]`` with request ``r-i``."""
        fields = {"campaign_id": self.campaign_id, "actor": "orchestrator"}
        trials = [SuggestedTrial(trial_id=t, parameters={"x1": float(i), "x2": 5.0}, generator="human")
                  for i, t in enumerate(dispatched)]
        events: Events = [CampaignCreated(campaign_id=self.campaign_id, seq=1, actor="user:test", spec=campaign),
                          TrialsSuggested(**fields, seq=2, trials=trials)]
        for t, device in dispatched.items():
            events.append(TrialDispatched(**fields, seq=len(events) + 1, trial_id=t, device_id=device,
                                          request_id=f"r-{t}"))
        events += after(len(events) + 1)
        self.log.append(events)

    def events(self, campaign_id: str | None = None) -> Events:
        """The campaign's log as it stands."""
        return list(self.log.read(campaign_id or self.campaign_id))

    def when(self, condition: Callable[[Events], bool], action: Callable[[], None]) -> None:
        """Run ``action`` once, in the loop, at the first pass where ``condition(log)`` holds."""
        self.hub.when(lambda: condition(self.events()), action)

    def run(self, until: Callable[[Events], bool] | None = None, *, campaign_id: str | None = None,
            max_runtime_s: float = 3600.0, poll_s: float = 0.5, **loop: Any) -> CampaignState:
        """Run the loop until it returns (finished, paused, ``max_runtime_s`` on the clock) or
        ``until(log)`` holds at the start of a pass; returns the folded log."""
        cid = campaign_id or self.campaign_id
        options = loop.pop("options", None) or LoopOptions(poll_s=poll_s, max_runtime_s=max_runtime_s,
                                                           optimizer_in_thread=False)

        def stop() -> BaseException | None:
            return _Stopped() if until is not None and until(self.events(cid)) else None

        runner = CampaignLoop(cid, self.log, self.hub, clock=self.clock, options=options,
                              make_optimizer=loop.pop("make_optimizer", partial(AxOptimizer.rebuild, threads=1)),
                              run_info={"host": "test", "pid": 1}, lease_lost=stop,
                              inbox=loop.pop("inbox", self.inbox), **loop)
        try:
            runner.run()
        except _Stopped:
            pass
        return fold(self.events(cid))
