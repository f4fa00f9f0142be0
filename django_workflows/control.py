"""Run control: replay, cancel, pause and resume (``wf.replay``, ``wf.cancel`` ...)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import transaction

from . import conf
from .engine import clock, wakeup
from .errors import RunNotFinishedError, RunRefusedError
from .expressions import Expression
from .functions import registry
from .states import FINISHED_STATUSES, StepStatus

# engine.lifecycle imports the models: import it inside the calls, so that
# ``import django_workflows`` works before the app registry is ready.

if TYPE_CHECKING:
    from .models import Run


def replay(run_id: Any, from_step: str | None = None) -> Run:
    """Start a new run of the same function and trigger event(s), linked by ``replay_of``.

    Only a finished run (completed, failed or cancelled) can be replayed: a run that is
    queued or running raises ``RunNotFinishedError`` (cancel it first). The new run goes
    through the function's flow control (docs/flow-control.md): if the function is paused,
    rate limited, or a singleton with an active run, ``RunRefusedError`` says so.

    With ``from_step``, the steps recorded before it keep their outputs (they are not
    run again); ``from_step`` and everything after it run anew.
    """
    from .engine import admission
    from .models import Run, Step

    db = conf.database()
    original = Run.objects.using(db).select_related("event").get(pk=run_id)
    if original.status not in FINISHED_STATUSES:
        # Two live runs of the same work would each do it: cancel first, then replay.
        raise RunNotFinishedError(
            f"run {original.pk} is {original.status}: only finished runs can be replayed; "
            f"cancel it first (wf.cancel({str(original.pk)!r})), then replay it"
        )
    function = registry.get(original.function_id)
    kept: list[Step] = []
    if from_step is not None:
        steps = list(Step.objects.using(db).filter(run=original).order_by("id"))
        ids = [s.step_id for s in steps]
        if from_step not in ids:
            raise ValueError(
                f"run {original.pk} has no step {from_step!r}; its steps are: {', '.join(ids) or '(none)'}"
            )
        kept = [s for s in steps[: ids.index(from_step)] if s.status == StepStatus.COMPLETED]
    now = clock.now()
    with transaction.atomic(using=db):
        decision = admission.admit_one(
            db, function, original.event, origin=admission.REPLAY, now=now,
            replay_of=original, batch_event_ids=original.batch_event_ids,
        )
        if decision.run is None:
            assert decision.refusal is not None
            raise RunRefusedError(
                f"cannot replay run {original.pk}: {decision.refusal.message}", name=decision.refusal.name
            )
        run = decision.run
        Step.objects.using(db).bulk_create(
            [
                Step(
                    run=run, step_id=s.step_id, kind=s.kind, status=s.status, output=s.output,
                    attempts=s.attempts, started_at=s.started_at, ended_at=s.ended_at,
                )
                for s in kept
            ]
        )
        wakeup.notify_on_commit(db)
    return run


def replay_events(
    function_id: str, received_after: datetime | None = None, received_before: datetime | None = None
) -> int:
    """Start runs for stored events in the window that the function matches but never ran for.

    For events that arrived while the function was paused (or before it existed). Returns
    how many runs were started.
    """
    from django.db.models import Exists, OuterRef

    from .engine import admission
    from .models import Event, Run, SeenEventId

    db = conf.database()
    function = registry.get(function_id)
    # A duplicate (same sender id within 24 h) never triggered anything: it is not replayed.
    duplicates = Exists(SeenEventId.objects.using(db).filter(key=OuterRef("dedup_id")).exclude(event=OuterRef("pk")))
    names = [trigger.event for trigger in function.event_triggers]
    events = Event.objects.using(db).filter(name__in=names).exclude(
        Exists(Run.objects.using(db).filter(event=OuterRef("pk"), function_id=function_id))
    ).exclude(duplicates)
    if received_after is not None:
        events = events.filter(received_at__gt=received_after)
    if received_before is not None:
        events = events.filter(received_at__lt=received_before)
    matching = [
        event for event in events.order_by("received_at").iterator()
        if any(trigger.event == event.name and trigger.matches(event.as_payload(), function_id=function.id) for trigger in function.event_triggers)
    ]
    started = 0
    with transaction.atomic(using=db):
        # Through admission, as if the events arrived now (flow control applies).
        flow = admission.Admission(db, clock.now())
        for event in matching:
            decision = flow.offer(function, event, origin=admission.EVENT)
            started += decision.run is not None and not decision.joined
        flow.flush()
        wakeup.notify_on_commit(db)
    return started


def invoke(function_id: str, data: dict | None = None) -> Run:
    """Start a run of a function with ``data``, as ``step.invoke`` does but with no parent
    run (the admin's and the API's "invoke with data"). Its event is a stored
    ``workflows/function.invoked`` event. Flow control applies: when it starts no run,
    nothing is stored and ``RunRefusedError`` says why (``.name``: FunctionPaused,
    RateLimited ...). Bad data raises ``EventValidationError``, as ``wf.send`` does.
    """
    from .engine import admission
    from .events import Event as EventSpec
    from .events import _validate
    from .models import Event

    function = registry.get(function_id)
    data = {} if data is None else data
    _validate(EventSpec(name=INVOKED_EVENT, data=data), 0, allow_system=True)
    db = conf.database()
    clock.sync(db, max_age=clock.RESYNC_SECONDS)
    with transaction.atomic(using=db):
        now = clock.now()
        event = Event(name=INVOKED_EVENT, data=data, ts=now, received_at=now)
        event.save(using=db)
        decision = admission.admit_one(db, function, event, origin=admission.INVOKE, now=now)
        if decision.run is None:
            assert decision.refusal is not None
            raise RunRefusedError(f"cannot invoke {function.id!r}: {decision.refusal.message}", name=decision.refusal.name)
        wakeup.notify_on_commit(db)
    return decision.run


INVOKED_EVENT = "workflows/function.invoked"


def cancel(run_id: Any) -> bool:
    """Cancel a run: a step that is running finishes, no later step starts.

    Returns False if the run had already ended.
    """
    from .engine import lifecycle

    db = conf.database()
    with transaction.atomic(using=db):
        return lifecycle.cancel_run(db, run_id, reason="cancelled by wf.cancel")


def cancel_runs(
    function_id: str,
    started_after: datetime | None = None,
    started_before: datetime | None = None,
    if_exp: str | None = None,
) -> int:
    """Cancel the function's unfinished runs queued in the time range whose trigger matches
    ``if_exp`` (CEL over ``event``); returns how many were cancelled."""
    from .engine import lifecycle
    from .models import Run

    db = conf.database()
    registry.get(function_id)
    expression = Expression(if_exp, what="cancel_runs if_exp") if if_exp else None
    runs = Run.objects.using(db).filter(function_id=function_id).exclude(status__in=FINISHED_STATUSES)
    if started_after is not None:
        runs = runs.filter(queued_at__gt=started_after)
    if started_before is not None:
        runs = runs.filter(queued_at__lt=started_before)
    count = 0
    for run in runs.select_related("event").iterator():
        payload = run.event.as_payload() if run.event else {}
        where = "wf.cancel_runs if_exp"
        if expression is not None and not expression.matches({"event": payload}, where=where, event_id=payload.get("id")):
            continue
        with transaction.atomic(using=db):
            count += lifecycle.cancel_run(db, run.pk, reason="cancelled by wf.cancel_runs")
    return count


def pause(function_id: str) -> None:
    """Start no new runs of the function (its events are still stored); runs in progress go on."""
    _set_paused(function_id, True)


def resume(function_id: str) -> None:
    """Start runs of the function again for events that arrive from now on."""
    _set_paused(function_id, False)


def _set_paused(function_id: str, paused: bool) -> None:
    from .models import FunctionState

    registry.get(function_id)
    FunctionState.objects.using(conf.database()).update_or_create(
        function_id=function_id, defaults={"paused": paused, "changed_at": clock.now()}
    )


__all__ = ["replay", "replay_events", "cancel", "cancel_runs", "pause", "resume"]
