"""The campaign's events: the facts of its append-only log, each a frozen pydantic model.

Every event carries ``campaign_id``, a contiguous ``seq`` (1, 2, 3, ... per campaign), a UTC
``time``, an ``actor`` (``optimizer``, ``orchestrator``, ``device:<id>``, ``user:<name>``) and a
``schema_version``. The ``kind`` literal is the discriminator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from campaigns.changes import CampaignChange
from campaigns.spec import CampaignSpec, PriorData

__all__ = [
    "ActorKind",
    "AnswerRefused",
    "AnswerVia",
    "FailureReason",
    "FinishReason",
    "PauseReason",
    "RejectionKind",
    "ResendReason",
    "ApprovalGiven",
    "ApprovalRejected",
    "ApprovalRequested",
    "author_problem",
    "CampaignChanged",
    "ParameterValue",
    "Prediction",
    "PriorTrial",
    "PriorTrialsAdded",
    "CampaignCreated",
    "BrokerDisconnected",
    "BrokerReconnected",
    "CampaignFinished",
    "CampaignPaused",
    "CampaignResumed",
    "Event",
    "EventBase",
    "Measurement",
    "DeviceOffline",
    "DeviceOnline",
    "DeviceSkipped",
    "MessageRejected",
    "MessagesRejected",
    "LateResultRecorded",
    "ReplaySource",
    "RequestResent",
    "RunStarted",
    "SuggestedTrial",
    "TrialCompleted",
    "TrialDispatched",
    "TrialFailed",
    "TrialRetried",
    "TrialEngine",
    "TrialsSuggested",
    "engine_of_generator",
    "event_from_doc",
    "event_to_doc",
    "software_versions",
    "utcnow",
]

ParameterValue = float | int | str

# Closed vocabularies (event-model's way): every value any version wrote, and nothing else.
#: Why a trial attempt gave no result.
FailureReason = Literal["timeout", "device_error", "not_measured", "invalid_result"]
#: Why a running trial's request went out again.
ResendReason = Literal["resume", "device_idle", "broker_reconnected"]
#: Why a campaign ended.
FinishReason = Literal["budget_exhausted", "max_hours", "stopped"]
#: Why a campaign stopped dispatching.
PauseReason = Literal["user", "failure_rate", "no_results"]
#: Where a person's answer to an approval came from (``timeout``: the policy's, nobody's).
AnswerVia = Literal["cli", "prefect", "replay", "timeout"]
#: What kind of device message was rejected, counted (``MessagesRejected``).
RejectionKind = Literal["not_utf8", "not_json", "not_object", "too_large", "invalid_result", "invalid_status",
                        "bad_topic", "unknown_request", "wrong_device", "duplicate", "other"]
#: Who writes events: ``optimizer``, ``orchestrator``, ``device:<id>``, ``user:<name>``.
ActorKind = Literal["optimizer", "orchestrator", "device", "user"]
_ACTOR = r"^(optimizer|orchestrator|(device|user):.*)$"


def author_problem(name: str) -> str | None:
    """Why ``name`` cannot author a person's decision (logged as actor ``user:<name>``), else None."""
    return f"the author's name {name[:40]!r} holds a line break" if "\n" in name else None


def utcnow() -> datetime:
    """The current time, UTC, at millisecond precision (what MongoDB stores)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class _Fact(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Measurement(_Fact):
    """One measured value: a mean and, if known, its standard error."""

    mean: float
    sem: float | None = None

    @field_validator("mean")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("a measurement must be a finite number")
        return v

    @field_validator("sem")
    @classmethod
    def _sem(cls, v: float | None) -> float | None:
        if v is not None and (not math.isfinite(v) or v < 0):
            raise ValueError("sem must be a finite number >= 0")
        return v


class EventBase(_Fact):
    """What every event carries."""

    schema_version: Literal[1] = 1
    campaign_id: str
    seq: int = Field(ge=1)
    time: datetime = Field(default_factory=utcnow)
    actor: str = Field(pattern=_ACTOR)

    @field_validator("time")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)

    @property
    def actor_kind(self) -> ActorKind:
        """``optimizer``, ``orchestrator``, ``device`` or ``user``."""
        return self.actor.partition(":")[0]  # type: ignore[return-value]


class ReplaySource(_Fact):
    """What a replay campaign replays: its source campaign, how, and against what.

    Attributes:
        campaign_id: The source campaign (never modified by its replays).
        mode: ``faithful`` re-runs the recorded trials as they ran; ``counterfactual``
            re-runs the decision process (the optimizer, the recorded changes and approval
            decisions) with the simulator answering.
        simulator: The simulator that answers (``None``: the source's own simulated devices).
        overrides: What the replay changed in the source's spec (``batch_size``, ``seed``,
            ``optimizer.method``), for the record.
        source_seq: The source's last event seq when the replay was planned.
    """

    campaign_id: str
    mode: Literal["faithful", "counterfactual"]
    simulator: str | None = None
    overrides: dict[str, ParameterValue] = Field(default_factory=dict)
    source_seq: int = Field(ge=1)


class CampaignCreated(EventBase):
    """The campaign exists, with this spec (and, for a replay, what it replays).

    ``instance`` is a random token drawn at creation (``campaigns.identity.new_instance``):
    what tells this campaign from any other of the same name in request ids and the MQTT
    client id. Logs written before it existed have none; the fold derives one for them.
    """

    kind: Literal["CampaignCreated"] = "CampaignCreated"
    spec: CampaignSpec
    source: ReplaySource | None = None
    instance: str | None = Field(default=None, pattern=r"^[0-9A-Za-z]{8,64}$")


#: The distributions whose versions decide what a run does, as ``RunStarted.versions`` names them.
VERSIONED = {"closedloop": "closedloop", "ax": "ax-platform", "botorch": "botorch", "prefect": "prefect"}


def software_versions() -> dict[str, str]:
    """The installed versions of closedloop, Ax, BoTorch and Prefect (``"not installed"`` if absent)."""
    out = {}
    for name, dist in VERSIONED.items():
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class RunStarted(EventBase):
    """An orchestrator process took the campaign and started (or resumed) running it, with
    these versions of closedloop, Ax, BoTorch and Prefect (``software_versions``; empty in
    logs written before they were recorded)."""

    kind: Literal["RunStarted"] = "RunStarted"
    host: str
    pid: int
    flow_run_id: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    #: The Prefect deployment whose flow run this is (``campaign/<id>``: `closedloop deploy`);
    #: None for a run started by `closedloop run`/`resume`. People's commands wake such a campaign.
    deployment: str | None = None


#: What chose a suggested trial (``optimizer.engines`` says which engine a spec uses, and why):
#: ``sobol`` closedloop's space-filling design (the centre, then scrambled Sobol points, also
#: when a model failed), ``fast`` the NumPy GP (``optimizer.fastbo``), ``ax`` Ax's BoTorch with
#: closedloop's cheaper settings, ``ax_default`` Ax's BoTorch with Ax's defaults, ``fixed``
#: every parameter held (no choice left), ``replay`` a faithful replay's recorded point,
#: ``prior`` data the campaign started from (``PriorTrialsAdded``: never suggested nor run), and
#: ``unknown`` a model's trial logged before engines were recorded (the log did not say which).
TrialEngine = Literal["sobol", "fast", "ax", "ax_default", "fixed", "replay", "prior", "unknown"]


def engine_of_generator(generator: str) -> TrialEngine:
    """The engine an old log's ``generator`` implies (logs before the engine was recorded)."""
    if generator in ("center", "sobol") or generator.startswith("sobol (fallback"):
        return "sobol"
    if generator in ("fixed", "replay"):
        return generator  # type: ignore[return-value]
    return "unknown"  # "botorch": the fast engine or one of Ax's; the log did not say which


class Prediction(_Fact):
    """The model's prediction of one metric at a proposed trial: the posterior mean and its
    standard deviation (of the mean, not of one noisy measurement), in the metric's units."""

    mean: float
    sd: float = Field(ge=0)

    @field_validator("mean", "sd")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("a prediction must be a finite number")
        return v


class SuggestedTrial(_Fact):
    """A trial the optimizer proposed: its parameters, how (``generator``: ``center``,
    ``sobol``, ``botorch``, ``fixed``, ...) and by which engine (``engine``).

    ``prediction``: the fitted model's mean and sd of each metric it models at this point,
    when the suggestion was made (what a person approving it sees); None where no model chose
    it (Sobol, a fallback, a fixed or replayed point) and in logs written before it was kept.
    """

    trial_id: str
    parameters: dict[str, ParameterValue]
    generator: str
    sobol_position: int | None = None
    engine: TrialEngine = "unknown"
    prediction: dict[str, Prediction] | None = None

    @model_validator(mode="before")
    @classmethod
    def _upcast_engine(cls, data: Any) -> Any:
        # Logs before issue 15 have no engine: derived from the generator where it is certain.
        if isinstance(data, dict) and "engine" not in data and isinstance(data.get("generator"), str):
            data = {**data, "engine": engine_of_generator(data["generator"])}
        return data


class TrialsSuggested(EventBase):
    """The optimizer proposed these trials (known to Ax as pending from now on)."""

    kind: Literal["TrialsSuggested"] = "TrialsSuggested"
    trials: list[SuggestedTrial] = Field(min_length=1)


class PriorTrial(_Fact):
    """A point the campaign starts from: its parameters, its measurements, and where it came
    from (``source``: the position of its source in ``PriorTrialsAdded.sources``; ``origin``:
    the source campaign's trial id, or the document's ``_id`` as text)."""

    trial_id: str
    parameters: dict[str, ParameterValue]
    measurements: dict[str, Measurement] = Field(min_length=1)
    source: int = Field(ge=0)
    origin: str


class PriorTrialsAdded(EventBase):
    """The campaign starts from data that already exists (the spec's ``prior_data``), read when
    the campaign was created: its first trials, completed, never dispatched, and not counted
    in the budget. ``sources`` are the spec's sources as read (the filter with them);
    ``connection`` says which MongoDB the collections were read from (never a URI)."""

    kind: Literal["PriorTrialsAdded"] = "PriorTrialsAdded"
    sources: list[PriorData] = Field(min_length=1)
    connection: str | None = None
    trials: list[PriorTrial] = Field(min_length=1)

    @model_validator(mode="after")
    def _sources(self) -> PriorTrialsAdded:
        for t in self.trials:
            if t.source >= len(self.sources):
                raise ValueError(f"trial {t.trial_id}: source {t.source} is not one of the {len(self.sources)} sources")
        return self


class TrialDispatched(EventBase):
    """Intent: this trial is being sent to this device with this request id (logged before publish)."""

    kind: Literal["TrialDispatched"] = "TrialDispatched"
    trial_id: str
    device_id: str
    request_id: str


class TrialCompleted(EventBase):
    """A device returned measurements for a trial (``not_measured``: metrics it reported as
    ``null``, which have no value)."""

    kind: Literal["TrialCompleted"] = "TrialCompleted"
    trial_id: str
    device_id: str
    request_id: str
    measurements: dict[str, Measurement]
    not_measured: list[str] = Field(default_factory=list)


class TrialFailed(EventBase):
    """A trial produced no usable result: ``reason`` is ``timeout``, ``device_error``, ..."""

    kind: Literal["TrialFailed"] = "TrialFailed"
    trial_id: str
    reason: FailureReason
    detail: str = ""
    device_id: str | None = None
    request_id: str | None = None


class RequestResent(EventBase):
    """Intent: a running trial's request is published again with the same request id.

    Sent when a run resumes with the trial in flight, or when its device comes back online.
    A v1 device answers a request id it has already run from its store, without re-running it.
    """

    kind: Literal["RequestResent"] = "RequestResent"
    trial_id: str
    device_id: str
    request_id: str
    reason: ResendReason


class TrialRetried(EventBase):
    """An attempt of a trial failed and the failure policy allows another: the trial waits for
    a device again (its next dispatch carries a new request id)."""

    kind: Literal["TrialRetried"] = "TrialRetried"
    trial_id: str
    attempt: int = Field(ge=1, description="the attempt that failed (1 = the first)")
    reason: FailureReason
    detail: str = ""
    device_id: str | None = None
    request_id: str | None = None


class LateResultRecorded(EventBase):
    """A result arrived for a trial that had already failed (e.g. by timeout): kept, not lost.

    The trial stays failed for the optimizer; the measurements are on the record and exported.
    """

    kind: Literal["LateResultRecorded"] = "LateResultRecorded"
    trial_id: str
    device_id: str
    request_id: str
    measurements: dict[str, Measurement]


class BrokerDisconnected(EventBase):
    """The orchestrator lost its MQTT broker; it keeps reconnecting with back-off."""

    kind: Literal["BrokerDisconnected"] = "BrokerDisconnected"
    detail: str = ""


class BrokerReconnected(EventBase):
    """The orchestrator is connected to its MQTT broker again."""

    kind: Literal["BrokerReconnected"] = "BrokerReconnected"
    down_s: float = Field(ge=0)


class MessageRejected(EventBase):
    """A device message was ignored: malformed, duplicated, or for an unknown trial."""

    kind: Literal["MessageRejected"] = "MessageRejected"
    device_id: str | None = None
    topic: str
    reason: str
    excerpt: str = ""


class MessagesRejected(EventBase):
    """How many more device messages were rejected for one reason, counted, not logged one by one.

    The first few rejections of a device and reason are logged in full (``MessageRejected``);
    the rest are counted and summed up here, so no publisher can grow the log without limit.

    Attributes:
        device_id: The device, or ``None`` for messages no device of the campaign can answer
            for (topics of devices not in the spec, or not protocol topics at all).
        reason: The kind of rejection (``not_json``, ``unknown_request``, ``wrong_device``, ...).
        count: How many messages this event stands for.
        first_time: When the first of them arrived (UTC).
        last_time: When the last of them arrived (UTC).
        example: One of their reasons in full (at most 200 characters).
    """

    kind: Literal["MessagesRejected"] = "MessagesRejected"
    device_id: str | None = None
    reason: RejectionKind
    count: int = Field(ge=1)
    first_time: datetime
    last_time: datetime
    example: str = ""


class DeviceSkipped(EventBase):
    """A device gets no trials: its retained status does not announce every metric the campaign
    needs. Logged when seen, once per run and set of missing metrics; lasts while its status does."""

    kind: Literal["DeviceSkipped"] = "DeviceSkipped"
    device_id: str
    missing: list[str] = Field(min_length=1)
    measures: list[str] = Field(default_factory=list)


class DeviceOnline(EventBase):
    """A device's retained status appeared, or came back from ``offline``, in this run: it
    takes trials (``idle``) or is busy. Logged by the orchestrator when it sees the status, at
    most a few times per device and run, so a flapping device cannot grow the log."""

    kind: Literal["DeviceOnline"] = "DeviceOnline"
    device_id: str
    state: Literal["idle", "busy"]
    measures: list[str] = Field(default_factory=list)


class DeviceOffline(EventBase):
    """A device's status says ``offline`` (its last will, or a clean goodbye): its running trial
    will time out unless it comes back. Seen first, or after it was online, in this run."""

    kind: Literal["DeviceOffline"] = "DeviceOffline"
    device_id: str
    state: Literal["offline"] = "offline"


class ApprovalRequested(EventBase):
    """Proposed trials wait for a person: nothing of them is dispatched until a decision.

    Carries what a notifier needs: the trials (with their parameters in the log just before),
    why the policy asks, the deadline, and the command that answers.
    """

    kind: Literal["ApprovalRequested"] = "ApprovalRequested"
    approval_id: str
    trial_ids: list[str] = Field(min_length=1)
    parameters: dict[str, dict[str, ParameterValue]] = Field(
        default_factory=dict, description="each trial's proposed parameters, for whoever is notified"
    )
    why: str
    deadline: datetime | None = None
    on_timeout: Literal["reject", "approve", "keep_waiting"] = "keep_waiting"
    answer_with: str


class ApprovalGiven(EventBase):
    """A person (or the timeout policy) decided on an approval request: trials approved as
    proposed, approved with edits (human-chosen parameters), and rejected (never run)."""

    kind: Literal["ApprovalGiven"] = "ApprovalGiven"
    approval_id: str
    approved: list[str] = Field(default_factory=list)
    edited: dict[str, dict[str, ParameterValue]] = Field(default_factory=dict)
    rejected: list[str] = Field(default_factory=list)
    reason: str
    via: AnswerVia = "cli"
    command_id: str | None = None

    def decision(self) -> str:
        """What was decided, for people: ``approved 0, 1; edited 2 (x1=2.5); rejected 3``."""
        parts = [f"approved {', '.join(self.approved)}" if self.approved else ""]
        parts += [f"edited {t} ({', '.join(f'{k}={v}' for k, v in ch.items())})" for t, ch in self.edited.items()]
        parts += [f"rejected {', '.join(self.rejected)}" if self.rejected else ""]
        return "; ".join(p for p in parts if p)


class ApprovalRejected(EventBase):
    """Every trial of an approval request was rejected."""

    kind: Literal["ApprovalRejected"] = "ApprovalRejected"
    approval_id: str
    rejected: list[str] = Field(min_length=1)
    reason: str
    via: AnswerVia = "cli"
    command_id: str | None = None


class AnswerRefused(EventBase):
    """A person's command (an answer to an approval, a change, a pause) did not fit the campaign
    and changed nothing: who sent it (``by``), where from (``via``), what it asked and why it was
    refused, so that the log shows it wherever it was given. Written by the orchestrator.
    """

    kind: Literal["AnswerRefused"] = "AnswerRefused"
    command: Literal["approve", "change", "pause", "stop", "resume"]
    by: str = Field(max_length=200)
    via: AnswerVia = "cli"
    approval_id: str | None = None
    what: str = Field(default="", max_length=500)
    why: str = Field(max_length=1000)
    command_id: str | None = None


class CampaignChanged(EventBase):
    """A person changed the campaign while it runs (bounds, fixed parameters, constraints,
    thresholds, batch size, trial timeout, budget); applies from here on."""

    kind: Literal["CampaignChanged"] = "CampaignChanged"
    change: CampaignChange
    reason: str
    command_id: str | None = None


class CampaignPaused(EventBase):
    """The campaign stops dispatching until resumed: too many failures, or a person said so."""

    kind: Literal["CampaignPaused"] = "CampaignPaused"
    reason: PauseReason
    detail: str = ""
    command_id: str | None = None


class CampaignResumed(EventBase):
    """A paused campaign dispatches again."""

    kind: Literal["CampaignResumed"] = "CampaignResumed"
    reason: str = ""
    command_id: str | None = None
    via: AnswerVia | None = None  # where a person resumed it (None: the CLI, or a log before it was kept)


class CampaignFinished(EventBase):
    """The campaign ended: ``budget_exhausted``, ``max_hours``, ``stopped``, ..."""

    kind: Literal["CampaignFinished"] = "CampaignFinished"
    reason: FinishReason
    detail: str = ""
    command_id: str | None = None


Event = Annotated[
    CampaignCreated
    | RunStarted
    | PriorTrialsAdded
    | TrialsSuggested
    | TrialDispatched
    | TrialCompleted
    | TrialFailed
    | RequestResent
    | TrialRetried
    | LateResultRecorded
    | BrokerDisconnected
    | BrokerReconnected
    | MessageRejected
    | MessagesRejected
    | DeviceSkipped
    | DeviceOnline
    | DeviceOffline
    | ApprovalRequested
    | ApprovalGiven
    | ApprovalRejected
    | AnswerRefused
    | CampaignChanged
    | CampaignPaused
    | CampaignResumed
    | CampaignFinished,
    Field(discriminator="kind"),
]

_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def event_to_doc(event: EventBase) -> dict[str, Any]:
    """The JSON-compatible document stored for an event (time as ISO-8601 UTC text)."""
    return event.model_dump(mode="json")


def event_from_doc(doc: dict[str, Any]) -> Event:
    """Parse a stored document back into its event (unknown keys such as ``_id`` dropped)."""
    data = {k: v for k, v in doc.items() if k != "_id"}
    # from_log: what an older version accepted and logged is read as it was (campaigns.spec).
    return _ADAPTER.validate_python(data, context={"from_log": True})


def one_append(events: Sequence[EventBase]) -> tuple[str, int]:
    """The campaign and first seq of events written in one append, checked as every event log
    checks them: one campaign, contiguous seqs. Raises ValueError otherwise."""
    campaign_id, first = events[0].campaign_id, events[0].seq
    for i, event in enumerate(events):
        if event.campaign_id != campaign_id:
            raise ValueError(f"one append holds events of {campaign_id!r} and {event.campaign_id!r}")
        if event.seq != first + i:
            raise ValueError(f"seqs of one append must be contiguous: expected {first + i}, got {event.seq}")
    return campaign_id, first


def read_stored_event(campaign_id: str, doc: dict[str, Any]) -> Event:
    """``event_from_doc`` for an event log: a document that no longer parses is a
    ``StorageError`` naming the campaign, the seq and the field (every backend says the same)."""
    from pydantic import ValidationError

    from campaigns.errors import StorageError

    try:
        return event_from_doc(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise StorageError(
            f"campaign {campaign_id!r}: the event at seq {doc.get('seq')} cannot be read: {where}: {err['msg']}",
            "the document was edited by hand or written by a newer closedloop; restore it or upgrade",
            campaign_id=campaign_id,
        ) from None
