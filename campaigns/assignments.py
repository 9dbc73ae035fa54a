"""``NAME=VALUE``: one reader for what people type, typed by the parameter it names.

Every place that takes a value for a parameter (an edit in an approval, from the CLI, the
Prefect form or the inbox; a ``--fix``) reads it here, so ``x=2`` means the same everywhere:
a float parameter takes a finite number, an int parameter a whole number, a choice one of its
values, and ``true``/``false`` are no numbers. Simulator options (``--option KEY=VALUE``) are
split here too; their values are read as JSON and typed by the simulator's options model.

Every mistake is a ``ValueError`` whose message is one line naming the item.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from campaigns.spec import ChoiceParameter, FloatParameter, IntParameter

__all__ = ["option_value", "parameter_value", "parameter_values", "split_assignment", "split_assignments"]

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_SHOWN = 60


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(str(text).split())
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def split_assignment(item: str) -> tuple[str, str]:
    """``"x1=2.5"`` -> ``("x1", "2.5")``; the value is everything after the first ``=``.

    Raises:
        ValueError: no ``=``, or no valid name before it.
    """
    if not isinstance(item, str):
        raise ValueError(f"{_show(item)}: expected NAME=VALUE")  # noqa: TRY004 - a user's mistake: one ValueError
    name, sep, value = item.partition("=")
    name = name.strip()
    if not sep:
        raise ValueError(f"{_show(item)}: expected NAME=VALUE")
    if not name:
        raise ValueError(f"{_show(item)}: no name before '='; expected NAME=VALUE")
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"{_show(name)} is not a name (letters, digits and _, not first)")
    return name, value.strip()


def split_assignments(items: Iterable[str]) -> dict[str, str]:
    """Several ``NAME=VALUE`` items as a mapping (a name given twice keeps its last value)."""
    return dict(split_assignment(item) for item in items)


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("true/false is not a number")  # noqa: TRY004
    if isinstance(value, int | float):
        number = float(value) if not isinstance(value, int) or abs(value) < 2 ** 1023 else math.inf
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError("not a number") from None
    else:
        raise ValueError("not a number")  # noqa: TRY004
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


def parameter_value(parameter: FloatParameter | IntParameter | ChoiceParameter, value: Any) -> float | int | str:
    """A value (text as typed, or a JSON scalar) typed by the parameter.

    Float: a finite number. Int: a whole number (``3`` or ``3.0``). Choice: one of its values,
    matched by its text (``dmso``, ``2``) or, for a choice of numbers, by number. Bounds are
    not checked here: a value outside them is the caller's refusal, with the caller's remedy.

    Raises:
        ValueError: one line naming the parameter, the value and what it takes.
    """
    name = parameter.name
    if isinstance(parameter, ChoiceParameter):
        for v in parameter.values:
            if not isinstance(value, bool) and (str(v) == str(value).strip() or value == v):
                return v
        if not isinstance(parameter.values[0], str) and not isinstance(value, bool):
            try:
                number = _number(value)
            except ValueError:
                number = math.nan
            for v in parameter.values:
                if number == v:
                    return v
        shown = ", ".join(map(str, parameter.values[:10])) + (", ..." if len(parameter.values) > 10 else "")
        raise ValueError(f"{name}={_show(value)}: not one of its values ({shown})")
    try:
        number = _number(value)
    except ValueError as exc:
        what = "a whole number" if isinstance(parameter, IntParameter) else "a finite number"
        raise ValueError(f"{name}={_show(value)}: {exc}; {name} takes {what}") from None
    if isinstance(parameter, IntParameter):
        if not number.is_integer():
            raise ValueError(f"{name}={_show(value)}: not a whole number; {name} is an int parameter")
        return int(number)
    return number


def parameter_values(
    parameters: Sequence[FloatParameter | IntParameter | ChoiceParameter], values: Mapping[str, Any]
) -> dict[str, float | int | str]:
    """Each ``name: value`` typed by the parameter of that name.

    Raises:
        ValueError: an unknown parameter (the message lists them), or a value it does not take.
    """
    by_name = {p.name: p for p in parameters}
    out: dict[str, float | int | str] = {}
    for name, value in values.items():
        p = by_name.get(name)
        if p is None:
            raise ValueError(f"{_show(name)} is not a parameter of this campaign (parameters: {', '.join(by_name)})")
        out[name] = parameter_value(p, value)
    return out


def option_value(text: str) -> Any:
    """A simulator option's value: JSON when it reads as JSON (``0.1``, ``[1, 2]``, ``true``), else the text.

    The simulator's options model types and checks it (e.g. ``noise_sd`` must be a number).

    Raises:
        ValueError: a number too large to hold (``1e400``), or NaN/Infinity.
    """
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    if isinstance(value, float) and not math.isfinite(value) or (
            isinstance(value, str) and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity")):
        raise ValueError(f"{_show(text)}: not a finite number")
    return value
