"""Event intake: workers take new events in batches and start the runs they trigger."""

from __future__ import annotations

import dataclasses
import difflib
import logging
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, connections, transaction

from .. import conf
from ..functions import registry
from ..models import Event, QueueItem, SeenEventId, Waiter
from ..states import WaiterKind
from . import clock, lifecycle, queries, queue, wakeup
from .admission import Admission
from .queue import Claimed
from .records import error_dict

logger = logging.getLogger("django_workflows.worker")

DEDUP_WINDOW = timedelta(hours=24)


def process_events(
    items: list[Claimed], *, db: str, keep_for: str | None = None, keep_max: int = 0
) -> list[Claimed]:
    """Take in a batch of events; one bad event never holds up the others.

    If the batch fails (not for a lost connection: that is retried when the leases lapse),
    its events are taken in one at a time, and the one that fails is set aside with its
    error on ``Event.error``: it triggers nothing and is never retried. So is an event
    whose intake killed its worker ``MAX_CRASHES`` times.
    """
    max_crashes = int(conf.get("MAX_CRASHES"))
    for item in [i for i in items if i.claims > max_crashes]:
        _set_aside(db, item, {
            "name": "WorkerCrashError", "stack": "",
            "message": f"taking this event in stopped its worker {item.claims - 1} times (MAX_CRASHES is {max_crashes})",
        })
        items = [i for i in items if i is not item]
    if not items:
        return []
    try:
        return _process_batch(items, db=db, keep_for=keep_for, keep_max=keep_max)
    except (OperationalError, InterfaceError):
        raise
    except Exception as exc:
        if len(items) == 1:
            _set_aside(db, items[0], error_dict(exc))
            return []
        logger.warning("a batch of %d events failed (%r); taking them in one at a time", len(items), exc)
    kept: list[Claimed] = []
    for item in items:
        kept += process_events([item], db=db, keep_for=keep_for, keep_max=max(keep_max - len(kept), 0))
    return kept


def _set_aside(db: str, item: Claimed, error: dict) -> None:
    """Give up on one event: record why, drop its queue item (if this worker still holds it)."""
    logger.error("event %s set aside, it triggers nothing: %s: %s", item.event_id, error["name"], error["message"])
    with transaction.atomic(using=db):
        if queue.held(item, db).delete()[0]:
            Event.objects.using(db).filter(pk=_pk(item.event_id)).update(error=error)


def _process_batch(
    items: list[Claimed], *, db: str, keep_for: str | None, keep_max: int
) -> list[Claimed]:
    """Resume waits, apply cancellations and start the runs that ``items``' events trigger.

    The events take effect one after another in the order they were received, whatever
    the size of the batch: a cancel event taken in the same claim as the event that
    started a run cancels that run, exactly as it would one claim later.

    With ``keep_for``, up to ``keep_max`` of the new runs are leased to that worker and
    returned, for it to run at once; the others are left for any worker.
    """
    ends_before = lifecycle.ends_so_far()
    events = load_events(db, [_pk(i.event_id) for i in items])
    with transaction.atomic(using=db):
        names = {event.name for event in events.values()}
        lifecycle.lock_event_names(db, shared=names, exclusive=lifecycle.cancel_rule_names(names))
        mine = _take(db, items)
        received = sorted(
            (event for item in mine if (event := events.get(_pk(item.event_id))) is not None),
            key=lambda event: (event.received_at, event.pk),
        )
        delivered = [event for event in received if _first_delivery(db, event)]
        fields_by_name, paused = lifecycle.intake_lookups(db, {e.name for e in delivered})
        # Waiters stored before this batch: one indexed query for the whole batch.
        stored = lifecycle.waiters_for(db, delivered, fields_by_name)
        admission = Admission(db, clock.now(), paused=paused, keep_for=keep_for, keep_max=keep_max)
        unmatched = []
        for event in delivered:
            matched = stored.get(event.pk, []) + admission.cancel_rules_matching(event)
            for waiter in matched:
                _apply(db, admission, waiter, event)
            functions = _functions_for(event)
            for function in functions:
                admission.offer(function, event)
            # Nothing listens to its name at all (not merely nothing matched it): a typo?
            if not matched and not functions and not registry.listened(event.name) and event.name not in fields_by_name:
                unmatched.append(event)
        if unmatched:
            _mark_unmatched(db, unmatched)
        admission.flush()
    if admission.started > len(admission.kept):
        wakeup.notify(db)  # other idle workers may take the runs this one did not keep
    if lifecycle.ends_so_far() != ends_before:
        # A run of this batch may have been cancelled by a later event of it: the thread
        # must load the runs it keeps (and find that out) instead of trusting memory.
        return [dataclasses.replace(item, fresh_run=None) for item in admission.kept]
    return admission.kept


def load_events(db: str, ids: list) -> dict:
    """The events with these ids, by id (on PostgreSQL one prepared statement: the ORM's
    query building was a third of the time from an event's commit to its run's start)."""
    connection = connections[db]
    if connection.vendor != "postgresql":
        return Event.objects.using(db).in_bulk(ids)
    fields = Event._meta.concrete_fields
    names = [f.attname for f in fields]
    events = {}
    for row in queries.fetch(db, queries.LOAD_EVENTS_POSTGRES, {"ids": ids}):
        values = [
            f.from_db_value(value, None, connection) if value is not None and hasattr(f, "from_db_value") else value
            for f, value in zip(fields, row, strict=True)
        ]
        event = Event.from_db(db, names, values)
        events[event.pk] = event
    return events


def _mark_unmatched(db: str, events: list[Event]) -> None:
    """Events nothing listens to: flagged for the admin; in development, a warning that
    names the closest event names the project's functions listen to."""
    Event.objects.using(db).filter(pk__in=[event.pk for event in events]).update(unmatched=True)
    if not settings.DEBUG:
        return
    known = sorted(
        {trigger.event for fn in registry.all() for trigger in fn.event_triggers}
        | {rule.event for fn in registry.all() for rule in fn.cancel}
    )
    for name in sorted({event.name for event in events}):
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else (
            f"; the functions listen to {', '.join(repr(k) for k in known[:10])}" if known else "; no function is defined"
        )
        logger.warning("event %r started no run and matched no wait or cancel rule%s", name, hint)


def _apply(db: str, batch: Admission, waiter: Waiter, event: Event) -> None:
    """Resolve a wait or apply a cancel rule that ``event`` matched."""
    if waiter.kind == WaiterKind.WAIT:
        lifecycle.resolve_wait(db, waiter, event)
        return
    if waiter.run_id in batch.pending_ids:
        batch.flush()  # the run this event cancels was started earlier in this batch
    lifecycle.cancel_run(db, waiter.run_id, reason=f"cancelled by event {event.name} {event.pk}")


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
    lineage = system_event_lineage(payload)
    chosen: dict[str, object] = {}
    for function, trigger in registry.triggered_by(event.name):
        if function.id in chosen or not trigger.matches(payload, function_id=function.id):
            continue
        if function.id in lineage:
            # A run started by a system event never starts itself again through the
            # system events of its own end: that would loop without end.
            logger.info(
                "event %s (%s) starts no run of %s: it descends from a run of that function",
                event.pk, event.name, function.id,
            )
            continue
        chosen[function.id] = function
    return list(chosen.values())


def system_event_lineage(payload: dict) -> set[str]:
    """The ids of the functions whose runs led to a ``workflows/function.*`` event.

    Such an event's ``data`` names the run's function and embeds the run's own trigger
    event, which may itself be a system event about an earlier run, and so on.
    """
    lineage: set[str] = set()
    current: object = payload
    while isinstance(current, dict) and str(current.get("name", "")).startswith("workflows/function."):
        data = current.get("data")
        if not isinstance(data, dict):
            break
        function_id = data.get("function_id")
        if isinstance(function_id, str):
            if function_id in lineage:
                break
            lineage.add(function_id)
        current = data.get("event")
    return lineage


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
