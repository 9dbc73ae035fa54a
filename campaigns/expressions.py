"""One small expression grammar for everything a campaign file writes as a formula.

Parameter constraints (``x1 + 2*x2 <= 10``), outcome constraints (``purity >= 0.9``) and
approval conditions (``temperature > 80 or solvent == 'dmso'``) are read by one tokenizer and
one parser, once, when the spec is validated; the spec keeps the parsed form. Each use then
checks the shape it accepts (:func:`linear`, :func:`outcome`, :func:`check_condition_syntax`)::

    condition  := conjunction ("or" conjunction)*
    conjunction:= negation ("and" negation)*
    negation   := "not" negation | comparison
    comparison := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)*
    sum        := term (("+" | "-") term)*
    term       := ("-" | "+") term | NUMBER ["*"] NAME | NUMBER | NAME | TEXT | True | False
                | "(" condition ")"

Numbers and quoted texts are written as in Python (``1e-3``, ``1_000``, ``'dmso'``); ``2x1``
means ``2*x1``, as constraints have always allowed. It is not Python: nothing is evaluated
but comparisons of parameters with values.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Compare", "Expr", "ExpressionError", "Logic", "Name", "Not", "Number", "Sum", "Text",
           "check_condition_syntax", "depth", "evaluate", "linear", "names", "outcome", "parse", "unparse"]


class ExpressionError(ValueError):
    """An expression that cannot be read, or has not the shape its place needs (one line)."""


@dataclass(frozen=True)
class Name:
    """A parameter (or, in an outcome constraint, a metric)."""

    id: str


@dataclass(frozen=True)
class Number:
    """A number as written (``True``/``False`` read as Python reads them)."""

    value: int | float | bool


@dataclass(frozen=True)
class Text:
    """A quoted value."""

    value: str


@dataclass(frozen=True)
class Neg:
    """``-operand``."""

    operand: Expr


@dataclass(frozen=True)
class Pos:
    """``+operand``."""

    operand: Expr


@dataclass(frozen=True)
class Product:
    """``number * name`` (or ``number name``)."""

    coefficient: float | int
    name: Name


@dataclass(frozen=True)
class Sum:
    """``left + right`` or ``left - right``."""

    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Compare:
    """``a < b <= c``: every neighbouring pair holds."""

    left: Expr
    ops: tuple[str, ...]
    comparators: tuple[Expr, ...]


@dataclass(frozen=True)
class Not:
    """``not operand``."""

    operand: Expr


@dataclass(frozen=True)
class Logic:
    """``a and b and c`` or ``a or b``."""

    op: str
    values: tuple[Expr, ...]


Expr = Name | Number | Text | Neg | Pos | Product | Sum | Compare | Not | Logic

_DIGITS = r"\d(?:_?\d)*"
_NUMBER = (rf"0[xX](?:_?[0-9a-fA-F])+|0[oO](?:_?[0-7])+|0[bB](?:_?[01])+"
           rf"|(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})(?:[eE][-+]?{_DIGITS})?")
_TOKEN = re.compile(rf"""\s*(?:(?P<number>{_NUMBER})|(?P<name>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<text>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")|(?P<op><=|>=|==|!=|<|>|\+|-|\*|\(|\)))""", re.VERBOSE)
_COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")
_WORDS = {"and", "or", "not"}
#: How deeply parentheses may nest (Python's own parser stops at 200).
MAX_PARENTHESES = 100
_OPS: dict[str, Callable[[Any, Any], Any]] = {"<": operator.lt, "<=": operator.le, ">": operator.gt,
                                                ">=": operator.ge, "==": operator.eq, "!=": operator.ne}


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip():
                raise ExpressionError(f"unexpected {text[pos:].strip()[:20]!r}")
            break
        kind = m.lastgroup or ""
        value = m[kind]
        if kind == "name" and value in _WORDS:
            kind = "op"
        out.append((kind, value))
        pos = m.end()
    return out


def _number(token: str) -> int | float:
    if token[:2].lower() in ("0x", "0o", "0b"):
        return int(token, 0)
    if any(c in token for c in ".eE"):
        return float(token.replace("_", ""))
    return int(token.replace("_", ""))


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0
        self.parens = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str) -> bool:
        token = self.peek()
        if token is not None and token[0] == "op" and token[1] == value:
            self.pos += 1
            return True
        return False

    def condition(self) -> Expr:
        values = [self.conjunction()]
        while self.take("or"):
            values.append(self.conjunction())
        return values[0] if len(values) == 1 else Logic("or", tuple(values))

    def conjunction(self) -> Expr:
        values = [self.negation()]
        while self.take("and"):
            values.append(self.negation())
        return values[0] if len(values) == 1 else Logic("and", tuple(values))

    def negation(self) -> Expr:
        count = 0
        while self.take("not"):  # iterative: a long chain of nots must not exhaust the stack here
            count += 1
        node = self.comparison()
        for _ in range(count):
            node = Not(node)
        return node

    def comparison(self) -> Expr:
        left = self.sum()
        ops: list[str] = []
        comparators: list[Expr] = []
        while (token := self.peek()) is not None and token[0] == "op" and token[1] in _COMPARISONS:
            self.pos += 1
            ops.append(token[1])
            comparators.append(self.sum())
        return Compare(left, tuple(ops), tuple(comparators)) if ops else left

    def sum(self) -> Expr:
        node = self.term()
        while (token := self.peek()) is not None and token[0] == "op" and token[1] in "+-":
            self.pos += 1
            node = Sum(token[1], node, self.term())
        return node

    def term(self) -> Expr:
        signs: list[str] = []
        while (token := self.peek()) is not None and token[0] == "op" and token[1] in ("+", "-"):
            self.pos += 1
            signs.append(token[1])
        node = self.atom()
        for sign in reversed(signs):
            node = Neg(node) if sign == "-" else Pos(node)
        return node

    def atom(self) -> Expr:
        token = self.peek()
        if token is None:
            raise ExpressionError("it ends too early")
        kind, value = token
        self.pos += 1
        if kind == "number":
            number = _number(value)
            star = self.take("*")
            following = self.peek()
            if following is not None and following[0] == "name" and value[:2].lower() not in ("0x", "0o", "0b"):
                self.pos += 1
                return Product(number, Name(following[1]))
            if star:
                raise ExpressionError(f"'{value} *' must be followed by a parameter name")
            return Number(number)
        if kind == "name":
            return Number(value == "True") if value in ("True", "False") else Name(value)
        if kind == "text":
            return Text(ast.literal_eval(value))
        if value == "(":
            self.parens += 1
            if self.parens > MAX_PARENTHESES:
                raise ExpressionError(f"parentheses nest more than {MAX_PARENTHESES} deep")
            node = self.condition()
            if not self.take(")"):
                raise ExpressionError("a '(' is not closed")
            self.parens -= 1
            return node
        raise ExpressionError(f"unexpected {value!r}")


def parse(text: str) -> Expr:
    """Read an expression of the grammar above.

    Raises:
        ExpressionError: it cannot be read (the message says where, in one line).
    """
    if not isinstance(text, str):
        raise ExpressionError(f"{text!r} is not text")
    parser = _Parser(text)
    if not parser.tokens:
        raise ExpressionError("it is empty")
    try:
        node = parser.condition()
    except RecursionError:
        raise ExpressionError(f"it nests too deeply (parentheses at most {MAX_PARENTHESES} deep)") from None
    if parser.peek() is not None:
        raise ExpressionError(f"unexpected {parser.peek()[1]!r}")  # type: ignore[index]
    return node


def _children(node: Expr) -> tuple[Expr, ...]:
    if isinstance(node, Neg | Pos | Not):
        return (node.operand,)
    if isinstance(node, Product):
        return (node.name,)
    if isinstance(node, Sum):
        return (node.left, node.right)
    if isinstance(node, Compare):
        return (node.left, *node.comparators)
    if isinstance(node, Logic):
        return node.values
    return ()


def _walk(node: Expr) -> list[Expr]:
    out, stack = [], [node]
    while stack:  # iterative: conditions from old logs may nest deeper than the recursion limit
        current = stack.pop()
        out.append(current)
        stack.extend(_children(current))
    return out


def names(node: Expr) -> set[str]:
    """The names an expression reads."""
    return {n.id for n in _walk(node) if isinstance(n, Name)}


def depth(node: Expr) -> int:
    """How deeply comparisons, ``and``/``or``/``not`` and signs nest."""
    deepest, stack = 0, [(node, 0)]
    while stack:
        current, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(current, Logic | Not | Neg | Compare):
            stack.extend((child, level + 1) for child in _children(current))
    return deepest


def unparse(node: Expr) -> str:
    """The expression written back (for messages)."""
    if isinstance(node, Name):
        return node.id
    if isinstance(node, Number | Text):
        return repr(node.value)
    if isinstance(node, Neg | Pos):
        return ("-" if isinstance(node, Neg) else "+") + unparse(node.operand)
    if isinstance(node, Product):
        return f"{node.coefficient!r}*{node.name.id}"
    if isinstance(node, Sum):
        return f"{unparse(node.left)} {node.op} {unparse(node.right)}"
    if isinstance(node, Compare):
        return " ".join([unparse(node.left), *(f"{o} {unparse(c)}" for o, c in zip(node.ops, node.comparators,
                                                                               strict=True))])
    if isinstance(node, Not):
        return f"not {unparse(node.operand)}"
    return f" {node.op} ".join(f"({unparse(v)})" if isinstance(v, Logic) else unparse(v) for v in node.values)


def check_condition_syntax(node: Expr) -> None:
    """What any approval condition may hold: comparisons of names, numbers and quoted values
    (with a minus sign), joined by ``and``/``or``/``not``; no arithmetic.

    Raises:
        ExpressionError: naming what is not allowed.
    """
    for n in _walk(node):
        if isinstance(n, Sum | Product | Pos):
            raise ExpressionError(f"{unparse(n)[:40]!r}: arithmetic is not allowed here")


def evaluate(node: Expr, values: Mapping[str, Any]) -> Any:
    """An approval condition's value for a trial's parameters, as Python would compute it.

    A comparison that Python cannot make (a number with a text) is not satisfied; a minus sign
    on a text raises ``TypeError``, and a chain nested past the recursion limit ``RecursionError``:
    the caller decides (the approval policy asks a person).
    """
    if isinstance(node, Logic):
        results = (evaluate(v, values) for v in node.values)
        return all(results) if node.op == "and" else any(results)
    if isinstance(node, Not):
        return not evaluate(node.operand, values)
    if isinstance(node, Neg):
        return -evaluate(node.operand, values)
    if isinstance(node, Compare):
        left = evaluate(node.left, values)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = evaluate(comparator, values)
            try:
                if not _OPS[op](left, right):
                    return False
            except TypeError:
                return False
            left = right
        return True
    if isinstance(node, Name):
        return values.get(node.id)
    if isinstance(node, Number | Text):
        return node.value
    raise ExpressionError(f"{unparse(node)!r} cannot be evaluated")  # check_condition_syntax keeps us from here


def _linear_term(node: Expr, sign: float, out: dict[str, float]) -> None:
    # Terms as constraints have always been written: [+|-] [NUMBER [*]] NAME, each after the
    # first with its sign; signs may repeat (``x1 - -2*x2``).
    while isinstance(node, Neg | Pos):
        sign = -sign if isinstance(node, Neg) else sign
        node = node.operand
    if isinstance(node, Product):
        out[node.name.id] = out.get(node.name.id, 0.0) + sign * float(node.coefficient)
    elif isinstance(node, Name) and node.id not in ("True", "False"):
        out[node.id] = out.get(node.id, 0.0) + sign
    else:
        raise ExpressionError("each term is a parameter with an optional number before it")


def linear(node: Expr) -> tuple[dict[str, float], str, float]:
    """A linear constraint's ``(coefficients, "<=" | ">=", bound)``.

    Raises:
        ExpressionError: not ``terms <= number`` or ``terms >= number``.
    """
    if not (isinstance(node, Compare) and len(node.ops) == 1 and node.ops[0] in ("<=", ">=")):
        raise ExpressionError("expected one comparison, <= or >=")
    bound = _signed_number(node.comparators[0])
    left, stack = node.left, []
    while isinstance(left, Sum):  # a left-leaning chain: a + b - c
        stack.append((left.right, -1.0 if left.op == "-" else 1.0))
        left = left.left
    if isinstance(left, Neg | Pos) and isinstance(left.operand, Sum):
        raise ExpressionError("each term is a parameter with an optional number before it")
    terms = [(left, 1.0), *reversed(stack)]
    coefficients: dict[str, float] = {}
    for term, sign in terms:
        _linear_term(term, sign, coefficients)
    return coefficients, node.ops[0], bound


def _signed_number(node: Expr) -> float:
    sign = 1.0
    if isinstance(node, Neg | Pos):
        sign = -1.0 if isinstance(node, Neg) else 1.0
        node = node.operand
    if not isinstance(node, Number) or isinstance(node.value, bool):
        raise ExpressionError("the right-hand side must be a number")
    return sign * float(node.value)


def outcome(node: Expr) -> tuple[str, str, float]:
    """An outcome constraint's ``(metric, "<=" | ">=", bound)``.

    Raises:
        ExpressionError: not ``metric <= number`` or ``metric >= number``.
    """
    if not (isinstance(node, Compare) and len(node.ops) == 1 and node.ops[0] in ("<=", ">=")
            and isinstance(node.left, Name)):
        raise ExpressionError("expected a metric, <= or >=, and a number")
    return node.left.id, node.ops[0], _signed_number(node.comparators[0])
