"""Durations: a ``timedelta`` or a string such as ``"30s"``, ``"2d"``, ``"1h30m"``."""

from __future__ import annotations

import re
from datetime import timedelta

from .errors import WorkflowDefinitionError

_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|w|d|h|m|s)")

Duration = timedelta | str


def parse_duration(value: object, *, what: str = "duration") -> timedelta:
    """Return ``value`` as a ``timedelta`` or raise an error that names what was wrong."""
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise WorkflowDefinitionError(f"{what} must not be negative, got {value!r}")
        return value
    if isinstance(value, bool) or isinstance(value, (int, float)):
        raise WorkflowDefinitionError(
            f"{what}: a bare number ({value!r}) is ambiguous; pass a timedelta or a string "
            f'with a unit such as "{value}s", "{value}m" or "{value}d"'
        )
    if not isinstance(value, str):
        raise WorkflowDefinitionError(
            f"{what} must be a timedelta or a string like \"30s\", got {type(value).__name__}"
        )
    text = value.strip().lower().replace(" ", "")
    parts = _PART.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise WorkflowDefinitionError(
            f"{what}: cannot read {value!r}; use a number with a unit (ms, s, m, h, d, w), "
            f'for example "30s", "2d" or "1h30m"'
        )
    try:
        return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))
    except OverflowError:
        raise WorkflowDefinitionError(f"{what}: {value!r} is too long a duration") from None
