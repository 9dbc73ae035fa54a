"""The CLI as a hostile or hurried person uses it: decisions recorded as meant, one line for
every mistake, and what `change --trial-timeout` applies to (issue 14 items 6, 9, 14, 17).

The campaign here waits for an approval, written straight into a real MongoDB-wire server's log;
where a running orchestrator matters, the test holds the campaign's lease as an orchestrator
would (on another host), so the CLI hands its command over through the inbox, and the test then
does what the loop does with it (`flows.engine.commands.events_for`, the inbox's claim).
"""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns import (
    ApprovalGiven,
    ApprovalRequested,
    CampaignChanged,
    CampaignCreated,
    ClosedLoopError,
    SuggestedTrial,
    TrialsSuggested,
    fold,
    load_spec,
)
from flows.engine.commands import events_for
from storage import Command, MongoCommandInbox, MongoEventStore, MongoLease
from tests.e2e.cli import CLOSEDLOOP, cli_env, run, start
from tests.e2e.test_crash_resume import wait_for

EXAMPLE = Path(__file__).parents[2] / "campaigns" / "examples" / "branin.yaml"
SPEC = load_spec(EXAMPLE)


def suggested(*ids: str) -> list[SuggestedTrial]:
    return [SuggestedTrial(trial_id=i, parameters={"x1": 7.0 + int(i), "x2": 2.0}, generator="sobol") for i in ids]


@pytest.fixture
def lab(mongo_uri: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Campaign ``c`` waiting for approval ``a0`` of trials 0 and 1, in a database of its own."""
    database = f"cl_hostile_{uuid.uuid4().hex[:8]}"
    with MongoEventStore(mongo_uri, database=database) as store:
        store.append([
            CampaignCreated(campaign_id="c", seq=1, actor="user:a", spec=SPEC),
            TrialsSuggested(campaign_id="c", seq=2, actor="optimizer", trials=suggested("0", "1")),
            ApprovalRequested(campaign_id="c", seq=3, actor="orchestrator", approval_id="a0", trial_ids=["0", "1"],
                              why="every batch", answer_with="closedloop approve c"),
        ])
        with MongoCommandInbox(mongo_uri, database=database) as inbox:
            yield {"store": store, "inbox": inbox, "uri": mongo_uri, "database": database,
                   # A command handed over waits for the test's "orchestrator" longer than the
                   # test may run: the test's SIGINT or verdict comes first, by construction (at
                   # the default 30 s, a loaded machine let the CLI give up first: exit 0).
                   "env": cli_env(tmp_path / "home", {}, CLOSEDLOOP_MONGODB_URI=mongo_uri,
                                  CLOSEDLOOP_MONGODB_DATABASE=database, CLOSEDLOOP_HANDOVER_WAIT_S="3600")}


# How long a CLI may take to answer a signal before the test calls it hung: only a guard. On a
# clean clone with a CPU-bound job beside the suite, 60 s once passed before `approve` had
# withdrawn its command and exited (both Ctrl-C tests, at once).
HANG_GUARD_S = 300


def one_error_line(out: subprocess.CompletedProcess[str], code: int) -> str:
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


def orchestrator_lease(lab: dict[str, Any]) -> MongoLease:
    """The campaign's lease, held as a running orchestrator on another machine holds it."""
    return MongoLease(lab["uri"], "c", owner="lab-pc:4242", database=lab["database"])


def handed_over(lab: dict[str, Any], args: list[str]) -> tuple[subprocess.Popen[str], Command]:
    """Start a CLI command while the campaign is leased; return it and the command it put in the inbox."""
    proc = start([*args], lab["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    [command] = wait_for(lambda: lab["inbox"].pending("c"), 120, "the command in the inbox")
    return proc, command


def fields_of(state: Any) -> Any:
    return lambda actor, offset: {"campaign_id": "c", "seq": state.last_seq + 1 + offset, "actor": actor}


# -- item 6: people's decisions -----------------------------------------------------------------


def test_conflicting_decisions_are_refused(lab: dict[str, Any]) -> None:
    """Issue 14 item 6: `approve --trial 0 --trial 1 --reject 0` was logged as approving and
    rejecting trial 0; it is refused in one line (exit 2) and nothing is logged."""
    out = run(["approve", "c", "--trial", "0", "--trial", "1", "--reject", "0", "--reason", "r"], lab["env"])
    line = one_error_line(out, 2)
    assert "trial 0" in line and "--trial" in line and "--reject" in line
    assert not [e for e in lab["store"].read("c") if isinstance(e, ApprovalGiven)]
    out = run(["approve", "c", "--edit", "1", "x1=2", "--reject", "1", "--reason", "r"], lab["env"])
    assert "trial 1" in one_error_line(out, 2)


@pytest.mark.parametrize("command", [["approve", "c"], ["pause", "c"], ["stop", "c"]])
def test_an_author_name_on_two_lines_is_refused_in_one_line(command: list[str], lab: dict[str, Any]) -> None:
    """Issue 16: a person's name is logged as the actor ``user:<name>``, which is one line. A
    line break in it, sent through the inbox (or the Prefect form), met the event's validation
    inside the running loop and ended the run; it is refused as any command that does not fit."""
    out = run([*command, "--by", "ana\nbob", "--reason", "r"], lab["env"])
    assert "holds a line break" in one_error_line(out, 1)
    assert len(lab["store"].read("c")) == 3  # nothing logged
    # The loop's own check, for a command that reached the inbox another way.
    state = fold(lab["store"].read("c"))
    sent = Command(command_id="x", campaign_id="c", kind=command[0], payload={"approval_id": "a0"}, by="ana\nbob",
                   reason="r", submitted_at=state.updated_at)
    with pytest.raises(ClosedLoopError, match="holds a line break"):
        events_for(state, sent, fields_of(state))


def test_a_decision_applies_only_to_the_approval_its_author_saw(lab: dict[str, Any]) -> None:
    """Issue 14 item 6: an `approve` without `--approval` applied to whichever approval was open
    when the orchestrator read it. It is bound to the approval (and trials) open when it was typed:
    once that approval is answered and another opened, the orchestrator refuses it."""
    with orchestrator_lease(lab):
        proc, command = handed_over(lab, ["approve", "c", "--reason", "looks safe", "--by", "ana"])
        try:
            assert command.payload["approval_id"] == "a0" and command.payload["trial_ids"] == ["0", "1"]
            # Before the orchestrator reads it, someone else answers a0 and the next request opens.
            store = lab["store"]
            store.append([
                ApprovalGiven(campaign_id="c", seq=4, actor="user:bob", approval_id="a0", approved=["0", "1"],
                              reason="bob's call"),
                TrialsSuggested(campaign_id="c", seq=5, actor="optimizer", trials=suggested("2")),
                ApprovalRequested(campaign_id="c", seq=6, actor="orchestrator", approval_id="a2", trial_ids=["2"],
                                  why="every batch", answer_with="closedloop approve c"),
            ])
            state = fold(store.read("c"))
            with pytest.raises(ClosedLoopError) as refused:  # what the loop does with the command
                events_for(state, command, fields_of(state))
            assert "approval 'a0' is not waiting" in str(refused.value)
            lab["inbox"].refused(command.command_id, str(refused.value))
            _, err = proc.communicate(timeout=HANG_GUARD_S)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 1 and "refused: approval 'a0' is not waiting" in err and "Traceback" not in err
    assert "a2" in fold(lab["store"].read("c")).open_approvals  # a2, never seen by ana, still waits


def test_ctrl_c_while_waiting_withdraws_the_decision(lab: dict[str, Any]) -> None:
    """Issue 14 item 6: Ctrl-C on `approve` while it waited for the orchestrator said
    "interrupted" and the approval was applied afterwards anyway. Now it is withdrawn from the
    inbox: the orchestrator no longer finds it, cannot claim it, and the CLI says so."""
    with orchestrator_lease(lab):
        proc, command = handed_over(lab, ["approve", "c", "--reason", "looks safe"])
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "withdrawn" in err and "nothing applied" in err
    assert lab["inbox"].pending("c") == []  # what the orchestrator reads: nothing to apply
    assert lab["inbox"].claim(command.command_id) is False
    assert "a0" in fold(lab["store"].read("c")).open_approvals


def test_ctrl_c_after_the_orchestrator_applied_it_says_so(lab: dict[str, Any]) -> None:
    """Issue 14 item 6: Ctrl-C once the orchestrator has taken the command and logged it reports
    the truth: already applied, with the event's number."""
    with orchestrator_lease(lab):
        proc, command = handed_over(lab, ["approve", "c", "--reason", "looks safe"])
        try:
            inbox, store = lab["inbox"], lab["store"]
            assert inbox.claim(command.command_id)  # the orchestrator takes it, logs it...
            state = fold(store.read("c"))
            store.append(events_for(state, command, fields_of(state)))
            proc.send_signal(signal.SIGINT)  # ...and the person presses Ctrl-C before it is marked applied
            _, err = proc.communicate(timeout=HANG_GUARD_S)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "already applied (event 4" in err, err


# -- item 14: one line, not a traceback ---------------------------------------------------------


@pytest.mark.parametrize(("flag", "value"), [("--batch-size", "0"), ("--max-trials", "0"), ("--trial-timeout", "-1"),
                                             ("--max-hours", "0"), ("--trial-timeout", "inf"), ("--max-hours", "nan"),
                                             ("--batch-size", "99999999999999999999999")])
def test_change_numbers_out_of_range_are_one_line(flag: str, value: str, lab: dict[str, Any]) -> None:
    """Issue 14 item 14: `change --batch-size 0` (and the other numbers) gave a traceback."""
    out = run(["change", "c", f"{flag}={value}", "--reason", "r"], lab["env"])
    # Worded in the campaign's terms (the same check answers the inbox and a replay): "batch size 0: ..."
    assert one_error_line(out, 2).startswith(f"error: {flag.lstrip('-').replace('-', ' ')} ")
    assert not [e for e in lab["store"].read("c") if isinstance(e, CampaignChanged)]


def test_max_trials_below_the_trials_used_is_refused(lab: dict[str, Any]) -> None:
    """Issue 14 item 14: max trials may not drop below the trials already counted (stop ends a campaign)."""
    out = run(["change", "c", "--max-trials", "1", "--reason", "r"], lab["env"])
    assert "2 trials already count against the budget" in one_error_line(out, 1)


@pytest.mark.parametrize(("variable", "value", "argv"), [
    ("CLOSEDLOOP_MQTT_URL", "mqtt://host:notaport", ["resume", "c", "--max-runtime", "5"]),
    ("CLOSEDLOOP_MQTT_PREFIX", "a/#", ["resume", "c", "--max-runtime", "5"]),
    ("CLOSEDLOOP_OPTIMIZER_THREADS", "many", ["list"]),
    ("CLOSEDLOOP_HOME", "FILE", ["list"]),
    ("CLOSEDLOOP_MONGODB_URI", "mongodb://h:badport", ["list"]),
])
def test_malformed_settings_are_one_line(variable: str, value: str, argv: list[str], lab: dict[str, Any],
                                         tmp_path: Path) -> None:
    """Issue 14 item 14: a malformed CLOSEDLOOP_MQTT_URL (`mqtt://host:notaport`) and other
    settings gave tracebacks; each is one line naming the variable, exit 2 (1 for the database URI,
    which the database layer reports)."""
    if value == "FILE":
        (tmp_path / "FILE").write_text("a file")
        value = str(tmp_path / "FILE")
    out = run(argv, {**lab["env"], variable: value})
    line = one_error_line(out, 1 if variable == "CLOSEDLOOP_MONGODB_URI" else 2)
    assert variable in line or "MongoDB URI" in line


def test_sim_with_a_malformed_broker_is_one_line(lab: dict[str, Any]) -> None:
    """Issue 14 item 14: `sim --broker mqtt://host:notaport` is one line, exit 2."""
    out = run(["sim", "branin", "--device-id", "d", "--broker", "mqtt://host:notaport"], lab["env"], timeout=120)
    assert "--broker" in one_error_line(out, 2)


# -- item 17: what a new trial timeout applies to -----------------------------------------------


def test_change_trial_timeout_says_what_it_applies_to(lab: dict[str, Any]) -> None:
    """Issue 14 item 17: `change --trial-timeout` did not apply to trials already running and did
    not say so; its output says it applies to trials dispatched from now on, as README does."""
    out = run(["change", "c", "--trial-timeout", "5", "--reason", "slow reagent"], lab["env"])
    assert out.returncode == 0, out.stderr
    assert "applies to trials dispatched from now on" in out.stdout
    assert "trials running now keep their deadline" in out.stdout
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "applies to trials dispatched from then on" in readme


# -- item 9: `when:` conditions -----------------------------------------------------------------


@pytest.mark.parametrize("condition", ["-'abc' == 1", "not " * 2000 + "x1 > 1", "not " * 3000 + "x1 > 1",
                                       "x1 > 'hot'", "x9 > 1"])
def test_conditions_the_loop_cannot_evaluate_are_refused_by_validate(condition: str, tmp_path: Path,
                                                                     lab: dict[str, Any]) -> None:
    """Issue 14 item 9: `-'abc' == 1` and 2,000 chained `not` passed `validate` and crashed the
    loop; 3,000 gave a traceback from `validate`. Each is one line, exit 2."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["approval"] = {"when": condition}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    out = run(["validate", str(path)], lab["env"], timeout=120)
    assert "approval.when" in one_error_line(out, 2)


# -- must-show 3, through the real entry point ----------------------------------------------------


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(key=st.sampled_from(["name", "budget", "parameters", "devices", "approval", "batch_size"]),
       value=st.one_of(st.integers(), st.floats(), st.text(max_size=20), st.lists(st.integers(), max_size=3),
                       st.just("[" * 5000)))
def test_validate_on_generated_files_exits_0_or_2_in_one_line(key: str, value: Any, tmp_path: Path) -> None:
    """Issue 14 must-show 3: `closedloop validate` on generated files: exit 0 or 2, one line, no traceback."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data[key] = value
    path = tmp_path / f"gen-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(data) if not (isinstance(value, str) and value.startswith("[[")) else
                    f"name: {value}")
    out = run(["validate", str(path)], cli_env(tmp_path / "home", {}), timeout=120)
    assert out.returncode in (0, 2) and "Traceback" not in out.stderr, out.stderr
    if out.returncode == 2:
        one_error_line(out, 2)


def test_whole_numbers_the_log_cannot_hold_are_one_line(lab: dict[str, Any], tmp_path: Path) -> None:
    """Issue 14 item 14 (found by the CLI property): `seed: 99999999999999999999999` in a spec, or
    `replay --seed` of it, passed validation and crashed at the first append (OverflowError:
    MongoDB can only handle up to 8-byte ints)."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["seed"] = 99999999999999999999999
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(data))
    assert "seed" in one_error_line(run(["validate", str(path)], lab["env"], timeout=120), 2)
    out = run(["replay", "c", "--mode", "counterfactual", "--seed", "99999999999999999999999"], lab["env"])
    assert "--seed" in one_error_line(out, 2)
    assert len(lab["store"].list_campaigns()) == 1  # no replay campaign was created


@pytest.mark.parametrize("args", [
    ["approve", "c", "--edit", "0", "x1=1e400"],
    ["approve", "c", "--edit", "0", "x1=nan"],
    ["approve", "c", "--edit", "0", "x1"],
    ["approve", "c", "--edit", "0", "=2"],
    ["approve", "c", "--edit", "0", "a=b=c"],
    ["approve", "c", "--edit", "0", "x1=b=c"],
    ["change", "c", "--fix", "x2=warm"],
    ["change", "c", "--fix", "x9=1"],
    ["change", "c", "--set-bounds", "x1=0:1e400"],
])
def test_name_value_mistakes_are_one_line(args: list[str], lab: dict[str, Any]) -> None:
    """Issue 15: one `NAME=VALUE` reader, typed by the parameter, for every flag that takes one."""
    out = run([*args, "--reason", "r"], lab["env"])
    assert one_error_line(out, 2).startswith(f"error: {args[2]} ")
    assert len(lab["store"].read("c")) == 3  # nothing logged


# -- issue 17: a reader that goes away, and a usage error, through the console script -------------


def test_a_reader_that_closes_the_pipe_gets_a_quiet_exit(lab: dict[str, Any]) -> None:
    """Issue 17: `status c | grep -q running` and `export c | head` printed a BrokenPipeError
    traceback. The read end is closed before the command starts, so every write meets a closed
    pipe: exit 141 (128 + SIGPIPE, as `cat` or `git log` there), nothing on stderr."""
    import os

    for argv in (["status", "c"], ["export", "c"], ["log", "c"], ["list"]):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            out = subprocess.run([CLOSEDLOOP, *argv], env=lab["env"], stdout=write_end, stderr=subprocess.PIPE, check=False,
                                 text=True, timeout=120)
        finally:
            os.close(write_end)
        assert (out.returncode, out.stderr) == (141, ""), (argv, out.returncode, out.stderr)


def test_a_usage_error_of_the_console_script_is_one_line() -> None:
    """Issue 17: argparse's usage errors were 4-5 lines (usage, then the error); README promises one."""
    out = subprocess.run([CLOSEDLOOP, "approve", "c", "--edit"], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == "closedloop: error: argument --edit: expected at least one argument " \
                         "(see closedloop approve --help)\n"
