"""What a handler gets: ``ctx`` with the event, the step tools and a replay-aware logger."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from . import conf
from .durations import Duration, parse_duration
from .engine import clock
from .engine.backoff import retry_delay
from .engine.records import StepRecord, error_dict, json_round_trip
from .errors import (
    NON_RETRIABLE,
    NonRetriableError,
    RetryAfterError,
    StepAborted,
    StepError,
    WorkflowDefinitionError,
)
from .states import StepKind, StepStatus

if TYPE_CHECKING:
    from .engine.executor import Checkpointer
    from .functions import Function


# A warning for every failed step attempt (docs: "Logging").
step_logger = logging.getLogger("django_workflows.steps")

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


@dataclass
class WaitSpec:
    """A wait_for_event that begins: becomes a ``Waiter`` row."""

    step_id: str
    event: str
    match: str | None
    if_exp: str | None
    expires_at: datetime


@dataclass
class InvokeSpec:
    """An invoke that begins: starts a run of ``function_id`` with ``data``."""

    step_id: str
    function_id: str
    data: dict


class EngineSignal(BaseException):
    """Base of the engine's own control flow; a BaseException so that a handler's
    ``except Exception`` cannot swallow it. Any other BaseException raised by user code
    (``SystemExit``, ``KeyboardInterrupt``, ``asyncio.CancelledError``) is a failure."""


class Suspend(EngineSignal):
    """Stops the handler: the run resumes at ``until`` (``None``: when woken).

    A BaseException so that a handler's ``except Exception`` does not swallow it.
    ``pending`` is a step record to write in the same transaction, with what the
    step starts: a waiter, an invoked run, or parallel branches to queue.
    """

    def __init__(
        self,
        until: datetime | None,
        pending: StepRecord | None = None,
        *,
        wait: WaitSpec | None = None,
        invoke: InvokeSpec | None = None,
        branches: list[str] | None = None,
    ) -> None:
        super().__init__(until)
        self.until = until
        self.pending = pending
        self.wait = wait
        self.invoke = invoke
        self.branches = branches or []


class StepLimitExceeded(EngineSignal):
    """The run reached ``MAX_STEPS_PER_RUN``: it fails (a handler cannot catch this)."""


class BranchDone(EngineSignal):
    """A parallel branch's step reached its end: the branch item is done."""


class _Planned(EngineSignal):
    """Inside ``parallel``: this branch's next step has not run yet."""

    def __init__(self, step_id: str) -> None:
        super().__init__(step_id)
        self.step_id = step_id


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
        target_step: str | None = None,
    ) -> None:
        self.function = function
        self.function_id = function.id
        self.run_id = run_id
        self.events = events
        self.event = events[0]
        # Failed attempts of the code after the last completed step; back to 0 once a step
        # succeeds. ``attempt`` is what the handler sees: 0 while memoized code replays,
        # this once the handler reaches new code, a step's own attempt while it runs.
        self.run_attempt = run_attempt
        self.attempt = 0 if steps else run_attempt
        self.target_step = target_step  # set when this execution runs one parallel branch
        self._checkpointer = checkpointer
        # Every recorded step (done, waiting or retrying) was reached by an earlier
        # execution: code before the last of them is a replay.
        self._unconsumed = len(steps)
        self.step = StepTools(self, steps)
        self.group = Group(self)
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
        self._emitted: set[str] = set()
        self._max_steps = int(conf.get("MAX_STEPS_PER_RUN"))

    # -- helpers -------------------------------------------------------------------------

    def _unique_id(self, step_id: str) -> str:
        if not isinstance(step_id, str) or not step_id or len(step_id) > 200:
            raise WorkflowDefinitionError(f"step id must be a non-empty string of at most 200 characters, got {step_id!r}")
        # Repeats become id:1, id:2 ...; never one that an explicit id already took (and the
        # other way round), so the mapping stays deterministic across replays.
        if len(self._emitted) >= self._max_steps:
            raise StepLimitExceeded(
                f"the run reached {self._max_steps:,} steps, the limit (DJANGO_WORKFLOWS['MAX_STEPS_PER_RUN']); "
                f"step {step_id!r} was not started: split the work over several runs (send_event or invoke)"
            )
        count = self._seen.get(step_id, 0)
        candidate = step_id if count == 0 else f"{step_id}:{count}"
        while candidate in self._emitted:
            count += 1
            candidate = f"{step_id}:{count}"
        self._seen[step_id] = count + 1
        self._emitted.add(candidate)
        return candidate

    def _memoized(self, sid: str, kind: str) -> StepRecord | None:
        record = self._records.get(sid)
        if record is not None and record.kind != kind:
            raise NonRetriableError(
                f"step {sid!r} was recorded as a {str(record.kind)!r} step but the handler now calls it "
                f"as {str(kind)!r}: code outside steps must be deterministic"
            )
        if record is not None:
            self._ctx._unconsumed = max(self._ctx._unconsumed - 1, 0)
            if not self._ctx._unconsumed:
                self._ctx.attempt = self._ctx.run_attempt  # the replay is over
        return record

    def _new_work(self) -> None:
        """The handler reached code that has not run before."""
        if self._ctx._unconsumed:
            self._ctx.attempt = self._ctx.run_attempt
        self._ctx._unconsumed = 0
        self._ctx._checkpointer.before_new_step()

    # -- run -----------------------------------------------------------------------------

    def run(self, step_id: str, fn: Callable[..., T], *args: Any, atomic: bool = False, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` once; its JSON result is memoized for every replay.

        With ``atomic=True`` the step's database writes commit in the same transaction
        as its recorded result: a step that only touches the database takes effect once.
        (``atomic`` is this method's own: a function taking an ``atomic`` argument gets
        it through ``functools.partial`` or a lambda.)
        """
        if not callable(fn):
            raise WorkflowDefinitionError(f"step {step_id!r}: fn must be callable, got {fn!r}")
        call = functools.partial(fn, **kwargs) if kwargs else fn
        return self._run_step(self._unique_id(step_id), StepKind.RUN, call, args, atomic)

    def send_event(self, step_id: str, events: Any) -> list[str]:
        """Send one event or a list of them, exactly once; returns their ids."""
        from .events import as_events

        outgoing = as_events(events, None, None, None)
        checkpointer = self._ctx._checkpointer
        return self._run_step(
            self._unique_id(step_id), StepKind.SEND_EVENT, lambda: checkpointer.send_events(outgoing), (), True
        )

    def _run_step(self, sid: str, kind: str, fn: Callable[..., Any], args: tuple, atomic: bool) -> Any:
        record = self._memoized(sid, kind)
        if record is not None and record.status == StepStatus.COMPLETED:
            return record.output
        if record is not None and record.status == StepStatus.FAILED:
            raise StepError(sid, record.error or {})
        if self._ctx.group._planning and self._ctx.target_step != sid:
            raise _Planned(sid)
        now = clock.now()
        if record is not None and record.scheduled_at and record.scheduled_at > now:
            raise Suspend(record.scheduled_at)  # resumed before its retry is due
        self._new_work()
        attempt = record.attempts if record else 0
        record = record or StepRecord(sid, kind, StepStatus.RETRYING)
        record.started_at = record.started_at or now
        record.attempt_started_at = now
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
        except Exception as exc:  # engine signals are BaseExceptions and pass through
            self._failed(record, attempt, exc)
        except BaseException as exc:
            if isinstance(exc, EngineSignal):
                raise
            # SystemExit & co. would kill the worker thread: fail the step instead.
            self._failed(record, attempt, aborted(exc, f"step {sid!r}"))
        if self._ctx.target_step == sid:
            raise BranchDone()
        return output

    def _complete(self, record: StepRecord, output: Any, attempt: int) -> None:
        record.status = StepStatus.COMPLETED
        record.output = output
        record.error = None
        record.attempts = attempt + 1
        record.ended_at = clock.now()
        record.scheduled_at = None
        self._ctx._checkpointer.record_step(record)
        # A step succeeded: the code after it starts again at attempt 0 (as in Inngest).
        self._ctx.attempt = self._ctx.run_attempt = 0

    def _failed(self, record: StepRecord, attempt: int, exc: Exception) -> None:
        record.attempts = attempt + 1
        record.error = error_dict(exc)
        retries = self._ctx.function.retries
        if isinstance(exc, NON_RETRIABLE) or record.attempts > retries:
            step_logger.warning(
                "function %s run %s: step %r failed for good (attempt %d of %d): %s: %s",
                self._ctx.function_id, self._ctx.run_id, record.step_id, record.attempts, retries + 1,
                record.error.get("name"), record.error.get("message"),
            )
            record.status = StepStatus.FAILED
            record.ended_at = clock.now()
            record.scheduled_at = None
            self._ctx._checkpointer.record_step(record)
            if self._ctx.target_step == record.step_id:
                raise BranchDone() from exc
            raise StepError(record.step_id, record.error) from exc
        if isinstance(exc, RetryAfterError):
            when = exc.retry_at or clock.now() + (exc.retry_after or timedelta(0))
        else:
            when = clock.now() + retry_delay(record.attempts)
        step_logger.warning(
            "function %s run %s: step %r failed (attempt %d of %d): %s: %s; retrying at %s",
            self._ctx.function_id, self._ctx.run_id, record.step_id, record.attempts, retries + 1,
            record.error.get("name"), record.error.get("message"), when.isoformat(),
        )
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

    def _not_in_parallel(self, what: str) -> None:
        if self._ctx.group._planning:
            raise NonRetriableError(
                f"{what} cannot run inside a ctx.group.parallel branch: branches run ctx.step.run steps"
            )

    def _sleep(self, step_id: str, until: Callable[[], datetime]) -> None:
        self._not_in_parallel("step.sleep")
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
        self._ctx.attempt = self._ctx.run_attempt = 0
        return None


    # -- wait_for_event ------------------------------------------------------------------------

    def wait_for_event(
        self,
        step_id: str,
        *,
        event: str,
        timeout: Duration,
        match: str | None = None,
        if_exp: str | None = None,
    ) -> EventInfo | None:
        """Wait (without holding a worker) for an event received after the wait begins.

        ``match="data.user_id"`` matches events whose ``data.user_id`` equals the trigger's;
        ``if_exp`` is CEL over ``event`` (the trigger) and ``async`` (the incoming event).
        Returns the event, or ``None`` after ``timeout``.
        """
        from .engine.lifecycle import compiled
        from .functions import validate_event_name, validate_match_field

        self._not_in_parallel("step.wait_for_event")
        validate_event_name(event, what=f"wait_for_event {step_id!r} event", allow_system=True)
        delta = parse_duration(timeout, what=f"wait_for_event {step_id!r} timeout")
        if match is not None:
            validate_match_field(match, what=f"wait_for_event {step_id!r} match")
        if if_exp is not None:
            try:
                compiled(if_exp)
            except WorkflowDefinitionError as exc:
                raise WorkflowDefinitionError(f"wait_for_event {step_id!r}: {exc}") from None
        sid = self._unique_id(step_id)
        record = self._memoized(sid, StepKind.WAIT_FOR_EVENT)
        if record is None:
            self._new_work()
            now = clock.now()
            record = StepRecord(sid, StepKind.WAIT_FOR_EVENT, StepStatus.WAITING, started_at=now, scheduled_at=now + delta)
            spec = WaitSpec(sid, event, match, if_exp, record.scheduled_at)
            raise Suspend(record.scheduled_at, pending=record, wait=spec)
        if record.status == StepStatus.WAITING:
            if record.scheduled_at and record.scheduled_at > clock.now():
                raise Suspend(record.scheduled_at)
            self._new_work()
            record = self._ctx._checkpointer.expire_wait(record)
            self._records[sid] = record
        return event_from_payload(record.output)

    # -- invoke --------------------------------------------------------------------------------

    def invoke(
        self, step_id: str, *, function: Any, data: dict | None = None, timeout: Duration | None = None
    ) -> Any:
        """Start a run of ``function`` (a function or its id) and return its output.

        The run waits without holding a worker. The invoked run's failure, or the
        timeout, raises ``StepError`` here (not retried).
        """
        import json

        from .functions import resolve

        self._not_in_parallel("step.invoke")
        target = resolve(function)
        payload = {} if data is None else data
        if not isinstance(payload, dict):
            raise WorkflowDefinitionError(f"invoke {step_id!r}: data must be a dict, got {type(payload).__name__}")
        try:
            json.dumps(payload, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise WorkflowDefinitionError(f"invoke {step_id!r}: data is not JSON ({exc})") from None
        delta = parse_duration(timeout, what=f"invoke {step_id!r} timeout") if timeout is not None else None
        sid = self._unique_id(step_id)
        record = self._memoized(sid, StepKind.INVOKE)
        if record is None:
            self._new_work()
            now = clock.now()
            record = StepRecord(
                sid, StepKind.INVOKE, StepStatus.WAITING, started_at=now, scheduled_at=now + delta if delta else None
            )
            raise Suspend(record.scheduled_at, pending=record, invoke=InvokeSpec(sid, target.id, payload))
        if record.status == StepStatus.WAITING:
            if record.scheduled_at is None or record.scheduled_at > clock.now():
                raise Suspend(record.scheduled_at)
            self._new_work()
            record = self._ctx._checkpointer.expire_invoke(record)
            self._records[sid] = record
        if record.status == StepStatus.FAILED:
            raise StepError(sid, record.error or {})
        return record.output


class Group:
    """``ctx.group``: steps that run at the same time."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._planning = False

    def parallel(self, branches: Any) -> tuple:
        """Run each branch (a callable that calls ``ctx.step.run``) at the same time.

        Each branch's step is its own queue item, so branches spread over workers and
        retry independently; the run resumes once all are recorded. Returns the branch
        results as a tuple, in branch order. A branch whose step failed for good raises
        its ``StepError`` here once all branches have ended.
        """
        branches = tuple(branches)
        for index, branch in enumerate(branches):
            if not callable(branch):
                raise WorkflowDefinitionError(f"parallel: branch #{index} is not callable: {branch!r}")
        if self._planning:
            raise NonRetriableError("ctx.group.parallel cannot be nested inside another parallel branch")
        results: list[Any] = [None] * len(branches)
        pending: list[str] = []
        failures: list[StepError] = []
        self._planning = True
        try:
            for index, branch in enumerate(branches):
                try:
                    results[index] = branch()
                except _Planned as planned:
                    pending.append(planned.step_id)
                except StepError as exc:
                    failures.append(exc)
        finally:
            self._planning = False
        if pending:
            if self._ctx.target_step is not None:
                raise BranchDone()  # this branch item's step is no longer pending
            self._ctx.step._new_work()
            raise Suspend(None, branches=pending)
        if failures:
            raise failures[0]
        return tuple(results)


def aborted(exc: BaseException, where: str) -> StepAborted:
    """A ``StepAborted`` (not retried) standing for a BaseException raised by user code."""
    error = StepAborted(
        f"{where} raised {type(exc).__name__}({str(exc)!r}), a BaseException that would stop "
        "the worker; it fails without retries (raise an Exception to be retried)"
    )
    error.__cause__ = exc
    return error


def event_from_payload(payload: dict | None) -> EventInfo | None:
    if payload is None:
        return None
    from datetime import timezone as dt_timezone

    ts = datetime.fromtimestamp(payload.get("ts", 0) / 1000, tz=dt_timezone.utc)
    return EventInfo(id=payload.get("id", ""), name=payload.get("name", ""), data=payload.get("data") or {}, ts=ts)


def _parse_moment(value: datetime | str, *, what: str) -> datetime:
    from .durations import parse_moment

    return parse_moment(value, what=what)
