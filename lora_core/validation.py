"""Argument checks shared by every public function.

Each check raises a ``ValueError`` that names the parameter, repeats the value it was
given and says what is allowed, so a papermill traceback or a sweep summary tells the
user exactly which knob to turn.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{name}={value!r} is not allowed: expected {allowed}")


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """An integer (bools refused) within [low, high]."""
    bounds = _bounds_text(low, high)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _fail(name, value, f"an integer{bounds}")
    if (low is not None and value < low) or (high is not None and value > high):
        _fail(name, value, f"an integer{bounds}")
    return int(value)


def check_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
) -> float:
    """A finite real number within the bounds (``low`` exclusive when asked)."""
    lo = "" if low is None else (f" >= {low}" if low_inclusive else f" > {low}")
    hi = "" if high is None else f" <= {high}"
    allowed = f"a finite number{lo}{' and' if lo and hi else ''}{hi}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        _fail(name, value, allowed)
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    if too_low or (high is not None and value > high):
        _fail(name, value, allowed)
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """True or False itself: 1, 0 and "yes" are refused, so a typo cannot read as a switch."""
    if not isinstance(value, bool):
        _fail(name, value, "True or False")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """One of a fixed set of values."""
    choices = list(choices)
    if value not in choices:
        _fail(name, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


def _bounds_text(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    if high is not None:
        return f" <= {high}"
    return ""
