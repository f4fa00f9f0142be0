"""Live workers: each ``runworkers`` process says what it defines, with every heartbeat.

During a rolling deploy old and new code run side by side. A worker must not destroy what
the other code defines: cron schedules are removed only when no live worker defines them.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

from .. import conf
from ..functions import registry
from ..models import WorkerRecord
from . import clock


def defined_schedules() -> list[list[str]]:
    return sorted([fn.id, trigger.cron] for fn in registry.all() for trigger in fn.cron_triggers)


def registry_touch(
    db: str, worker_id: str, *, started: bool = False, threads: int = 0, in_hand: int = 0, processed: int = 0
) -> None:
    """Record that this worker is alive and what it does (one UPDATE; an INSERT the first time)."""
    now = clock.now()
    facts = {"last_seen_at": now, "items_in_hand": in_hand, "processed": processed, "threads": threads}
    if not started and WorkerRecord.objects.using(db).filter(pk=worker_id).update(**facts):
        return
    WorkerRecord.objects.using(db).update_or_create(
        pk=worker_id,
        defaults={
            **facts,
            "hostname": socket.gethostname()[:255],
            "pid": os.getpid(),
            "started_at": now,
            "functions": sorted(fn.id for fn in registry.all()),
            "schedules": defined_schedules(),
        },
    )


def registry_cleanup(db: str, worker_id: str) -> None:
    """A stopping worker leaves the registry (a dead one ages out)."""
    try:
        WorkerRecord.objects.using(db).filter(pk=worker_id).delete()
    except Exception:  # the database may be down while we stop: the record ages out
        pass


def live_cutoff() -> timedelta:
    """A worker not heard of for three leases is gone (heartbeats come every third)."""
    return timedelta(seconds=float(conf.get("LEASE_SECONDS")) * 3)


def schedules_of_live_workers(db: str, *, exclude: str | None = None) -> set[tuple[str, str]]:
    live = WorkerRecord.objects.using(db).filter(last_seen_at__gte=clock.now() - live_cutoff())
    if exclude:
        live = live.exclude(pk=exclude)
    return {(fid, cron) for schedules in live.values_list("schedules", flat=True) for fid, cron in schedules}


def prune_records(db: str) -> int:
    """Drop records of workers gone for a day."""
    return WorkerRecord.objects.using(db).filter(last_seen_at__lt=clock.now() - timedelta(days=1)).delete()[0]
