"""Cron triggers: one queue item per schedule, due at its next tick.

Each tick starts exactly one run however many workers race for it: the
schedule's ``last_fired_for`` is compare-and-set in the database, and cron runs
carry a unique ``cron_key``. After downtime only the latest missed tick fires.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter
from django.db import IntegrityError, transaction
from django.db.models import Q

from ..functions import Function, TriggerCron, registry
from ..models import CronSchedule, Event, QueueItem, Run
from ..states import QueueKind
from . import admission, clock, queue
from .queue import Claimed

logger = logging.getLogger("django_workflows.worker")

TIMER_EVENT = "workflows/scheduled.timer"
UNKNOWN_SCHEDULE_RETRY = timedelta(seconds=30)
CRON_LANE = "~cron"  # schedules take turns with the functions' work, never limited


def next_tick(trigger: TriggerCron, after: datetime) -> datetime:
    local = after.astimezone(ZoneInfo(trigger.timezone))
    return croniter(trigger.expression, local).get_next(datetime)


def latest_tick(trigger: TriggerCron, now: datetime) -> datetime:
    """The last tick at or before ``now``."""
    local = now.astimezone(ZoneInfo(trigger.timezone)) + timedelta(seconds=1)
    return croniter(trigger.expression, local).get_prev(datetime)


def _trigger_for(schedule: CronSchedule) -> tuple[Function, TriggerCron] | None:
    function = registry._functions.get(schedule.function_id)
    if function is None:
        return None
    for trigger in function.cron_triggers:
        if trigger.cron == schedule.cron:
            return function, trigger
    return None


def sync_schedules(db: str) -> int:
    """Make the database's schedules match the registered cron triggers; returns how many exist."""
    from .registry import schedules_of_live_workers

    wanted = {(fn.id, trig.cron): trig for fn in registry.all() for trig in fn.cron_triggers}
    now = clock.now()
    existing = {(s.function_id, s.cron): s for s in CronSchedule.objects.using(db).all()}
    unknown = set(existing) - set(wanted)
    if unknown:
        # A rolling deploy: workers running other code may still define these.
        defined_elsewhere = schedules_of_live_workers(db)
        for key in unknown:
            if key in defined_elsewhere:
                existing.pop(key)  # not ours to fire, not ours to remove
                continue
            logger.info("cron schedule %s %r is defined by no live worker; removing it", *key)
            existing.pop(key).delete(using=db)
    for key in set(wanted) - set(existing):
        try:
            with transaction.atomic(using=db):
                existing[key] = CronSchedule.objects.using(db).create(function_id=key[0], cron=key[1], created_at=now)
        except IntegrityError:  # another worker created it just now
            existing[key] = CronSchedule.objects.using(db).get(function_id=key[0], cron=key[1])
    QueueItem.objects.using(db).bulk_create(
        [
            QueueItem(
                kind=QueueKind.CRON, schedule=schedule, function_id=key[0], lane=CRON_LANE,
                due_at=next_tick(wanted[key], now),
            )
            for key, schedule in existing.items()
        ],
        ignore_conflicts=True,  # one item per schedule (unique constraint)
    )
    return len(existing)


def fire_schedule(db: str, schedule_id: int, now: datetime | None = None) -> Run | None:
    """Start the run of the schedule's latest tick at ``now``, unless it already started."""
    now = now or clock.now()
    with transaction.atomic(using=db):
        schedule = CronSchedule.objects.using(db).filter(pk=schedule_id).first()
        found = _trigger_for(schedule) if schedule else None
        if found is None:
            return None
        function, trigger = found
        tick = latest_tick(trigger, now)
        if tick < schedule.created_at:
            return None  # ticks before the schedule existed never fire
        won = (
            CronSchedule.objects.using(db)
            .filter(Q(last_fired_for__isnull=True) | Q(last_fired_for__lt=tick), pk=schedule_id)
            .update(last_fired_for=tick)
        )
        if not won:
            return None
        event = Event(
            name=TIMER_EVENT, ts=tick, received_at=now,
            data={"cron": trigger.cron, "function_id": function.id, "scheduled_for": tick.isoformat()},
        )
        event.save(using=db)
        jitter = timedelta(seconds=random.random() * trigger.jitter_delta.total_seconds())
        decision = admission.admit_one(
            db, function, event, origin=admission.CRON, now=now, not_before=now + jitter,
            cron_key=f"{function.id}|{trigger.cron}|{tick.isoformat()}",
        )
        run = decision.run
        if run is None:
            return None
    logger.info("cron %s %r fired for %s", function.id, trigger.cron, tick.isoformat())
    return run


def process_cron_item(item: Claimed, *, db: str) -> None:
    schedule_item = queue.held(item, db).first()
    if schedule_item is None or schedule_item.schedule_id is None:
        return
    schedule = CronSchedule.objects.using(db).filter(pk=schedule_item.schedule_id).first()
    found = _trigger_for(schedule) if schedule else None
    if found is None:
        # Another worker's code defines this schedule (a deploy in progress), or nobody's
        # does and the next sync removes it: leave it for them, look again later.
        queue.held(item, db).update(
            worker_id="", claims=0, due_at=clock.now() + UNKNOWN_SCHEDULE_RETRY
        )
        return
    now = clock.now()
    fire_schedule(db, schedule.pk, now)
    queue.held(item, db).update(
        worker_id="", claims=0, due_at=next_tick(found[1], now)
    )
