"""Property: whatever a person types or sets, `closedloop` answers with one line and exit 0, 1 or 2.

Issue 14 must-show 3 (the CLI): for every subcommand (read from the parser itself, so a new
command or flag is covered as soon as it exists), argument lists of its flags and garbage values
(zero, negative, NaN, infinite, huge, empty, unicode, malformed NAME=VALUE and LOW:HIGH) run
through `flows.cli.main.main` in-process against a real MongoDB-wire server holding a campaign that
waits for an approval. The exit code is 0, 1 or 2 and, when it is not 0, the last line on stderr
is the one error line; no traceback. The same for malformed ``CLOSEDLOOP_*`` variables. A few
runs of the real entry point (tests/e2e/test_hostile_cli.py) show the console script agrees.

Commands that would start a campaign (``run``, ``resume``, ``replay``) or serve an instrument
(``sim`` with a real simulator) are given only campaign ids and names that do not exist, so no
example runs for long.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns import ApprovalRequested, CampaignCreated, SuggestedTrial, TrialsSuggested, load_spec
from flows.cli import main as cli
from simulators import SIMULATORS
from storage import MongoEventStore

SPEC = load_spec(Path(__file__).parents[2] / "campaigns" / "examples" / "branin.yaml")

GARBAGE = st.one_of(
    st.sampled_from(["0", "-1", "1", "2", "nan", "inf", "-inf", "1e400", "99999999999999999999999", "0.5", "-0",
                     "x1=1", "x1=nan", "x1=1:2", "x1=5:1", "x1=0:inf", "x1=", "=3", "x9=0:1", "x1=-1e308:1e308",
                     "x2=abc", "branin=5", "branin=nan", "purity >= 0.9", "x1 >=", "a0", "a9", "0", "--", "-", "",
                     " ", "x1", "csv", "json", "faithful", "counterfactual", "\u00e9\u4e2d", "a" * 300, "c:d",
                     "noise_sd=-1", "duration_s=[1", "mqtt://h:notaport", "mqtt://", "mqtts://u:p@h:99999"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
)
#: Names that would make an example start something real or slow: the seeded campaign (for run,
#: resume, replay, sim --from-campaign; compare draws its plots) and every simulator (for sim).
STARTERS = {"c", *SIMULATORS}


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


COMMANDS = subparsers()


def flag_with_values(action: argparse.Action, value: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    """One use of an optional flag, with as many values as it takes (well-formed in shape)."""
    flag = st.sampled_from(action.option_strings)
    if action.nargs == 0:
        return flag.map(lambda f: [f])
    if action.choices is not None:
        value = st.one_of(st.sampled_from([str(c) for c in action.choices]), value)
    if action.nargs is None:  # FLAG=VALUE lets a value start with "-" (-1, -inf) and still reach our checks
        return st.builds(lambda f, v, joined: [f"{f}={v}"] if joined else [f, v], flag, value, st.booleans())
    return st.builds(lambda f, vs: [f, *vs], flag, st.lists(value, min_size=1, max_size=3))


def sometimes(p: float, tokens: st.SearchStrategy[list[str]]) -> st.SearchStrategy[list[str]]:
    """``tokens`` with probability about ``p``, else nothing."""
    return st.integers(0, 99).flatmap(lambda n: tokens if n < p * 100 else st.just([]))


def argv_for(name: str) -> st.SearchStrategy[list[str]]:
    """Arguments for one command: its positionals and flags in a usable shape, with garbage values,
    and now and then garbage anywhere (which argparse must refuse in one line)."""
    parser = COMMANDS[name]
    safe = name in ("run", "resume", "replay", "sim", "compare")
    value = GARBAGE.filter(lambda t: t not in STARTERS) if safe else st.one_of(st.just("c"), st.just("0"), GARBAGE)
    optionals = [a for a in parser._actions if a.option_strings and a.option_strings[0] not in ("-h", "--help")]
    positionals = [a for a in parser._actions if not a.option_strings]
    flags = st.lists(st.one_of(*[flag_with_values(a, value) for a in optionals]), max_size=5) if optionals else st.just([])
    campaign = value if safe else st.one_of(st.just("c"), st.just("c"), value)
    first = st.lists(campaign, min_size=len(positionals), max_size=len(positionals))
    reason = (sometimes(0.8, st.builds(lambda r: [f"--reason={r}"], value))
              if "--reason" in parser._option_string_actions else st.just([]))
    stray = sometimes(0.1, st.lists(value, min_size=1, max_size=2))
    return st.builds(lambda f, fl, why, extra: [name, *f, *(x for group in fl for x in group), *why, *extra],
                     first, flags, reason, stray)


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("CLOSEDLOOP_")}
    for k in saved:
        del os.environ[k]
    os.environ.update(values)
    try:
        yield
    finally:
        for k in values:
            os.environ.pop(k, None)
        os.environ.update(saved)


def run_main(argv: list[str]) -> tuple[int, str]:
    """Run the CLI in-process as the console script would; returns the exit code and stderr."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse: usage errors (2) and --help (0)
            code = exc.code if isinstance(exc.code, int) else 1
    return code, err.getvalue()


def assert_one_line(code: int, stderr: str, argv: list[str]) -> None:
    assert code in (0, 1, 2), (argv, code, stderr)
    assert "Traceback" not in stderr, (argv, stderr)
    if code != 0:
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert lines, (argv, "no error line")
        assert lines[-1].startswith("error: ") or ": error: " in lines[-1], (argv, stderr)


@pytest.fixture(scope="module")
def seeded(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A database with campaign ``c`` waiting for approval ``a0`` of trials 0 and 1."""
    database = f"cl_props_{uuid.uuid4().hex[:8]}"
    trials = [SuggestedTrial(trial_id=str(i), parameters={"x1": 7.0 + i, "x2": 2.0}, generator="sobol")
              for i in range(2)]
    with MongoEventStore(mongo_uri, database=database) as store:
        store.append([
            CampaignCreated(campaign_id="c", seq=1, actor="user:a", spec=SPEC),
            TrialsSuggested(campaign_id="c", seq=2, actor="optimizer", trials=trials),
            ApprovalRequested(campaign_id="c", seq=3, actor="orchestrator", approval_id="a0", trial_ids=["0", "1"],
                              why="every batch", answer_with="closedloop approve c"),
        ])
    home = tmp_path_factory.mktemp("props")
    return {"CLOSEDLOOP_HOME": str(home / "home"), "CLOSEDLOOP_MONGODB_URI": mongo_uri,
            "CLOSEDLOOP_MONGODB_DATABASE": database,
            # Nothing here may reach a broker; a command that would is refused before it tries.
            "CLOSEDLOOP_MQTT_URL": "mqtt://127.0.0.1:1", "cwd": str(home)}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_answers_garbage_in_one_line(command: str, seeded: dict[str, str]) -> None:
    """Issue 14 must-show 3: garbage arguments to each command: exit 0/1/2, one error line, no traceback."""
    env = {k: v for k, v in seeded.items() if k != "cwd"}

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(argv_for(command))
    def check(argv: list[str]) -> None:
        with environment(env), contextlib.chdir(seeded["cwd"]):
            code, stderr = run_main(argv)
        assert_one_line(code, stderr, argv)

    check()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_flag_given_dashdash_as_its_value_is_one_line(command: str, seeded: dict[str, str]) -> None:
    """argparse reads `--flag=--` as an empty list (found by the property above: `approve c
    --trial=-- --reason=c` was a TypeError): every value-taking flag of every command, exit 2."""
    env = {k: v for k, v in seeded.items() if k != "cwd"}
    flags = [f for a in COMMANDS[command]._actions if a.option_strings and a.nargs != 0
             for f in a.option_strings if f.startswith("--")]
    for flag in flags:
        argv = [command, "c", f"{flag}=--", "--reason=c"]
        with environment(env), contextlib.chdir(seeded["cwd"]):
            code, stderr = run_main(argv)
        assert_one_line(code, stderr, argv)
        assert code == 2 and "'--' is not a value" in stderr, (argv, stderr)


VARIABLES = {
    "CLOSEDLOOP_MQTT_URL": st.sampled_from(["mqtt://host:notaport", "mqtt://", "http://h", "mqtt://h:99999",
                                            "mqtt://h/path", "mqtt://[::1", "mqtts://u:p@:1", " ", "", "\u00e9"]),
    "CLOSEDLOOP_MQTT_PREFIX": st.sampled_from(["", "a/#", "+", "/a", "a/", "a//b", "\u00e9", "x" * 500, "a b"]),
    "CLOSEDLOOP_OPTIMIZER_THREADS": st.sampled_from(["", "x", "-3", "0", "1.5", "99999999999999999999", "nan"]),
    "CLOSEDLOOP_MONGODB_DATABASE": st.sampled_from(["", "a.b", "a/b", "$x", "a b", "x" * 100, "\u00e9"]),
    "CLOSEDLOOP_MONGODB_URI": st.sampled_from(["mongodb://h:badport", "mongodb://a@b@c", "foo", "mongodb://",
                                               "mongodb+srv://h:1", "http://h", "mongodb://127.0.0.1:1/?w=banana",
                                               "mongodb://127.0.0.1:99999"]),
    "CLOSEDLOOP_HOME": st.sampled_from(["FILE", "FILE/sub", "", "\u00e9/home"]),
    "CLOSEDLOOP_STANDBY_S": st.sampled_from(["", "x", "5", "-1", "nan", "inf", "1e9", "\u00e9"]),
    "CLOSEDLOOP_AX_DB_URL": st.sampled_from(["not a url", "foo://h/db", "sqlite://", "", "postgresql://u:p@h:x/db",
                                             "\u00e9", "sqlite:///:memory:", "mysql+nodriver://h/db"]),
}


@pytest.mark.parametrize("variable", sorted(VARIABLES))
def test_malformed_settings_answer_in_one_line(variable: str, seeded: dict[str, str]) -> None:
    """Issue 14 must-show 3 and item 14: a malformed CLOSEDLOOP_* variable is one line (exit 1 or 2), no traceback."""
    cwd = Path(seeded["cwd"])
    (cwd / "FILE").write_text("not a directory")
    base = {k: v for k, v in seeded.items() if k != "cwd"}

    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(VARIABLES[variable], st.sampled_from([["list"], ["status", "c"], ["pending"], ["change", "c",
                                                 "--batch-size", "3", "--reason", "r"], ["history", "c"]]))
    def check(value: str, argv: list[str]) -> None:
        env = {**base, variable: str(cwd / value) if value.startswith("FILE") else value}
        with environment(env), contextlib.chdir(cwd):
            code, stderr = run_main(argv)
        assert_one_line(code, stderr, [f"{variable}={value}", *argv])

    check()
