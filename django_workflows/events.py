"""``wf.Event`` and ``wf.send``: events are rows written in the caller's transaction."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from django.db import DatabaseError, connections, transaction

from . import conf
from .engine.records import StepOutputError, check_storable
from .errors import EventValidationError, NotMigratedError, WorkflowDefinitionError
from .functions import validate_event_name
from .ids import new_id


@dataclass
class Event:
    """An event to send. ``id`` is your deduplication key; ``ts`` in the future delays its runs."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    ts: datetime | None = None


def _validate(event: Event, index: int, allow_system: bool) -> None:
    where = f"event #{index}" if index else "event"
    try:
        validate_event_name(event.name, what=f"{where} name", allow_system=allow_system)
    except WorkflowDefinitionError as exc:
        raise EventValidationError(str(exc)) from None
    if not isinstance(event.data, dict):
        raise EventValidationError(f"{where} {event.name!r}: data must be a dict, got {type(event.data).__name__}")
    try:
        text = json.dumps(event.data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        path, value = _first_non_json(event.data, "data")
        found = f"{path} is {type(value).__name__} {value!r}" if path else str(exc)
        raise EventValidationError(
            f"{where} {event.name!r}: data is not JSON: {found} (send strings, numbers, booleans, None, "
            "lists and dicts with string keys: e.g. a datetime as .isoformat())"
        ) from None
    except RecursionError:
        raise EventValidationError(f"{where} {event.name!r}: data is nested too deeply") from None
    try:
        check_storable(text, what=f"{where} {event.name!r}: data")
    except StepOutputError as exc:
        raise EventValidationError(str(exc)) from None
    if event.id is not None and (not isinstance(event.id, str) or not event.id or len(event.id) > 255):
        raise EventValidationError(f"{where} {event.name!r}: id must be a non-empty string of at most 255 characters")
    for part, value in (("name", event.name), ("id", event.id or "")):
        if not value.isascii():  # NUL is ASCII: checked below; this only skips the JSON
            _check_text(value, f"{where} {part} {value!r}")
        elif "\x00" in value:
            raise EventValidationError(f"{where} {part} {value!r} contains a NUL character, which the database cannot store")
    if event.ts is not None and (not isinstance(event.ts, datetime) or event.ts.tzinfo is None):
        raise EventValidationError(f"{where} {event.name!r}: ts must be a timezone-aware datetime, got {event.ts!r}")
    if event.ts is not None:
        try:
            event.ts.astimezone(timezone.utc)  # stored in UTC: PostgreSQL refuses offsets of 16 h or more
        except OverflowError:
            raise EventValidationError(f"{where} {event.name!r}: ts {event.ts.isoformat()} is before year 1 in UTC") from None
    size = len(text.encode()) + len(event.name.encode()) + len((event.id or "").encode())
    limit = int(conf.get("MAX_EVENT_BYTES"))
    if size > limit:
        raise EventValidationError(
            f"{where} {event.name!r} is {size:,} bytes, over the limit of {limit:,} bytes "
            "(DJANGO_WORKFLOWS['MAX_EVENT_BYTES']); send a key to data stored elsewhere instead"
        )


def _first_non_json(value: Any, path: str) -> tuple[str, Any]:
    """The dotted path of the first value JSON cannot hold (``data.user.created_at``)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} key {key!r}", key
            found = _first_non_json(item, f"{path}.{key}")
            if found[0]:
                return found
        return "", None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _first_non_json(item, f"{path}[{index}]")
            if found[0]:
                return found
        return "", None
    if value is None or isinstance(value, (str, bool, int)):
        return "", None
    if isinstance(value, float):
        return ("", None) if value == value and value not in (float("inf"), float("-inf")) else (path, value)
    return path, value


def _check_text(value: str, what: str) -> None:
    try:
        check_storable(json.dumps(value), what=what)
    except StepOutputError as exc:
        raise EventValidationError(str(exc)) from None


def send(
    event: str | Event | Iterable[Event],
    data: dict[str, Any] | None = None,
    *,
    id: str | None = None,
    ts: datetime | None = None,
) -> list[str]:
    """Store one or more events; returns their ids.

    Runs in the caller's transaction: if it rolls back, the events (and their runs)
    never existed. Nothing else happens on the caller's path; workers pick events up.
    """
    return store_events(as_events(event, data, id, ts), allow_system=False)


def as_events(event: Any, data: Any, id: Any, ts: Any) -> list[Event]:
    if isinstance(event, str):
        return [Event(name=event, data={} if data is None else data, id=id, ts=ts)]
    if data is not None or id is not None or ts is not None:
        raise EventValidationError("data, id and ts go with an event name; set them on each wf.Event instead")
    if isinstance(event, Event):
        return [event]
    if isinstance(event, (list, tuple)):
        events = list(event)
        for index, item in enumerate(events, start=1):
            if not isinstance(item, Event):
                raise EventValidationError(f"event #{index}: expected a wf.Event, got {type(item).__name__}")
        return events
    raise EventValidationError(f"send() takes an event name, a wf.Event or a list of them, got {type(event).__name__}")


# Above this many events in one call, PostgreSQL gets them through COPY: building and
# binding a 100,000-row INSERT costs several times more than the rows themselves.
COPY_THRESHOLD = 500


def store_events(events: list[Event], *, allow_system: bool) -> list[str]:
    from .engine import clock, wakeup

    for index, event in enumerate(events, start=1 if len(events) > 1 else 0):
        _validate(event, index, allow_system)
    if not events:
        return []
    db = conf.database()
    clock.sync(db, max_age=clock.RESYNC_SECONDS)  # due times on the database's clock
    now = clock.now()
    # Events of one call are received one microsecond apart, in list order: they take
    # effect in that order (a cancel listed after its trigger cancels the run).
    rows = [
        (new_id(), e.name, e.data, e.ts.astimezone(timezone.utc) if e.ts else now,
         now + timedelta(microseconds=index), e.id or "")
        for index, e in enumerate(events)
    ]
    try:
        with transaction.atomic(using=db, savepoint=False):
            if connections[db].vendor == "postgresql" and len(rows) > COPY_THRESHOLD:
                _copy_rows(db, rows)
            else:
                _insert_rows(db, rows)
            wakeup.notify_on_commit(db)
    except DatabaseError as exc:
        if _missing_table(exc):
            raise NotMigratedError(
                f"cannot store events: the django_workflows tables do not exist on database {db!r}: "
                "run `python manage.py migrate`"
            ) from exc
        raise
    return [str(row[0]) for row in rows]


def _missing_table(exc: DatabaseError) -> bool:
    text = str(exc)
    return ("no such table: django_workflows" in text) or (
        'relation "django_workflows' in text and "does not exist" in text
    )


def _insert_rows(db: str, rows: list[tuple]) -> None:
    from .models import Event as EventRow
    from .models import QueueItem
    from .states import QueueKind

    EventRow.objects.using(db).bulk_create(
        [EventRow(id=id_, name=name, data=data, ts=ts, received_at=received, dedup_id=dedup)
         for id_, name, data, ts, received, dedup in rows]
    )
    QueueItem.objects.using(db).bulk_create(
        [QueueItem(kind=QueueKind.EVENT, event_id=row[0], due_at=row[4]) for row in rows]
    )


def _copy_rows(db: str, rows: list[tuple]) -> None:
    from . import jsonenc
    from .models import Event as EventRow
    from .models import QueueItem
    from .states import QueueKind

    quote = connections[db].ops.quote_name
    with connections[db].cursor() as cursor:
        raw = cursor.cursor  # psycopg's own cursor: Django has no COPY
        columns = "id, name, data, ts, received_at, dedup_id, unmatched"
        with raw.copy(f"COPY {quote(EventRow._meta.db_table)} ({columns}) FROM STDIN") as copy:
            for id_, name, data, ts, received, dedup in rows:
                copy.write_row((id_, name, jsonenc.dumps(data), ts, received, dedup, False))
        columns = (
            "kind, event_id, function_id, step_id, due_at, worker_id, lease_token, claims, wake, "
            "lane, lane_limit, lane2, lane2_limit"
        )
        with raw.copy(f"COPY {quote(QueueItem._meta.db_table)} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row((QueueKind.EVENT.value, row[0], "", "", row[4], "", 0, 0, False, "", 0, "", 0))
