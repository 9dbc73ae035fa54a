"""Replays of a recorded campaign against simulators: a new campaign in the log, linked to its source.

- **faithful**: the recorded trials run again, as they ran (a person's edits included), in the
  order they were dispatched. The replay's "optimizer" is a script of those points
  (:class:`ScriptedOptimizer`); its approval policy is ``never`` (the decisions are in the
  points already).
- **counterfactual**: the campaign's decision process runs again: the source's spec (its
  ``CampaignCreated`` spec, with ``--batch-size``/``--seed``/``--method`` overrides), its
  optimizer, and its people — every ``CampaignChanged`` applied once the replay has as many
  trials as the source had when the change was made, and the k-th approval request answered
  as the source's k-th was (by position in the request: approved, edited to the same
  values, or rejected). The people's part is played by :class:`ReplayScript`, which hands the
  loop the same commands a person would have typed, so they go through the same checks.

The source is only read. Everything a replay needs is derived from the two logs, so a replay
resumes after a crash like any campaign.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from campaigns import (
    ApprovalGiven,
    ApprovalRejected,
    ApprovalRequested,
    CampaignChanged,
    CampaignSpec,
    CampaignState,
    ClosedLoopError,
    EventBase,
    Measurement,
    ReplaySource,
    SpecError,
    SuggestedTrial,
    TrialRecord,
    TrialsSuggested,
    fold,
    utcnow,
)
from campaigns.command import Command
from campaigns.events import ParameterValue

__all__ = [
    "ReplayMode",
    "ReplayScript",
    "ScriptedOptimizer",
    "faithful_points",
    "plan_replay",
]

ReplayMode = Literal["faithful", "counterfactual"]


def faithful_points(source: CampaignState) -> list[TrialRecord]:
    """The source's trials that ran (completed or failed), in the order they were first dispatched."""
    ran = [t for t in source.trials.values() if t.status in ("completed", "failed") and t.first_dispatch_seq is not None]
    return sorted(ran, key=lambda t: (t.first_dispatch_seq, t.index))


def _simulated_devices(spec: CampaignSpec, simulator: str | None, options: Mapping[str, Any]) -> list[dict[str, Any]]:
    if simulator is None:
        real = [d.id for d in spec.devices if d.simulator is None]
        if real:
            raise SpecError(
                f"the source campaign uses real device {real[0]!r}: a replay needs a simulator to answer",
                "pass --simulator NAME (see `closedloop sim --list`)",
            )
        return [d.model_dump(mode="json") for d in spec.devices]
    return [{"id": d.id, "simulator": simulator, "options": dict(options)} for d in spec.devices]


def plan_replay(
    source: CampaignState,
    *,
    mode: ReplayMode,
    simulator: str | None = None,
    options: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    method: str | None = None,
) -> tuple[CampaignSpec, ReplaySource]:
    """The replay campaign's spec and its link to the source.

    Args:
        source: The folded source log.
        mode: ``faithful`` or ``counterfactual``.
        simulator: Catalog name of the simulator answering every device (``None``: the
            source's own simulated devices, which all of them must be).
        options: The simulator's options.
        batch_size: Counterfactual override.
        seed: Counterfactual override.
        method: Counterfactual override of ``optimizer.method``.

    Raises:
        SpecError: the source has no spec, nothing to replay, real devices and no simulator,
            or overrides in faithful mode, or an override the spec refuses.
    """
    if source.spec is None or source.original_spec is None or source.campaign_id is None:
        raise SpecError("the source campaign has no spec", "see `closedloop list`")
    overrides: dict[str, ParameterValue] = {
        k: v for k, v in {"batch_size": batch_size, "seed": seed, "optimizer.method": method}.items() if v is not None
    }
    if mode == "faithful":
        if overrides:
            raise SpecError(
                f"--{next(iter(overrides)).replace('optimizer.', '').replace('_', '-')} changes decisions: "
                "a faithful replay re-runs the recorded trials as they were",
                "use --mode counterfactual",
            )
        points = faithful_points(source)
        if not points:
            raise SpecError(f"campaign {source.campaign_id!r} has no trial that ran", "nothing to replay")
        raw = source.spec.model_dump(mode="json")
        raw["budget"] = {"max_trials": len(points)}
        raw["approval"] = {"mode": "never"}
        raw["fixed_parameters"] = {}
        raw["prior_data"] = []  # the recorded points only; prior data was never run
        raw["failure_policy"] = {**raw.get("failure_policy", {}), "max_failure_rate": 1.0}
    else:
        raw = source.original_spec.model_dump(mode="json")
        if batch_size is not None:
            raw["batch_size"] = batch_size
        if seed is not None:
            raw["seed"] = seed
        if method is not None:
            raw["optimizer"] = {**raw.get("optimizer", {}), "method": method}
    raw["devices"] = _simulated_devices(source.spec, simulator, options or {})
    try:
        spec = CampaignSpec.model_validate(raw)
    except ValueError as exc:
        first = str(exc).splitlines()
        raise SpecError(f"the replay's spec is invalid: {' '.join(first[1:3]) or first[0]}",
                        "check the overrides") from None
    link = ReplaySource(campaign_id=source.campaign_id, mode=mode, simulator=simulator,
                        overrides=overrides, source_seq=source.last_seq)
    return spec, link


class ScriptedOptimizer:
    """The faithful replay's optimizer: hands out the recorded points, in order.

    Args:
        points: Parameters of the source's trials, in dispatch order.
        done: How many were handed out already (the replay's trials so far).
    """

    def __init__(self, points: Sequence[Mapping[str, ParameterValue]], done: int) -> None:
        self._points = [dict(p) for p in points]
        self._next = done

    def suggest(self, n: int) -> list[SuggestedTrial]:
        """The next ``n`` recorded points (fewer at the end of the script)."""
        out = [SuggestedTrial(trial_id=str(i), parameters=self._points[i], generator="replay")
               for i in range(self._next, min(self._next + n, len(self._points)))]
        self._next += len(out)
        return out

    def complete(self, trial_id: str, measurements: dict[str, Measurement]) -> None:
        """Nothing to learn: the script is fixed."""

    def fail(self, trial_id: str, reason: str) -> None:
        """Nothing to learn: the script is fixed."""


def scripted_optimizer_factory(source: CampaignState) -> Callable[[CampaignSpec, Iterable[TrialRecord]], ScriptedOptimizer]:
    """``make_optimizer`` for the loop of a faithful replay of ``source``."""
    points = [t.parameters for t in faithful_points(source)]
    return lambda spec, trials: ScriptedOptimizer(points, len(list(trials)))


@dataclass(frozen=True)
class _Decision:
    seq: int
    by: str
    reason: str
    trial_ids: list[str]          # the source request's trials, in order; those neither edited nor rejected were approved
    edited: dict[str, dict[str, ParameterValue]]
    rejected: frozenset[str]


@dataclass(frozen=True)
class _Change:
    seq: int
    at_trials: int                # len(trials) in the source when the change was made
    event: CampaignChanged


class ReplayScript:
    """The source campaign's people, replayed: its changes and approval decisions as commands.

    Args:
        source_events: The source's log.
    """

    def __init__(self, source_events: Iterable[EventBase]) -> None:
        self.source_id = ""
        self._changes: list[_Change] = []
        self._decisions: list[_Decision | None] = []  # per request, in order; None: never answered
        requests: dict[str, int] = {}
        request_trials: dict[str, list[str]] = {}
        trials = 0
        for e in source_events:
            self.source_id = e.campaign_id
            if isinstance(e, TrialsSuggested):
                trials += len(e.trials)
            elif isinstance(e, CampaignChanged):
                self._changes.append(_Change(e.seq, trials, e))
            elif isinstance(e, ApprovalRequested):
                requests[e.approval_id] = len(self._decisions)
                request_trials[e.approval_id] = list(e.trial_ids)
                self._decisions.append(None)
            elif isinstance(e, ApprovalGiven | ApprovalRejected) and e.approval_id in requests:
                self._decisions[requests[e.approval_id]] = _Decision(
                    seq=e.seq, by=e.actor, reason=e.reason, trial_ids=request_trials[e.approval_id],
                    edited=dict(e.edited) if isinstance(e, ApprovalGiven) else {},
                    rejected=frozenset(e.rejected),
                )

    def _command(self, key: int, kind: str, payload: dict[str, Any], actor: str, reason: str,
                 campaign_id: str) -> Command:
        by = actor.removeprefix("user:")
        return Command(command_id=f"replay:{self.source_id}:{key}", campaign_id=campaign_id, kind=kind,  # type: ignore[arg-type]
                       payload=payload, by=by or "replay",
                       reason=f"replayed from {self.source_id} event {key}: {reason}", submitted_at=utcnow())

    def due(self, state: CampaignState) -> list[Command]:
        """The commands the replay is due now: changes whose trial count is reached, answers to
        open approval requests. Each is due once (its id is in the replay's log once applied)."""
        assert state.campaign_id is not None
        out: list[Command] = []
        for c in self._changes:
            key = f"replay:{self.source_id}:{c.seq}"
            if c.at_trials <= len(state.trials) and key not in state.applied_commands:
                out.append(self._command(c.seq, "change", c.event.change.model_dump(mode="json", exclude_defaults=True),
                                         c.event.actor, c.event.reason, state.campaign_id))
        for request in sorted(state.open_approvals.values(), key=lambda a: a.number):
            k = request.number
            decision = self._decisions[k] if k < len(self._decisions) else None
            out.append(self._answer(state.campaign_id, request.approval_id, request.trial_ids, decision, k))
        return out

    def _answer(self, campaign_id: str, approval_id: str, trial_ids: list[str], decision: _Decision | None,
                k: int) -> Command:
        approve: list[str] = []
        edit: dict[str, dict[str, ParameterValue]] = {}
        reject: list[str] = []
        # The source's decision on the trial at the same position; approved when there is none.
        source_trials = decision.trial_ids if decision is not None else []
        rejected = decision.rejected if decision is not None else frozenset()
        edited = decision.edited if decision is not None else {}
        for i, tid in enumerate(trial_ids):
            src = source_trials[i] if i < len(source_trials) else None
            if src in rejected:
                reject.append(tid)
            elif src in edited:
                edit[tid] = dict(edited[src])  # type: ignore[index]
            else:
                approve.append(tid)
        payload: dict[str, Any] = {"approval_id": approval_id, "approve": approve, "edit": edit, "reject": reject,
                                   "via": "replay"}
        if decision is None:
            return self._command(-(k + 1), "approve", payload, "user:replay",
                                 f"the source's request {k + 1} had no decision: approved as proposed", campaign_id)
        return self._command(decision.seq, "approve", payload, decision.by, decision.reason, campaign_id)


def replay_wiring(
    state: CampaignState, read_source: Callable[[str], list[EventBase]]
) -> tuple[Callable[[CampaignSpec, Iterable[TrialRecord]], ScriptedOptimizer] | None, ReplayScript | None]:
    """What a replay campaign's loop needs beyond a normal one: ``(make_optimizer, script)``.

    A faithful replay gets the scripted optimizer, a counterfactual one the people's script;
    a campaign that is no replay gets ``(None, None)``.

    Raises:
        ClosedLoopError: the source campaign is gone from the log.
    """
    if state.source is None:
        return None, None
    events = read_source(state.source.campaign_id)
    source = fold(e for e in events if e.seq <= state.source.source_seq)
    if source.spec is None:
        raise ClosedLoopError(f"the source campaign {state.source.campaign_id!r} of this replay is not in the log",
                              "replays read their source; restore it or start a new replay")
    if state.source.mode == "faithful":
        return scripted_optimizer_factory(source), None
    return None, ReplayScript([e for e in events if e.seq <= state.source.source_seq])
