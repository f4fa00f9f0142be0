"""What a handler gets: ``ctx`` with the event, the step tools and a replay-aware logger."""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from .durations import Duration, parse_duration
from .engine import clock
from .engine.backoff import retry_delay
from .engine.records import StepRecord, error_dict, json_round_trip
from .errors import NonRetriableError, RetryAfterError, StepError, WorkflowDefinitionError
from .states import StepKind, StepStatus

if TYPE_CHECKING:
    from .engine.executor import Checkpointer
    from .functions import Function

T = TypeVar("T")


@dataclass(frozen=True)
class EventInfo:
    """An event as a handler sees it."""

    id: str
    name: str
    data: dict
    ts: datetime

    def as_payload(self) -> dict:
        return {"id": self.id, "name": self.name, "data": self.data, "ts": int(self.ts.timestamp() * 1000)}


class Suspend(BaseException):
    """Stops the handler: the run resumes at ``until`` (``None``: when woken).

    A BaseException so that a handler's ``except Exception`` does not swallow it.
    ``pending`` is a step record to write in the same transaction.
    """

    def __init__(self, until: datetime | None, pending: StepRecord | None = None) -> None:
        super().__init__(until)
        self.until = until
        self.pending = pending


class ReplayAwareLogger(logging.LoggerAdapter):
    """``ctx.logger``: silent while the handler replays memoized steps."""

    def __init__(self, logger: logging.Logger, ctx: Context) -> None:
        super().__init__(logger, {"run_id": ctx.run_id, "function_id": ctx.function_id})
        self._ctx = ctx

    def isEnabledFor(self, level: int) -> bool:
        return not self._ctx.replaying and self.logger.isEnabledFor(level)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs.setdefault("extra", {}).update(self.extra or {})
        return f"[{self._ctx.function_id} {self._ctx.run_id}] {msg}", kwargs


class Context:
    """The one argument of a handler."""

    def __init__(
        self,
        *,
        function: Function,
        run_id: str,
        events: list[EventInfo],
        steps: dict[str, StepRecord],
        checkpointer: Checkpointer,
        run_attempt: int = 0,
    ) -> None:
        self.function = function
        self.function_id = function.id
        self.run_id = run_id
        self.events = events
        self.event = events[0]
        self.attempt = run_attempt
        self._checkpointer = checkpointer
        self._unconsumed = sum(
            1 for r in steps.values() if r.status in (StepStatus.COMPLETED, StepStatus.FAILED)
        )
        self.step = StepTools(self, steps)
        self.logger = ReplayAwareLogger(logging.getLogger(f"django_workflows.functions.{function.id}"), self)

    @property
    def replaying(self) -> bool:
        """True while the handler re-runs code that ran before (memoized steps remain)."""
        return self._unconsumed > 0


class StepTools:
    """``ctx.step``: every call is checkpointed under its step id."""

    def __init__(self, ctx: Context, records: dict[str, StepRecord]) -> None:
        self._ctx = ctx
        self._records = records
        self._seen: dict[str, int] = {}

    # -- helpers -------------------------------------------------------------------------

    def _unique_id(self, step_id: str) -> str:
        if not isinstance(step_id, str) or not step_id or len(step_id) > 200:
            raise WorkflowDefinitionError(f"step id must be a non-empty string of at most 200 characters, got {step_id!r}")
        count = self._seen.get(step_id, 0)
        self._seen[step_id] = count + 1
        return step_id if count == 0 else f"{step_id}:{count}"

    def _memoized(self, sid: str, kind: str) -> StepRecord | None:
        record = self._records.get(sid)
        if record is not None and record.kind != kind:
            raise NonRetriableError(
                f"step {sid!r} was recorded as a {record.kind!r} step but the handler now calls it "
                f"as {kind!r}: code outside steps must be deterministic"
            )
        if record is not None and record.status in (StepStatus.COMPLETED, StepStatus.FAILED):
            self._ctx._unconsumed = max(self._ctx._unconsumed - 1, 0)
        return record

    def _new_work(self) -> None:
        """The handler reached code that has not run before."""
        self._ctx._unconsumed = 0
        self._ctx._checkpointer.before_new_step()

    # -- run -----------------------------------------------------------------------------

    def run(self, step_id: str, fn: Callable[..., T], *args: Any, atomic: bool = False) -> T:
        """Run ``fn(*args)`` once; its JSON result is memoized for every replay."""
        if not callable(fn):
            raise WorkflowDefinitionError(f"step {step_id!r}: fn must be callable, got {fn!r}")
        sid = self._unique_id(step_id)
        record = self._memoized(sid, StepKind.RUN)
        if record is not None and record.status == StepStatus.COMPLETED:
            return record.output
        if record is not None and record.status == StepStatus.FAILED:
            raise StepError(sid, record.error or {})
        now = clock.now()
        if record is not None and record.scheduled_at and record.scheduled_at > now:
            raise Suspend(record.scheduled_at)  # resumed before its retry is due
        self._new_work()
        attempt = record.attempts if record else 0
        record = record or StepRecord(sid, StepKind.RUN, StepStatus.RETRYING)
        record.started_at = record.started_at or now
        self._ctx.attempt = attempt
        checkpointer = self._ctx._checkpointer
        try:
            if atomic:
                with checkpointer.atomic():
                    output = json_round_trip(fn(*args), what=f"step {sid!r}")
                    self._complete(record, output, attempt)
            else:
                output = json_round_trip(fn(*args), what=f"step {sid!r}")
                self._complete(record, output, attempt)
            return output
        except Exception as exc:  # engine signals are BaseExceptions and pass through
            return self._failed(record, attempt, exc)

    def _complete(self, record: StepRecord, output: Any, attempt: int) -> None:
        record.status = StepStatus.COMPLETED
        record.output = output
        record.error = None
        record.attempts = attempt + 1
        record.ended_at = clock.now()
        record.scheduled_at = None
        self._ctx._checkpointer.record_step(record)

    def _failed(self, record: StepRecord, attempt: int, exc: Exception) -> Any:
        record.attempts = attempt + 1
        record.error = error_dict(exc)
        retries = self._ctx.function.retries
        if isinstance(exc, NonRetriableError) or record.attempts > retries:
            record.status = StepStatus.FAILED
            record.ended_at = clock.now()
            record.scheduled_at = None
            self._ctx._checkpointer.record_step(record)
            raise StepError(record.step_id, record.error) from exc
        if isinstance(exc, RetryAfterError):
            when = exc.retry_at or clock.now() + (exc.retry_after or timedelta(0))
        else:
            when = clock.now() + retry_delay(record.attempts)
        record.status = StepStatus.RETRYING
        record.scheduled_at = when
        raise Suspend(when, pending=record)

    # -- sleep ---------------------------------------------------------------------------

    def sleep(self, step_id: str, duration: Duration) -> None:
        """Pause the run durably for ``duration`` (a timedelta or "30s", "2d", "1h30m")."""
        delta = parse_duration(duration, what=f"sleep {step_id!r} duration")
        self._sleep(step_id, lambda: clock.now() + delta)

    def sleep_until(self, step_id: str, when: datetime | str) -> None:
        """Pause the run durably until ``when`` (an aware datetime or ISO 8601 string)."""
        moment = _parse_moment(when, what=f"sleep_until {step_id!r}")
        self._sleep(step_id, lambda: moment)

    def _sleep(self, step_id: str, until: Callable[[], datetime]) -> None:
        sid = self._unique_id(step_id)
        record = self._memoized(sid, StepKind.SLEEP)
        if record is not None and record.status == StepStatus.COMPLETED:
            return None
        now = clock.now()
        if record is None:
            self._new_work()
            record = StepRecord(sid, StepKind.SLEEP, StepStatus.WAITING, started_at=now, scheduled_at=until())
            if record.scheduled_at > now:
                raise Suspend(record.scheduled_at, pending=record)
        elif record.scheduled_at and record.scheduled_at > now:
            raise Suspend(record.scheduled_at)
        else:
            self._new_work()
        record.status = StepStatus.COMPLETED
        record.ended_at = now
        self._ctx._checkpointer.record_step(record)
        return None


def _parse_moment(value: datetime | str, *, what: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise WorkflowDefinitionError(f"{what}: {value!r} is not an ISO 8601 datetime") from None
    if not isinstance(value, datetime):
        raise WorkflowDefinitionError(f"{what}: expected an aware datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        raise WorkflowDefinitionError(f"{what}: the datetime {value!r} has no timezone")
    return value
