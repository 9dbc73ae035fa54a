"""Reading a campaign file: YAML → `CampaignSpec`, every mistake one line naming field and fix."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from campaigns.approval import ApprovalPolicy, check_condition
from campaigns.errors import SpecError
from campaigns.spec import (
    Budget,
    CampaignSpec,
    ChoiceParameter,
    DeviceSpec,
    FailurePolicy,
    FloatParameter,
    IntParameter,
    Objective,
    OptimizerSettings,
    PriorCollection,
    PriorData,
    _first_line,
)

__all__ = ["MAX_SPEC_DEPTH", "MAX_SPEC_VALUES", "check_new_spec", "load_spec", "parse_spec"]

#: How deeply a campaign file may nest, and how many values it may hold (an alias counted each
#: time it is used): far beyond any campaign, far below what would exhaust the validator.
MAX_SPEC_DEPTH = 32
MAX_SPEC_VALUES = 100_000


def _loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {"float", "int", "choice"} or part.startswith(("function-", "tagged-union")):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


_FIELD_HELP: dict[str, str] = {
    "name": "give the campaign a name",
    "parameters": "list at least one parameter",
    "objectives": "list at least one objective: `- {name: METRIC, minimize: true}`",
    "budget": "add `budget: {max_trials: N}`",
    "devices": "list at least one device: `- {id: dev-1, simulator: branin}`",
}


def _validation_to_spec_error(exc: ValidationError, source: str) -> SpecError:
    err = exc.errors()[0]
    where = _loc(err["loc"])
    kind = err["type"]
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        known = _known_keys(err["loc"][:-1])
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed keys here: {', '.join(sorted(known))}"
        return SpecError(f"{source}: {where}: unknown key", hint)
    if kind == "missing":
        return SpecError(f"{source}: {where}: required field is missing", _FIELD_HELP.get(where, "add it"))
    if kind == "union_tag_invalid":
        return SpecError(f"{source}: {where}.type: unknown parameter type", "use one of: float, int, choice")
    if kind == "union_tag_not_found":
        return SpecError(f"{source}: {where}: parameter has no `type`", "add `type: float` (or int, choice)")
    if ": " in msg and where == "" and msg.split(":", 1)[0].replace("[", "").replace("]", "").replace(".", "").replace("_", "").isalnum():
        head, tail = msg.split(": ", 1)
        return SpecError(f"{source}: {head}: {tail.split('; ')[0]}", tail.split("; ", 1)[1] if "; " in tail else "")
    text, _, hint = msg.partition("; ")
    return SpecError(f"{source}: {where or 'spec'}: {text}", hint or "fix the value")


def _known_keys(loc: Sequence[int | str]) -> list[str]:
    model: Any = CampaignSpec
    for part in loc:
        if isinstance(part, int):
            continue
        if part in {"float", "int", "choice"}:
            model = {"float": FloatParameter, "int": IntParameter, "choice": ChoiceParameter}[part]
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            break
        ann = field.annotation
        for candidate in (Budget, DeviceSpec, Objective, OptimizerSettings, FailurePolicy, ApprovalPolicy, PriorData,
                          PriorCollection):
            if ann is candidate or candidate in getattr(ann, "__args__", ()):
                model = candidate
                break
    return list(getattr(model, "model_fields", {}))


def parse_spec(data: Any, source: str = "spec") -> CampaignSpec:
    """Validate already-loaded spec data.

    Raises:
        SpecError: one line naming the field and the fix.
    """
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the file must hold a mapping of keys (name:, parameters:, ...)", "see campaigns/examples/")
    _check_storable(data, source)
    try:
        return CampaignSpec.model_validate(data)
    except ValidationError as exc:
        raise _validation_to_spec_error(exc, source) from None


def load_spec(path: str | Path) -> CampaignSpec:
    """Read and validate a campaign YAML file.

    Raises:
        SpecError: the file is missing, is not YAML, or is not a valid campaign.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{p}: no such file", "check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{p}: cannot read: {_first_line(exc)}", "check the file") from None
    import yaml  # here, not at the top: every command imports the domain, few read a spec file

    try:
        # libyaml's parser when PyYAML has it (the same safe loading, ~10x faster), else PyYAML's own
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{p}: not valid YAML{where}: {getattr(exc, 'problem', exc)}", "fix the YAML syntax") from None
    except RecursionError:
        raise SpecError(f"{p}: the file nests more than {MAX_SPEC_DEPTH} levels deep",
                        "a campaign file is a few levels of keys and lists; see campaigns/examples/") from None
    _check_size(data, str(p))
    spec = parse_spec(data, str(p))
    check_new_spec(spec, str(p))
    return spec


def _check_size(data: Any, source: str) -> None:
    count, stack = 0, [(data, 0)]
    while stack:  # iterative: the data may nest deeper than Python's recursion limit
        node, depth = stack.pop()
        count += 1
        if depth > MAX_SPEC_DEPTH:
            raise SpecError(f"{source}: the file nests more than {MAX_SPEC_DEPTH} levels deep",
                            "a campaign file is a few levels of keys and lists; see campaigns/examples/")
        if count > MAX_SPEC_VALUES:
            raise SpecError(f"{source}: the file holds more than {MAX_SPEC_VALUES:,} values (YAML aliases counted "
                            "each time they are used)", "a campaign file is small; see campaigns/examples/")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for kv in node.items() for v in kv)
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


_INT64 = (-(2**63), 2**63 - 1)
_BOUND_PATH = re.compile(r"^parameters\[\d+\]\.bounds\[\d+\]$")


def _check_storable(data: Any, source: str) -> None:
    """Refuse whole numbers the log cannot hold (MongoDB stores 8-byte integers): a seed or a
    budget of 10**30 would pass validation and fail at the campaign's first append."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        node, where = stack.pop()
        # Parameter bounds have a tighter rule of their own (campaigns.spec.MAX_BOUND), said by the model.
        if (isinstance(node, int) and not isinstance(node, bool) and not _INT64[0] <= node <= _INT64[1]
                and not _BOUND_PATH.match(where)):
            raise SpecError(f"{source}: {where or 'spec'}: {node:.3g} is too large a whole number",
                            f"whole numbers in a campaign lie within ±{2**63:.3g}")
        if isinstance(node, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in node.items())
        elif isinstance(node, list | tuple):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(node))


def check_new_spec(spec: CampaignSpec, source: str = "spec") -> None:
    """Checks for a spec about to start a campaign, beyond what any logged spec passed.

    A spec in an old log must still be read as it was written, so what older versions accepted
    stays valid for `parse_spec`; a new campaign's spec also has its ``approval.when`` checked
    against the parameters' types and bounded in size (`campaigns.approval.check_condition`).

    Raises:
        SpecError: one line naming the field and the fix.
    """
    if spec.approval.when is None:
        return
    kinds: dict[str, Any] = {
        p.name: "text" if isinstance(p, ChoiceParameter) and isinstance(p.values[0], str) else "number"
        for p in spec.parameters
    }
    try:
        check_condition(spec.approval.when, kinds, spec.approval.condition)
    except ValueError as exc:
        text, _, hint = str(exc).partition("; ")
        raise SpecError(f"{source}: approval.when: {text}", hint or "fix the condition") from None
