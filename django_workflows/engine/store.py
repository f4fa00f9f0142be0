"""Running a claimed run item against the database, every write fenced by the lease."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connections, transaction
from django.db.models import Case, Value, When

from .. import conf
from ..context import EventInfo, Suspend
from ..durations import format_duration
from ..errors import UnknownFunctionError
from ..functions import registry
from ..models import Attempt, Event, QueueItem, Run, Step, Waiter
from ..states import FINISHED_STATUSES, QueueKind, RunStatus, StepStatus, WaiterKind
from . import admission, clock, group_commit, lifecycle, queries, queue
from .executor import CheckpointFailed, LeaseLost, Outcome, execute
from .queue import Claimed, lease_duration
from .records import StepRecord, one_line

logger = logging.getLogger("django_workflows.worker")
T = TypeVar("T")

def _decoded(value: Any) -> Any:
    # Django has psycopg hand jsonb columns over as text (JSONField decodes them itself).
    return json.loads(value) if isinstance(value, str) else value


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _moment(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def load_run(db: str, run_id: str, now: datetime) -> tuple[Run | None, dict[str, StepRecord]]:
    """The run (its ``status`` as it was before) with its event and steps; a queued run is
    marked running (``started_at`` = ``now``) on the way."""
    if connections[db].vendor != "postgresql":
        run = Run.objects.using(db).select_related("event").filter(pk=run_id).first()
        if run is not None and run.status == RunStatus.QUEUED:
            Run.objects.using(db).filter(pk=run.pk, status=RunStatus.QUEUED).update(
                status=RunStatus.RUNNING, started_at=now
            )
        return run, load_steps(db, run_id) if run is not None else {}
    rows = queries.fetch(db, queries.LOAD_RUN_POSTGRES, {"now": now, "run": str(run_id)})
    row = rows[0] if rows else None
    if row is None:
        return None, {}
    (function_id, status, attempts, queued_at, started_at, parent_run_id, parent_step_id,
     batch_event_ids, event_id, name, data, ts, received_at, dedup_id, status_detail, held_since, steps) = row
    run = Run(
        id=run_id, function_id=function_id, status=status, attempts=attempts, queued_at=queued_at,
        started_at=started_at, parent_run_id=parent_run_id, parent_step_id=parent_step_id,
        batch_event_ids=_decoded(batch_event_ids), event_id=event_id,
        status_detail=status_detail, held_since=held_since,
    )
    if event_id is not None:
        run.event = Event(id=event_id, name=name, data=_decoded(data), ts=ts, received_at=received_at, dedup_id=dedup_id)
    records = {
        s["step_id"]: StepRecord(
            step_id=s["step_id"], kind=s["kind"], status=s["status"], output=s["output"], error=s["error"],
            attempts=s["attempts"], started_at=_moment(s["started_at"]), ended_at=_moment(s["ended_at"]),
            scheduled_at=_moment(s["scheduled_at"]), stored=True,
        )
        for s in steps or ()
    }
    return run, records


# A lost connection (the database restarted, a backend was terminated) is worth retrying
# on a new connection; anything else (a constraint, bad data) would fail the same way again.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)
WRITE_RETRY_DELAYS = (0.1, 0.5, 1.0, 2.0, 4.0)


class DatabaseCheckpointer:
    """Records a run's progress; each write first checks that this worker still holds the lease."""

    def __init__(
        self, db: str, item: Claimed, run: Run, stopping: threading.Event | None, deadline: datetime | None = None,
        lease_renewed_at: Callable[[], float] | None = None, worker_id: str = "",
    ) -> None:
        self.db = db
        self.worker_id = worker_id
        self.began = clock.now()  # the handler's attempt (its code between steps) began here
        self.item = item
        self.run = run
        self.run_id = str(run.pk)
        self.stopping = stopping
        self.deadline = deadline  # Timeouts(finish=...): never park past it
        # When the worker last knew the lease was held (time.monotonic()); None: no lease
        # to watch (drain() in tests).
        self.lease_renewed_at = lease_renewed_at
        self._confirmed_at = time.monotonic()

    def _retrying(self, write: Callable[[], T]) -> T:
        """Run a write; on a lost connection retry it on a new one (the lease still fences it)."""
        for delay in (*WRITE_RETRY_DELAYS, None):
            try:
                return write()
            except DatabaseError as exc:
                connection = connections[self.db]
                if delay is None or not isinstance(exc, TRANSIENT_ERRORS) or connection.in_atomic_block:
                    raise CheckpointFailed(str(exc)) from exc
                logger.warning(
                    "run %s: recording progress failed (%s); retrying in %.1fs on a new connection",
                    self.run_id, one_line(exc), delay,
                )
                connection.close()
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _in_lease(self, write: Callable[[], T], *, lock_names: set[str] = frozenset()) -> T:
        """Run ``write`` in a transaction that first checks that this worker holds the lease.

        Nested (an atomic step, or drain() inside a test's transaction): a savepoint, so that
        a refused write rolls back only itself; otherwise a plain short transaction.
        """

        def attempt() -> T:
            nested = connections[self.db].in_atomic_block
            with transaction.atomic(using=self.db, savepoint=nested):
                # Event-name locks first, then the item's row (the order intake takes them in).
                lifecycle.lock_event_names(self.db, exclusive=lock_names)
                # The UPDATE takes the item's row lock: a worker that took the item over has
                # bumped the token, so a stale worker matches nothing and writes nothing.
                if not queue.held(self.item, self.db).update(claims=0):
                    raise LeaseLost()
                return write()

        return self._retrying(attempt)

    def _check_lease(self) -> None:
        """Before a step starts: if the lease may have lapsed (the worker was frozen, its
        heartbeat failed), confirm and extend it, or stop: another worker may own the run."""
        if self.lease_renewed_at is None:
            return
        known = max(self.lease_renewed_at(), self._confirmed_at)
        if time.monotonic() - known < lease_duration().total_seconds() / 2:
            return
        lease_end = clock.now() + lease_duration()
        renewed = self._retrying(lambda: queue.held(self.item, self.db).update(due_at=lease_end))
        if not renewed:
            logger.warning("run %s: lease lapsed while this worker was stalled; another worker has it", self.run_id)
            raise LeaseLost()
        self._confirmed_at = time.monotonic()

    def atomic(self) -> Any:
        return transaction.atomic(using=self.db)

    def before_new_step(self) -> None:
        if self.deadline is not None and clock.now() >= self.deadline:
            # Timeouts(finish=...): the run ran too long; no later step starts.
            with transaction.atomic(using=self.db):
                lifecycle.cancel_run(self.db, self.run_id, reason=f"did not finish by {self.deadline.isoformat()} (Timeouts.finish)")
            raise LeaseLost()
        if self.stopping is not None and self.stopping.is_set():
            raise Suspend(clock.now())  # worker is stopping: hand the run to another worker
        self._check_lease()

    def _write_step(self, record: StepRecord) -> None:
        fields = {
            "kind": record.kind,
            "status": record.status,
            "output": record.output,
            "error": record.error,
            "attempts": record.attempts,
            "started_at": record.started_at,
            "ended_at": record.ended_at,
            "scheduled_at": record.scheduled_at,
        }
        steps = Step.objects.using(self.db)
        # Update first: ``stored`` may be stale after a retried transaction rolled back.
        if not steps.filter(run_id=self.run_id, step_id=record.step_id).update(**fields):
            steps.create(run_id=self.run_id, step_id=record.step_id, **fields)

    def _write_attempt(self, step_id: str, number: int, started_at: datetime, outcome: str, error: dict | None) -> None:
        Attempt.objects.using(self.db).create(
            run_id=self.run_id, step_id=step_id, number=number, started_at=started_at, ended_at=clock.now(),
            outcome=outcome, error=error, worker_id=self.worker_id,
        )

    def _write_step_attempt(self, record: StepRecord) -> None:
        """The attempt that ``record``'s checkpoint ends, if its code ran (once)."""
        if record.attempt_started_at is not None:
            self._write_attempt(record.step_id, record.attempts, record.attempt_started_at, record.status, record.error)

    def record_step(self, record: StepRecord) -> None:
        if connections[self.db].vendor != "postgresql":
            def write() -> None:
                self._write_step(record)
                self._write_step_attempt(record)

            self._in_lease(write)
            record.stored, record.attempt_started_at = True, None
            return
        row = {
            "item": self.item.id, "token": self.item.token, "run": self.run_id, "step_id": record.step_id,
            "kind": record.kind, "status": record.status, "output": record.output, "error": record.error,
            "attempts": record.attempts, "started_at": _iso(record.started_at), "ended_at": _iso(record.ended_at),
            "scheduled_at": _iso(record.scheduled_at), "attempt_started_at": _iso(record.attempt_started_at),
            "worker": self.worker_id,
        }
        if not self._retrying(lambda: group_commit.checkpoint(self.db, row)):
            raise LeaseLost()
        record.stored, record.attempt_started_at = True, None

    def suspend(
        self, signal: Suspend | None, *, until: datetime | None, run_attempts: int | None = None,
        error: dict | None = None,
    ) -> None:
        """Park the run until ``until`` (or until woken). ``error``: the handler's code
        between steps failed (attempt ``run_attempts``) and is retried then."""
        if self.deadline is not None and (until is None or until > self.deadline):
            until = self.deadline
        now = clock.now()

        def write() -> None:
            wake_at = (self._start_effects(signal, now) if signal is not None else None) or until
            if run_attempts is not None:
                Run.objects.using(self.db).filter(pk=self.run_id).update(attempts=run_attempts)
            if error is not None:
                self._write_attempt("", run_attempts or 1, self.began, StepStatus.RETRYING, error)
            # Woken while we held it (an event, an invoked run or the last branch arrived):
            # due now instead of parked.
            QueueItem.objects.using(self.db).filter(pk=self.item.id).update(
                worker_id="", claims=0, wake=False,
                due_at=Case(When(wake=True, then=Value(now)), default=Value(wake_at)),
            )

        self._in_lease(write, lock_names={signal.wait.event} if signal is not None and signal.wait else set())

    def _start_effects(self, signal: Suspend, now: datetime) -> datetime | None:
        """Write what a suspending step starts; returns an earlier wake-up time if it needs one."""
        if signal.invoke is not None and signal.pending is not None:
            child, refusal = lifecycle.start_invoked_run(self.db, self.run, signal.invoke, now=now)
            if child is None:
                pending = signal.pending
                pending.status, pending.ended_at = StepStatus.FAILED, now
                pending.error = {
                    "name": refusal.name,
                    "message": f"cannot invoke {signal.invoke.function_id!r}: {refusal.message}",
                    "stack": "",
                }
                self._write_step(pending)
                return now  # resume at once: the invoke raises StepError
        if signal.pending is not None:
            self._write_step(signal.pending)
            self._write_step_attempt(signal.pending)  # a step that failed and is retried later
            signal.pending.attempt_started_at = None
        if signal.wait is not None:
            wait = signal.wait
            trigger = lifecycle._run_trigger(self.run)
            waiter = lifecycle.make_waiter(
                WaiterKind.WAIT, self.run_id, wait.step_id, wait.event, wait.match, wait.if_exp, trigger,
                created_at=signal.pending.started_at if signal.pending and signal.pending.started_at else now,
                expires_at=wait.expires_at,
            )
            lifecycle.add_waiters(self.db, [waiter])
            # An event taken in by another worker while this wait began resolves it now.
            for found, event in lifecycle.taken_in_matches(self.db, [waiter], clock.now()):
                lifecycle.resolve_wait(self.db, found, event)
        if signal.branches:
            existing = set(
                QueueItem.objects.using(self.db)
                .filter(run_id=self.run_id, kind=QueueKind.BRANCH)
                .values_list("step_id", flat=True)
            )
            # Branches execute steps: they count against the run's concurrency lanes.
            lanes = QueueItem.objects.using(self.db).filter(pk=self.item.id).values(
                "lane", "lane_limit", "lane2", "lane2_limit"
            ).first() or {"lane": self.run.function_id}
            QueueItem.objects.using(self.db).bulk_create([
                QueueItem(
                    kind=QueueKind.BRANCH, run_id=self.run_id, function_id=self.run.function_id,
                    step_id=sid, due_at=now, **lanes,
                )
                for sid in signal.branches if sid not in existing
            ])
        return None

    def _finish(self, *, output: Any = None, error: dict | None = None, handler_failed: bool = False) -> None:
        """End the run through ``lifecycle.end_run`` (the one way a run ends), then its
        hooks (system events, a waiting parent). A run nothing waits on ends in one
        statement on PostgreSQL, outside any transaction."""
        status = RunStatus.COMPLETED if error is None else RunStatus.FAILED

        def write() -> None:
            if handler_failed:  # the handler's code between steps failed for good: its last attempt
                self._write_attempt("", self.run.attempts + 1, self.began, StepStatus.FAILED, error)
            if not lifecycle.end_run(self.db, self.run_id, status=status, output=output, error=error, held=self.item):
                raise LeaseLost()
            lifecycle.run_finished(self.db, self.run, output=output, error=error)

        quiet = lifecycle.finish_is_quiet(self.run, failed=error is not None) and not handler_failed
        if quiet and connections[self.db].vendor == "postgresql":
            self._retrying(write)
        else:
            self._retrying(lambda: self._atomic(write))

    def _atomic(self, write: Callable[[], T]) -> T:
        with transaction.atomic(using=self.db, savepoint=connections[self.db].in_atomic_block):
            return write()

    def complete(self, output: Any) -> None:
        self._finish(output=output)

    def fail(self, error: dict) -> None:
        # A step that spent its retries fails the run with its step_id; its attempts are
        # recorded. Any other error is the handler's own, between steps.
        self._finish(error=error, handler_failed="step_id" not in error)

    def send_events(self, events: list) -> list[str]:
        from ..events import store_events

        return store_events(events, allow_system=False)

    def _reload(self, record: StepRecord) -> StepRecord:
        return load_steps(self.db, self.run_id, step_id=record.step_id)[record.step_id]

    def expire_wait(self, record: StepRecord) -> StepRecord:
        """The wait timed out, unless an event resolved it first (whoever deletes the waiter wins)."""
        def write() -> bool:
            won = Waiter.objects.using(self.db).filter(run_id=self.run_id, step_id=record.step_id).delete()[0]
            if won:
                record.status, record.output, record.ended_at = StepStatus.COMPLETED, None, clock.now()
                self._write_step(record)
            return bool(won)

        return record if self._in_lease(write) else self._reload(record)

    def expire_invoke(self, record: StepRecord) -> StepRecord:
        """The invoke timed out, unless the invoked run finished first (compare-and-set on the step)."""
        error = {"name": "InvokeTimeoutError", "message": f"invoked run did not finish by {record.scheduled_at}", "stack": ""}
        won = self._in_lease(
            lambda: Step.objects.using(self.db).filter(
                run_id=self.run_id, step_id=record.step_id, status=StepStatus.WAITING
            ).update(status=StepStatus.FAILED, error=error, ended_at=clock.now())
        )
        return self._reload(record) if not won else StepRecord(**{**record.__dict__, "status": StepStatus.FAILED, "error": error})

    def branch_done(self) -> None:
        """Drop this branch's item; the last branch of a group wakes the run."""
        def write() -> None:
            # Lock the run's item first so that two last branches cannot both miss each other.
            list(QueueItem.objects.using(self.db).select_for_update().filter(run_id=self.run_id, kind=QueueKind.RUN))
            QueueItem.objects.using(self.db).filter(pk=self.item.id).delete()
            others = QueueItem.objects.using(self.db).filter(run_id=self.run_id, kind=QueueKind.BRANCH).exists()
            if not others:
                lifecycle.wake_run(self.db, self.run_id)

        self._in_lease(write)


def event_info(event: Event | None, fallback_ts: datetime) -> EventInfo:
    if event is None:
        return EventInfo(id="", name="", data={}, ts=fallback_ts)
    return EventInfo(id=event.dedup_id or str(event.id), name=event.name, data=event.data, ts=event.ts)


def run_events(db: str, run: Run) -> list[EventInfo]:
    """``ctx.events``: the run's batch of events (in the order they came), or its one event."""
    ids = run.batch_event_ids or []
    if len(ids) <= 1:
        return [event_info(run.event, run.queued_at)]
    found = Event.objects.using(db).in_bulk([uuid.UUID(str(pk)) for pk in ids])
    return [event_info(found[uuid.UUID(str(pk))], run.queued_at) for pk in ids if uuid.UUID(str(pk)) in found]


def load_steps(db: str, run_id: str, step_id: str | None = None) -> dict[str, StepRecord]:
    steps = Step.objects.using(db).filter(run_id=run_id)
    if step_id is not None:
        steps = steps.filter(step_id=step_id)
    return {
        s.step_id: StepRecord(
            step_id=s.step_id,
            kind=s.kind,
            status=s.status,
            output=s.output,
            error=s.error,
            attempts=s.attempts,
            started_at=s.started_at,
            ended_at=s.ended_at,
            scheduled_at=s.scheduled_at,
            stored=True,
        )
        for s in steps
    }


UNKNOWN_FUNCTION_RETRY = timedelta(seconds=60)
UNKNOWN_FUNCTION_GIVE_UP = timedelta(hours=24)


def process_run(
    item: Claimed, *, db: str, stopping: threading.Event | None = None,
    lease_renewed_at: Callable[[], float] | None = None, worker_id: str = "",
) -> Outcome | None:
    """Run or resume the run behind a claimed item (or one parallel branch of it).

    The engine's own signals never escape: a lost lease or a write the database refused
    (after retries) ends this attempt, and the item is taken again once its lease lapses.
    """
    try:
        return _process_run(item, db=db, stopping=stopping, lease_renewed_at=lease_renewed_at, worker_id=worker_id)
    except LeaseLost:
        return Outcome.LOST
    except CheckpointFailed as exc:
        logger.error("run %s: could not record progress (%s); it resumes when its lease lapses", item.run_id, exc)
        connections[db].close()  # a broken connection must not fail the thread's next item
        return None


def _process_run(
    item: Claimed, *, db: str, stopping: threading.Event | None, lease_renewed_at: Callable[[], float] | None,
    worker_id: str = "",
) -> Outcome | None:
    now = clock.now()
    fresh = item.fresh_run is not None  # created by this worker's intake, already running
    run, steps = (item.fresh_run, {}) if fresh else load_run(db, str(item.run_id), now)
    if run is None or run.status in FINISHED_STATUSES:
        _drop(db, item)
        return None
    checkpointer = DatabaseCheckpointer(db, item, run, stopping, lease_renewed_at=lease_renewed_at, worker_id=worker_id)
    try:
        function = registry.get(run.function_id)
    except UnknownFunctionError as exc:
        return _hold_for_unknown_function(checkpointer, run, now, str(exc))
    if run.status_detail:
        Run.objects.using(db).filter(pk=run.pk).update(status_detail="", held_since=None)
    max_crashes = int(conf.get("MAX_CRASHES"))
    if item.claims > max_crashes:
        return _fail_early(
            checkpointer, run, "WorkerCrashError",
            f"the worker running this run stopped {item.claims - 1} times in a row without "
            f"recording progress (MAX_CRASHES is {max_crashes}); a step may be killing its worker",
        )
    if _timed_out(db, function, run, now):
        return Outcome.FAILED
    if run.status == RunStatus.QUEUED and function.flow.throttle is not None:
        turn = admission.throttle_gate(db, function, run, now)
        if turn is not None and not turn.reserved:
            return _hold_for_throttle(checkpointer, run, turn.at)
        if turn is not None:  # its turn is a few milliseconds away: wait for it, then start
            time.sleep(max(0.0, (turn.at - clock.now()).total_seconds()))
            now = turn.at  # the run starts at its turn (started_at is what the limit is kept on)
            Run.objects.using(db).filter(pk=run.pk).update(started_at=now)
    if run.status == RunStatus.QUEUED:
        run.started_at = now
    if run.status == RunStatus.QUEUED or fresh:
        logger.info("run started: %s %s", run.function_id, run.pk)
    if function.timeouts is not None and function.timeouts.finish_delta is not None:
        checkpointer.deadline = run.started_at + function.timeouts.finish_delta
    started = time.monotonic()
    outcome = execute(
        function,
        run_id=str(run.pk),
        events=run_events(db, run),
        steps=steps,
        run_attempts=run.attempts,
        checkpointer=checkpointer,
        target_step=item.step_id if item.kind == QueueKind.BRANCH else None,
    )
    if item.kind == QueueKind.BRANCH:
        return outcome
    if outcome in (Outcome.COMPLETED, Outcome.FAILED):
        # The run's whole duration (sleeps and retries included), and this last execution's.
        whole = clock.now() - run.started_at if run.started_at else None
        took = f"{format_duration(whole) or '?'}, last execution {(time.monotonic() - started) * 1000:.0f} ms"
        if outcome is Outcome.COMPLETED:
            logger.info("run completed: %s %s in %s", run.function_id, run.pk, took)
        else:
            logger.error("run failed: %s %s after %s (see its error in the admin)", run.function_id, run.pk, took)
    return outcome


def _hold_for_unknown_function(checkpointer: DatabaseCheckpointer, run: Run, now: datetime, message: str) -> Outcome:
    """A run of a function this worker does not define: during a rolling deploy another
    worker (newer or older code) may define it. Hold the run, say why, and try again
    later; give up only after a day."""
    held_since = run.held_since or now
    if now - held_since >= UNKNOWN_FUNCTION_GIVE_UP:
        return _fail_early(
            checkpointer, run, "UnknownFunctionError",
            f"{message}; no worker ran it for {UNKNOWN_FUNCTION_GIVE_UP} (since {held_since.isoformat()})",
        )
    retry_at = now + UNKNOWN_FUNCTION_RETRY
    detail = f"waiting for a worker that defines function {run.function_id!r} (next try {retry_at.isoformat()})"
    if not run.held_since:
        logger.warning("run %s: %s; held, retried every %ss", run.pk, message, int(UNKNOWN_FUNCTION_RETRY.total_seconds()))

    def write() -> None:
        Run.objects.using(checkpointer.db).filter(pk=run.pk).update(status_detail=detail, held_since=held_since)
        QueueItem.objects.using(checkpointer.db).filter(pk=checkpointer.item.id).update(
            worker_id="", claims=0, due_at=retry_at
        )

    checkpointer._in_lease(write)
    return Outcome.SUSPENDED


def _hold_for_throttle(checkpointer: DatabaseCheckpointer, run: Run, start_at: datetime) -> Outcome:
    """Not this run's turn yet: it stays queued (not started) and is due at its turn."""
    rule = registry.get(run.function_id).flow.throttle
    detail = f"throttled: {rule.limit} starts per {rule.period}; starts at {start_at.isoformat()}"

    def write() -> None:
        Run.objects.using(checkpointer.db).filter(pk=run.pk).update(
            status=RunStatus.QUEUED, started_at=None, status_detail=detail, held_since=run.held_since or clock.now()
        )
        QueueItem.objects.using(checkpointer.db).filter(pk=checkpointer.item.id).update(
            worker_id="", claims=0, due_at=start_at
        )

    checkpointer._in_lease(write)
    return Outcome.SUSPENDED


def _timed_out(db: str, function: Any, run: Run, now: datetime) -> bool:
    """Timeouts(start=..., finish=...): cancel a run that waited or ran too long."""
    timeouts = function.timeouts
    if timeouts is None:
        return False
    reason = None
    # A delayed event's run is due at the event's ts: the start timeout counts from then.
    due = max(run.queued_at, run.event.ts) if run.event else run.queued_at
    if timeouts.start_delta is not None and run.status == RunStatus.QUEUED and now > due + timeouts.start_delta:
        reason = f"did not start within {timeouts.start} (Timeouts.start)"
    elif timeouts.finish_delta is not None and run.started_at and now >= run.started_at + timeouts.finish_delta:
        reason = f"did not finish within {timeouts.finish} (Timeouts.finish)"
    if reason is None:
        return False
    with transaction.atomic(using=db):
        lifecycle.cancel_run(db, run.pk, reason=reason)
    return True


def _fail_early(checkpointer: DatabaseCheckpointer, run: Run, name: str, message: str) -> Outcome:
    logger.error("run failed: %s %s: %s", run.function_id, run.pk, message)
    try:
        checkpointer.fail({"name": name, "message": message, "stack": ""})
    except LeaseLost:
        return Outcome.LOST
    return Outcome.FAILED


def _drop(db: str, item: Claimed) -> None:
    queue.held(item, db).delete()
