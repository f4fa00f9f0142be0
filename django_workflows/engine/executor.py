"""Runs a handler against its recorded steps: replay what is done, run what is next.

The executor knows nothing of the database: a ``Checkpointer`` records what
happens (``store.DatabaseCheckpointer`` for workers, an in-memory one for
``testing.trigger``).
"""

from __future__ import annotations

import enum
import logging
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol

from ..context import (
    BranchDone,
    Context,
    EngineSignal,
    EventInfo,
    StepLimitExceeded,
    Suspend,
    aborted,
)
from ..errors import NON_RETRIABLE, RetryAfterError, StepError
from ..functions import Function
from . import clock
from .backoff import retry_delay
from .records import StepRecord, error_dict, json_round_trip

logger = logging.getLogger("django_workflows.engine")


class EngineInterrupt(EngineSignal):
    """Base of the engine's own signals; BaseException so handlers cannot swallow them."""


class LeaseLost(EngineInterrupt):
    """Another worker owns this item now (or the run was cancelled): stop, write nothing."""


class CheckpointFailed(EngineInterrupt):
    """The database refused a checkpoint write; the item is retried when its lease lapses."""


class Checkpointer(Protocol):
    def atomic(self) -> AbstractContextManager[Any]: ...
    def before_new_step(self) -> None: ...
    def record_step(self, record: StepRecord) -> None: ...
    def suspend(
        self, signal: Suspend | None, *, until: datetime | None, run_attempts: int | None = None,
        error: dict | None = None,
    ) -> None: ...
    def complete(self, output: Any) -> None: ...
    def fail(self, error: dict) -> None: ...
    def send_events(self, events: list) -> list[str]: ...
    def expire_wait(self, record: StepRecord) -> StepRecord: ...
    def expire_invoke(self, record: StepRecord) -> StepRecord: ...
    def branch_done(self) -> None: ...


class Outcome(enum.Enum):
    COMPLETED = "completed"
    FAILED = "failed"
    SUSPENDED = "suspended"
    LOST = "lost"


def execute(
    function: Function,
    *,
    run_id: str,
    events: list[EventInfo],
    steps: dict[str, StepRecord],
    run_attempts: int,
    checkpointer: Checkpointer,
    target_step: str | None = None,
) -> Outcome:
    """Run ``function``'s handler once, from the top, replaying recorded steps.

    With ``target_step`` this execution runs one parallel branch: it replays up to the
    ``parallel`` call, runs that branch's step, and stops.
    """
    ctx = Context(
        function=function,
        run_id=run_id,
        events=events,
        steps=steps,
        checkpointer=checkpointer,
        run_attempt=run_attempts,
        target_step=target_step,
    )
    if target_step is not None:
        return _execute_branch(function, ctx, checkpointer, target_step)
    try:
        try:
            result = function.handler(ctx)
            output = json_round_trip(result, what=f"function {function.id!r}")
        except Suspend as suspend:
            # A step that succeeded in this execution put the run's attempts back to 0.
            changed = ctx.run_attempt if ctx.run_attempt != run_attempts else None
            checkpointer.suspend(suspend, until=suspend.until, run_attempts=changed)
            return Outcome.SUSPENDED
        except StepError as exc:
            # A step spent its retries and the handler did not catch it: the run fails.
            checkpointer.fail({**error_dict(exc), "step_id": exc.step_id, "cause": exc.error})
            return Outcome.FAILED
        except StepLimitExceeded as exc:
            checkpointer.fail({"name": "StepLimitExceeded", "message": str(exc), "stack": ""})
            return Outcome.FAILED
        except NON_RETRIABLE as exc:
            # Usage errors (a bad duration, an unknown function...) fail at once: retrying
            # cannot fix them.
            checkpointer.fail(error_dict(exc))
            return Outcome.FAILED
        except Exception as exc:
            return _handler_error(function, exc, ctx.run_attempt, checkpointer)
        except BaseException as exc:
            if isinstance(exc, EngineSignal):
                raise
            checkpointer.fail(error_dict(aborted(exc, f"function {function.id!r}")))
            return Outcome.FAILED
        checkpointer.complete(output)
        return Outcome.COMPLETED
    except LeaseLost:
        logger.info("run %s: lease lost (taken over or cancelled); stopping", run_id)
        return Outcome.LOST


def _handler_error(function: Function, exc: Exception, run_attempts: int, checkpointer: Checkpointer) -> Outcome:
    """An error outside any step: retry the function from its last completed step."""
    attempts = run_attempts + 1
    if attempts > function.retries:
        checkpointer.fail(error_dict(exc))
        return Outcome.FAILED
    if isinstance(exc, RetryAfterError):
        when = exc.retry_at or clock.now() + exc.retry_after  # type: ignore[operator]
    else:
        when = clock.now() + retry_delay(attempts)
    logger.warning(
        "function %s: error outside steps (attempt %d of %d), retrying at %s: %r",
        function.id, attempts, function.retries + 1, when.isoformat(), exc,
    )
    checkpointer.suspend(None, until=when, run_attempts=attempts, error=error_dict(exc))
    return Outcome.SUSPENDED


def _execute_branch(function: Function, ctx: Context, checkpointer: Checkpointer, target: str) -> Outcome:
    """Run one parallel branch's step; whatever else the handler would do is not ours."""
    try:
        try:
            function.handler(ctx)
        except Suspend as suspend:
            if suspend.pending is not None and suspend.pending.step_id == target:
                checkpointer.suspend(suspend, until=suspend.until)  # the branch step retries later
                return Outcome.SUSPENDED
            if suspend.pending is None and suspend.until is not None and target in ctx.step._records:
                checkpointer.suspend(None, until=suspend.until)  # resumed before its retry is due
                return Outcome.SUSPENDED
        except (BranchDone, StepLimitExceeded, Exception):
            pass  # the run itself meets (and records) whatever ends the handler here
        except BaseException as exc:
            if isinstance(exc, EngineInterrupt):
                raise
            if not isinstance(exc, EngineSignal):
                logger.warning("run %s branch %s: handler raised %r outside the branch step", ctx.run_id, target, exc)
        checkpointer.branch_done()
        return Outcome.COMPLETED
    except LeaseLost:
        return Outcome.LOST
