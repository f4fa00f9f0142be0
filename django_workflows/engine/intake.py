"""Event intake: workers take new events in batches and start the runs they trigger."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import IntegrityError, connections, transaction

from ..functions import registry
from ..models import Event, QueueItem, SeenEventId
from ..states import WaiterKind
from . import clock, lifecycle, wakeup
from .queue import Claimed

logger = logging.getLogger("django_workflows.worker")

DEDUP_WINDOW = timedelta(hours=24)


def process_events(
    items: list[Claimed], *, db: str, keep_for: str | None = None, keep_max: int = 0
) -> list[Claimed]:
    """Resume waits, apply cancellations and start the runs that ``items``' events trigger.

    With ``keep_for``, up to ``keep_max`` of the new runs are leased to that worker and
    returned, for it to run at once; the others are left for any worker.
    """
    events = Event.objects.using(db).in_bulk([i.event_id for i in items])
    pairs: list = []
    kept: list[Claimed] = []
    with transaction.atomic(using=db):
        mine = _take(db, items)
        now = clock.now()
        delivered = [
            event for item in mine
            if (event := events.get(_pk(item.event_id))) is not None and _first_delivery(db, event)
        ]
        fields_by_name, paused = lifecycle.intake_lookups(db, {e.name for e in delivered})
        for event_pk, waiters in lifecycle.waiters_for(db, delivered, fields_by_name).items():
            event = events[event_pk]
            for waiter in waiters:
                if waiter.kind == WaiterKind.WAIT:
                    lifecycle.resolve_wait(db, waiter, event)
                else:
                    lifecycle.cancel_run(db, waiter.run_id, reason=f"cancelled by event {event.name} {event.pk}")
        for event in delivered:
            for function in _functions_for(event):
                if function.id in paused:
                    logger.info("event %s starts no run of paused function %s", event.pk, function.id)
                    continue
                pairs.append((lifecycle.new_run(function, event, now=now), max(event.ts, now)))
        kept = lifecycle.insert_runs(db, pairs, keep_for=keep_for, keep_max=keep_max)
    if len(pairs) > len(kept):
        wakeup.notify(db)  # other idle workers may take the runs this one did not keep
    return kept


def _take(db: str, items: list[Claimed]) -> list[Claimed]:
    """Delete the items this worker still holds (the lease fence) and return them."""
    table = connections[db].ops.quote_name(QueueItem._meta.db_table)
    condition = " OR ".join(["(id = %s AND lease_token = %s)"] * len(items))
    params = [value for item in items for value in (item.id, item.token)]
    with connections[db].cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE {condition} RETURNING id", params)
        held = {row[0] for row in cursor.fetchall()}
    return [item for item in items if item.id in held]


def _pk(value: str | None) -> object:
    import uuid

    return uuid.UUID(value) if value else None


def _functions_for(event: Event) -> list:
    payload = event.as_payload()
    chosen: dict[str, object] = {}
    for function, trigger in registry.triggered_by(event.name):
        if function.id not in chosen and trigger.matches(payload):
            chosen[function.id] = function
    return list(chosen.values())


def _first_delivery(db: str, event: Event) -> bool:
    """False when another event with the same sender id arrived in the 24 h before it."""
    if not event.dedup_id:
        return True
    seen = SeenEventId.objects.using(db).select_for_update().filter(key=event.dedup_id).first()
    if seen is None:
        try:
            with transaction.atomic(using=db):
                SeenEventId.objects.using(db).create(key=event.dedup_id, event=event, seen_at=event.received_at)
            return True
        except IntegrityError:
            return False  # another worker recorded this id just now
    if seen.event_id == event.id:
        return True  # this very event, taken again after a crash
    if seen.seen_at <= event.received_at - DEDUP_WINDOW:
        seen.event = event
        seen.seen_at = event.received_at
        seen.save(using=db, update_fields=["event", "seen_at"])
        return True
    logger.info("event %s ignored: id %r was seen in the last 24 h", event.pk, event.dedup_id)
    return False
