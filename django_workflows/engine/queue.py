"""The queue of due work: claiming under a lease, heartbeats, releasing.

``due_at`` is both "when the item is due" and, while claimed, "when its lease
lapses": a claim moves ``due_at`` to the lease's end and bumps ``lease_token``.
An item whose worker died is therefore simply due again once the lease lapses,
and every write of the old worker is fenced out by the token it no longer holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connections
from django.db.models import F, QuerySet
from django.db.models.functions import Greatest

from .. import conf
from . import clock

TABLE = "django_workflows_queue"


@dataclass(frozen=True)
class Claimed:
    id: int
    kind: str
    run_id: str | None
    event_id: str | None
    step_id: str
    token: int
    claims: int
    # A run intake has just created and kept for this worker, already marked running: its
    # thread runs it without loading it back (one round trip less between event and step).
    fresh_run: Any = field(default=None, compare=False, repr=False)


def lease_duration() -> timedelta:
    return timedelta(seconds=float(conf.get("LEASE_SECONDS")))


def _db_value(db: str, value: datetime) -> object:
    return connections[db].ops.adapt_datetimefield_value(value)


def claim(worker_id: str, limit: int, *, db: str | None = None) -> list[Claimed]:
    """Claim up to ``limit`` due items for ``worker_id``, concurrency limits respected.

    PostgreSQL: one statement (``queries.CLAIM_POSTGRES``) claims lapsed leases and the
    lanes without a limit, and names the limited lanes that may have a free slot; those
    are claimed under a per-lane lock (``_claim_limited``). SQLite: one statement.
    """
    if limit <= 0:
        return []
    from . import queries

    db = db or conf.database()
    connection = connections[db]
    now = clock.now()
    lease_end = _db_value(db, now + lease_duration())
    params = {"limit": limit, "worker": worker_id, "lease_end": lease_end}
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(queries.CLAIM_SQLITE, {**params, "now": _db_value(db, now)})
            return _claims(cursor.fetchall())
    params["now"] = now
    params["after"] = _lane_cursor.get((db, worker_id), "")
    params["scan"] = LIMITED_LANES_PER_CLAIM
    # One statement: in autocommit it is its own transaction (no BEGIN/COMMIT round trips).
    rows = _execute(db, queries.CLAIM_POSTGRES, {**params, "reserve": True})
    claimed = [row for row in rows if row[0] is not None]
    limited = [(row[7], row[8], row[9]) for row in rows if row[0] is None and row[1] is None]
    for row in rows:
        if row[1] == "scan":  # where this look at the limited lanes ended: the next goes on from there
            _lane_cursor[(db, worker_id)] = row[7] if row[8] >= params["scan"] else ""
    if limited:
        kept_back = min(len(limited), (limit + 1) // 2)  # the statement's reserve
        binding = len(claimed) == limit - kept_back  # unlimited work may have been left out
        claimed += _claim_limited(db, limited, {**params, "limit": limit - len(claimed)})
        if binding and len(claimed) < limit:
            # The slots kept for limited lanes were not all used (another worker holds the
            # lane's lock, the hint was stale): give them to unlimited work at once.
            more = _execute(db, queries.CLAIM_POSTGRES, {**params, "limit": limit - len(claimed), "reserve": False})
            claimed += [row for row in more if row[0] is not None]
    return _claims(claimed)


def claim_events(worker_id: str, limit: int, *, db: str | None = None) -> list[Claimed]:
    """Claim up to ``limit`` more due events (``queries.CLAIM_EVENTS_POSTGRES``); on
    SQLite, with one worker process, nothing: its claims take events in turn already."""
    from . import queries

    db = db or conf.database()
    if limit <= 0 or connections[db].vendor != "postgresql":
        return []
    now = clock.now()
    return _claims(_execute(db, queries.CLAIM_EVENTS_POSTGRES, {
        "worker": worker_id, "lease_end": now + lease_duration(), "now": now, "limit": limit,
    }))


# Limited lanes looked at per claim (at least), and where each worker's last look ended.
LIMITED_LANES_PER_CLAIM = 16
_lane_cursor: dict[tuple[str, str], str] = {}


def _execute(db: str, sql: str, params: dict) -> list[tuple]:
    from . import queries

    return queries.fetch(db, sql, params)


def _claim_limited(db: str, lanes: list[tuple[str, int, str]], params: dict) -> list[tuple]:
    """Claim from lanes with a concurrency limit: lock them (skipping any another worker
    is claiming), then count their held items and claim, in a new snapshot."""
    from django.db import transaction

    from . import queries

    if params["limit"] <= 0:
        return []
    keys = sorted({lane for lane, _, _ in lanes} | {lane2 for _, _, lane2 in lanes if lane2})
    with transaction.atomic(using=db):
        locked = {row[0] for row in _execute(db, queries.LOCK_LANES_POSTGRES, {"keys": keys})}
        mine = [(lane, limit) for lane, limit, _ in lanes if lane in locked]
        if not mine:
            return []
        return _execute(db, queries.CLAIM_LIMITED_POSTGRES, {
            **params,
            "lanes": [lane for lane, _ in mine], "limits": [limit for _, limit in mine],
            "lanes2": [lane2 for _, _, lane2 in lanes if lane2 and lane2 in locked],
        })


def _claims(rows: list[tuple]) -> list[Claimed]:
    return [
        Claimed(
            id=row[0], kind=row[1], run_id=_uuid_str(row[2]), event_id=_uuid_str(row[3]),
            step_id=row[4], token=row[5], claims=row[6],
        )
        for row in sorted(rows, key=lambda r: r[0])
    ]


def held(item: Claimed, db: str) -> QuerySet:
    """The item, only while this claim still holds it: every write a worker makes to an
    item it claimed goes through here (or through a statement of ``queries`` that checks
    the same token). A worker that took the item over bumped the token: a stale worker's
    update or delete matches nothing."""
    from ..models import QueueItem

    return QueueItem.objects.using(db).filter(pk=item.id, lease_token=item.token)


def _uuid_str(value: object) -> str | None:
    if value is None:
        return None
    text = str(value)
    if len(text) == 32:  # SQLite stores UUIDs as 32 hex characters
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
    return text


def heartbeat(worker_id: str, item_ids: Iterable[int], *, db: str | None = None) -> set[int]:
    """Extend the leases this worker still holds (one statement); returns their ids."""
    ids = list(item_ids)
    if not ids:
        return set()
    db = db or conf.database()
    from . import queries

    lease_end = _db_value(db, clock.now() + lease_duration())
    placeholders = ", ".join(["%s"] * len(ids))
    with connections[db].cursor() as cursor:
        cursor.execute(queries.HEARTBEAT.format(ids=placeholders), [lease_end, worker_id, *ids])
        return {row[0] for row in cursor.fetchall()}


def release(
    worker_id: str, item_ids: Iterable[int], *, db: str | None = None, keep_claims: bool = False,
    delay: float = 0.0,
) -> int:
    """Give items back (a stopping worker); another worker may claim them after ``delay`` s.

    ``keep_claims``: the items failed rather than being put down, so their count of claims
    without progress (which ends a run that keeps killing its worker) goes on; otherwise
    this claim is not counted.
    """
    fields: dict = {"worker_id": "", "due_at": clock.now() + timedelta(seconds=delay)}
    if not keep_claims:
        fields["claims"] = Greatest(F("claims") - 1, 0)
    return _update_held(worker_id, item_ids, db, fields)


def _update_held(worker_id: str, item_ids: Iterable[int], db: str | None, fields: dict) -> int:
    """One UPDATE of the given items that ``worker_id`` still holds (a batch per call)."""
    from ..models import QueueItem

    ids = list(item_ids)
    if not ids:
        return 0
    return QueueItem.objects.using(db or conf.database()).filter(id__in=ids, worker_id=worker_id).update(**fields)


def next_due_at(*, db: str | None = None, exclude_cron: bool = False) -> datetime | None:
    """The earliest ``due_at`` of any item (leased items count: a lapsing lease is work)."""
    from django.db.models import Min

    from ..models import QueueItem
    from ..states import QueueKind

    db = db or conf.database()
    items = QueueItem.objects.using(db).filter(due_at__isnull=False)
    if exclude_cron:
        items = items.exclude(kind=QueueKind.CRON)  # schedules never run out
    return items.aggregate(m=Min("due_at"))["m"]
