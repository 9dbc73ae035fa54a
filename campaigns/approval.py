"""The approval policy: which proposed trials a person must approve before they run.

In a spec::

    approval: every_batch                      # or: never (the default)
    approval: {first_n: 5, timeout_s: 86400, on_timeout: keep_waiting}
    approval: {when: "temperature > 80 or x1 < 0", on_timeout: reject, timeout_s: 3600}

``when`` is a condition on a trial's parameters: comparisons (``< <= > >= == !=``) of a
parameter with a number or a quoted value, joined by ``and``/``or``/``not`` and parentheses.
It is parsed when the spec is read, so a typo is refused before anything runs; a new spec's
condition is also checked against the parameters' types and bounded in size
(:func:`check_condition`). A condition that still cannot be evaluated for a trial (a log
written before those checks) makes that trial wait for a person: it never stops the loop.
"""

from __future__ import annotations

import ast
import logging
import operator
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["MAX_CONDITION_CHARS", "MAX_CONDITION_DEPTH", "ApprovalPolicy", "check_condition", "condition_holds",
           "parse_condition"]

log = logging.getLogger("closedloop.approval")

#: The longest ``when`` condition a new spec may hold, and how deeply it may nest
#: (and/or/not/parentheses): far beyond any condition a person writes, far below what the
#: parser and the evaluator can hold.
MAX_CONDITION_CHARS = 1000
MAX_CONDITION_DEPTH = 20

_OPS: dict[type[ast.cmpop], Any] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}


_ALLOWED: tuple[type[ast.AST], ...] = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub,
    ast.Compare, ast.Name, ast.Load, ast.Constant, *_OPS,
)


def parse_condition(text: str) -> ast.Expression:
    """Parse and check a ``when`` condition; raises ValueError naming what is wrong."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        raise ValueError(f"cannot read condition {_short(text)}; write it like \"x1 > 8 or solvent == 'dmso'\"") from None
    except (RecursionError, MemoryError):
        raise ValueError(f"condition {_short(text)} nests too deeply; at most {MAX_CONDITION_DEPTH} levels") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ValueError(f"condition {_short(text)}: only comparisons joined by and/or/not are allowed")
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float | str):
            raise ValueError(f"condition {_short(text)}: {node.value!r} is not a number or a quoted value")
    return tree


def _short(text: str, limit: int = 80) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def _depth(tree: ast.AST) -> int:
    deepest, stack = 0, [(tree, 0)]
    while stack:  # iterative: the tree may be deeper than Python's recursion limit
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, ast.BoolOp | ast.UnaryOp | ast.Compare):
            stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def check_condition(text: str, kinds: Mapping[str, Literal["number", "text"]]) -> None:
    """Check a new spec's ``when`` condition against its parameters; raises ValueError (one line).

    Every comparison reads at least one parameter and compares like with like: a number
    parameter (float, int, a choice of numbers) with numbers, a choice of texts with quoted
    values; ``-`` applies to numbers only; ``and``/``or``/``not`` join comparisons. The
    condition is at most ``MAX_CONDITION_CHARS`` long and ``MAX_CONDITION_DEPTH`` deep.

    Args:
        text: The condition.
        kinds: Each parameter's name and whether its values are numbers or texts.
    """
    if len(text) > MAX_CONDITION_CHARS:
        raise ValueError(f"the condition is {len(text)} characters long; at most {MAX_CONDITION_CHARS}")
    tree = parse_condition(text)
    if _depth(tree) > MAX_CONDITION_DEPTH:
        raise ValueError(f"the condition nests {_depth(tree)} levels deep; at most {MAX_CONDITION_DEPTH}")
    _check_test(tree.body, kinds)


def _check_test(node: ast.AST, kinds: Mapping[str, str]) -> None:
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            _check_test(value, kinds)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        _check_test(node.operand, kinds)
    elif isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        types = [_kind(o, kinds) for o in operands]
        if not any(isinstance(n, ast.Name) for o in operands for n in ast.walk(o)):
            raise ValueError(f"{ast.unparse(node)[:80]!r} compares no parameter; compare a parameter with a value")
        for (a, ta), (b, tb) in zip(zip(operands, types), zip(operands[1:], types[1:]), strict=False):
            if ta != tb:
                raise ValueError(f"{ast.unparse(node)[:80]!r} compares {_what(a, ta)} with {_what(b, tb)}; "
                                 "compare a number parameter with numbers, a choice of texts with quoted values")
    else:
        raise ValueError(f"{ast.unparse(node)[:80]!r} is not a comparison; write comparisons like x1 > 8, "
                         "joined by and/or/not")


def _what(node: ast.AST, kind: str) -> str:
    shown = ast.unparse(node)[:40]
    return f"{'parameter ' if isinstance(node, ast.Name) else ''}{shown} ({'a number' if kind == 'number' else 'text'})"


def _kind(node: ast.AST, kinds: Mapping[str, str]) -> str:
    if isinstance(node, ast.Name):
        if node.id not in kinds:
            raise ValueError(f"{node.id!r} is not a parameter of this campaign; use parameter names")
        return kinds[node.id]
    if isinstance(node, ast.Constant) and not isinstance(node.value, bool):
        return "text" if isinstance(node.value, str) else "number"
    if isinstance(node, ast.Constant):
        raise ValueError(f"{node.value!r} is not a number or a quoted value")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        if _kind(node.operand, kinds) != "number":
            raise ValueError(f"{ast.unparse(node)[:80]!r}: a minus sign applies to numbers only")
        return "number"
    raise ValueError(f"{ast.unparse(node)[:80]!r}: compare a parameter with a number or a quoted value, "
                     "not with a condition")


def names_in(tree: ast.Expression) -> set[str]:
    """The parameter names a condition reads."""
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def _eval(node: ast.AST, values: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Expression):
        return _eval(node.body, values)
    if isinstance(node, ast.BoolOp):
        results = (_eval(v, values) for v in node.values)
        return all(results) if isinstance(node.op, ast.And) else any(results)
    if isinstance(node, ast.UnaryOp):
        inner = _eval(node.operand, values)
        return (not inner) if isinstance(node.op, ast.Not) else -inner
    if isinstance(node, ast.Compare):
        left = _eval(node.left, values)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _eval(comparator, values)
            try:
                if not _OPS[type(op)](left, right):
                    return False
            except TypeError:
                return False  # e.g. a number compared with a text value: not satisfied
            left = right
        return True
    if isinstance(node, ast.Name):
        return values.get(node.id)
    if isinstance(node, ast.Constant):
        return node.value
    raise ValueError("unsupported condition")  # parse_condition keeps us from here


def condition_holds(text: str, parameters: Mapping[str, Any]) -> bool:
    """Whether a trial's parameters satisfy a ``when`` condition."""
    return bool(_eval(parse_condition(text), parameters))


class ApprovalPolicy(BaseModel):
    """When proposed trials wait for a person, and what happens if nobody answers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["never", "every_batch", "first_n", "when"] = "never"
    first_n: int | None = Field(default=None, ge=1)
    when: str | None = None
    timeout_s: float | None = Field(default=None, gt=0, description="None: wait for ever")
    on_timeout: Literal["reject", "approve", "keep_waiting"] = "keep_waiting"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            if data not in ("never", "every_batch"):
                raise ValueError(f"unknown approval policy {data!r}; use never, every_batch, {{first_n: N}} or {{when: ...}}")
            return {"mode": data}
        if isinstance(data, dict) and "mode" not in data:
            data = dict(data)
            if data.pop("every_batch", False) is True:
                data["mode"] = "every_batch"
            elif "first_n" in data:
                data["mode"] = "first_n"
            elif "when" in data:
                data["mode"] = "when"
        return data

    @field_validator("when")
    @classmethod
    def _when(cls, value: str | None) -> str | None:
        if value is not None:
            parse_condition(value)
        return value

    @model_validator(mode="after")
    def _complete(self) -> ApprovalPolicy:
        if self.mode == "first_n" and self.first_n is None:
            raise ValueError("first_n: give the number of trials to approve, e.g. {first_n: 5}")
        if self.mode == "when" and self.when is None:
            raise ValueError("when: give a condition, e.g. {when: \"x1 > 8\"}")
        return self

    def needs_approval(self, parameters: Mapping[str, Any], trials_so_far: int) -> bool:
        """Whether a trial (the ``trials_so_far``-th suggested, from 0) must wait for a person."""
        if self.mode == "every_batch":
            return True
        if self.mode == "first_n":
            return trials_so_far < (self.first_n or 0)
        if self.mode == "when":
            try:
                return condition_holds(self.when or "False", parameters)
            except (TypeError, ValueError, ArithmeticError, RecursionError, MemoryError) as exc:
                # Fail safe: a condition that cannot be evaluated asks a person rather than
                # letting the trial run unseen, or stopping the campaign.
                log.warning("approval.when cannot be evaluated for %s (%s: %s): the trial waits for a person",
                            dict(parameters), type(exc).__name__, " ".join(str(exc).split())[:200])
                return True
        return False
