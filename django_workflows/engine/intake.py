"""Event intake: workers take new events in batches and start the runs they trigger."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import IntegrityError, transaction

from ..functions import registry
from ..models import Event, QueueItem, Run, SeenEventId
from ..states import QueueKind, RunStatus
from . import clock, wakeup
from .queue import Claimed

logger = logging.getLogger("django_workflows.worker")

DEDUP_WINDOW = timedelta(hours=24)


def process_events(items: list[Claimed], *, db: str) -> int:
    """Start the runs that ``items``' events trigger; returns how many runs were queued."""
    events = Event.objects.using(db).in_bulk([i.event_id for i in items])
    runs: list[Run] = []
    queued: list[QueueItem] = []
    with transaction.atomic(using=db):
        held = set(
            QueueItem.objects.using(db)
            .select_for_update()
            .filter(id__in=[i.id for i in items])
            .values_list("id", "lease_token")
        )
        mine = [i for i in items if (i.id, i.token) in held]
        now = clock.now()
        for item in mine:
            event = events.get(_pk(item.event_id))
            if event is None or not _first_delivery(db, event):
                continue
            for function in _functions_for(event):
                run = Run(function_id=function.id, event=event, status=RunStatus.QUEUED, queued_at=now)
                runs.append(run)
                queued.append(QueueItem(kind=QueueKind.RUN, run=run, due_at=max(event.ts, now)))
        Run.objects.using(db).bulk_create(runs)
        QueueItem.objects.using(db).bulk_create(queued)
        QueueItem.objects.using(db).filter(id__in=[i.id for i in mine]).delete()
    if runs:
        wakeup.notify(db)  # other idle workers may take the new runs at once
    return len(runs)


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
