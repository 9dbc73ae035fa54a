"""What the Prefect UI shows of a campaign: its artifacts, built from the folded log.

Four artifacts per campaign, keyed by it (``<key>-progress``, ``-trials``, ``-summary``,
``-best``): the share of the budget completed, one table row per trial, a markdown summary (the
best so far or the Pareto front, the budget, the devices, what waits for whom, the commands to
type), and a best-so-far plot. Each is computed from ``CampaignState`` alone, so what the UI says
is what ``closedloop status`` would say at the same event; each names that event (``as of event
N``) in its description.

:class:`ArtifactPublisher` sends them: created once per flow run, then updated in place (the
artifact's key keeps pointing at the latest). Prefect's UI shows an image artifact as
``<img src=...>``: the plot travels as a PNG ``data:`` URI and needs no file server.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import re
from typing import Any
from uuid import UUID

from campaigns import CampaignState, TrialRecord
from campaigns.state import in_result_order, running_best

__all__ = [
    "ArtifactPublisher",
    "artifact_key",
    "best_so_far_png",
    "best_so_far_points",
    "progress_percent",
    "summary_markdown",
    "trials_table",
]

log = logging.getLogger("closedloop.prefect")

_KEY = re.compile(r"[a-z0-9-]+")


def artifact_key(campaign_id: str, what: str) -> str:
    """``<campaign>-<what>`` in Prefect's key alphabet (lowercase letters, digits, dashes).

    A campaign id that does not fit as it is (``Branin_2``) gets a short hash of itself after
    its lowercased form, so that two campaigns never share a key."""
    if _KEY.fullmatch(campaign_id):
        return f"{campaign_id}-{what}"
    slug = re.sub(r"[^a-z0-9]+", "-", campaign_id.lower()).strip("-")[:60] or "campaign"
    return f"{slug}-{hashlib.sha1(campaign_id.encode()).hexdigest()[:6]}-{what}"


def _num(value: object) -> object:
    """Six significant digits, still a number (the table sorts and the UI reads it)."""
    return float(f"{value:.6g}") if isinstance(value, float) else value


def _text(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def progress_percent(state: CampaignState) -> float:
    """Completed trials as a percentage of the budget's ``max_trials`` (the current one)."""
    if state.spec is None:
        return 0.0
    return min(100.0, 100.0 * state.count("completed") / state.spec.budget.max_trials)


def trials_table(state: CampaignState) -> list[dict[str, Any]]:
    """One row per trial in suggestion order: id, status, parameters, measured values, device,
    engine, who chose it and who approved it."""
    spec = state.spec
    metrics = [] if spec is None else spec.metrics
    rows = []
    for t in sorted(state.trials.values(), key=lambda t: t.index):
        row: dict[str, Any] = {"trial": t.trial_id, "status": t.status}
        row.update({name: _num(v) for name, v in t.parameters.items()})
        row.update({m: _num(t.measurements[m].mean) if m in t.measurements else None for m in metrics})
        row["device"] = t.device_id
        row["engine"] = t.engine
        row["chosen by"] = t.decided_by if t.generator == "human" else "optimizer"
        row["approved by"] = t.decided_by
        rows.append(row)
    return rows


def best_so_far_points(state: CampaignState) -> list[tuple[str, float]]:
    """``(trial id, best value so far)`` after each completed trial that satisfies the outcome
    constraints, in the order results were logged (the first objective)."""
    if state.spec is None:
        return []
    objective = state.spec.objectives[0]
    done = in_result_order(t for t in state.trials.values()
                           if t.status == "completed" and objective.name in t.measurements and state.feasible(t))
    best = running_best((t.measurements[objective.name].mean for t in done), objective.minimize)
    return [(t.trial_id, b) for t, b in zip(done, best, strict=True)]


def best_so_far_png(state: CampaignState) -> bytes | None:
    """The best-so-far curve (one objective) or the measured points with the Pareto front
    (several), as a PNG; ``None`` before any trial completed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    spec = state.spec
    if spec is None:
        return None
    fig = Figure(figsize=(7.5, 3.6), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if len(spec.objectives) == 1:
        points = best_so_far_points(state)
        if not points:
            return None
        xs = list(range(1, len(points) + 1))
        ax.step(xs, [v for _, v in points], where="post", color="#2b6cb0")
        ax.plot(xs, [v for _, v in points], "o", ms=3, color="#2b6cb0")
        ax.set_xlabel("completed trials")
        ax.set_ylabel(f"best {spec.objectives[0].name} so far")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(f"{state.campaign_id}: best so far ({'min' if spec.objectives[0].minimize else 'max'})")
    else:
        a, b = spec.objectives[0].name, spec.objectives[1].name
        done = [t for t in state.trials.values() if t.status == "completed" and a in t.measurements
                and b in t.measurements]
        if not done:
            return None
        front = sorted(state.pareto_front(), key=lambda t: t.measurements[a].mean)
        ax.plot([t.measurements[a].mean for t in done], [t.measurements[b].mean for t in done], "o", ms=4,
                color="#a0aec0", label="trials")
        ax.plot([t.measurements[a].mean for t in front], [t.measurements[b].mean for t in front], "o-", ms=5,
                color="#c53030", label="Pareto front")
        ax.set_xlabel(a)
        ax.set_ylabel(b)
        ax.legend(fontsize=8)
        ax.set_title(f"{state.campaign_id}: Pareto front of {a} and {b}")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _md_table(headers: list[str], rows: list[list[object]]) -> str:
    def cell(v: object) -> str:
        return "-" if v is None else _text(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _best_section(state: CampaignState) -> str:
    spec = state.spec
    assert spec is not None
    names = [p.name for p in spec.parameters]
    objectives = [o.name for o in spec.objectives]

    def row(t: TrialRecord) -> list[object]:
        return [t.trial_id, *(t.parameters.get(n) for n in names),
                *(t.measurements[o].mean if o in t.measurements else None for o in objectives)]

    if len(objectives) > 1:
        front = sorted(state.pareto_front(), key=lambda t: t.index)
        if not front:
            return "## Pareto front\n\nNo completed trial yet."
        return (f"## Pareto front ({len(front)} trials)\n\n"
                + _md_table(["trial", *names, *objectives], [row(t) for t in front]))
    best = state.best()
    if best is None:
        return "## Best so far\n\nNo completed trial" + (
            " satisfies the outcome constraints yet." if spec.outcome_constraints and state.count("completed") else " yet.")
    way = "min" if spec.objectives[0].minimize else "max"
    return f"## Best so far ({way} {objectives[0]})\n\n" + _md_table(["trial", *names, *objectives], [row(best)])


def _waits_section(state: CampaignState) -> str:
    cid = state.campaign_id
    lines = []
    if state.status == "finished":
        lines.append(f"Nothing: the campaign has finished ({state.finished_reason}).")
    if state.paused_reason is not None:
        lines.append(f"- **Paused** ({state.paused_reason}): {state.paused_detail or 'by request'} — a person resumes "
                     f"it: `closedloop resume {cid} --reason \"...\"`")
    for a in state.open_approvals.values():
        until = "" if a.deadline is None else f", until {a.deadline:%Y-%m-%d %H:%M} UTC"
        lines.append(f"- **Approval {a.approval_id}** waits for a person since {a.requested_at:%Y-%m-%d %H:%M:%S} UTC"
                     f"{until}: trials {', '.join(a.trial_ids)} ({a.why}) — "
                     f"`closedloop approve {cid} --approval {a.approval_id} --reason \"...\" "
                     "[--trial ID ...] [--edit ID name=value ...] [--reject ID ...]`")
    running = state.count("running")
    if state.status == "running" and not state.open_approvals:
        lines.append(f"The orchestrator waits for devices: {running} trial(s) running." if running
                     else "The orchestrator: suggesting and dispatching.")
    return "## What waits for whom\n\n" + "\n".join(lines)


def summary_markdown(state: CampaignState) -> str:
    """The campaign at a glance: status, budget, best so far or Pareto front, devices, what
    waits for whom, and the exact CLI commands to answer, resume or stop it."""
    spec = state.spec
    cid = state.campaign_id
    if spec is None:
        return f"# Campaign {cid}\n\nNo campaign in the log yet."
    budget = f"{spec.budget.max_trials} trials" + (
        "" if spec.budget.max_hours is None else f" or {spec.budget.max_hours:g} h")
    status = state.status + (f" ({state.finished_reason})" if state.finished_reason else "")
    head = (f"# Campaign {cid}: {status}\n\n"
            f"**{state.count('completed')}** of {spec.budget.max_trials} trials completed "
            f"({progress_percent(state):.0f}%), {state.count('running')} running, {state.count('failed')} failed, "
            f"{state.count('rejected')} rejected, {sum(1 for t in state.trials.values() if t.awaiting_approval)} "
            f"waiting for approval. Budget: {budget}. Runs: {state.runs}. Changes: {state.changes}. "
            f"As of event {state.last_seq}.")
    busy = {t.device_id: t.trial_id for t in state.in_flight if t.device_id is not None}
    devices = _md_table(["device", "state", "running trial", "trials run"], [
        [d.id, state.devices.get(d.id, "no status logged yet"), busy.get(d.id),
         sum(1 for t in state.trials.values() if t.device_id == d.id and t.status == "completed")]
        for d in spec.devices])
    commands = "\n".join(f"- `{c}`" for c in (
        f"closedloop status {cid}", f"closedloop pending {cid}", f"closedloop history {cid}",
        f"closedloop change {cid} --reason \"...\" [--set-bounds NAME=LOW:HIGH] [--max-trials N] ...",
        f"closedloop pause {cid} --reason \"...\"", f"closedloop resume {cid} --reason \"...\"",
        f"closedloop stop {cid} --reason \"...\""))
    return "\n\n".join([head, _best_section(state), "## Devices\n\n" + devices, _waits_section(state),
                        "## Commands\n\n" + commands])


class ArtifactPublisher:
    """Creates the campaign's artifacts on a flow run once, then updates them in place.

    Raises whatever Prefect's client raises: the caller (``flows.prefect.live``) decides that a
    failure costs one warning and never the campaign.
    """

    def __init__(self, campaign_id: str, flow_run_id: UUID) -> None:
        self.campaign_id, self.flow_run_id = campaign_id, flow_run_id
        self._ids: dict[str, UUID] = {}
        self._last: dict[str, object] = {}
        self._plotted: tuple[int, int] | None = None

    def publish(self, state: CampaignState) -> None:
        """Send what changed since the last call (every artifact the first time)."""
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            self._publish(client, state)

    def _publish(self, client: Any, state: CampaignState) -> None:
        as_of = f"{self.campaign_id}, as of event {state.last_seq}"
        done = (state.count("completed"), state.changes)
        self._send(client, "progress", "progress", progress_percent(state),
                   f"{self.campaign_id}: {state.count('completed')} of "
                   f"{0 if state.spec is None else state.spec.budget.max_trials} trials completed (as of event "
                   f"{state.last_seq})")
        self._send(client, "trials", "table", trials_table(state), f"Trials of {as_of}")
        if self._plotted != done:  # the plot changes only with a result (or a change of constraints)
            png = best_so_far_png(state)
            if png is not None:
                self._send(client, "best", "image", "data:image/png;base64," + base64.b64encode(png).decode(),
                           f"Best so far of {as_of}")
                self._plotted = done
        # The summary last: once it names an event, every other artifact shows that event too.
        self._send(client, "summary", "markdown", summary_markdown(state), f"Summary of {as_of}")

    def _send(self, client: Any, what: str, kind: str, data: object, description: str) -> None:
        from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate

        if self._last.get(what) == (data, description):
            return
        # A table is sent as JSON text, as Prefect's own create_table_artifact does.
        payload = _json(data) if kind == "table" else data
        if what in self._ids:
            client.update_artifact(self._ids[what], ArtifactUpdate(data=payload, description=description))
        else:
            created = client.create_artifact(ArtifactCreate(
                key=artifact_key(self.campaign_id, what), type=kind, data=payload, description=description,
                flow_run_id=self.flow_run_id))
            self._ids[what] = created.id
        self._last[what] = (data, description)


def _json(data: object) -> str:
    import json

    return json.dumps(data)
