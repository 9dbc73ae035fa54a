"""Replays in the engine on its in-memory backends: a campaign whose people approved, edited,
rejected and changed bounds is replayed counterfactually with the same seed and comes out the
same, trial for trial; the source is never touched (formerly tests/integration/test_replay.py
over a broker, nx-27017 and Prefect; the CLI path is tests/e2e/test_replay_cli.py)."""

from __future__ import annotations

from functools import partial

from campaigns import CampaignChanged, fold, parse_spec
from flows.cli.replay import identical_trials
from flows.engine.replay import plan_replay, replay_wiring
from optimizer import AxOptimizer
from tests.unit.engine_rig import Rig, kinds

DEVICES = [{"id": "sim-a", "simulator": "branin", "options": {"noise_sd": 0.5, "seed": 11}},
           {"id": "sim-b", "simulator": "branin", "options": {"noise_sd": 0.5, "seed": 11}}]

SPEC = parse_spec({
    "name": "replayed", "seed": 5,
    "parameters": [{"name": "x1", "type": "float", "bounds": [-5, 10]},
                   {"name": "x2", "type": "float", "bounds": [0, 15]}],
    "objectives": [{"name": "branin", "minimize": True}],
    "budget": {"max_trials": 10}, "batch_size": 2, "trial_timeout_s": 30,
    "dispatch": "batch",
    "optimizer": {"initialization_trials": 4},
    "approval": {"first_n": 4},
    "devices": DEVICES,
})


def _person(rig: Rig) -> None:
    """The source's people, answering each approval request as the loop shows it: edit and
    reject in the first; narrow x1, then approve the second as is. The campaign waits for each
    answer, so the change lands at a known point (four trials) by construction."""
    answered: set[str] = set()

    def unanswered() -> bool:
        return any(a not in answered for a in fold(rig.events("src")).open_approvals)

    def answer() -> None:
        for a in fold(rig.events("src")).open_approvals.values():
            if a.approval_id in answered:
                continue
            answered.add(a.approval_id)
            if len(answered) == 1:
                payload = {"approval_id": a.approval_id, "edit": {a.trial_ids[0]: {"x1": 2.5}},
                           "reject": [a.trial_ids[1]]}
            else:
                rig.inbox.submit("src", "change", {"set_bounds": {"x1": [0.0, 5.0]}}, by="ana",
                                 reason="the left side is toxic")
                payload = {"approval_id": a.approval_id}
            rig.inbox.submit("src", "approve", payload, by="ana", reason="chemist's call")
        rig.hub.when(unanswered, answer)  # and the next one

    rig.hub.when(unanswered, answer)


def test_counterfactual_replay_with_the_same_seed_reproduces_people_and_all() -> None:
    rig = Rig(campaign_id="src")
    rig.create(SPEC)
    for d in DEVICES:
        rig.hub.instrument(d["id"], "branin", d["options"])
    _person(rig)
    assert rig.run().status == "finished"
    source_events = rig.events("src")
    source = fold(source_events)
    assert source.count("rejected") == 1 and any(t.generator == "human" for t in source.trials.values())
    assert kinds(source_events, "CampaignChanged")

    spec, link = plan_replay(source, mode="counterfactual")
    rig.create(spec, campaign_id="cf", source=link)
    scripted, script = replay_wiring(fold(rig.events("cf")), rig.log.read)  # as the campaign flow wires it
    assert scripted is None and script is not None
    assert rig.run(campaign_id="cf", script=script,
                   make_optimizer=partial(AxOptimizer.rebuild, threads=1)).status == "finished"

    assert rig.events("src") == source_events  # the source is only read
    replay = fold(rig.events("cf"))
    same_points, same_all, n = identical_trials(source, replay)
    assert n == len(source.trials) == len(replay.trials)
    assert same_points == same_all == n
    assert [t.status for t in replay.trials.values()] == [t.status for t in source.trials.values()]
    # The people's decisions came back, attributed to the source's author and marked as replayed.
    changes = [e for e in rig.events("cf") if isinstance(e, CampaignChanged)]
    assert len(changes) == 1 and changes[0].actor == "user:ana" and "replayed from src" in changes[0].reason
    assert replay.spec is not None and replay.spec.parameters[0].bounds == (0.0, 5.0)
    assert replay.source is not None and replay.source.campaign_id == "src"
