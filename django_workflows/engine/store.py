"""Running a claimed run item against the database, every write fenced by the lease."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from django.db import DatabaseError, transaction

from .. import conf
from ..context import EventInfo, Suspend
from ..errors import UnknownFunctionError
from ..functions import registry
from ..models import Event, QueueItem, Run, Step
from ..states import FINISHED_STATUSES, RunStatus
from . import clock
from .executor import CheckpointFailed, LeaseLost, Outcome, execute
from .queue import Claimed
from .records import StepRecord

logger = logging.getLogger("django_workflows.worker")


class DatabaseCheckpointer:
    """Records a run's progress; each write first checks that this worker still holds the lease."""

    def __init__(self, db: str, item: Claimed, run_id: str, stopping: threading.Event | None) -> None:
        self.db = db
        self.item = item
        self.run_id = run_id
        self.stopping = stopping

    @contextmanager
    def _fenced(self) -> Iterator[None]:
        try:
            with transaction.atomic(using=self.db, savepoint=False):
                # The UPDATE takes the item's row lock: a worker that took the item over
                # has bumped the token, so a stale worker matches nothing and writes nothing.
                held = (
                    QueueItem.objects.using(self.db)
                    .filter(pk=self.item.id, lease_token=self.item.token)
                    .update(claims=0)
                )
                if not held:
                    raise LeaseLost()
                yield
        except DatabaseError as exc:
            raise CheckpointFailed(str(exc)) from exc

    def atomic(self) -> Any:
        return transaction.atomic(using=self.db)

    def before_new_step(self) -> None:
        if self.stopping is not None and self.stopping.is_set():
            raise Suspend(clock.now())  # worker is stopping: hand the run to another worker

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
        if record.stored:
            steps.filter(run_id=self.run_id, step_id=record.step_id).update(**fields)
        else:
            steps.create(run_id=self.run_id, step_id=record.step_id, **fields)
            record.stored = True

    def record_step(self, record: StepRecord) -> None:
        with self._fenced():
            self._write_step(record)

    def suspend(self, until: datetime | None, pending: StepRecord | None, run_attempts: int | None) -> None:
        with self._fenced():
            if pending is not None:
                self._write_step(pending)
            if run_attempts is not None:
                Run.objects.using(self.db).filter(pk=self.run_id).update(attempts=run_attempts)
            QueueItem.objects.using(self.db).filter(pk=self.item.id).update(
                worker_id="", due_at=until, claims=0
            )

    def _finish(self, **fields: Any) -> None:
        with self._fenced():
            Run.objects.using(self.db).filter(pk=self.run_id).update(ended_at=clock.now(), **fields)
            QueueItem.objects.using(self.db).filter(pk=self.item.id).delete()

    def complete(self, output: Any) -> None:
        self._finish(status=RunStatus.COMPLETED, output=output)

    def fail(self, error: dict) -> None:
        self._finish(status=RunStatus.FAILED, error=error)


def event_info(event: Event | None, fallback_ts: datetime) -> EventInfo:
    if event is None:
        return EventInfo(id="", name="", data={}, ts=fallback_ts)
    return EventInfo(id=event.dedup_id or str(event.id), name=event.name, data=event.data, ts=event.ts)


def load_steps(db: str, run_id: str) -> dict[str, StepRecord]:
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
        for s in Step.objects.using(db).filter(run_id=run_id)
    }


def process_run(item: Claimed, *, db: str, stopping: threading.Event | None = None) -> Outcome | None:
    """Run or resume the run behind a claimed item, until it ends or suspends."""
    run = Run.objects.using(db).select_related("event").filter(pk=item.run_id).first()
    checkpointer = DatabaseCheckpointer(db, item, str(item.run_id), stopping)
    if run is None or run.status in FINISHED_STATUSES:
        _drop(db, item)
        return None
    try:
        function = registry.get(run.function_id)
    except UnknownFunctionError as exc:
        return _fail_early(checkpointer, run, "UnknownFunctionError", str(exc))
    max_crashes = int(conf.get("MAX_CRASHES"))
    if item.claims > max_crashes:
        return _fail_early(
            checkpointer, run, "WorkerCrashError",
            f"the worker running this run stopped {item.claims - 1} times in a row without "
            f"recording progress (MAX_CRASHES is {max_crashes}); a step may be killing its worker",
        )
    now = clock.now()
    if run.status == RunStatus.QUEUED:
        Run.objects.using(db).filter(pk=run.pk, status=RunStatus.QUEUED).update(
            status=RunStatus.RUNNING, started_at=now
        )
        logger.info("run started: %s %s", run.function_id, run.pk)
    started = time.monotonic()
    try:
        outcome = execute(
            function,
            run_id=str(run.pk),
            events=[event_info(run.event, run.queued_at)],
            steps=load_steps(db, str(run.pk)),
            run_attempts=run.attempts,
            checkpointer=checkpointer,
        )
    except CheckpointFailed as exc:
        logger.error("run %s: could not record progress (%s); it resumes when its lease lapses", run.pk, exc)
        return None
    elapsed = (time.monotonic() - started) * 1000
    if outcome is Outcome.COMPLETED:
        logger.info("run completed: %s %s (%.1f ms)", run.function_id, run.pk, elapsed)
    elif outcome is Outcome.FAILED:
        logger.warning("run failed: %s %s", run.function_id, run.pk)
    return outcome


def _fail_early(checkpointer: DatabaseCheckpointer, run: Run, name: str, message: str) -> Outcome:
    logger.error("run failed: %s %s: %s", run.function_id, run.pk, message)
    try:
        checkpointer.fail({"name": name, "message": message, "stack": ""})
    except LeaseLost:
        return Outcome.LOST
    return Outcome.FAILED


def _drop(db: str, item: Claimed) -> None:
    QueueItem.objects.using(db).filter(pk=item.id, lease_token=item.token).delete()
