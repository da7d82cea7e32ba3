"""Argument checks shared across the package, each written once: they raise a ValueError naming the argument,
what it was and what to give instead. Imports nothing else of the package."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_positive_int", "check_probability", "check_positive_number", "is_positive_int"]


def is_positive_int(value: Any) -> bool:
    """An int >= 1 (bools are not ints here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_positive_int(name: str, value: Any, *, optional: bool = False, hint: str = "use a positive integer") -> Any:
    """`value` if it is an int >= 1 (or None with `optional`), else ``ValueError("name=value; hint.")``."""
    if (optional and value is None) or is_positive_int(value):
        return value
    raise ValueError(f"{name}={value!r}; {hint}.")


def check_probability(name: str, p: Any) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}={p!r}; use a probability in [0, 1] (0 turns it off).")


def check_positive_number(name: str, value: Any, hint: str = "use a positive number") -> float:
    """A finite number > 0, as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r}; {hint}.")
    return float(value)
