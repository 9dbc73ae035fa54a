"""The approval policy: which proposed trials a person must approve before they run.

In a spec::

    approval: every_batch                      # or: never (the default)
    approval: {first_n: 5, timeout_s: 86400, on_timeout: keep_waiting}
    approval: {when: "temperature > 80 or x1 < 0", on_timeout: reject, timeout_s: 3600}

``every_batch`` asks once per batch of the spec's ``batch_size`` trials. In ``async`` dispatch the
loop gathers a whole batch before suggesting it (``flows.engine.loop``): once the free devices
and the look-ahead can take all of it, or once nothing runs nor waits to run, so the wait lasts
at most until the running trials end (each by its result or its timeout); the last batch is
what the budget has left. ``first_n`` and ``when`` ask about each suggestion as it comes.

``when`` is a condition on a trial's parameters: comparisons (``< <= > >= == !=``) of a
parameter with a number or a quoted value, joined by ``and``/``or``/``not`` and parentheses.
It is parsed once, when the spec is read (the grammar of :mod:`campaigns.expressions`), so a
typo is refused before anything runs and each trial is checked on the parsed form; a new spec's
condition is also checked against the parameters' types and bounded in size
(:func:`check_condition`). A condition that still cannot be evaluated for a trial (a log
written before those checks) makes that trial wait for a person: it never stops the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from campaigns.expressions import (
    Compare,
    Expr,
    ExpressionError,
    Logic,
    Name,
    Neg,
    Not,
    Number,
    Text,
    check_condition_syntax,
    depth,
    evaluate,
    names,
    parse,
    unparse,
)

__all__ = ["MAX_CONDITION_CHARS", "MAX_CONDITION_DEPTH", "ApprovalPolicy", "Condition", "check_condition",
           "condition_holds",
           "names_in", "parse_condition"]

log = logging.getLogger("closedloop.approval")

#: The longest ``when`` condition a new spec may hold, and how deeply it may nest
#: (and/or/not/parentheses): far beyond any condition a person writes, far below what the
#: parser and the evaluator can hold.
MAX_CONDITION_CHARS = 1000
MAX_CONDITION_DEPTH = 20


def parse_condition(text: str) -> Expr:
    """Parse a ``when`` condition (grammar: :mod:`campaigns.expressions`); raises ValueError naming what is wrong."""
    try:
        tree = parse(text)
        check_condition_syntax(tree)
    except ExpressionError as exc:
        raise ValueError(f"cannot read condition {_short(text)} ({exc}): only comparisons joined by and/or/not "
                         "are allowed; write it like \"x1 > 8 or solvent == 'dmso'\"") from None
    return tree


def _short(text: str, limit: int = 80) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def check_condition(text: str, kinds: Mapping[str, Literal["number", "text"]], tree: Expr | None = None) -> None:
    """Check a new spec's ``when`` condition against its parameters; raises ValueError (one line).

    Every comparison reads at least one parameter and compares like with like: a number
    parameter (float, int, a choice of numbers) with numbers, a choice of texts with quoted
    values; ``-`` applies to numbers only; ``and``/``or``/``not`` join comparisons. The
    condition is at most ``MAX_CONDITION_CHARS`` long and ``MAX_CONDITION_DEPTH`` deep.

    Args:
        text: The condition.
        kinds: Each parameter's name and whether its values are numbers or texts.
        tree: The condition already parsed (the spec keeps it), to save parsing it again.
    """
    if len(text) > MAX_CONDITION_CHARS:
        raise ValueError(f"the condition is {len(text)} characters long; at most {MAX_CONDITION_CHARS}")
    tree = parse_condition(text) if tree is None else tree
    if depth(tree) > MAX_CONDITION_DEPTH:
        raise ValueError(f"the condition nests {depth(tree)} levels deep; at most {MAX_CONDITION_DEPTH}")
    _check_test(tree, kinds)


def _check_test(node: Expr, kinds: Mapping[str, str]) -> None:
    if isinstance(node, Logic):
        for value in node.values:
            _check_test(value, kinds)
    elif isinstance(node, Not):
        _check_test(node.operand, kinds)
    elif isinstance(node, Compare):
        operands = [node.left, *node.comparators]
        types = [_kind(o, kinds) for o in operands]
        if not names(node):
            raise ValueError(f"{unparse(node)[:80]!r} compares no parameter; compare a parameter with a value")
        for (a, ta), (b, tb) in zip(zip(operands, types), zip(operands[1:], types[1:]), strict=False):
            if ta != tb:
                raise ValueError(f"{unparse(node)[:80]!r} compares {_what(a, ta)} with {_what(b, tb)}; "
                                 "compare a number parameter with numbers, a choice of texts with quoted values")
    else:
        raise ValueError(f"{unparse(node)[:80]!r} is not a comparison; write comparisons like x1 > 8, "
                         "joined by and/or/not")


def _what(node: Expr, kind: str) -> str:
    shown = unparse(node)[:40]
    return f"{'parameter ' if isinstance(node, Name) else ''}{shown} ({'a number' if kind == 'number' else 'text'})"


def _kind(node: Expr, kinds: Mapping[str, str]) -> str:
    if isinstance(node, Name):
        if node.id not in kinds:
            raise ValueError(f"{node.id!r} is not a parameter of this campaign; use parameter names")
        return kinds[node.id]
    if isinstance(node, Number) and not isinstance(node.value, bool):
        return "number"
    if isinstance(node, Text):
        return "text"
    if isinstance(node, Number):
        raise ValueError(f"{node.value!r} is not a number or a quoted value")
    if isinstance(node, Neg):
        if _kind(node.operand, kinds) != "number":
            raise ValueError(f"{unparse(node)[:80]!r}: a minus sign applies to numbers only")
        return "number"
    raise ValueError(f"{unparse(node)[:80]!r}: compare a parameter with a number or a quoted value, "
                     "not with a condition")


def names_in(tree: Expr) -> set[str]:
    """The parameter names a condition reads."""
    return names(tree)


class Condition(str):
    """A ``when`` condition: its text (what the log keeps) and its parsed form (``tree``), read once."""

    tree: Expr

    @classmethod
    def parse(cls, text: str) -> Condition:
        """The condition read from its text; raises ValueError (one line) if it cannot be read."""
        condition = cls(text)
        condition.tree = parse_condition(text)
        return condition


def condition_holds(text: str, parameters: Mapping[str, Any]) -> bool:
    """Whether a trial's parameters satisfy a ``when`` condition."""
    return bool(evaluate(parse_condition(text), parameters))


class ApprovalPolicy(BaseModel):
    """When proposed trials wait for a person, and what happens if nobody answers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["never", "every_batch", "first_n", "when"] = "never"
    first_n: int | None = Field(default=None, ge=1)
    when: Annotated[str, AfterValidator(Condition.parse)] | None = None
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
                return self.condition is not None and bool(evaluate(self.condition, parameters))
            except (TypeError, ValueError, ArithmeticError, RecursionError, MemoryError) as exc:
                # Fail safe: a condition that cannot be evaluated asks a person rather than
                # letting the trial run unseen, or stopping the campaign.
                log.warning("approval.when cannot be evaluated for %s (%s: %s): the trial waits for a person",
                            dict(parameters), type(exc).__name__, " ".join(str(exc).split())[:200])
                return True
        return False

    @property
    def condition(self) -> Expr | None:
        """The ``when`` condition, parsed (None without one)."""
        return self.when.tree if isinstance(self.when, Condition) else None
