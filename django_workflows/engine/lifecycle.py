"""Run lifecycle writes shared by intake, the executor and run control.

Every function here runs inside the caller's transaction on the workflows database.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from datetime import datetime
from functools import lru_cache
from typing import Any

from django.db import connections
from django.db.models import Case, Exists, F, OuterRef, Q, Value, When

from ..expressions import Expression, canonical_json
from ..functions import Function, registry
from ..models import Event, FunctionState, QueueItem, Run, SeenEventId, Step, Waiter, WaitKey
from ..states import FINISHED_STATUSES, QueueKind, RunStatus, StepStatus, WaiterKind
from . import clock, queue
from .queue import Claimed

logger = logging.getLogger("django_workflows.worker")


@lru_cache(maxsize=1024)
def compiled(source: str) -> Expression:
    return Expression(source)


def lookup(payload: dict, path: str) -> tuple[bool, Any]:
    """Follow a dotted path (``data.user_id``) into an event payload."""
    value: Any = payload
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def match_key(value: Any) -> str:
    """The indexed text of a ``match`` value: equal numbers give equal text (1 and 1.0)."""
    return canonical_json(value)


def paused_functions(db: str) -> set[str]:
    return set(FunctionState.objects.using(db).filter(paused=True).values_list("function_id", flat=True))


def intake_lookups(db: str, names: set[str]) -> tuple[dict[str, list[str]], set[str]]:
    """The match fields waited on for these event names, and the paused functions: one query."""
    if not names:
        return {}, set()
    quote = connections[db].ops.quote_name
    placeholders = ", ".join(["%s"] * len(names))
    sql = (
        f"SELECT 'k', event_name, match_field FROM {quote(WaitKey._meta.db_table)} "
        f"WHERE event_name IN ({placeholders}) "
        f"UNION ALL SELECT 'p', function_id, '' FROM {quote(FunctionState._meta.db_table)} WHERE paused"
    )
    fields_by_name: dict[str, list[str]] = {}
    paused: set[str] = set()
    with connections[db].cursor() as cursor:
        cursor.execute(sql, list(names))
        for kind, name, field in cursor.fetchall():
            if kind == "k":
                fields_by_name.setdefault(name, []).append(field)
            else:
                paused.add(name)
    return fields_by_name, paused


# -- creating runs ---------------------------------------------------------------------------


def new_run(function: Function, event: Event | None, *, now: datetime, **fields: Any) -> Run:
    return Run(function_id=function.id, event=event, status=RunStatus.QUEUED, queued_at=now, **fields)


def cancel_waiters(run: Run) -> list[Waiter]:
    """The run's cancel rules as waiters (not saved)."""
    function = registry._functions.get(run.function_id)
    if function is None or not function.cancel:
        return []
    trigger = run.event.as_payload() if run.event else {}
    since = run.event.received_at if run.event else run.queued_at
    waiters = []
    for rule in function.cancel:
        waiters.append(
            make_waiter(
                WaiterKind.CANCEL, run, "", rule.event, rule.match, rule.if_exp, trigger,
                created_at=since,
                expires_at=since + rule.timeout_delta if rule.timeout_delta else None,
            )
        )
    return waiters


def make_waiter(
    kind: str, run: Run | str, step_id: str, event_name: str, match: str | None, if_exp: str | None,
    trigger: dict, *, created_at: datetime, expires_at: datetime | None,
) -> Waiter:
    match_value = ""
    if match:
        found, value = lookup(trigger, match)
        # A trigger without the field can never be matched: "!missing" is no JSON text
        # (and has no NUL, which PostgreSQL cannot store in text).
        match_value = match_key(value) if found else "!missing"
    run_id = run if isinstance(run, str) else run.pk
    return Waiter(
        kind=kind, run_id=run_id, step_id=step_id, event_name=event_name,
        match_field=match or "", match_value=match_value, if_exp=if_exp or "",
        trigger=trigger, created_at=created_at, expires_at=expires_at,
    )


def add_waiters(db: str, waiters: list[Waiter]) -> None:
    keys = {(w.event_name, w.match_field) for w in waiters}
    WaitKey.objects.using(db).bulk_create(
        [WaitKey(event_name=name, match_field=field) for name, field in keys], ignore_conflicts=True
    )
    Waiter.objects.using(db).bulk_create(waiters)


def _run_trigger(run: Run) -> dict:
    return run.event.as_payload() if run.event else {}


def start_invoked_run(db: str, parent: Run, spec: Any, *, now: datetime) -> tuple[Run | None, Any]:
    """step.invoke: a new run of the target, fed a workflows/function.invoked event.

    Returns (the run, None), or (None, the refusal) when flow control (paused, rate limit,
    singleton, idempotency) starts no run: the invoke step fails with its message.
    """
    from .admission import INVOKE, admit_one

    function = registry.get(spec.function_id)
    event = Event(name="workflows/function.invoked", data=spec.data, ts=now, received_at=now)
    event.save(using=db)
    decision = admit_one(
        db, function, event, origin=INVOKE, now=now, parent_run_id=parent.pk, parent_step_id=spec.step_id
    )
    return decision.run, decision.refusal


# -- matching incoming events ------------------------------------------------------------------


def waiters_for(
    db: str, events: list[Event], fields_by_name: dict[str, list[str]] | None = None
) -> dict[Any, list[Waiter]]:
    """The waiters each event matches: one indexed query for the whole batch, then if_exp."""
    if fields_by_name is None:
        fields_by_name, _ = intake_lookups(db, {e.name for e in events})
    if not fields_by_name:
        return {}
    keys_by_event: dict[Any, set[tuple[str, str, str]]] = {}
    for event in events:
        payload = event.as_payload()
        keys = set()
        for field in fields_by_name.get(event.name, ()):
            if not field:
                keys.add((event.name, "", ""))
                continue
            found, value = lookup(payload, field)
            if found:
                keys.add((event.name, field, match_key(value)))
        if keys:
            keys_by_event[event.pk] = keys
    all_keys = set().union(*keys_by_event.values()) if keys_by_event else set()
    if not all_keys:
        return {}
    values_by_field: dict[tuple[str, str], list[str]] = {}
    for name, field, value in all_keys:
        values_by_field.setdefault((name, field), []).append(value)
    condition = Q()
    for (name, field), values in values_by_field.items():
        condition |= Q(event_name=name, match_field=field, match_value__in=values)
    by_key: dict[tuple[str, str, str], list[Waiter]] = {}
    for waiter in Waiter.objects.using(db).filter(condition):
        by_key.setdefault((waiter.event_name, waiter.match_field, waiter.match_value), []).append(waiter)
    result: dict[Any, list[Waiter]] = {}
    for event in events:
        matched = [
            waiter
            for key in keys_by_event.get(event.pk, ())
            for waiter in by_key.get(key, ())
            if _waiter_matches(waiter, event)
        ]
        if matched:
            result[event.pk] = matched
    return result


def waiter_accepts(waiter: Waiter, event: Event) -> bool:
    """Whether ``event`` matches ``waiter`` (its name, match key, times and if_exp)."""
    if waiter.event_name != event.name:
        return False
    if waiter.match_field:
        found, value = lookup(event.as_payload(), waiter.match_field)
        if not found or match_key(value) != waiter.match_value:
            return False
    return _waiter_matches(waiter, event)


def _waiter_matches(waiter: Waiter, event: Event) -> bool:
    # Only events received after the wait began (or, for cancel rules, after the trigger).
    if waiter.created_at >= event.received_at:
        return False
    if waiter.expires_at is not None and waiter.expires_at <= event.received_at:
        return False
    return not waiter.if_exp or compiled(waiter.if_exp).matches(
        {"event": waiter.trigger, "async": event.as_payload()},
        # No run id in ``where``: it is the warning throttle's key, shared by every waiting run.
        where=f"{waiter.kind} on {waiter.event_name!r} if_exp", event_id=event.pk,
    )


# -- events taken in while a waiter was being registered -----------------------------------------
#
# Intake matches each event against the waiters that exist when it runs. A waiter that is
# registered at the same moment in another transaction (a run started with cancel rules, a
# wait_for_event that begins) cannot see an event taken in concurrently, nor be seen by it.
# So on PostgreSQL intake holds a shared advisory lock on each event name of its batch,
# and registering a waiter takes an exclusive one on its event name: registration waits
# for intakes of that name in flight to commit, then looks back at the events of that name
# already taken in since the waiter began; intakes that start later see the waiter.

_LOCK_CLASS = 0x5746  # "WF": the advisory-lock namespace of the engine


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big", signed=True)


def lock_event_names(db: str, *, shared: set[str] = frozenset(), exclusive: set[str] = frozenset()) -> None:
    """Take the advisory locks, in one global order (no deadlock between takers)."""
    if connections[db].vendor != "postgresql" or not (shared or exclusive):
        return
    modes: dict[int, str] = {}
    for name in shared:
        modes.setdefault(_name_key(name), "pg_advisory_xact_lock_shared")
    for name in exclusive:
        modes[_name_key(name)] = "pg_advisory_xact_lock"
    # One round trip; the target list is evaluated left to right, so in key order.
    keys = sorted(modes)
    calls = ", ".join(f"{modes[key]}(%s, %s)" for key in keys)
    with connections[db].cursor() as cursor:
        cursor.execute(f"SELECT {calls}", [value for key in keys for value in (_LOCK_CLASS, key)])


def cancel_rule_names(event_names: set[str]) -> set[str]:
    """The cancel events of the functions these events may start (from the code)."""
    return {
        rule.event
        for name in event_names
        for function, _ in registry.triggered_by(name)
        for rule in function.cancel
    }


def taken_in_matches(db: str, waiters: list[Waiter], now: datetime) -> list[tuple[Waiter, Event]]:
    """For each waiter, the first event already taken in that it would have matched.

    One query per event name: the events received after the earliest waiter began, whose
    intake committed (no queue item left), that triggered things (no error, not a repeat
    of a deduplicated id).
    """
    by_name: dict[str, list[Waiter]] = {}
    for waiter in waiters:
        by_name.setdefault(waiter.event_name, []).append(waiter)
    found = []
    for name, group in by_name.items():
        since = min(w.created_at for w in group)
        repeat = Exists(SeenEventId.objects.using(db).filter(key=OuterRef("dedup_id")).exclude(event=OuterRef("pk")))
        candidates = list(
            Event.objects.using(db)
            .filter(name=name, received_at__gt=since, received_at__lte=now, error__isnull=True)
            .exclude(Exists(QueueItem.objects.using(db).filter(event=OuterRef("pk"))))
            .exclude(Q(dedup_id__gt="") & repeat)
            .order_by("received_at", "pk")[:1000]
        )
        for waiter in group:
            match = next((event for event in candidates if waiter_accepts(waiter, event)), None)
            if match is not None:
                found.append((waiter, match))
    return found


# -- waking, resolving, cancelling -------------------------------------------------------------


def wake_run(db: str, run_id: Any) -> None:
    """Make a parked run due now; if a worker holds it, ask it to re-queue instead of parking."""
    now = clock.now()
    QueueItem.objects.using(db).filter(run_id=run_id, kind=QueueKind.RUN).update(
        due_at=Case(When(worker_id="", then=Value(now)), default=F("due_at")),
        wake=Case(When(worker_id="", then=Value(False)), default=Value(True)),
    )


def resolve_wait(db: str, waiter: Waiter, event: Event) -> bool:
    """Complete a wait_for_event step with ``event``; False if something else got there first."""
    if not Waiter.objects.using(db).filter(pk=waiter.pk).delete()[0]:
        return False
    done = Step.objects.using(db).filter(run_id=waiter.run_id, step_id=waiter.step_id, status=StepStatus.WAITING).update(
        status=StepStatus.COMPLETED, output=event.as_payload(), ended_at=clock.now()
    )
    if done:
        wake_run(db, waiter.run_id)
    return bool(done)


def cancel_run(db: str, run_id: Any, *, reason: str) -> bool:
    """Cancel a queued or running run: no later step starts. Returns False if it had ended."""
    error = {"name": "Cancelled", "message": reason, "stack": ""}
    # Deleting the items fences out a worker that is running the run right now.
    if not end_run(db, run_id, status=RunStatus.CANCELLED, error=error):
        return False
    run = Run.objects.using(db).select_related("event").get(pk=run_id)
    logger.info("run cancelled: %s %s (%s)", run.function_id, run.pk, reason)
    emit(db, "workflows/function.cancelled", {**_run_summary(run), "reason": reason})
    _resolve_parent(db, run, error={"name": "Cancelled", "message": f"invoked run {run.pk} was cancelled: {reason}", "stack": ""})
    for child in Run.objects.using(db).filter(parent_run_id=run_id).exclude(status__in=FINISHED_STATUSES).values_list("pk", flat=True):
        cancel_run(db, child, reason=f"its parent run {run_id} was cancelled")
    return True


# Ending a run. Every run that ends (completes, fails, is cancelled) goes through
# ``end_run``: the run gets its status, and everything it held is let go: its queue
# items (so its concurrency slots), its waiters, and the flow control slots it holds
# (a singleton key, an open debounce or batch). On PostgreSQL it is one statement
# (queries.END_RUN / END_HELD_RUNS, the latter shared by the runs a process's threads
# end at the same moment: group_commit.py); elsewhere the same writes one by one.
# Idempotency slots are kept: the key stays taken for 24 h after the run.
RELEASED_SLOT_KINDS = ("singleton", "debounce", "batch")


# How many runs this thread has ended (tried to): intake hands the runs it has just started
# to its threads as they are in memory, unless a run may have ended in the same batch.
_ends = threading.local()


def ends_so_far() -> int:
    return getattr(_ends, "count", 0)


def end_run(
    db: str, run_id: Any, *, status: str, output: Any = None, error: dict | None = None,
    held: Claimed | None = None,
) -> bool:
    """End an unfinished run; with ``held``, only while that lease is held. False if not."""
    from ..models import FlowSlot
    from . import group_commit, queries

    _ends.count = ends_so_far() + 1
    now = clock.now()
    if connections[db].vendor == "postgresql":
        if held is not None:
            row = {
                "item": held.id, "token": held.token, "run": str(run_id), "status": status, "output": output, "error": error,
                "now": now.isoformat(),
            }
            return group_commit.end_held_run(db, row)
        params = {
            "run": str(run_id), "status": status, "output": queries.jsonb(output), "error": queries.jsonb(error),
            "now": now,
        }
        with connections[db].cursor() as cursor:
            cursor.execute(queries.END_RUN, params)
            return bool(cursor.fetchone()[0])
    if held is not None and not queue.held(held, db).delete()[0]:
        return False
    ended = Run.objects.using(db).filter(pk=run_id).exclude(status__in=FINISHED_STATUSES).update(
        status=status, output=output, error=error, ended_at=now
    )
    if not ended:
        return False
    QueueItem.objects.using(db).filter(run_id=run_id).delete()
    Waiter.objects.using(db).filter(run_id=run_id).delete()
    FlowSlot.objects.using(db).filter(run_id=run_id, kind__in=RELEASED_SLOT_KINDS).delete()
    return True


def finish_is_quiet(run: Run, *, failed: bool) -> bool:
    """Whether ``run_finished`` has nothing to do for this run (no parent, no listener)."""
    if run.parent_run_id or registry.listened("workflows/function.finished"):
        return False
    return not (failed and registry.listened("workflows/function.failed"))


def run_finished(db: str, run: Run, *, output: Any = None, error: dict | None = None) -> None:
    """Side effects of a run that completed or failed: system events and a waiting parent."""
    summary = _run_summary(run)
    if error is None:
        emit(db, "workflows/function.finished", {**summary, "result": output})
        _resolve_parent(db, run, output=output)
    else:
        emit(db, "workflows/function.finished", {**summary, "error": error})
        emit(db, "workflows/function.failed", {**summary, "error": error})
        _resolve_parent(db, run, error=error)


def _run_summary(run: Run) -> dict:
    return {
        "function_id": run.function_id,
        "run_id": str(run.pk),
        "event": run.event.as_payload() if run.event else None,
    }


def _resolve_parent(db: str, run: Run, *, output: Any = None, error: dict | None = None) -> None:
    if not run.parent_run_id:
        return
    fields: dict[str, Any] = {"ended_at": clock.now()}
    if error is None:
        fields.update(status=StepStatus.COMPLETED, output=output)
    else:
        fields.update(status=StepStatus.FAILED, error=error)
    done = Step.objects.using(db).filter(
        run_id=run.parent_run_id, step_id=run.parent_step_id, status=StepStatus.WAITING
    ).update(**fields)
    if done:
        wake_run(db, run.parent_run_id)


def emit(db: str, name: str, data: dict) -> None:
    """Store a system event, if any function listens to it (unheard ones are not kept)."""
    if not registry.listened(name):
        return
    from ..events import Event as OutgoingEvent
    from ..events import store_events

    store_events([OutgoingEvent(name=name, data=data)], allow_system=True)
