"""`closedloop report`'s page, as a person reads it: Ax's analysis cards that apply (and why the
others are absent), best so far, the Pareto front and hypervolume of a two-objective campaign,
the device timeline and the people's decisions — offline, plotly.js inlined once.

Each campaign runs once, in process (engine_rig: the in-memory log, hub and simulators), with
a person who edits and rejects trials at the first approval and narrows a bound at the second;
each page (Ax's analyses included) is written once in the run and read by every test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from campaigns import CampaignCreated, CampaignState, EventBase, OutputError, fold, parse_spec
from flows.cli.html_report import attempts, report_page, write_report
from tests.conftest import computed_once
from tests.unit.engine_rig import Rig


def _campaign(name: str, two: bool) -> tuple[list[EventBase], CampaignState]:
    simulator = "branin_currin" if two else "branin"
    devices = [{"id": f"bench-{i}", "simulator": simulator, "options": {"duration_s": [5, 20], "seed": i}}
               for i in (1, 2)]
    spec = parse_spec({
        "name": name, "seed": 3,
        "parameters": [{"name": "x1", "type": "float", "bounds": [0, 1] if two else [-5, 10]},
                       {"name": "x2", "type": "float", "bounds": [0, 1] if two else [0, 15]}],
        "objectives": [{"name": "branin", "minimize": True}, *([{"name": "currin", "minimize": True}] if two else [])],
        "budget": {"max_trials": 12}, "trial_timeout_s": 120, "batch_size": 2, "dispatch": "batch",
        "optimizer": {"method": "sobol"}, "approval": {"first_n": 4}, "devices": devices,
    })
    rig = Rig(spec, campaign_id=name)
    for d in devices:
        rig.hub.instrument(d["id"], simulator, d["options"])
    answered: set[str] = set()

    def unanswered() -> bool:
        return any(a not in answered for a in fold(rig.events()).open_approvals)

    def answer() -> None:
        for a in fold(rig.events()).open_approvals.values():
            if a.approval_id in answered:
                continue
            answered.add(a.approval_id)
            payload: dict[str, Any] = {"approval_id": a.approval_id}
            if len(answered) == 1:
                payload |= {"edit": {a.trial_ids[0]: {"x1": 0.25}}, "reject": [a.trial_ids[1]]}
            else:
                rig.inbox.submit(name, "change", {"set_bounds": {"x2": [0.0, 0.9] if two else [0.0, 12.0]}},
                                 by="ana", reason="the top edge fouls the reactor")
            rig.inbox.submit(name, "approve", payload, by="ana", reason="chemist's call")
        rig.hub.when(unanswered, answer)

    rig.hub.when(unanswered, answer)
    state = rig.run()
    assert state.status == "finished"
    return rig.events(), state


def _page(tmp_path_factory: pytest.TempPathFactory, name: str, two: bool) -> tuple[list[EventBase], CampaignState, str]:
    events, state = _campaign(name, two=two)
    out = write_report(events, tmp_path_factory.mktemp(name) / "report.html")
    return events, state, out.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[EventBase], CampaignState, str]:
    return computed_once("html-report-single", lambda: _page(tmp_path_factory, "one-objective", two=False))


@pytest.fixture(scope="module")
def double(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[EventBase], CampaignState, str]:
    return computed_once("html-report-double", lambda: _page(tmp_path_factory, "two-objectives", two=True))


def figures(page: str) -> list[dict[str, Any]]:
    """The plotly figures the page draws."""
    [blob] = re.findall(r"<script type='application/json' id='figures'>(.*?)</script>", page, re.S)
    return json.loads(blob)  # type: ignore[no-any-return]


def titled(page: str, title: str) -> dict[str, Any]:
    [fig] = [f for f in figures(page) if (f["layout"].get("title") or {}).get("text") == title]
    return fig


def absent(page: str) -> dict[str, str]:
    """The analyses the page says it left out, and why."""
    return dict(re.findall(r"<li><b>(.*?)</b>: (.*?)</li>", page))


def test_the_page_works_offline_with_plotly_inlined_once(single: Any, double: Any) -> None:
    for _, _, page in (single, double):
        assert '<script src="http' not in page and "<script src='http" not in page
        assert page.count("plotly.js v") == 1
        assert "<script>" in page and "Plotly.newPlot" in page


def test_a_single_objective_report_has_ax_cards_that_apply_and_says_why_others_are_absent(single: Any) -> None:
    _, _, page = single
    for title in ("Summary for one-objective", "Best Trial for Experiment", "Observed Arm Effects on branin",
                  "Modeled Arm Effects on branin", "Parallel Coordinates for branin", "Sensitivity Analysis for branin",
                  "Cross Validation for branin"):
        assert f"<h4>{title}" in page, title
    reasons = absent(page)
    assert reasons["Pareto frontier"] == "one objective"
    assert reasons["Outcome constraints (probability of feasibility)"] == "no outcome constraint"
    assert "id='pareto'" not in page  # no front of one objective


def test_best_so_far_by_trial_id_follows_the_log(single: Any) -> None:
    _, state, page = single
    fig = titled(page, "best branin so far by trial id")
    done = sorted((t for t in state.trials.values() if t.status == "completed"), key=lambda t: t.index)
    trials, best = fig["data"]
    assert trials["x"] == [t.index for t in done]
    assert best["y"][-1] == min(t.measurements["branin"].mean for t in done) == state.best().measurements["branin"].mean
    assert fig["layout"]["xaxis"]["tickformat"] == "d"  # whole trial ids
    assert titled(page, "best branin so far by time of the result")["data"][1]["y"][-1] == best["y"][-1]


def test_the_timeline_shows_which_device_ran_which_trial_and_the_decisions(single: Any) -> None:
    events, state, page = single
    [timeline] = [f for f in figures(page) if any(d.get("yaxis") == "y2" for d in f["data"])]
    bars = {(trial, device) for d in timeline["data"] if d["type"] == "bar"
            for trial, device in zip(d["text"], d["y"], strict=True)}
    assert bars == {(t.trial_id, t.device_id) for t in state.trials.values() if t.device_id is not None}
    assert len(attempts(events)) == sum(1 for e in events if e.kind == "TrialDispatched")  # type: ignore[attr-defined]
    [marks] = [d for d in timeline["data"] if d.get("yaxis") == "y2"]
    assert "user:ana" in marks["y"]
    # the decisions table: who, what, why
    assert "the top edge fouls the reactor" in page and "chemist&#x27;s call" in page
    assert re.search(r"<td>user:ana</td><td>approval [^<]*edited [^<]*rejected", page)
    assert re.search(r"<td>user:ana</td><td>changed: [^<]*x2", page)


def test_a_two_objective_report_has_the_pareto_front_and_hypervolume(double: Any) -> None:
    _, state, page = double
    for title in ("Pareto Frontier Trials for Experiment", "Modeled Effects: branin vs. currin",
                  "Observed Arm Effects on currin", "Cross Validation for currin"):
        assert f"<h4>{title}" in page, title
    assert "Pareto frontier" not in absent(page)
    front = titled(page, "Pareto front: branin vs currin")["data"][1]
    assert sorted(front["text"]) == sorted(f"trial {t.trial_id}" for t in state.pareto_front())
    assert "Reference point" in page and "(inferred)" in page
    hv = titled(page, "hypervolume by trial id")["data"][0]["y"]
    assert hv == sorted(hv) and hv[-1] > 0  # never shrinks as trials come
    assert titled(page, "hypervolume by time of the result")["data"][0]["y"][-1] == pytest.approx(hv[-1])


def test_with_too_few_trials_the_modelled_analyses_say_so(single: Any, tmp_path: Path) -> None:
    events, _, _ = single
    second = [i for i, e in enumerate(events) if e.kind == "TrialCompleted"][1]  # type: ignore[attr-defined]
    page = write_report(events[: second + 1], tmp_path / "early.html").read_text(encoding="utf-8")
    reasons = absent(page)
    assert reasons["Cross-validation"] == "no model: 2 completed trial(s), the model waits for 3"
    assert "<h4>Observed Arm Effects on branin" in page


def test_a_page_without_ax_says_so_and_a_bad_path_is_refused(single: Any, tmp_path: Path) -> None:
    events, _, _ = single
    assert "not computed (--no-analyses)" in report_page(events, skipped="--no-analyses")
    with pytest.raises(OutputError, match="is a directory"):
        write_report(events, tmp_path, with_analyses=False)
    with pytest.raises(OutputError, match="No such file or directory"):
        write_report(events, tmp_path / "missing" / "r.html", with_analyses=False)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_compare_follows_the_hypervolume_of_several_objectives_and_names_trial_ids(double: Any, tmp_path: Path) -> None:
    from flows.cli.compare import best_so_far_curves, compare_table, write_compare

    _, state, page = double
    twin = best_so_far_curves([state, state])
    curve = twin[0]
    assert curve.metric == "hypervolume(branin, currin)" and not curve.minimize
    assert curve.final == pytest.approx(titled(page, "hypervolume by time of the result")["data"][0]["y"][-1])
    reached = curve.trial_ids[curve.best.index(curve.best[-1])]  # the trial whose result last raised it
    row = compare_table(twin).splitlines()[2].split()
    assert row[:4] == ["two-objectives", "hypervolume(branin,", "currin)", "(max)"] and row[6] == reached
    png, html_page = write_compare(twin, tmp_path / "cmp")
    assert png.stat().st_size > 0 and f"<td>{reached}</td>" in html_page.read_text()


def test_the_report_command_writes_the_page_and_refuses_in_one_line(
        single: Any, tmp_path: Path, mongo_uri: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`closedloop report` as a person calls it (in process, on the session's database server):
    the page, and one line with the right exit code for what it cannot do."""
    import os
    import uuid

    from flows.cli.main import main
    from storage import MongoEventStore

    events, _, _ = single
    for name in [k for k in os.environ if k.startswith("CLOSEDLOOP_")]:
        monkeypatch.delenv(name)
    database = f"cl_report_{uuid.uuid4().hex[:8]}"
    for name, value in {"CLOSEDLOOP_HOME": str(tmp_path / "home"), "CLOSEDLOOP_MONGODB_URI": mongo_uri,
                        "CLOSEDLOOP_MONGODB_DATABASE": database}.items():
        monkeypatch.setenv(name, value)
    with MongoEventStore(mongo_uri, database=database) as store:
        store.append(events)

    def report(*argv: str) -> tuple[int, str, str]:
        code = main(["report", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    out_path = tmp_path / "page.html"
    assert report("one-objective", "-o", str(out_path), "--no-analyses") == (0, f"wrote {out_path}\n", "")
    page = out_path.read_text(encoding="utf-8")
    assert "Ax's analyses: not computed (--no-analyses)." in page and "best branin so far by trial id" in page
    for argv, code, says in ((["no-such-campaign", "-o", str(tmp_path / "x.html")], 1, "no campaign 'no-such-campaign'"),
                             (["one-objective", "-o", str(tmp_path / "missing" / "x.html"), "--no-analyses"], 1, "missing"),
                             (["one-objective", "-o", str(tmp_path), "--no-analyses"], 1, str(tmp_path))):
        got, out, err = report(*argv)
        assert (got, out) == (code, "") and err.splitlines() == [err.strip()] and says in err, (argv, got, err)
        assert "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        main(["report"])
    _, err = capsys.readouterr()
    assert exc.value.code == 2 and err.splitlines() == [err.strip()] and "campaign" in err


def test_a_path_the_file_system_refuses_is_one_clear_error(tmp_path: Path) -> None:
    """A name too long for the file system (found by the CLI's garbage property test): an
    OutputError before Ax runs, not a traceback."""
    spec = parse_spec({"name": "c", "parameters": [{"name": "x", "type": "float", "bounds": [0, 1]}],
                       "objectives": [{"name": "y", "minimize": True}], "budget": {"max_trials": 2},
                       "devices": [{"id": "d", "simulator": "branin"}]})
    events: list[EventBase] = [CampaignCreated(campaign_id="c", seq=1, actor="user:test", spec=spec)]
    with pytest.raises(OutputError, match="File name too long"):
        write_report(events, tmp_path / ("a" * 5000))
