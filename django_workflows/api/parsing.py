"""Reading requests: bodies (with a size limit), events on the wire, times in filters.

Events are checked by ``wf.send``'s own validation (``django_workflows.events``): this
module only turns the JSON into ``wf.Event`` objects (``ts`` from ISO 8601 or epoch
milliseconds) and says which event, and which field, a refusal is about.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django.conf import settings
from django.utils.dateparse import parse_datetime
from rest_framework import exceptions
from rest_framework.parsers import BaseParser

from .. import conf
from ..errors import EventValidationError
from ..events import Event
from ..events import _validate as validate_event  # wf.send's own checks, one event at a time
from .errors import ApiError, invalid, request_too_large, too_large

# -- bodies ------------------------------------------------------------------------------------


def body_limit() -> int:
    """Bytes a request body may have: Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (2.5 MiB by
    default), the project's own limit on request bodies. When a project turns that off
    (``None``), the largest body a valid request can need."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is None:
        return int(conf.get("MAX_EVENTS_PER_REQUEST")) * (int(conf.get("MAX_EVENT_BYTES")) + 1024)
    return int(limit)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class JSONBodyParser(BaseParser):
    """JSON (RFC 8259: no NaN or Infinity), read up to ``body_limit()`` bytes (413 beyond)."""

    media_type = "application/json"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        limit = body_limit()
        request = (parser_context or {}).get("request")
        if request is not None:
            try:
                declared = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                declared = 0
            if declared > limit:
                raise request_too_large(limit)
        raw = stream.read(limit + 1)
        if len(raw) > limit:
            raise request_too_large(limit)
        encoding = (parser_context or {}).get("encoding") or settings.DEFAULT_CHARSET
        try:
            return json.loads(raw.decode(encoding), parse_constant=_reject_constant)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None


class AnyJSONBodyParser(JSONBodyParser):
    """The body is JSON whatever its Content-Type says (Inngest's JavaScript SDK sends it as
    text/plain; Inngest's event API reads it as JSON all the same)."""

    media_type = "*/*"


# -- times -------------------------------------------------------------------------------------


def epoch_ms(value: int | float, field: str) -> datetime:
    try:
        return datetime(1970, 1, 1, tzinfo=dt_timezone.utc) + timedelta(milliseconds=value)
    except (OverflowError, ValueError):
        raise invalid(field, f"{value!r} milliseconds since the epoch is out of range") from None


_OFFSET_WITHOUT_PLUS = re.compile(r"(T\d\d:\d\d(?::\d\d(?:\.\d+)?)?) (\d\d(?::?\d\d)?)$")


def parse_time(value: Any, field: str) -> datetime:
    """ISO 8601 with a time zone (``2024-05-01T12:00:00Z``), or epoch milliseconds."""
    if isinstance(value, bool):
        raise invalid(field, "must be an ISO 8601 date-time or epoch milliseconds, got a boolean")
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise invalid(field, "must be a finite number")
        return epoch_ms(value, field)
    if not isinstance(value, str):
        raise invalid(field, f"must be an ISO 8601 date-time or epoch milliseconds, got {type(value).__name__}")
    text = value.strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return epoch_ms(float(text) if "." in text else int(text), field)
    # A "+" in a query string arrives as a space: "...T10:00:00 02:00" means "+02:00".
    text = _OFFSET_WITHOUT_PLUS.sub(r"\1+\2", text)
    try:
        parsed = parse_datetime(text)
    except ValueError:
        parsed = None
    if parsed is None:
        raise invalid(field, f"{value!r} is not an ISO 8601 date-time (e.g. 2024-05-01T12:00:00Z) or epoch milliseconds")
    if parsed.tzinfo is None:
        raise invalid(field, f"{value!r} has no time zone: add one (e.g. 'Z' or '+02:00') or send epoch milliseconds")
    try:
        return parsed.astimezone(dt_timezone.utc)
    except OverflowError:
        raise invalid(field, f"{value!r} is out of range (before year 1 in UTC)") from None


# -- events ------------------------------------------------------------------------------------

EVENT_FIELDS = ("name", "data", "id", "ts")
# Inngest's SDKs also send these (user data, payload version, metadata): accepted and not kept.
INNGEST_EXTRA_FIELDS = ("user", "v", "meta")
LIST_HINT = "the body must be an event object or a list of them"


def events_from_body(body: Any, *, inngest: bool = False) -> tuple[list[Event], bool]:
    """The events of a request body (one event or a list), checked as ``wf.send`` checks
    them, over the limits with 413; and whether the body was a list.

    Errors name the event (``events[2]``, for a list) and its field: ``events[2].data``.
    ``inngest``: Inngest's event API format, where an empty ``id`` and a ``ts`` of 0 mean
    none, and the SDKs' other fields (``user``, ``v``, ``meta``) are accepted.
    """
    many = isinstance(body, list)
    items = body if many else [body]
    if not many and not isinstance(body, dict):
        raise ApiError(f"{LIST_HINT}, got {_json_type(body)}", code="invalid", status_code=400, errors={"body": [LIST_HINT]})
    limit = int(conf.get("MAX_EVENTS_PER_REQUEST"))
    if len(items) > limit:
        raise too_large(
            f"{len(items):,} events in one request, over the limit of {limit:,} "
            "(DJANGO_WORKFLOWS['MAX_EVENTS_PER_REQUEST']); send them in several requests",
            "too_many_events",
        )
    events = []
    for index, item in enumerate(items):
        where = f"events[{index}]" if many else ""
        event = _event(item, where, inngest=inngest)
        try:
            validate_event(event, 0, allow_system=False)
        except EventValidationError as exc:
            raise _refused(str(exc), where) from None
        events.append(event)
    return events, many


def _event(item: Any, where: str, *, inngest: bool) -> Event:
    if not isinstance(item, dict):
        raise _event_error(where, None, f"must be an object with a name and data, got {_json_type(item)}")
    allowed = EVENT_FIELDS + (INNGEST_EXTRA_FIELDS if inngest else ())
    unknown = sorted(str(key) for key in item if key not in allowed)
    if unknown and not inngest:
        raise _event_error(where, unknown[0], f"unknown field {unknown[0]!r}; an event has {', '.join(EVENT_FIELDS)}")
    data = item.get("data")
    event_id = item.get("id")
    ts = item.get("ts")
    if inngest and event_id == "":
        event_id = None  # Inngest's SDKs send "" for "no id"
    when = None  # none, or 0: when the event is received (as in Inngest)
    if ts is not None and not (type(ts) in (int, float) and ts == 0):
        try:
            when = parse_time(ts, _path(where, "ts"))
        except ApiError as exc:
            raise ApiError(str(exc.detail), code="invalid_event", status_code=400, errors=exc.errors) from None
    return Event(name=item.get("name"), data={} if data is None else data, id=event_id, ts=when)


def _refused(message: str, where: str) -> ApiError:
    """A ``wf.send`` refusal (``event 'x': data must be ...``), said of ``events[2]`` in a
    list; the field it is about; 413 for the size limit."""
    text = message[len("event"):].lstrip() if message.startswith("event") else message
    said = f"{where} {text}" if where else message
    if "bytes, over the limit of" in message:
        return too_large(said, "event_too_large", errors={where or "body": [said]})
    path = _path(where, _field_of(text))
    return ApiError(said, code="invalid_event", status_code=400, errors={path: [said]})


def _field_of(text: str) -> str | None:
    """The field a ``wf.send`` message (without its leading "event") is about."""
    if text.startswith("name"):
        return "name"
    if text.startswith("id ") or "': id " in text:
        return "id"
    if "': data" in text:
        return "data"
    if "': ts " in text:
        return "ts"
    return None


def _path(where: str, field: str | None) -> str:
    if where and field:
        return f"{where}.{field}"
    return where or field or "body"


def _event_error(where: str, field: str | None, text: str) -> ApiError:
    path = _path(where, field)
    message = f"{path}: {text}" if (where or field) else f"event: {text}"
    return ApiError(message, code="invalid_event", status_code=400, errors={path: [message]})


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
