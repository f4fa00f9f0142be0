"""Plain records the executor works with, apart from the ORM (the test harness shares them)."""

from __future__ import annotations

import json
import re
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .. import jsonenc
from ..errors import NonRetriableError


@dataclass
class StepRecord:
    step_id: str
    kind: str
    status: str
    output: Any = None
    error: dict | None = None
    attempts: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    scheduled_at: datetime | None = None
    stored: bool = field(default=False, compare=False)  # a row exists already


class StepOutputError(NonRetriableError):
    """A step (or a handler) returned a value that is not JSON."""


def json_round_trip(value: Any, *, what: str) -> Any:
    """Return ``value`` as it reads back from the database, or raise ``StepOutputError``."""
    try:
        text = jsonenc.dumps(value)
    except (TypeError, ValueError) as exc:
        raise StepOutputError(
            f"{what} returned a value that is not JSON ({exc}); return dicts, lists, strings, "
            "numbers, booleans or None (convert datetimes, Decimals and model instances first)"
        ) from None
    check_storable(text, what=f"{what} returned a value that")
    return json.loads(text)


_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")  # an escaped NUL, not an escaped backslash + "u0000"


def check_storable(json_text: str, *, what: str) -> None:
    """PostgreSQL's jsonb cannot hold the NUL character; refuse it on every database."""
    if _NUL.search(json_text):
        raise StepOutputError(f"{what} contains a NUL character (\\u0000), which the database cannot store")


def error_dict(exc: BaseException) -> dict[str, str]:
    return {
        "name": type(exc).__name__,
        "message": str(exc),
        "stack": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }
