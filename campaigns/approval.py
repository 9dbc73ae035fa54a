"""The approval policy: which proposed trials a person must approve before they run.

In a spec::

    approval: every_batch                      # or: never (the default)
    approval: {first_n: 5, timeout_s: 86400, on_timeout: keep_waiting}
    approval: {when: "temperature > 80 or x1 < 0", on_timeout: reject, timeout_s: 3600}

``when`` is a condition on a trial's parameters: comparisons (``< <= > >= == !=``) of a
parameter with a number or a quoted value, joined by ``and``/``or``/``not`` and parentheses.
It is parsed when the spec is read, so a typo is refused before anything runs.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["ApprovalPolicy", "condition_holds", "parse_condition"]

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
    except SyntaxError:
        raise ValueError(f"cannot read condition {text!r}; write it like \"x1 > 8 or solvent == 'dmso'\"") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ValueError(f"condition {text!r}: only comparisons joined by and/or/not are allowed")
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float | str):
            raise ValueError(f"condition {text!r}: {node.value!r} is not a number or a quoted value")
    return tree


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
            return condition_holds(self.when or "False", parameters)
        return False
