"""Argument validation, one way for the whole project: a value is checked against an `Interval` or `Options`
spec, and a bad one raises ``ValueError("<name> must be <spec>, got <value>")``.

``bilevel`` and ``unlearning`` both use this module (``unlearning`` imports ``bilevel``); ``attacks`` keeps
its own ``attacks.validate`` because it must not import ``bilevel``.

    positive_int(5, "steps")                     -> 5
    positive_int(0, "steps")                     -> ValueError: steps must be an integer >= 1, got 0
    number(0.5, "gamma", allow_zero=True)        -> 0.5
    require(0.3, "momentum", Interval(float, 0, 1, closed="left"))
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Interval:
    """A number of type ``kind`` (int or float) in an interval; ``closed`` says which ends belong to it
    (``"both"``, ``"left"``, ``"right"``, ``"neither"``). Non-finite numbers and bools never belong."""

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "both"
    allow_none: bool = False

    def check(self, value: Any) -> bool:
        if value is None:
            return self.allow_none
        if isinstance(value, bool):
            return False
        if self.kind is int and not isinstance(value, numbers.Integral):
            return False
        if self.kind is float and not isinstance(value, numbers.Real):
            return False
        if not math.isfinite(value):
            return False
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.low is not None and (value < self.low or (value == self.low and not left)):
            return False
        return not (self.high is not None and (value > self.high or (value == self.high and not right)))

    def describe(self) -> str:
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        lb = "[" if self.closed in ("both", "left") and self.low is not None else "("
        rb = "]" if self.closed in ("both", "right") and self.high is not None else ")"
        text = f"{'an int' if self.kind is int else 'a float'} in {lb}{lo}, {hi}{rb}"
        return text + (" or None" if self.allow_none else "")


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values (compared by value and type: ``1`` is not ``True``)."""

    values: tuple

    def check(self, value: Any) -> bool:
        return any(value == v and type(value) is type(v) for v in self.values)

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


BOOL = Options((True, False))


def require(value: Any, name: str, spec: Interval | Options) -> Any:
    """``value`` if ``spec.check(value)``, else ``ValueError("<name> must be <spec>, got <value>")``."""
    if not spec.check(value):
        raise ValueError(f"{name} must be {spec.describe()}, got {value!r}")
    return value


def positive_int(value: Any, name: str, *, allow_zero: bool = False) -> int:
    """An integer ≥ 1 (≥ 0 with ``allow_zero``), else ``ValueError`` naming ``name``."""
    lo = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def number(value: Any, name: str, *, integer: bool = False, allow_zero: bool = False) -> float:
    """A finite number > 0 (≥ 0 with ``allow_zero``; an integer with ``integer``), else ``ValueError``."""
    ok_type = isinstance(value, numbers.Integral) if integer else isinstance(value, numbers.Real)
    if isinstance(value, bool) or not ok_type or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return value


def one_of(value: Any, name: str, choices: tuple) -> Any:
    """``value`` if it is one of ``choices``, else ``ValueError`` listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def nonnegative(value: Any, name: str) -> float:
    """A finite real number ≥ 0 (a tolerance, a damping), else ``ValueError`` naming ``name``."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (real and value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value
