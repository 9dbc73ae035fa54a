"""`closedloop report CAMPAIGN -o report.html`: one self-contained, interactive page of a campaign.

What the page holds, all derived from the log: best so far against trial id and against time
(several objectives: the observed Pareto front and the hypervolume, with the reference point
named); a device timeline (which device ran which attempt of which trial, when) with the
campaign's decisions and changes (who, what, why; pauses shaded) on the same time axis; the
best trial by the model's posterior mean beside the best observed (``optimizer.model_best``); and
Ax's analyses of the campaign's experiment (``optimizer.analyses``), with a line for each
analysis left out saying why. Plots are plotly figures drawn by plotly.js, inlined once, so
the page works offline. (The status text of ``closedloop status`` is ``flows.cli.report``.)
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from campaigns import (
    CampaignNotFoundError,
    CampaignPaused,
    CampaignResumed,
    CampaignState,
    EventBase,
    OutputError,
    RunStarted,
    TrialCompleted,
    TrialDispatched,
    TrialFailed,
    TrialRecord,
    TrialRetried,
    fold,
)
from campaigns.state import in_result_order, running_best
from flows.cli.people import history
from flows.cli.report import model_of, status_text

if TYPE_CHECKING:
    from optimizer.analyses import Analyses
    from optimizer.model_best import ModelBest, TrialEstimate

__all__ = ["Attempt", "add_report_command", "attempts", "report_page", "write_report"]

Figure = dict[str, Any]

_COLOURS = {"completed": "#2a9d8f", "failed": "#e63946", "running": "#f4a261"}


@dataclass(frozen=True)
class Attempt:
    """One dispatch of a trial to a device, and how it ended (``running``: not yet)."""

    trial_id: str
    device_id: str
    request_id: str
    start: datetime
    end: datetime
    outcome: str
    detail: str = ""


def attempts(events: list[EventBase]) -> list[Attempt]:
    """Every dispatch in the log with its end: the result, the failure or the retry that closed
    it; one still open ends at the log's last event."""
    open_: dict[str, TrialDispatched] = {}
    out: list[Attempt] = []
    last = max((e.time for e in events), default=None)

    def close(request_id: str | None, trial_id: str, when: datetime, outcome: str, detail: str) -> None:
        if request_id is None or request_id not in open_:  # an old log's failure names no request
            request_id = next((r for r, d in reversed(open_.items()) if d.trial_id == trial_id), None)
        if request_id is None:
            return
        d = open_.pop(request_id)
        out.append(Attempt(d.trial_id, d.device_id, d.request_id, d.time, when, outcome, detail))

    for e in events:
        if isinstance(e, TrialDispatched):
            open_[e.request_id] = e
        elif isinstance(e, TrialCompleted):
            close(e.request_id, e.trial_id, e.time, "completed", "")
        elif isinstance(e, TrialFailed | TrialRetried):
            close(e.request_id, e.trial_id, e.time, "failed", f"{e.reason} {e.detail}".strip())
    for d in open_.values():
        out.append(Attempt(d.trial_id, d.device_id, d.request_id, d.time, last or d.time, "running"))
    return sorted(out, key=lambda a: (a.start, a.trial_id))


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _iso(t: datetime) -> str:
    return t.isoformat()


def _trial_axis(n: int) -> dict[str, Any]:
    """An x axis of trial ids: whole numbers only."""
    return {"title": {"text": "trial id"}, "tick0": 0, "dtick": max(1, math.ceil(n / 12)), "tickformat": "d"}


@dataclass
class _Page:
    figures: list[Figure] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)

    def figure(self, fig: Figure, height: int = 380) -> None:
        title = fig.get("layout", {}).get("title")
        if isinstance(title, dict) and "x" not in title:
            title.update(x=0.01, xanchor="left")  # clear of the mode bar, top right
        self.parts.append(f"<div class='plot' id='fig-{len(self.figures)}' style='height:{height}px'></div>")
        self.figures.append(fig)

    def add(self, text: str) -> None:
        self.parts.append(text)


def _running(trials: list[TrialRecord], metric: str, minimize: bool) -> list[float | None]:
    """The best value of ``metric`` after each trial, in the order given."""
    return [_finite(b) for b in running_best((t.measurements[metric].mean for t in trials), minimize)]


def _best_so_far(page: _Page, state: CampaignState) -> None:
    assert state.spec is not None
    done = [t for t in state.trials.values() if t.status == "completed" and state.feasible(t)]
    page.add("<h2 id='progress'>Best so far</h2>")
    if not done:
        page.add("<p class='absent'>No completed trial satisfies the outcome constraints yet.</p>")
        return
    for o in state.spec.objectives:
        mine = [t for t in done if o.name in t.measurements]
        by_id = sorted(mine, key=lambda t: t.index)
        by_time = in_result_order(mine)
        direction = "minimized" if o.minimize else "maximized"
        page.add(f"<h3>{html.escape(o.name)} ({direction})</h3><div class='row'>")
        ids = [t.index for t in by_id]
        page.figure({"data": [
            {"type": "scatter", "mode": "markers", "name": "trial", "x": ids,
             "y": [_finite(t.measurements[o.name].mean) for t in by_id], "marker": {"color": "#999"}},
            {"type": "scatter", "mode": "lines", "line": {"shape": "hv", "color": "#264653"}, "name": "best so far",
             "x": ids, "y": _running(by_id, o.name, o.minimize)}],
            "layout": {"title": {"text": f"best {o.name} so far by trial id"}, "xaxis": _trial_axis(max(ids) + 1),
                       "yaxis": {"title": {"text": o.name}}, "margin": {"t": 40}}})
        timed = [t for t in by_time if t.finished_at is not None]
        page.figure({"data": [
            {"type": "scatter", "mode": "markers", "name": "trial", "x": [_iso(t.finished_at) for t in timed],
             "y": [_finite(t.measurements[o.name].mean) for t in timed], "text": [f"trial {t.trial_id}" for t in timed],
             "marker": {"color": "#999"}},
            {"type": "scatter", "mode": "lines", "line": {"shape": "hv", "color": "#264653"}, "name": "best so far",
             "x": [_iso(t.finished_at) for t in timed], "y": _running(timed, o.name, o.minimize)}],
            "layout": {"title": {"text": f"best {o.name} so far by time of the result"},
                       "xaxis": {"type": "date", "title": {"text": "time (UTC)"}},
                       "yaxis": {"title": {"text": o.name}}, "margin": {"t": 40}}})
        page.add("</div>")


def _pareto(page: _Page, state: CampaignState) -> None:
    assert state.spec is not None
    objectives = state.spec.objectives
    if len(objectives) < 2:
        return
    from optimizer.hypervolume import hypervolume_trace, reference_point

    names = [o.name for o in objectives]
    minimize = [o.minimize for o in objectives]
    done = [t for t in state.trials.values() if t.status == "completed" and state.feasible(t)
            and all(n in t.measurements for n in names)]
    page.add("<h2 id='pareto'>Pareto front (observed)</h2>")
    if not done:
        page.add("<p class='absent'>No completed trial has every objective yet.</p>")
        return
    front_ids = {t.trial_id for t in state.pareto_front() if t in done}
    vec = {t.trial_id: [t.measurements[n].mean for n in names] for t in done}
    ref = reference_point(list(vec.values()), minimize, [o.threshold for o in objectives])
    how = ", ".join(f"{n} {'≤' if m else '≥'} {r:.4g} ({'threshold' if o.threshold is not None else 'inferred'})"
                    for n, m, r, o in zip(names, minimize, ref, objectives, strict=True))
    page.add("<p>Every completed trial that meets the outcome constraints; the front is the trials no other "
             "trial beats on every objective. <b>Reference point</b> of the hypervolume: "
             f"{html.escape(how)} — the spec's objective thresholds where it gives them, otherwise "
             "BoTorch's <code>infer_reference_point</code> on the observed front (its worst value on each "
             "objective, a tenth of the front's range further out).</p><div class='row'>")
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ia, ib = names.index(a), names.index(b)
            front = sorted((t for t in done if t.trial_id in front_ids), key=lambda t: vec[t.trial_id][ia])
            rest = [t for t in done if t.trial_id not in front_ids]
            page.figure({"data": [
                {"type": "scatter", "mode": "markers", "name": "dominated", "x": [vec[t.trial_id][ia] for t in rest],
                 "y": [vec[t.trial_id][ib] for t in rest], "text": [f"trial {t.trial_id}" for t in rest],
                 "marker": {"color": "#bbb"}},
                {"type": "scatter", "mode": "lines+markers", "name": "Pareto front",
                 "line": {"shape": "hv" if minimize[ib] == minimize[ia] else "vh", "color": "#e76f51"},
                 "x": [vec[t.trial_id][ia] for t in front], "y": [vec[t.trial_id][ib] for t in front],
                 "text": [f"trial {t.trial_id}" for t in front], "marker": {"size": 9}}],
                "layout": {"title": {"text": f"Pareto front: {a} vs {b}"}, "margin": {"t": 40},
                           "xaxis": {"title": {"text": f"{a} ({'min' if minimize[ia] else 'max'})"}},
                           "yaxis": {"title": {"text": f"{b} ({'min' if minimize[ib] else 'max'})"}}}}, height=420)
    by_id = sorted(done, key=lambda t: t.index)
    hv_id = hypervolume_trace([vec[t.trial_id] for t in by_id], minimize, ref)
    timed = sorted((t for t in done if t.finished_at is not None), key=lambda t: (t.finished_at, t.index))
    hv_time = hypervolume_trace([vec[t.trial_id] for t in timed], minimize, ref)
    page.add("</div><div class='row'>")
    page.figure({"data": [{"type": "scatter", "mode": "lines+markers", "line": {"shape": "hv"}, "name": "hypervolume",
                           "x": [t.index for t in by_id], "y": hv_id}],
                 "layout": {"title": {"text": "hypervolume by trial id"}, "margin": {"t": 40},
                            "xaxis": _trial_axis(by_id[-1].index + 1), "yaxis": {"title": {"text": "hypervolume"}}}})
    page.figure({"data": [{"type": "scatter", "mode": "lines+markers", "line": {"shape": "hv"}, "name": "hypervolume",
                           "x": [_iso(t.finished_at) for t in timed], "y": hv_time,  # type: ignore[arg-type]
                           "text": [f"trial {t.trial_id}" for t in timed]}],
                 "layout": {"title": {"text": "hypervolume by time of the result"}, "margin": {"t": 40},
                            "xaxis": {"type": "date", "title": {"text": "time (UTC)"}},
                            "yaxis": {"title": {"text": "hypervolume"}}}})
    page.add("</div>")


def _model_section(page: _Page, state: CampaignState, model: ModelBest | None) -> None:
    """The best by the model beside the best observed (several objectives: the model's Pareto set)."""
    assert state.spec is not None
    spec = state.spec
    page.add("<h2 id='model'>Best by the model</h2><p>A noisy result can make a trial look best by chance; "
             "the model weighs every result. Among the completed trials, the one with the best posterior mean "
             "(outcome constraints held by the means), with its 95% interval and the value observed there.</p>")
    if model is None or (model.pick is None and not model.front):
        page.add(f"<p class='absent'>No model-based best: {html.escape(model.why or '-') if model else '-'}.</p>")
        return
    names = [o.name for o in spec.objectives]
    head = "<tr><th>trial</th><th>chosen as</th>" + "".join(
        f"<th>{html.escape(n)}: mean ± sd</th><th>95% interval</th><th>observed</th>" for n in names) + "</tr>"

    def row(t: TrialEstimate, label: str) -> str:
        cells = "".join(
            f"<td>{e.mean:.4g} ± {e.sd:.2g}</td><td>[{e.low:.4g}, {e.high:.4g}]</td>"
            f"<td>{'-' if e.observed is None else f'{e.observed:.4g}'}</td>"
            if (e := t.metrics.get(n)) is not None else "<td>-</td><td>-</td><td>-</td>" for n in names)
        return f"<tr><td>{html.escape(t.trial_id)}</td><td>{html.escape(label)}</td>{cells}</tr>"

    rows = []
    if model.pick is not None:
        rows.append(row(model.pick, "best by the model"))
        observed = state.best()
        if observed is not None and observed.trial_id in model.trials:
            rows.append(row(model.trials[observed.trial_id], "best observed"))
    else:
        rows += [row(t, "on the model's Pareto set") for t in model.front]
    page.add(f"<table class='model'>{head}{''.join(rows)}</table>")


def _timeline(page: _Page, state: CampaignState, events: list[EventBase]) -> None:
    runs = attempts(events)
    decisions = history(events)
    page.add("<h2 id='timeline'>Devices and decisions</h2>"
             "<p>Top: each attempt of a trial on the device it was sent to, from its dispatch to its result "
             "(or failure); bottom: the campaign's decisions and changes, on the same time axis "
             "(hover for who and why). Shaded: the campaign was paused.</p>")
    devices = sorted({a.device_id for a in runs})
    data: list[dict[str, Any]] = []
    for outcome, colour in _COLOURS.items():
        mine = [a for a in runs if a.outcome == outcome]
        if not mine:
            continue
        data.append({"type": "bar", "orientation": "h", "name": f"trial {outcome}", "marker": {"color": colour},
                     "y": [a.device_id for a in mine], "base": [_iso(a.start) for a in mine],
                     "x": [max((a.end - a.start).total_seconds() * 1000, 1) for a in mine],
                     "text": [a.trial_id for a in mine], "textposition": "inside", "insidetextanchor": "middle",
                     "hovertext": [f"trial {a.trial_id} on {a.device_id}: {a.outcome} {html.escape(a.detail)}<br>"
                                   f"{a.start:%H:%M:%S} → {a.end:%H:%M:%S} ({(a.end - a.start).total_seconds():.1f} s)"
                                   for a in mine], "hoverinfo": "text", "xaxis": "x", "yaxis": "y"})
    actors = sorted({e.actor for e, _, _ in decisions})
    data.append({"type": "scatter", "mode": "markers", "name": "decisions and changes", "xaxis": "x", "yaxis": "y2",
                 "x": [_iso(e.time) for e, _, _ in decisions], "y": [e.actor for e, _, _ in decisions],
                 "marker": {"symbol": "diamond", "size": 11, "color": "#6a4c93"},
                 "hovertext": [html.escape(f"{e.time:%H:%M:%S} {e.actor}: {what}" + (f" — why: {why}" if why else ""))
                               for e, what, why in decisions], "hoverinfo": "text"})
    shapes = []
    paused_at: datetime | None = None
    for e in events:
        if isinstance(e, CampaignPaused) and paused_at is None:
            paused_at = e.time
        elif isinstance(e, CampaignResumed | RunStarted) and paused_at is not None:
            shapes.append((paused_at, e.time))
            paused_at = None
    if paused_at is not None and events:
        shapes.append((paused_at, events[-1].time))
    split = 0.3 if actors else 0.0
    page.figure({"data": data, "layout": {
        "barmode": "overlay", "margin": {"t": 30, "l": 130}, "showlegend": True,
        "xaxis": {"type": "date", "anchor": "y2" if actors else "y", "title": {"text": "time (UTC)"}},
        "yaxis": {"domain": [split + 0.05 if actors else 0, 1], "title": {"text": "device"},
                  "categoryorder": "array", "categoryarray": devices[::-1]},
        "yaxis2": {"domain": [0, split], "title": {"text": "by"}, "categoryorder": "array", "categoryarray": actors},
        "shapes": [{"type": "rect", "xref": "x", "yref": "paper", "x0": _iso(a), "x1": _iso(b), "y0": 0, "y1": 1,
                    "fillcolor": "rgba(120,120,120,0.15)", "line": {"width": 0}, "layer": "below"} for a, b in shapes]}},
        height=max(380, 120 + 40 * len(devices) + 30 * len(actors)))
    busy = {d: sum((a.end - a.start).total_seconds() for a in runs if a.device_id == d) for d in devices}
    if runs:
        span = (max(a.end for a in runs) - min(a.start for a in runs)).total_seconds() or 1.0
        page.add("<p>Utilization (time busy over the span from the first dispatch to the last result): "
                 + ", ".join(f"{html.escape(d)} {100 * busy[d] / span:.0f}%" for d in devices) + ".</p>")
    rows = "".join(f"<tr><td>{e.time:%Y-%m-%d %H:%M:%S}</td><td>{e.seq}</td><td>{html.escape(e.actor)}</td>"
                   f"<td>{html.escape(what)}</td><td>{html.escape(why)}</td></tr>" for e, what, why in decisions)
    page.add("<h3 id='decisions'>Decisions and changes</h3><table class='decisions'><tr><th>time (UTC)</th>"
             f"<th>event</th><th>by</th><th>what</th><th>why</th></tr>{rows}</table>")


def _ax_section(page: _Page, analyses: Analyses | None, skipped: str) -> None:
    page.add("<h2 id='ax'>Ax's analyses</h2>")
    if analyses is None:
        page.add(f"<p class='absent'>Ax's analyses: not computed ({html.escape(skipped)}).</p>")
        return
    page.add(f"<p>Ax {html.escape(_ax_version())}'s analyses of the campaign's experiment as the log holds it; "
             f"the modelled ones use the campaign's BoTorch model, fitted on every completed trial "
             f"({analyses.seconds:.1f} s to compute).</p>")
    current = None
    for card in analyses.cards:
        if card.analysis != current:
            current = card.analysis
            page.add(f"<h3 class='analysis'>{html.escape(card.analysis)}</h3>")
        page.add(f"<div class='card'><h4>{html.escape(card.title)}</h4>"
                 f"<p class='subtitle'>{html.escape(card.subtitle)}</p>")
        if card.figure is not None:
            page.figure(card.figure, height=460)
        elif card.columns:
            head = "".join(f"<th>{html.escape(c)}</th>" for c in card.columns)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in card.rows)
            page.add(f"<div class='scroll'><table><tr>{head}</tr>{body}</table></div>")
        if card.note:
            page.add(f"<p class='note'>{html.escape(card.note)}</p>")
        page.add("</div>")
    page.add("<h3 id='absent'>Analyses not included, and why</h3><ul class='absent'>"
             + "".join(f"<li><b>{html.escape(a.analysis)}</b>: {html.escape(a.reason)}</li>" for a in analyses.absent)
             + "</ul>")


def _ax_version() -> str:
    from importlib.metadata import version

    return version("ax-platform")


_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222;max-width:1500px}
h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}h4{margin:.3em 0}
.row{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:1em}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:.8em 0}
.subtitle{color:#555;font-size:.9em}.absent{color:#7a4b00}.scroll{overflow-x:auto;max-height:420px}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto}nav a{margin-right:1em}"""

_SCRIPT = """const figures = JSON.parse(document.getElementById('figures').textContent);
figures.forEach((f, i) => Plotly.newPlot('fig-' + i, f.data || [], f.layout || {},
  {responsive: true, displaylogo: false}));"""


def _script_json(value: Any) -> str:
    """JSON that cannot end the ``<script>`` element it sits in."""
    text = json.dumps(value, allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def report_page(events: list[EventBase], *, analyses: Analyses | None = None, skipped: str = "") -> str:
    """The report page of a campaign's log (``analyses``: from ``optimizer.analyses``, or ``None``
    with ``skipped`` saying why they are not on the page)."""
    state = fold(events)
    if state.spec is None or state.campaign_id is None:
        raise CampaignNotFoundError("the log holds no campaign", "see `closedloop list`")
    page = _Page()
    title = f"closedloop report: {state.campaign_id}"
    page.add(f"<h1>{html.escape(title)}</h1>")
    if state.spec.description:
        page.add(f"<p>{html.escape(state.spec.description)}</p>")
    page.add("<nav>" + ("<a href='#pareto'>Pareto front</a>" if len(state.spec.objectives) > 1 else "")
             + "<a href='#progress'>best so far</a>"
             + "<a href='#model'>best by the model</a>"
             + "<a href='#timeline'>devices and decisions</a><a href='#ax'>Ax's analyses</a></nav>")
    model = model_of(state)
    page.add(f"<pre>{html.escape(status_text(state, model))}</pre>")
    _pareto(page, state)
    _best_so_far(page, state)
    _model_section(page, state, model)
    _timeline(page, state, events)
    _ax_section(page, analyses, skipped)
    plotly_js = (files("plotly") / "package_data" / "plotly.min.js").read_text(encoding="utf-8")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
            f"<script>{plotly_js}</script></head><body>{''.join(page.parts)}"
            f"<script type='application/json' id='figures'>{_script_json(page.figures)}</script>"
            f"<script>{_SCRIPT}</script></body></html>")


def write_report(events: list[EventBase], out: Path, *, with_analyses: bool = True, verbose: bool = False) -> Path:
    """Write the campaign's report page to ``out`` (Ax's analyses computed unless told not to).

    Raises:
        CampaignNotFoundError: the log holds no campaign.
        OutputError: ``out`` cannot be written.
    """
    state = fold(events)
    if state.spec is None:
        raise CampaignNotFoundError("the log holds no campaign", "see `closedloop list`")
    try:
        is_dir = out.is_dir()
    except OSError as exc:  # e.g. a name too long for the file system
        raise OutputError(f"cannot write {str(out)!r}: {exc.strerror or exc}",
                          "give a file path you can write, e.g. -o report.html") from None
    if is_dir:
        raise OutputError(f"cannot write {str(out)!r}: it is a directory", "give a file path, e.g. -o report.html")
    try:  # the page goes to a file beside ``out``, renamed when whole: a bad path is refused before Ax runs
        temp = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=out.parent, prefix=f".{out.name}.",
                                           suffix=".tmp", delete=False)
    except OSError as exc:
        raise OutputError(f"cannot write {str(out)!r}: {exc.strerror or exc}",
                          "give a file path you can write, e.g. -o report.html") from None
    try:
        with temp:
            analyses = None
            if with_analyses:
                from optimizer.analyses import campaign_analyses

                analyses = campaign_analyses(state.spec, state.trials.values(), verbose=verbose)
            temp.write(report_page(events, analyses=analyses, skipped="--no-analyses"))
        os.replace(temp.name, out)
    except OSError as exc:
        raise OutputError(f"cannot write {str(out)!r}: {exc.strerror or exc}",
                          "give a file path you can write, e.g. -o report.html") from None
    finally:
        if os.path.exists(temp.name):
            os.unlink(temp.name)
    return out


def _cmd_report(args: argparse.Namespace) -> int:
    from flows.app.runtime import event_store
    from flows.app.settings import Settings

    with event_store(Settings(), create=False) as store:
        events = list(store.read(args.campaign))
    if fold(events).spec is None:
        raise CampaignNotFoundError(f"no campaign {args.campaign!r}", "see `closedloop list`",
                                    campaign_id=args.campaign)
    out = Path(args.output or f"{args.campaign}-report.html")
    write_report(events, out, with_analyses=not args.no_analyses, verbose=args.verbose)
    print(f"wrote {out}")
    return 0


def add_report_command(sub: Any) -> None:
    """Add ``report`` to the ``closedloop`` sub-command parser."""
    r = sub.add_parser("report", help="write a self-contained HTML page of a campaign: progress, Pareto front, "
                                      "device timeline, decisions and Ax's analyses (works offline)")
    r.add_argument("campaign", help="the campaign's id (see `closedloop list`)")
    r.add_argument("--output", "-o", metavar="FILE.html", help="where to write the page (default: CAMPAIGN-report.html)")
    r.add_argument("--no-analyses", action="store_true", help="leave Ax's analyses out (they take seconds to compute)")
    r.set_defaults(func=_cmd_report)
