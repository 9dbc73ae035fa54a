"""Property: any campaign file, however hostile, is either a campaign or one line saying why.

Issue 14 must-show 3 (spec files): random YAML/JSON documents, near-valid specs with a field
mutated, extreme numbers, huge strings, unicode, deep nesting and YAML alias bombs go through
`load_spec` and the device checks `closedloop validate` runs; the only way out besides a spec is
a `SpecError` whose message is one line. Anything else (a RecursionError, a pydantic
ValidationError, a TypeError) is a traceback a user would see, and fails the property.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns import CampaignSpec, SpecError, load_spec
from flows.engine.catalog import check_spec_devices

BASE: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parents[2] / "campaigns" / "examples" / "branin.yaml").read_text())

EXTREME_NUMBERS = st.sampled_from([0, -1, 1, 2**63, -(2**63) - 1, 10**30, 1e308, -1e308, 1e-320, math.inf,
                                   -math.inf, math.nan, 0.5, True, False])
TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "x1", "x2", "branin", "sobol", "every_batch", "never", "float", "int", "choice",
                     "x1 > 1", "-'abc' == 1", "x1 >= 0.2", "x1 + x2 <= 10", "branin >= 1", "\u00e9\u4e2d\U0001f600",
                     "a" * 5000, "\x00", "${HOME}", "!!python/object:os.system"]),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    EXTREME_NUMBERS, TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)
PATHS = [
    ("name",), ("seed",), ("batch_size",), ("trial_timeout_s",), ("dispatch",), ("budget",), ("budget", "max_trials"),
    ("budget", "max_hours"), ("parameters",), ("parameters", 0), ("parameters", 0, "bounds"), ("parameters", 0, "type"),
    ("parameters", 0, "name"), ("parameters", 1, "log_scale"), ("objectives",), ("objectives", 0, "name"),
    ("objectives", 0, "minimize"), ("objectives", 0, "threshold"), ("devices",), ("devices", 0), ("devices", 0, "id"),
    ("devices", 0, "simulator"), ("devices", 0, "options"), ("devices", 0, "measures"), ("approval",),
    ("optimizer",), ("optimizer", "method"), ("failure_policy",), ("outcome_constraints",),
    ("parameter_constraints",), ("fixed_parameters",), ("schema_version",), ("unknown_key",),
]


def mutate(doc: dict[str, Any], path: tuple[str | int, ...], value: Any, delete: bool) -> dict[str, Any]:
    """A deep copy of the base spec with one field replaced (or deleted), where the path exists."""
    doc = json.loads(json.dumps(doc))
    node: Any = doc
    for key in path[:-1]:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return doc
    if delete and isinstance(node, dict):
        node.pop(path[-1], None)
    elif isinstance(node, dict) or (isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node)):
        node[path[-1]] = value
    return doc


WHEN = st.lists(st.sampled_from(["x1", "x2", "x9", "1", "-", "'a'", "not", "and", "or", ">", "==", "<=", "(", ")",
                                 "-1e308", "True", "None"]), max_size=12).map(" ".join)

DOCUMENTS = st.one_of(
    VALUES,
    st.builds(mutate, st.just(BASE), st.sampled_from(PATHS), VALUES, st.booleans()),
    st.builds(lambda w, t: {**BASE, "approval": {"when": w, "timeout_s": t}}, WHEN, st.one_of(st.none(), EXTREME_NUMBERS)),
    st.builds(lambda n: {**BASE, "approval": {"when": "not " * n + "x1 > 1"}}, st.one_of(st.integers(0, 300), st.sampled_from([2000, 3000, 5000]))),
)


def render(doc: Any, form: str) -> str:
    """The document as a file: YAML, JSON, or YAML nested/aliased to hostile depths."""
    if form == "json":
        return json.dumps(doc, allow_nan=True)
    return yaml.safe_dump(doc, allow_unicode=True)


def assert_one_line_or_spec(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            spec = load_spec(path)
            check_spec_devices(spec)
        except SpecError as exc:
            message = str(exc)
            assert message and "\n" not in message and "Traceback" not in message, message
        else:
            assert isinstance(spec, CampaignSpec)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS, st.sampled_from(["yaml", "json"]))
def test_any_document_is_a_spec_or_one_line(doc: Any, form: str) -> None:
    """Issue 14 must-show 3: random and near-valid documents never raise anything but a one-line SpecError."""
    assert_one_line_or_spec(render(doc, form))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3_000), st.sampled_from(["[", "{a: ", "- ", "{\"a\": ["]))
def test_deep_nesting_is_one_line(depth: int, opener: str) -> None:
    """Issue 14 must-show 3: deeply nested YAML (a RecursionError in the parser before) is one line."""
    closer = {"[": "]", "{a: ": "}", "- ": "", "{\"a\": [": "]}"}[opener]
    body = opener * depth + "1" + closer * depth if closer else "".join("  " * i + "- \n" for i in range(min(depth, 100)))
    assert_one_line_or_spec("name: " + body if opener != "- " else "name:\n" + body)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 12), st.integers(2, 12))
def test_alias_bombs_are_one_line(fanout: int, levels: int) -> None:
    """Issue 14 must-show 3: a YAML alias bomb (billions of values from a few lines) is refused, not expanded."""
    lines = ["l0: &l0 [x1, x2]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fanout)}]")
    text = yaml.safe_dump({k: v for k, v in BASE.items() if k != "parameters"}) + "\n".join(lines)
    text += f"\nparameters: *l{levels - 1}\n"
    assert_one_line_or_spec(text)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_one_line(data: bytes) -> None:
    """Issue 14 must-show 3: a file that is not text at all is one line."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_bytes(data)
        try:
            load_spec(path)
        except SpecError as exc:
            assert "\n" not in str(exc)
