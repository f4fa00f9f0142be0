"""Durations and moments, read the way Inngest's examples write them.

A duration is a ``timedelta`` or a string such as ``"30s"``, ``"1h30m"``, ``"3 hours"``
or ``"1 hour 30 minutes"`` (Inngest reads them with the ``ms`` npm library, whose units
and spellings these are). A moment, for ``sleep_until``, is an aware ``datetime``, an ISO
8601 string with an offset or ``Z``, or a date (midnight UTC, as JavaScript's ``Date``).
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from datetime import timezone as dt_timezone

from .errors import WorkflowDefinitionError

Duration = timedelta | str

_SPELLINGS: dict[timedelta, tuple[str, ...]] = {
    timedelta(milliseconds=1): ("ms", "msec", "msecs", "millisecond", "milliseconds"),
    timedelta(seconds=1): ("s", "sec", "secs", "second", "seconds"),
    timedelta(minutes=1): ("m", "min", "mins", "minute", "minutes"),
    timedelta(hours=1): ("h", "hr", "hrs", "hour", "hours"),
    timedelta(days=1): ("d", "day", "days"),
    timedelta(weeks=1): ("w", "wk", "wks", "week", "weeks"),
    timedelta(days=365.25): ("y", "yr", "yrs", "year", "years"),  # ms's year
}
_UNITS: dict[str, timedelta] = {name: length for length, names in _SPELLINGS.items() for name in names}

_NUMBER = r"(?:\d+(?:\.\d+)?|\.\d+)"
_PART = re.compile(rf"\s*(?P<number>{_NUMBER})\s*(?P<unit>[a-z]+)\s*", re.IGNORECASE)
_BARE = re.compile(rf"\s*{_NUMBER}\s*")
_HELP = (
    "use numbers with units: ms, s, m (minutes), h, d, w, y, or spelled out "
    "(milliseconds, seconds, minutes, hours, days, weeks, years; also msec, sec, min, hr, "
    'wk, yr); for example "30s", "1h30m", "3 hours", "1 hour 30 minutes"'
)


def parse_duration(value: object, *, what: str = "duration") -> timedelta:
    """Return ``value`` as a ``timedelta`` or raise an error that names what was wrong."""
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise WorkflowDefinitionError(f"{what} must not be negative, got {value!r}")
        return value
    if isinstance(value, (int, float)) or (isinstance(value, str) and _BARE.fullmatch(value)):
        raise _bare_number(value, what)
    if not isinstance(value, str):
        raise WorkflowDefinitionError(
            f"{what} must be a timedelta or a string like \"30s\" or \"3 hours\", "
            f"got {type(value).__name__}"
        )
    if value.strip().startswith("-"):
        raise WorkflowDefinitionError(f"{what} must not be negative, got {value!r}")
    try:
        return sum((_UNITS[unit] * float(number) for number, unit in _parts(value, what)), timedelta(0))
    except OverflowError:
        raise WorkflowDefinitionError(f"{what}: {value!r} is too long a duration") from None


def _bare_number(value: object, what: str) -> WorkflowDefinitionError:
    shown = str(int(value)) if isinstance(value, bool) else str(value).strip()  # not "Trues"
    return WorkflowDefinitionError(
        f"{what}: a bare number ({value!r}) is ambiguous; pass a timedelta or a string "
        f'with a unit such as "{shown}s", "{shown}m" or "{shown} days"'
    )


def _parts(text: str, what: str) -> list[tuple[str, str]]:
    """The (number, unit) pairs that make up all of ``text``, units lower-cased."""
    parts: list[tuple[str, str]] = []
    position = 0
    while position < len(text) or not parts:
        match = _PART.match(text, position)
        if match is None:
            raise WorkflowDefinitionError(f"{what}: cannot read {text!r}; {_HELP}")
        unit = match["unit"].lower()
        if unit not in _UNITS:
            raise WorkflowDefinitionError(f"{what}: unknown unit {match['unit']!r} in {text!r}; {_HELP}")
        parts.append((match["number"], unit))
        position = match.end()
    return parts


_MOMENT_EXAMPLE = '"2024-01-01T10:00:00Z" or "2024-01-01T10:00:00+02:00"'


def parse_moment(value: object, *, what: str) -> datetime:
    """Return ``value`` as an aware ``datetime`` (for ``sleep_until``) or raise an error.

    A date, or a date-only string such as ``"2024-01-01"``, is midnight UTC, as in
    JavaScript's ``Date``. A time without a timezone is refused: guessing one would
    move the wake-up by hours depending on the server's settings.
    """
    if isinstance(value, str):
        return _moment_from_text(value, what)
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise WorkflowDefinitionError(
                f"{what}: the datetime {value!r} has no timezone; pass an aware datetime "
                "(django.utils.timezone.now() + ..., or tzinfo=datetime.timezone.utc)"
            )
        return value
    if isinstance(value, date):
        return datetime.combine(value, time(), tzinfo=dt_timezone.utc)
    raise WorkflowDefinitionError(
        f"{what}: expected an aware datetime, a date or an ISO 8601 string such as "
        f"{_MOMENT_EXAMPLE}, got {type(value).__name__}"
    )


def _moment_from_text(value: str, what: str) -> datetime:
    text = value.strip()
    try:
        return datetime.combine(date.fromisoformat(text), time(), tzinfo=dt_timezone.utc)
    except ValueError:
        pass  # not a date alone: read it as a date and time below
    if text[-1:] in ("z", "Z"):
        text = text[:-1] + "+00:00"  # RFC 3339 allows a lower-case "z"; fromisoformat does not
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise WorkflowDefinitionError(
            f"{what}: {value!r} is not an ISO 8601 datetime; write it like {_MOMENT_EXAMPLE}"
        ) from None
    if moment.utcoffset() is None:
        raise WorkflowDefinitionError(
            f'{what}: the datetime {value!r} has no timezone; add "Z" (UTC) or an offset '
            f'such as "+02:00", as in {_MOMENT_EXAMPLE}'
        )
    return moment


def format_duration(value: timedelta | None) -> str:
    """``850 ms``, ``12.3 s``, ``4m 05s``, ``2h 03m``, ``3d 4h``; ``""`` for None."""
    if value is None:
        return ""
    seconds = value.total_seconds()
    if seconds < 0:
        return "-" + format_duration(-value)
    if seconds < 0.001:
        return "<1 ms" if seconds > 0 else "0 ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d {whole % 86400 // 3600}h"
