"""Argument checks shared by reprolib's public functions: one wording for every error.

A learner who mistypes a bit-width should read what went wrong and what to type instead, not a
stack trace from deep inside torch. Each check names the argument, shows the bad value (``repr``
and type) and says what is allowed, and raises ``TypeError`` for a value of the wrong kind,
``ValueError`` for one of the right kind out of range::

    >>> check_int("bits", 2.5, low=1, high=8)
    Traceback (most recent call last):
    TypeError: bits must be an int in 1..8, got 2.5 (float)

The checks look at Python scalars and tensor metadata only (dtype, shape), never at a tensor's
elements, so they cost nothing next to the work they guard.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from torch import Tensor

__all__ = ["got", "check_int", "check_real", "check_bool", "check_choice", "check_ints", "check_floating"]


def got(value: Any) -> str:
    """``"got <repr> (<type>)"``, the end of every message."""
    return f"got {value!r} ({type(value).__name__})"


def _int_range(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f" in {low}..{high}"
    if low is not None:
        return f" >= {low}"
    return f" <= {high}" if high is not None else ""


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int`` in ``low..high`` (inclusive; ``None``: unbounded).

    Raises:
        TypeError: not an integer (``bool``, ``float`` and ``str`` included).
        ValueError: outside ``low..high``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int{_int_range(low, high)}, {got(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be an int{_int_range(low, high)}, {got(value)}")
    return int(value)


def check_real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite ``float`` in the interval given by ``low``/``high``.

    ``low_open``/``high_open`` exclude the bound itself: ``check_real("lr", lr, low=0, low_open=True)``
    asks for a positive number.

    Raises:
        TypeError: not a real number (``bool`` and ``str`` included).
        ValueError: NaN, infinite, or outside the interval.
    """
    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    if low is not None and high is not None:
        allowed = f"a finite number in {lo}, {hi}"
    elif low is not None:
        allowed = f"a finite number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        allowed = f"a finite number {'<' if high_open else '<='} {high:g}"
    else:
        allowed = "a finite number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {allowed}, {got(value)}")
    v = float(value)
    bad = not math.isfinite(v)
    if low is not None:
        bad = bad or v < low or (low_open and v == low)
    if high is not None:
        bad = bad or v > high or (high_open and v == high)
    if bad:
        raise ValueError(f"{name} must be {allowed}, {got(value)}")
    return v


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False`` (not ``0``/``1``, not a string); else a ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, {got(value)}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``; else a ``ValueError`` listing them."""
    if isinstance(value, (list, dict, set)) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, {got(value)}")
    return value


def check_ints(
    name: str,
    values: Any,
    *,
    low: int | None = None,
    high: int | None = None,
    increasing: bool = False,
) -> tuple[int, ...]:
    """A non-empty sequence of ints in ``low..high`` as a tuple; ``increasing`` also forbids
    unsorted and repeated entries (a list of choices whose order matters).

    Raises:
        TypeError: not a sequence (a ``str`` or a single number included), or an entry not an int.
        ValueError: empty, an entry out of range, or (``increasing``) not strictly increasing.
    """
    kind = f"{name} must be a sequence of ints{_int_range(low, high)}, {got(values)}"
    if isinstance(values, (str, bytes)) or not (isinstance(values, Sequence) or hasattr(values, "tolist")):
        raise TypeError(kind)
    items = values.tolist() if hasattr(values, "tolist") else list(values)   # numpy arrays, tensors
    if not isinstance(items, list):
        raise TypeError(kind)
    if not items:
        raise ValueError(f"{name} must name at least one int{_int_range(low, high)}, {got(values)}")
    out = tuple(check_int(f"{name}[{i}]", v, low=low, high=high) for i, v in enumerate(items))
    if increasing and any(a >= b for a, b in pairwise(out)):
        raise ValueError(f"{name} must be strictly increasing (sorted, no repeats), got {out!r}")
    return out


def check_floating(name: str, value: Any) -> Tensor:
    """``value`` if it is a floating-point tensor; else a ``TypeError`` naming its type or dtype."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value
