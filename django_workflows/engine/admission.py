"""Admission: the one place where runs are created, and where flow control decides how.

Every path that creates a run (event intake, cron, ``step.invoke``, ``wf.replay``,
``wf.replay_events``) offers it here. Admission applies, in this order: paused,
idempotency, rate limit, singleton, debounce or batch, throttle, priority; and it gives
the run's queue item its concurrency lanes, which the claim enforces (``queue.py``).

Rules that keep state (all but paused and priority) lock one ``FlowSlot`` row per
function and key for the rest of the caller's transaction, so that workers admitting
events of the same key one after another see each other's decisions.

Runs without such rules are collected and inserted together by ``flush()`` (one bulk
insert for a whole intake batch); a run with stateful rules is inserted at once.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connections, transaction

from .. import jsonenc
from ..flow_control import IDEMPOTENCY_WINDOW, PRIORITY_MAX_SECONDS, key_text
from ..functions import Function, registry
from ..models import Event, FlowSlot, QueueItem, Run, Waiter
from ..states import FINISHED_STATUSES, QueueKind, RunStatus, WaiterKind
from . import clock, lifecycle, queries
from .queue import Claimed, lease_duration

logger = logging.getLogger("django_workflows.worker")

# Origins of a new run: which rules apply depends on it (see docs/flow-control.md).
EVENT, CRON, INVOKE, REPLAY = "event", "cron", "invoke", "replay"
# Priority moves a run's due time back by this much plus its priority, never forward:
# a run is never due later than it would be without priority (idle workers take it at
# once), and among prioritized runs the order is by due time minus priority.
PRIORITY_BASE = timedelta(seconds=PRIORITY_MAX_SECONDS)


@dataclass(frozen=True)
class Lanes:
    """The concurrency keys of a run's queue items (see ``QueueItem.lane``)."""

    lane: str
    limit: int = 0
    lane2: str = ""
    limit2: int = 0

    @property
    def limited(self) -> bool:
        return self.limit > 0 or bool(self.lane2)


@dataclass
class Refusal:
    """Why an offered run was not created: ``name`` is the error name an invoke step fails with."""

    name: str
    message: str


@dataclass
class Decision:
    run: Run | None = None  # the new run, or the pending run an event joined (debounce, batch)
    joined: bool = False
    refusal: Refusal | None = None


@dataclass
class _NewRun:
    run: Run
    due: datetime
    lanes: Lanes
    rules: list[Waiter] = field(default_factory=list)


def lanes_for(function: Function, payload: dict) -> Lanes:
    """The run's lanes: the keyed concurrency limit first (the narrower one), so that a
    key at its limit holds back only its own items; the other limit is checked second."""
    rules = function.flow.concurrency
    if not rules:
        return Lanes(function.id)
    named = []
    for rule in rules:
        if rule.compiled is None:
            named.append((1, function.id, rule.limit))
            continue
        value = rule.compiled.evaluate(
            {"event": payload}, where=f"function {function.id!r} concurrency key", event_id=payload.get("id")
        )
        prefix = "*env|" if rule.scope == "env" else f"{function.id}|"
        named.append((0, prefix + key_text(value), rule.limit))
    named.sort(key=lambda entry: entry[0])
    lane, limit = named[0][1], named[0][2]
    lane2, limit2 = (named[1][1], named[1][2]) if len(named) > 1 else ("", 0)
    return Lanes(lane, limit, lane2, limit2)


def describe_lane(lane: str) -> str:
    """``fn|"acct-42"`` -> ``key "acct-42"``; a plain function id -> ``function 'fn'``."""
    if "|" not in lane:
        return f"function {lane!r}"
    return f"key {lane.split('|', 1)[1]}"


class Admission:
    """Admits the runs of one transaction (an intake batch, a cron tick, a replay ...)."""

    def __init__(
        self, db: str, now: datetime | None = None, *, paused: set[str] | None = None,
        keep_for: str | None = None, keep_max: int = 0,
    ) -> None:
        self.db = db
        self.now = now or clock.now()
        self._paused = paused
        self.keep_for, self.keep_max = keep_for, keep_max
        self.pending: list[_NewRun] = []
        self.pending_ids: set = set()
        self.rules: list[Waiter] = []  # cancel rules of the runs admitted so far
        self._new_rules: list[Waiter] = []  # ... of the runs not inserted yet
        self.kept: list[Claimed] = []
        self.started = 0

    # -- the one entry point ---------------------------------------------------------------

    def offer(
        self, function: Function, event: Event | None, *, origin: str = EVENT, not_before: datetime | None = None,
        **fields: Any,
    ) -> Decision:
        """Create (or join, or refuse) a run of ``function`` for ``event`` under its rules.

        The run is due at ``not_before`` (a cron jitter), or at a delayed event's ``ts``,
        or now; ``fields`` are more ``Run`` fields (parent run, replay_of ...).
        """
        if function.id in self.paused:
            return self._refuse(function, event, "FunctionPaused", f"function {function.id!r} is paused")
        flow = function.flow
        payload = event.as_payload() if event is not None else {}
        now = self.now
        due = max(event.ts, now) if event is not None and origin == EVENT else now
        if not_before is not None:
            due = max(due, not_before)
        run = lifecycle.new_run(function, event, now=now, **fields)
        slots: list[FlowSlot] = []
        if flow.idempotency is not None and origin != REPLAY:
            key = key_text(flow.idempotency.evaluate(
                {"event": payload}, where=f"function {function.id!r} idempotency", event_id=payload.get("id")
            ))
            slot = self._slot("idempotency", function.id, key)
            if slot.run_id is not None and slot.opened_at > now - IDEMPOTENCY_WINDOW:
                return self._refuse(
                    function, event, "IdempotencyKeyTaken",
                    f"idempotency key {key} of function {function.id!r} already started run {slot.run_id} "
                    f"at {slot.opened_at.isoformat()} (one run per key per 24 h)",
                )
            slots.append(slot)
        if flow.rate_limit is not None:
            refusal = self._rate_limit(function, payload)
            if refusal is not None:
                return self._refuse(function, event, "RateLimited", refusal)
        if flow.singleton is not None:
            refusal = self._singleton(function, payload, run)
            if refusal is not None:
                return self._refuse(function, event, "SingletonRunActive", refusal)
        if origin in (EVENT, CRON) and flow.debounce is not None and event is not None:
            decision = self._debounce(function, event, payload, run)
        elif origin in (EVENT, CRON) and flow.batch is not None and event is not None:
            decision = self._batch(function, event, payload, run)
        else:
            if flow.throttle is not None:
                due = self._throttle(function, payload, run, due)
            due = self._prioritized(function, payload, due)
            self._add(run, due, lanes_for(function, payload), at_once=not flow.admits_in_bulk)
            decision = Decision(run=run)
        for slot in slots:  # the idempotency key is taken by the run the event started (or joined)
            assert decision.run is not None
            slot.run_id, slot.opened_at = decision.run.pk, now
            slot.save(using=self.db, update_fields=["run_id", "opened_at"])
        return decision

    @property
    def paused(self) -> set[str]:
        if self._paused is None:
            self._paused = lifecycle.paused_functions(self.db)
        return self._paused

    def _refuse(self, function: Function, event: Event | None, name: str, message: str) -> Decision:
        logger.info("%s starts no run of %s: %s", f"event {event.pk}" if event else "request", function.id, message)
        return Decision(refusal=Refusal(name, message))

    # -- stateful rules ---------------------------------------------------------------------

    def _slot(self, kind: str, function_id: str, key: str) -> FlowSlot:
        return locked_slot(self.db, kind, function_id, key, self.now)

    def _key(self, function: Function, rule: Any, what: str, payload: dict) -> str:
        return rule_key(function, rule, what, payload)

    def _rate_limit(self, function: Function, payload: dict) -> str | None:
        """GCRA: ``limit`` runs per ``period``, spread out; over it, the event starts no run."""
        rule = function.flow.rate_limit
        assert rule is not None
        key = self._key(function, rule, "rate_limit", payload)
        slot = self._slot("rate_limit", function.id, key)
        interval = rule.period_delta / rule.limit
        tolerance = rule.period_delta - interval
        tat = max(slot.tat or self.now, self.now)
        if tat - tolerance > self.now:
            return f"rate limit of {rule.limit} per {rule.period} reached{_for_key(key)}; next run allowed at {(tat - tolerance).isoformat()}"
        slot.tat = tat + interval
        slot.save(using=self.db, update_fields=["tat"])
        return None

    def _throttle(self, function: Function, payload: dict, run: Run, due: datetime) -> datetime:
        """GCRA: starts are spread ``period / limit`` apart, ``burst`` more may start at once;
        a run over the limit is queued for its turn (first in, first out), never dropped."""
        rule = function.flow.throttle
        assert rule is not None
        key = self._key(function, rule, "throttle", payload)
        slot = self._slot("throttle", function.id, key)
        interval = throttle_interval(rule)
        tat = max(slot.tat or due, due)
        start = max(due, tat - interval * rule.burst)
        slot.tat = tat + interval
        slot.save(using=self.db, update_fields=["tat"])
        if start > due:
            run.status_detail = f"throttled: {rule.limit} starts per {rule.period}{_for_key(key)}; starts at {start.isoformat()}"
            run.held_since = self.now
        return start

    def _singleton(self, function: Function, payload: dict, run: Run) -> str | None:
        rule = function.flow.singleton
        assert rule is not None
        key = self._key(function, rule, "singleton", payload)
        self.flush()  # an active run of this key may be pending in this batch
        slot = self._slot("singleton", function.id, key)
        active = slot.run_id is not None and Run.objects.using(self.db).filter(pk=slot.run_id).exclude(
            status__in=FINISHED_STATUSES
        ).exists()
        if active and rule.mode == "skip":
            return f"singleton: run {slot.run_id}{_for_key(key)} is still active"
        if active:
            lifecycle.cancel_run(self.db, slot.run_id, reason=f"replaced by run {run.pk} (Singleton mode \"cancel\")")
            slot = self._slot("singleton", function.id, key)  # ending the run released the slot
        slot.run_id, slot.opened_at = run.pk, self.now
        slot.save(using=self.db, update_fields=["run_id", "opened_at"])
        return None

    def _open_run(self, slot: FlowSlot) -> tuple[Run, QueueItem] | None:
        """The slot's collecting run, if it has not started: its item unheld, locked."""
        if slot.run_id is None:
            return None
        item = (
            QueueItem.objects.using(self.db).select_for_update()
            .filter(run_id=slot.run_id, kind=QueueKind.RUN, worker_id="").first()
        )
        if item is None:
            return None
        run = Run.objects.using(self.db).filter(pk=slot.run_id, status=RunStatus.QUEUED).first()
        return (run, item) if run is not None else None

    def _debounce(self, function: Function, event: Event, payload: dict, run: Run) -> Decision:
        """Each event restarts the quiet period and becomes the run's event; the run starts
        when the period passes quietly or ``timeout`` after the first event."""
        rule = function.flow.debounce
        assert rule is not None
        key = self._key(function, rule, "debounce", payload)
        self.flush()
        slot = self._slot("debounce", function.id, key)
        found = self._open_run(slot)
        opened = slot.opened_at if found is not None else self.now
        due = self.now + rule.period_delta
        if rule.timeout_delta is not None:
            due = min(due, opened + rule.timeout_delta)
        detail = f"debounced{_for_key(key)}: starts at {due.isoformat()} unless another event arrives"
        if found is not None:
            pending, item = found
            Run.objects.using(self.db).filter(pk=pending.pk).update(event=event, status_detail=detail)
            lanes = lanes_for(function, payload)  # concurrency keys follow the run's event
            QueueItem.objects.using(self.db).filter(pk=item.pk).update(
                due_at=due, lane=lanes.lane, lane_limit=lanes.limit, lane2=lanes.lane2, lane2_limit=lanes.limit2
            )
            if function.cancel:  # the cancel rules match against the run's (new) event
                Waiter.objects.using(self.db).filter(run_id=pending.pk, kind=WaiterKind.CANCEL).delete()
                pending.event = event
                lifecycle.add_waiters(self.db, lifecycle.cancel_waiters(pending))
            logger.info("event %s debounces run %s of %s until %s", event.pk, pending.pk, function.id, due.isoformat())
            return Decision(run=pending, joined=True)
        run.status_detail, run.held_since = detail, self.now
        slot.run_id, slot.opened_at = run.pk, self.now
        slot.save(using=self.db, update_fields=["run_id", "opened_at"])
        self._add(run, due, lanes_for(function, payload), at_once=True)
        return Decision(run=run)

    def _batch(self, function: Function, event: Event, payload: dict, run: Run) -> Decision:
        """Events join the open batch of their key; it starts when full or ``timeout`` after
        its first event."""
        rule = function.flow.batch
        assert rule is not None
        key = self._key(function, rule, "batch", payload)
        self.flush()
        slot = self._slot("batch", function.id, key)
        found = self._open_run(slot)
        if found is not None:
            pending, item = found
            ids = [*pending.batch_event_ids, str(event.pk)]
            full = len(ids) >= rule.max_size
            detail = "" if full else _batch_detail(len(ids), rule.max_size, item.due_at)
            Run.objects.using(self.db).filter(pk=pending.pk).update(batch_event_ids=ids, status_detail=detail)
            if full:
                QueueItem.objects.using(self.db).filter(pk=item.pk).update(due_at=self.now)
                slot.run_id = None
                slot.save(using=self.db, update_fields=["run_id"])
                self.started += 1  # a run became due: wake the other workers
            return Decision(run=pending, joined=True)
        run.batch_event_ids = [str(event.pk)]
        if rule.max_size == 1:
            self._add(run, self.now, lanes_for(function, payload), at_once=True)
            return Decision(run=run)
        due = self.now + rule.timeout_delta
        run.status_detail, run.held_since = _batch_detail(1, rule.max_size, due), self.now
        slot.run_id, slot.opened_at = run.pk, self.now
        slot.save(using=self.db, update_fields=["run_id", "opened_at"])
        self._add(run, due, lanes_for(function, payload), at_once=True)
        return Decision(run=run)

    def _prioritized(self, function: Function, payload: dict, due: datetime) -> datetime:
        rule = function.flow.priority
        if rule is None or due > self.now:
            return due  # a delayed run keeps its time: priority only reorders what is due
        value = rule.compiled.evaluate(
            {"event": payload}, where=f"function {function.id!r} priority", event_id=payload.get("id")
        ) if rule.compiled else None
        seconds = value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
        seconds = max(-PRIORITY_MAX_SECONDS, min(PRIORITY_MAX_SECONDS, seconds))
        return due - PRIORITY_BASE - timedelta(seconds=seconds)

    # -- inserting --------------------------------------------------------------------------

    def _add(self, run: Run, due: datetime, lanes: Lanes, *, at_once: bool) -> None:
        rules = lifecycle.cancel_waiters(run)
        self.pending.append(_NewRun(run, due, lanes))
        self.pending_ids.add(run.pk)
        self.rules.extend(rules)
        self._new_rules.extend(rules)
        if at_once:
            self.flush()

    def cancel_rules_matching(self, event: Event) -> list[Waiter]:
        return [rule for rule in self.rules if lifecycle.waiter_accepts(rule, event)]

    def flush(self) -> None:
        """Insert the pending runs (and their queue items and cancel rules)."""
        if not self.pending:
            return
        room = max(self.keep_max - len(self.kept), 0)
        self.kept += insert_runs(self.db, self.pending, keep_for=self.keep_for, keep_max=room)
        self.started += len(self.pending)
        self.pending, self.pending_ids = [], set()
        # A cancel event taken in by another worker while these runs were being started
        # (see lifecycle.lock_event_names): apply it now.
        for rule, event in lifecycle.taken_in_matches(self.db, self._new_rules, clock.now()):
            lifecycle.cancel_run(self.db, rule.run_id, reason=f"cancelled by event {event.name} {event.pk}")
        self._new_rules = []


def insert_runs(
    db: str, new_runs: list[_NewRun], *, keep_for: str | None = None, keep_max: int = 0
) -> list[Claimed]:
    """Insert runs, their queue items and their cancel rules.

    With ``keep_for``, up to ``keep_max`` runs that are due now and have no concurrency
    limit are inserted already leased to that worker (it runs them next: no claim, no
    wake-up of others); they are returned as claims.
    """
    now = clock.now()
    lease_end = now + lease_duration()
    items, kept = [], []
    for new in new_runs:
        lanes = new.lanes
        item = QueueItem(
            kind=QueueKind.RUN, run=new.run, function_id=new.run.function_id, due_at=new.due,
            lane=lanes.lane, lane_limit=lanes.limit, lane2=lanes.lane2, lane2_limit=lanes.limit2,
        )
        if keep_for and len(kept) < keep_max and new.due <= now and not lanes.limited:
            item.due_at, item.worker_id, item.lease_token, item.claims = lease_end, keep_for, 1, 1
            if not _throttled(new.run.function_id):  # (a throttled run passes its gate when it starts)
                new.run.status, new.run.started_at = RunStatus.RUNNING, now
            kept.append(item)
        items.append(item)
    if connections[db].vendor == "postgresql":
        _insert_postgres(db, [new.run for new in new_runs], items)
    else:
        Run.objects.using(db).bulk_create([new.run for new in new_runs])
        QueueItem.objects.using(db).bulk_create(items)
    waiters = [w for new in new_runs for w in lifecycle.cancel_waiters(new.run)]
    if waiters:
        lifecycle.add_waiters(db, waiters)
    runs = {new.run.pk: new.run for new in new_runs}
    return [
        Claimed(
            id=item.pk, kind=QueueKind.RUN, run_id=str(item.run_id), event_id=None, step_id="", token=1, claims=1,
            fresh_run=run if (run := runs[item.run_id]).status == RunStatus.RUNNING else None,
        )
        for item in kept
    ]


def _throttled(function_id: str) -> bool:
    function = registry._functions.get(function_id)
    return function is None or function.flow.throttle is not None


def _insert_postgres(db: str, runs: list[Run], items: list[QueueItem]) -> None:
    """One statement for the runs and their items (bulk_create's per-value work in Python
    was most of a one-step run's cost in the worker); sets the items' ids."""
    found = queries.fetch(db, queries.INSERT_RUNS_POSTGRES, {"runs": rows_json(runs), "items": rows_json(items, skip="id")})
    ids = {str(run_id): item_id for item_id, run_id in found}
    for item in items:
        item.pk = ids[str(item.run_id)]


def rows_json(objects: list[Any], *, skip: str = "") -> str:
    """Model instances as a JSON array of {column: value} (for jsonb_populate_recordset)."""
    fields = [f for f in objects[0]._meta.concrete_fields if f.column != skip] if objects else []
    return jsonenc.dumps([{f.column: _json_value(getattr(obj, f.attname)) for f in fields} for obj in objects])


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def locked_slot(db: str, kind: str, function_id: str, key: str, now: datetime) -> FlowSlot:
    """The (kind, function, key) state row, created if missing, locked until commit."""
    slots = FlowSlot.objects.using(db)
    for _ in range(3):  # pruning may delete an expired row between the two statements
        slots.bulk_create([FlowSlot(kind=kind, function_id=function_id, key=key, opened_at=now)], ignore_conflicts=True)
        slot = slots.select_for_update().filter(kind=kind, function_id=function_id, key=key).first()
        if slot is not None:
            return slot
    raise RuntimeError(f"flow control state {kind} {function_id} {key} could not be created")


def rule_key(function: Function, rule: Any, what: str, payload: dict) -> str:
    """The key text of a rule for an event ('' for a rule without a key)."""
    if rule.compiled is None:
        return ""
    return key_text(rule.compiled.evaluate(
        {"event": payload}, where=f"function {function.id!r} {what} key", event_id=payload.get("id")
    ))


# Throttled starts are spaced 1% more than period / limit apart. GCRA on exact spacing puts
# limit + burst + 1 starts in a closed window of one period; the margin keeps clocks of
# different machines a few milliseconds apart from ever starting that one run too many.
THROTTLE_MARGIN = 1.01


def throttle_interval(rule: Any) -> timedelta:
    return rule.period_delta * THROTTLE_MARGIN / rule.limit


# A run whose turn is this close waits for it in its thread, its turn reserved; a later
# turn puts it back in the queue, due then.
THROTTLE_WAIT_IN_THREAD = timedelta(milliseconds=250)


@dataclass(frozen=True)
class ThrottleTurn:
    at: datetime
    reserved: bool  # True: start at ``at`` (the turn is taken); False: come back then


def throttle_gate(db: str, function: Function, run: Run, now: datetime) -> ThrottleTurn | None:
    """A throttled run about to start: None if it may start now, else its turn.

    Admission spread the runs' due times; this second GCRA, on the moments runs really
    start, keeps the limit exact when some start late (a busy worker, the intake's
    latency) and the next ones on time. One short transaction on the key's row.
    """
    rule = function.flow.throttle
    assert rule is not None
    payload = run.event.as_payload() if run.event else {}
    key = rule_key(function, rule, "throttle", payload)
    interval = throttle_interval(rule)
    with transaction.atomic(using=db):
        slot = locked_slot(db, "throttle_start", function.id, key, now)
        tat = max(slot.tat or now, now)
        allowed_at = tat - interval * rule.burst
        if allowed_at - now > THROTTLE_WAIT_IN_THREAD:
            return ThrottleTurn(allowed_at, reserved=False)
        slot.tat = tat + interval
        slot.save(using=db, update_fields=["tat"])
    return ThrottleTurn(allowed_at, reserved=True) if allowed_at > now else None


def _for_key(key: str) -> str:
    return f" (key {key})" if key else ""


def _batch_detail(size: int, max_size: int, due: datetime | None) -> str:
    when = due.isoformat() if due else "when full"
    return f"collecting a batch: {size} of {max_size} events; starts when full or at {when}"


def admit_one(
    db: str, function: Function, event: Event | None, *, origin: str, now: datetime | None = None,
    not_before: datetime | None = None, **fields: Any,
) -> Decision:
    """Admit a single run (cron, invoke, replay) in the caller's transaction."""
    admission = Admission(db, now)
    decision = admission.offer(function, event, origin=origin, not_before=not_before, **fields)
    admission.flush()
    return decision
