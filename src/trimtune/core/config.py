"""Validation helpers for config dataclasses: each error names the field, the value and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Iterable


class ConfigError(ValueError):
    """A config field holds a value that is not allowed."""


def check_positive_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")


def check_fraction(name: str, value, *, closed_right: bool = False) -> None:
    """value in [0, 1) (or [0, 1] with closed_right)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value and (
        value <= 1 if closed_right else value < 1
    )
    if not ok:
        allowed = "[0, 1]" if closed_right else "[0, 1)"
        raise ConfigError(f"{name} must be a number in {allowed}, got {value!r}")


def check_choice(name: str, value, allowed: Iterable) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
