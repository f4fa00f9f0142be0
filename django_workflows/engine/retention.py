"""History stays bounded: workers prune old finished runs (and what only they used) in small batches."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Exists, OuterRef, Q

from .. import conf
from ..models import Event, QueueItem, Run, SeenEventId
from ..states import RunStatus
from . import clock
from .intake import DEDUP_WINDOW

logger = logging.getLogger("django_workflows.worker")


def prune(db: str, *, now: datetime | None = None, batch: int = 500) -> int:
    """Delete one batch of expired runs (with their steps) and unused old events.

    Completed and cancelled runs expire ``RETENTION_DAYS`` after they ended, failed runs
    ``FAILED_RETENTION_DAYS`` after. Returns how many runs were deleted.
    """
    now = now or clock.now()
    done_cutoff = now - timedelta(days=float(conf.get("RETENTION_DAYS")))
    failed_cutoff = now - timedelta(days=float(conf.get("FAILED_RETENTION_DAYS")))
    expired = Run.objects.using(db).filter(
        Q(status__in=[RunStatus.COMPLETED, RunStatus.CANCELLED], ended_at__lt=done_cutoff)
        | Q(status=RunStatus.FAILED, ended_at__lt=failed_cutoff)
    )
    with transaction.atomic(using=db):
        ids = list(expired.values_list("pk", flat=True)[:batch])
        if ids:
            Run.objects.using(db).filter(pk__in=ids).delete()
        # Events older than the retention that no run and no queue item needs any more.
        unused = (
            Event.objects.using(db)
            .filter(received_at__lt=done_cutoff)
            .exclude(Exists(Run.objects.using(db).filter(event=OuterRef("pk"))))
            .exclude(Exists(QueueItem.objects.using(db).filter(event=OuterRef("pk"))))
        )
        event_ids = list(unused.values_list("pk", flat=True)[:batch])
        if event_ids:
            SeenEventId.objects.using(db).filter(event_id__in=event_ids).delete()
            Event.objects.using(db).filter(pk__in=event_ids).delete()
        SeenEventId.objects.using(db).filter(seen_at__lt=now - DEDUP_WINDOW).delete()
        _prune_flow_slots(db, now)
    if ids or event_ids:
        logger.info("pruned %d runs and %d events past retention", len(ids), len(event_ids))
    return len(ids)


def _prune_flow_slots(db: str, now: datetime) -> None:
    """Flow control state that no longer decides anything: idempotency keys past their
    24 h, throttle and rate limit states whose GCRA time has passed (a fresh state is the
    same), and slots whose run is gone."""
    from ..flow_control import IDEMPOTENCY_WINDOW
    from ..models import FlowSlot

    slots = FlowSlot.objects.using(db)
    slots.filter(kind="idempotency", opened_at__lt=now - IDEMPOTENCY_WINDOW).delete()
    slots.filter(kind__in=["throttle", "throttle_start", "rate_limit"], tat__lt=now).delete()
    # Old ones only: a slot being taken right now points at a run not committed yet.
    slots.filter(kind__in=["singleton", "debounce", "batch"], opened_at__lt=now - timedelta(hours=1)).exclude(
        Exists(Run.objects.using(db).filter(pk=OuterRef("run_id")))
    ).delete()
