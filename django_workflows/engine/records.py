"""Plain records the executor works with, apart from the ORM (the test harness shares them)."""

from __future__ import annotations

import json
import re
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .. import conf, jsonenc
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
    # When the attempt running now began: its Attempt row is written with the checkpoint
    # that ends it (then this goes back to None).
    attempt_started_at: datetime | None = field(default=None, compare=False)


class StepOutputError(NonRetriableError):
    """A step (or a handler) returned a value that is not JSON."""


def json_round_trip(value: Any, *, what: str) -> Any:
    """Return ``value`` as it reads back from the database, or raise ``StepOutputError``.

    The output must be JSON and at most ``MAX_STEP_OUTPUT_BYTES`` long: every resume
    loads it again, so a huge output would slow every later step of the run.
    """
    try:
        text = jsonenc.dumps(value)
    except (TypeError, ValueError) as exc:
        raise StepOutputError(
            f"{what} returned a value that is not JSON ({exc}); return dicts, lists, strings, "
            "numbers, booleans or None (convert datetimes, Decimals and model instances first)"
        ) from None
    except RecursionError:
        raise StepOutputError(f"{what} returned a value nested too deeply to store as JSON") from None
    limit = int(conf.get("MAX_STEP_OUTPUT_BYTES"))
    if len(text) > limit:  # ASCII-only text: characters are bytes
        raise StepOutputError(
            f"{what} returned {len(text):,} bytes of JSON, over the limit of {limit:,} bytes "
            "(DJANGO_WORKFLOWS['MAX_STEP_OUTPUT_BYTES']); store large data elsewhere "
            "(a model, a file) and return its key"
        )
    check_storable(text, what=f"{what} returned a value that")
    return json.loads(text)


_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")  # an escaped NUL, not an escaped backslash + "u0000"
# A surrogate escape that is not half of a pair: PostgreSQL refuses it in jsonb.
_LONE_SURROGATE = re.compile(
    r"(?<!\\)(?:\\\\)*(?:\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)


def check_storable(json_text: str, *, what: str) -> None:
    """Refuse, on every database, what PostgreSQL's jsonb cannot hold: the NUL character
    and lone surrogates (half of a UTF-16 pair, e.g. from bytes decoded with
    ``surrogateescape``)."""
    if _NUL.search(json_text):
        raise StepOutputError(f"{what} contains a NUL character (\\u0000), which the database cannot store")
    if _LONE_SURROGATE.search(json_text):
        raise StepOutputError(
            f"{what} contains a lone surrogate (a \\ud800-\\udfff character that is not half of a pair), "
            "which the database cannot store; decode bytes with errors='replace'"
        )


def storable_text(text: str) -> str:
    """``text`` with what the database cannot store escaped (NUL, lone surrogates)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def one_line(exc: BaseException) -> str:
    """``Name: first line of the message``, for a log line that is not a traceback."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def error_dict(exc: BaseException) -> dict[str, str]:
    """An error as it is recorded; cleaned so that the database can always store it."""
    try:
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:  # a broken __str__ must not lose the error
        stack = ""
    try:
        message = str(exc)
    except Exception:
        message = f"<{type(exc).__name__} whose str() failed>"
    if len(stack) > MAX_STACK_CHARS:  # a RecursionError's thousand frames, say
        stack = stack[: MAX_STACK_CHARS // 5] + "\n[... frames left out ...]\n" + stack[-MAX_STACK_CHARS * 4 // 5 :]
    return {
        "name": type(exc).__name__,
        "message": storable_text(message[:MAX_STACK_CHARS]),
        "stack": storable_text(stack),
    }


MAX_STACK_CHARS = 50_000
