"""Helpers for testing code that uses django-workflows.

``drain`` runs all due work in the calling process (inside your test's
transaction); ``trigger`` runs one function in memory, with no database.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import conf
from .context import EventInfo, event_from_payload
from .engine import clock
from .engine.executor import Outcome, execute
from .engine.records import StepRecord
from .errors import WorkflowDefinitionError
from .events import Event
from .functions import Function, resolve

__all__ = ["drain", "trigger", "TriggerResult", "reset_clock", "now", "start_cron_schedules", "WorkflowsTestMixin"]

DRAIN_WORKER_ID = "drain"


def drain(advance_time: bool = False, max_jobs: int = 10_000, batch_size: int | None = None) -> int:
    """Run every due queue item in this process until nothing is due; return how many ran.

    Items are claimed in batches as a worker claims them (``batch_size``, default the
    ``CONCURRENCY`` setting): new events of one claim are taken in together, so tests
    see what ``runworkers`` does. With ``advance_time=True``, whenever nothing is due
    the engine's clock jumps to the next scheduled item (a sleep's end, a retry, a
    delayed event), until no work remains. The clock stays moved until the test ends
    (the pytest plugin and ``WorkflowsTestMixin`` put it back) or ``reset_clock()``.
    """
    from .engine import queue
    from .engine.worker import process_items

    db = conf.database()
    batch = int(conf.get("CONCURRENCY")) if batch_size is None else batch_size
    if batch < 1:
        raise ValueError(f"drain(): batch_size must be at least 1, got {batch_size!r}")
    done = 0
    held_back = False
    while done < max_jobs:
        items = queue.claim(DRAIN_WORKER_ID, min(batch, max_jobs - done), db=db)
        if not items:
            if not advance_time:
                break
            next_due = queue.next_due_at(db=db, exclude_cron=True)
            if next_due is None:
                break
            if next_due <= clock.now():
                # Due by now (it may have become due since the claim): claim again, but
                # twice in a row means held back (a concurrency slot held elsewhere).
                if held_back:
                    break
                held_back = True
                continue
            held_back = False
            clock.advance_to(next_due)
            continue
        held_back = False
        process_items(items, db=db, worker_id=DRAIN_WORKER_ID)
        done += len(items)
    return done


def reset_clock() -> None:
    """Undo ``drain(advance_time=True)``'s clock moves."""
    clock.reset()


def now() -> datetime:
    """The engine's clock (ahead of ``timezone.now()`` after ``drain(advance_time=True)``)."""
    return clock.now()


def start_cron_schedules() -> int:
    """Set up the cron schedules of the registered functions, as ``runworkers`` does when it
    starts; ``drain`` then fires each schedule's latest tick once the clock has passed it.
    Returns how many schedules exist."""
    from .engine import cron

    return cron.sync_schedules(conf.database())


@dataclass
class TriggerResult:
    status: str
    output: Any = None
    error: dict | None = None
    steps: dict[str, StepRecord] = field(default_factory=dict)
    sent_events: list[Event] = field(default_factory=list)


class _MemoryCheckpointer:
    def __init__(self, records: dict[str, StepRecord]) -> None:
        self.records = records
        self.until: datetime | None = None
        self.result: TriggerResult | None = None
        self.run_attempts = 0
        self.branches: list[str] = []
        self.sent: list[Event] = []

    def atomic(self) -> Any:
        return contextlib.nullcontext()

    def before_new_step(self) -> None:
        pass

    def record_step(self, record: StepRecord) -> None:
        self.records[record.step_id] = record

    def suspend(
        self, signal: Any, *, until: datetime | None, run_attempts: int | None = None, error: dict | None = None
    ) -> None:
        if signal is not None:
            if signal.wait is not None or signal.invoke is not None:
                step_id = (signal.wait or signal.invoke).step_id
                raise WorkflowDefinitionError(
                    f"trigger(): step {step_id!r} waits for an event or another run, which trigger() "
                    f"cannot do in memory: pass step_stubs={{{step_id.split(':')[0]!r}: <its result>}}"
                )
            if signal.pending is not None:
                self.records[signal.pending.step_id] = signal.pending
            self.branches = list(signal.branches)
        if run_attempts is not None:
            self.run_attempts = run_attempts
        self.until = until

    def complete(self, output: Any) -> None:
        self.result = TriggerResult("completed", output=output, steps=self.records, sent_events=self.sent)

    def fail(self, error: dict) -> None:
        self.result = TriggerResult("failed", error=error, steps=self.records, sent_events=self.sent)

    def send_events(self, events: list) -> list[str]:
        from .ids import new_id

        self.sent.extend(events)
        return [str(new_id()) for _ in events]

    def expire_wait(self, record: StepRecord) -> StepRecord:  # waits are stubbed in trigger()
        record.status, record.output = "completed", None
        return record

    def expire_invoke(self, record: StepRecord) -> StepRecord:  # invokes are stubbed in trigger()
        record.status = "failed"
        record.error = {"name": "InvokeTimeoutError", "message": "timed out", "stack": ""}
        return record

    def branch_done(self) -> None:
        pass


def trigger(
    fn: Function | str,
    event: Event | dict | str | list[Event | dict | str],
    step_stubs: dict[str, Any] | None = None,
    *,
    max_replays: int = 1000,
) -> TriggerResult:
    """Run one function in memory: no worker, no database; sleeps and retries take no time.

    ``step_stubs`` maps step ids to values that replace those steps (a callable stub is
    called with the step's arguments). Returns a result with ``status``, ``output``, ``error``.

    A list of events is a batch (``wf.Batch``): ``ctx.events`` holds them all, ``ctx.event``
    the first. Flow control that needs the database (concurrency, throttle, debounce ...)
    does not apply here: ``drain()`` runs it.
    """
    function = resolve(fn)
    if isinstance(event, list):
        if not event:
            raise WorkflowDefinitionError("trigger(): a batch of events must hold at least one event")
        infos = [_event_info(item) for item in event]
    else:
        infos = [_event_info(event)]
    records: dict[str, StepRecord] = {}
    checkpointer = _MemoryCheckpointer(records)
    stubbed = _StubbedFunction(function, step_stubs or {})
    saved = clock._offset  # sleeps and backoffs move a private clock, then it is put back
    try:
        for _ in range(max_replays):
            checkpointer.until = None
            checkpointer.branches = []
            outcome = execute(
                stubbed, run_id="trigger", events=infos, steps=records,
                run_attempts=checkpointer.run_attempts, checkpointer=checkpointer,
            )
            if outcome is not Outcome.SUSPENDED:
                assert checkpointer.result is not None
                return checkpointer.result
            for branch in checkpointer.branches:  # parallel branches, one after another
                execute(
                    stubbed, run_id="trigger", events=infos, steps=records,
                    run_attempts=checkpointer.run_attempts, checkpointer=checkpointer, target_step=branch,
                )
            if checkpointer.until is not None:
                clock.advance_to(checkpointer.until)
        raise RuntimeError(f"trigger({function.id!r}): still suspended after {max_replays} replays")
    finally:
        clock._offset = saved


def _event_info(event: Event | dict | str) -> EventInfo:
    now = clock.now()
    if isinstance(event, str):
        return EventInfo(id="test", name=event, data={}, ts=now)
    if isinstance(event, Event):
        return EventInfo(id=event.id or "test", name=event.name, data=event.data, ts=event.ts or now)
    if isinstance(event, dict):
        return EventInfo(
            id=event.get("id") or "test", name=event.get("name", ""), data=event.get("data") or {},
            ts=event.get("ts") or now,
        )
    raise WorkflowDefinitionError(f"trigger(): event must be a wf.Event, a dict or a name, got {event!r}")


class _StubbedFunction:
    """A function whose handler sees ``ctx.step`` calls for stubbed ids replaced by values."""

    def __init__(self, function: Function, stubs: dict[str, Any]) -> None:
        self._function = function
        self._stubs = stubs
        self.id = function.id
        self.retries = function.retries

    def __getattr__(self, name: str) -> Any:
        return getattr(self._function, name)

    def handler(self, ctx: Any) -> Any:
        ctx.step = _StubbingSteps(ctx.step, self._stubs)
        return self._function.handler(ctx)


def _jsonable(stub: Any) -> Any:
    """A wf.Event stub (for wait_for_event) becomes the payload the engine would record."""
    if isinstance(stub, Event):
        ts = stub.ts or clock.now()
        return {"id": stub.id or "stub", "name": stub.name, "data": stub.data, "ts": int(ts.timestamp() * 1000)}
    return stub


_STEP_METHODS = frozenset({"run", "sleep", "sleep_until", "wait_for_event", "invoke", "send_event"})


class _StubbingSteps:
    def __init__(self, steps: Any, stubs: dict[str, Any]) -> None:
        self._steps = steps
        self._stubs = stubs

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._steps, name)
        if name not in _STEP_METHODS:
            return real

        def call(step_id: str, *args: Any, **kwargs: Any) -> Any:
            if step_id not in self._stubs:
                return real(step_id, *args, **kwargs)
            stub = self._stubs[step_id]
            # A callable stub of a ``run`` step gets the step's own arguments.
            step_args = args[1:] if name == "run" else ()
            value = self._steps.run(step_id, stub if callable(stub) else (lambda *_: _jsonable(stub)), *step_args)
            if name == "wait_for_event" and isinstance(value, dict):
                return event_from_payload({"id": "stub", "name": kwargs.get("event", ""), "data": {}, **value})
            return value

        return call


class WorkflowsTestMixin:
    """For ``unittest`` and Django ``TestCase`` classes: each test starts and ends at real time.

    ``drain(advance_time=True)`` leaves the engine's clock moved; pytest users get this
    from the plugin, ``class MyTests(WorkflowsTestMixin, TestCase)`` gets it here.
    """

    def setUp(self) -> None:
        clock.reset()
        # A cleanup runs even when the test or a later setUp fails, unlike tearDown.
        self.addCleanup(clock.reset)  # type: ignore[attr-defined]
        super().setUp()  # type: ignore[misc]
