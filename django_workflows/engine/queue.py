"""The queue of due work: claiming under a lease, heartbeats, releasing.

``due_at`` is both "when the item is due" and, while claimed, "when its lease
lapses": a claim moves ``due_at`` to the lease's end and bumps ``lease_token``.
An item whose worker died is therefore simply due again once the lease lapses,
and every write of the old worker is fenced out by the token it no longer holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connections
from django.db.models import F
from django.db.models.functions import Greatest

from .. import conf
from . import clock

TABLE = "django_workflows_queue"

# Fair claiming. One function's backlog (a flood of events, a fan-out of 100,000 runs)
# must not delay every other function's work, and a lapsed lease (a dead worker's run)
# must not wait behind a backlog. So a claim takes, in this order: lapsed leases; then
# the functions' due items in turns (each function's oldest first, then each one's
# second ...), events counting as one more function (''). A skip scan over the
# (function_id, due_at) index lists the functions with queued items, so the cost grows
# with the number of functions, not with the backlog. The CTE fences the LIMIT; rows
# locked but not chosen are unlocked when the statement ends (it runs in autocommit).
_CLAIM_POSTGRES = f"""
WITH RECURSIVE functions(fid) AS (
    (SELECT function_id FROM {TABLE} WHERE due_at IS NOT NULL ORDER BY function_id LIMIT 1)
    UNION ALL
    SELECT (SELECT q.function_id FROM {TABLE} q
            WHERE q.due_at IS NOT NULL AND q.function_id > functions.fid ORDER BY q.function_id LIMIT 1)
    FROM functions WHERE functions.fid IS NOT NULL
), lapsed AS (
    SELECT id, due_at FROM {TABLE}
    WHERE due_at IS NOT NULL AND due_at <= %(now)s AND worker_id <> ''
    ORDER BY due_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), per_function AS (
    SELECT f.fid, c.id, c.due_at FROM functions f CROSS JOIN LATERAL (
        SELECT id, due_at FROM {TABLE}
        WHERE function_id = f.fid AND due_at IS NOT NULL AND due_at <= %(now)s AND worker_id = ''
        ORDER BY due_at, id LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) c
    WHERE f.fid IS NOT NULL
), turns AS (
    SELECT id, due_at, 0 AS turn FROM lapsed
    UNION ALL
    SELECT id, due_at, row_number() OVER (PARTITION BY fid ORDER BY due_at, id) FROM per_function
), chosen AS (
    SELECT id FROM turns ORDER BY turn, due_at, id LIMIT %(limit)s
)
UPDATE {TABLE} AS q
SET worker_id = %(worker)s, due_at = %(lease_end)s, lease_token = q.lease_token + 1, claims = q.claims + 1
FROM chosen WHERE q.id = chosen.id
RETURNING q.id, q.kind, q.run_id, q.event_id, q.step_id, q.lease_token, q.claims
"""

# SQLite has one writer at a time, so a single UPDATE ... WHERE id IN (...) is the
# compare-and-set: no other connection can claim the same rows in between. Same order as
# on PostgreSQL (SQLite is for development: a window over the due items is fine there).
_CLAIM_SQLITE = f"""
UPDATE {TABLE}
SET worker_id = %(worker)s, due_at = %(lease_end)s, lease_token = lease_token + 1, claims = claims + 1
WHERE id IN (
    SELECT id FROM (
        SELECT id, due_at,
               CASE WHEN worker_id <> '' THEN 0
                    ELSE row_number() OVER (PARTITION BY function_id, worker_id <> '' ORDER BY due_at, id)
               END AS turn
        FROM {TABLE} WHERE due_at IS NOT NULL AND due_at <= %(now)s
    ) ORDER BY turn, due_at, id LIMIT %(limit)s
)
RETURNING id, kind, run_id, event_id, step_id, lease_token, claims
"""


@dataclass(frozen=True)
class Claimed:
    id: int
    kind: str
    run_id: str | None
    event_id: str | None
    step_id: str
    token: int
    claims: int


def lease_duration() -> timedelta:
    return timedelta(seconds=float(conf.get("LEASE_SECONDS")))


def _db_value(db: str, value: datetime) -> object:
    return connections[db].ops.adapt_datetimefield_value(value)


def claim(worker_id: str, limit: int, *, db: str | None = None) -> list[Claimed]:
    """Claim up to ``limit`` due items for ``worker_id`` in one statement."""
    if limit <= 0:
        return []
    db = db or conf.database()
    connection = connections[db]
    now = clock.now()
    lease_end = _db_value(db, now + lease_duration())
    # One statement: in autocommit it is its own transaction (no BEGIN/COMMIT round trips).
    postgres = connection.vendor == "postgresql"
    params = {"now": now if postgres else _db_value(db, now), "limit": limit, "worker": worker_id, "lease_end": lease_end}
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM_POSTGRES if postgres else _CLAIM_SQLITE, params)
        rows = cursor.fetchall()
    return [
        Claimed(
            id=row[0],
            kind=row[1],
            run_id=_uuid_str(row[2]),
            event_id=_uuid_str(row[3]),
            step_id=row[4],
            token=row[5],
            claims=row[6],
        )
        for row in sorted(rows, key=lambda r: r[0])
    ]


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
    lease_end = _db_value(db, clock.now() + lease_duration())
    placeholders = ", ".join(["%s"] * len(ids))
    with connections[db].cursor() as cursor:
        cursor.execute(
            f"UPDATE {TABLE} SET due_at = %s WHERE worker_id = %s AND id IN ({placeholders}) RETURNING id",
            [lease_end, worker_id, *ids],
        )
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
