"""A backend for Django's task framework: every enqueued task is a one-step durable run.

    TASKS = {"default": {"BACKEND": "django_workflows.tasks.WorkflowsBackend"}}

``django.tasks`` on Django 6.0+, the ``django-tasks`` package before. A task enqueued
with ``my_task.enqueue(...)`` becomes a run of the workflow function ``task:<module
path of the task>``, whose one step (named after the task) calls the task; ``runworkers``
executes it with the engine's retries, and the admin and the API show it like any run.
The ``TaskResult`` id is the run's id. See docs/django-tasks.md.

The worker finds the function by its id: ``registry.get("task:...")`` imports the task
by its module path the first time (``functions.ON_DEMAND``), so a worker runs tasks of
modules nothing in its process imported yet.
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
import json
import re
import sys
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.apps import apps
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils.module_loading import import_string

try:  # Django 6.0+
    from django.tasks import TaskContext, TaskResult, TaskResultStatus, task_backends
    from django.tasks import exceptions as _exceptions
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task, TaskError
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json
except ImportError:  # the django-tasks package (Django 5.2)
    from django_tasks import TaskContext, TaskResult, TaskResultStatus, task_backends
    from django_tasks import exceptions as _exceptions
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskError
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json

from . import conf, jsonenc
from .engine.records import StepOutputError, error_dict
from .errors import (
    NON_RETRIABLE,
    EventValidationError,
    NonRetriableError,
    RunRefusedError,
    UnknownFunctionError,
    WorkflowDefinitionError,
)
from .flow_control import PRIORITY_MAX_SECONDS, Priority
from .functions import DEFAULT_RETRIES, MAX_RETRIES, Function, function, registry
from .states import FINISHED_STATUSES, QueueKind, RunStatus

__all__ = ["WorkflowsBackend", "TaskCancelled", "resolve_function", "FUNCTION_PREFIX", "EVENT_NAME"]

# Named InvalidTask in Django 6.0 (and django-tasks after 0.12), InvalidTaskError before.
InvalidTask: type[Exception] = getattr(_exceptions, "InvalidTask", None) or _exceptions.InvalidTaskError
TaskResultDoesNotExist = _exceptions.TaskResultDoesNotExist

FUNCTION_PREFIX = "task:"
# The event each task run is started with; its data holds the call (task, args, kwargs ...).
# It is stored with its run, never taken in by intake: nothing is triggered by its name.
EVENT_NAME = "django.tasks/enqueued"
# A task's priority (-100..100) moves its run ahead by this many seconds per point, so
# that the whole range maps onto the engine's -600..600 seconds (docs/flow-control.md).
PRIORITY_SECONDS = PRIORITY_MAX_SECONDS // 100
KNOWN_OPTIONS = frozenset({"RETRIES"})


class TaskCancelled(Exception):
    """Stands for a cancelled run in ``TaskResult.errors`` (``exception_class``)."""


class WorkflowsBackend(BaseTaskBackend):
    """``django.tasks`` backend: each enqueued task is a run of ``task:<module path>``.

    ``OPTIONS``: ``RETRIES`` (0..20, default 4): retries of a failing task, with the
    engine's backoff. ``QUEUES`` limits the queue names tasks may use.
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict) -> None:
        super().__init__(alias, params)
        if not isinstance(self.options, dict):
            raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS'] must be a dict, got {self.options!r}")
        unknown = sorted(set(self.options) - KNOWN_OPTIONS)
        if unknown:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS'] has unknown keys {unknown}; "
                f"{type(self).__name__} knows {sorted(KNOWN_OPTIONS)}"
            )
        retries = self.options.get("RETRIES", DEFAULT_RETRIES)
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['RETRIES'] must be an integer from 0 to {MAX_RETRIES}, got {retries!r}"
            )
        self.retries: int = retries

    # -- enqueue ------------------------------------------------------------------------------

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """Start a run of the task in the caller's transaction (on the workflows database):
        if the transaction rolls back, the run never existed."""
        from .engine import admission, clock, wakeup
        from .events import Event as OutgoingEvent
        from .events import _validate
        from .models import Event

        self.validate_task(task)
        path = task.module_path
        args, kwargs = _json_arguments(path, args, kwargs)
        try:
            fn = _function_for(path, expected=task)
        except (UnknownFunctionError, WorkflowDefinitionError) as exc:
            raise InvalidTask(str(exc)) from None
        data = {
            "task": path,
            "args": args,
            "kwargs": kwargs,
            "backend": self.alias,
            "queue_name": task.queue_name,
            "priority": task.priority,
            "run_after": task.run_after.isoformat() if task.run_after is not None else None,
        }
        try:
            _validate(OutgoingEvent(name=EVENT_NAME, data=data), 0, False)  # size limit, NUL ...
        except EventValidationError as exc:
            raise EventValidationError(f"task {path}: its arguments cannot be stored: {exc}") from None
        db = conf.database()
        clock.sync(db, max_age=clock.RESYNC_SECONDS)  # due times on the database's clock
        with transaction.atomic(using=db):  # a savepoint inside the caller's transaction
            now = clock.now()
            # A future ts delays the run, as for a delayed event (run_after).
            event = Event(name=EVENT_NAME, data=data, ts=task.run_after or now, received_at=now)
            event.save(using=db)
            decision = admission.admit_one(db, fn, event, origin=admission.EVENT, now=now)
            if decision.run is None:
                assert decision.refusal is not None
                raise RunRefusedError(
                    f"task {path} was not enqueued: {decision.refusal.message}", name=decision.refusal.name
                )
            wakeup.notify_on_commit(db)
        run = decision.run
        result = _task_result(
            task=task, id=str(run.pk), status=TaskResultStatus.READY, enqueued_at=run.queued_at,
            started_at=None, finished_at=None, last_attempted_at=None, args=args, kwargs=kwargs,
            backend=self.alias, errors=[], worker_ids=[],
        )
        task_enqueued.send(type(self), task_result=result)
        return result

    # -- results ------------------------------------------------------------------------------

    def get_result(self, result_id: str) -> TaskResult:
        """The task's result, read from its run (``TaskResultDoesNotExist`` if there is none)."""
        from .models import Run

        db = conf.database()
        try:
            pk = uuid.UUID(str(result_id))
        except ValueError:
            raise TaskResultDoesNotExist(result_id) from None
        run = Run.objects.using(db).select_related("event").filter(pk=pk, function_id__startswith=FUNCTION_PREFIX).first()
        if run is None:
            raise TaskResultDoesNotExist(result_id)
        return result_from_run(run, db=db)

    def check(self, **kwargs: Any) -> Iterable[checks.CheckMessage]:
        yield from super().check(**kwargs)
        if not apps.is_installed("django_workflows"):
            yield checks.Error(
                f"{type(self).__name__} is the backend of TASKS[{self.alias!r}], but django_workflows "
                "is not installed.",
                hint="Add 'django_workflows' to INSTALLED_APPS.",
                id="django_workflows.tasks.E001",
            )


# -- the workflow function of a task -------------------------------------------------------------


def resolve_function(function_id: str) -> Function | None:
    """``functions.ON_DEMAND`` resolver: the function of ``task:<module path>``, registered.

    It imports the task's module only if something imported it already or the function has
    runs: an id typed into the admin or the API imports nothing else.
    """
    from .models import Run

    if not function_id.startswith(FUNCTION_PREFIX):
        return None
    path = function_id[len(FUNCTION_PREFIX):]
    if path.rpartition(".")[0] not in sys.modules and not (
        Run.objects.using(conf.database()).filter(function_id=function_id).exists()
    ):
        return None
    return _function_for(path)


def _function_for(path: str, *, expected: Task | None = None) -> Function:
    """The registered function that runs the task importable as ``path`` (registered now
    if need be). ``expected``: the task being enqueued, which ``path`` must name."""
    try:
        task = _import_task(path)
        if expected is not None and task.func is not expected.func:
            raise UnknownFunctionError(f"{path} is another task")
    except UnknownFunctionError as exc:
        if expected is None:
            raise
        raise UnknownFunctionError(
            f"task {path}: that name does not refer to this task ({exc}); a worker imports a task "
            "by its module path: decorate a module-level function with @task and keep its name"
        ) from None
    function_id = FUNCTION_PREFIX + path
    found = registry._functions.get(function_id)
    if found is not None:
        return found
    return function(
        id=function_id,
        name=path,
        retries=_retries_for(task),
        priority=Priority(run=f"event.data.priority * {PRIORITY_SECONDS}"),
    )(run_task)


def _import_task(path: str) -> Task:
    try:
        task = import_string(path)
    except ImportError as exc:
        raise UnknownFunctionError(f"task {path} cannot be imported: {exc}") from None
    if not isinstance(task, Task):
        raise UnknownFunctionError(f"{path} is not a task (a module-level function decorated with @task)")
    return task


def _retries_for(task: Task) -> int:
    """RETRIES of the backend the task is declared on (``@task(backend=...)``) if it is a
    WorkflowsBackend, else the engine's default."""
    try:
        backend = task_backends[task.backend]
    except Exception:
        return DEFAULT_RETRIES
    return backend.retries if isinstance(backend, WorkflowsBackend) else DEFAULT_RETRIES


def run_task(ctx: Any) -> Any:
    """The handler of every ``task:`` function: one step, named after the task, calls it."""
    data = _call(ctx.function_id, ctx.event.data)
    task = _stored_task(data)
    return ctx.step.run(task.name, _attempt, ctx, task, data)


def _call(function_id: str, data: dict) -> dict:
    """The call a run stands for: its enqueue event's data, or for a run started another way
    (``step.invoke`` or the API's invoke with ``{"args": [...], "kwargs": {...}}``), the
    task's defaults."""
    if "task" in data:
        return data
    args, kwargs = data.get("args", []), data.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise NonRetriableError(
            f"{function_id}: a task run's data holds the task's arguments as {{\"args\": [...], "
            f"\"kwargs\": {{...}}}}, got {data!r}"
        )
    return {"task": function_id[len(FUNCTION_PREFIX):], "args": args, "kwargs": kwargs}


def _attempt(ctx: Any, task: Task, data: dict) -> Any:
    """One attempt of the task: call it (with a TaskContext if it takes one), send the
    task signals, return its JSON value."""
    from .engine import clock
    from .models import Attempt, Run

    db = conf.database()
    queued_at, started_at = Run.objects.using(db).filter(pk=ctx.run_id).values_list(
        "queued_at", "started_at"
    ).first() or (None, None)
    earlier = list(Attempt.objects.using(db).filter(run_id=ctx.run_id).order_by("id"))
    now = clock.now()
    worker_id = getattr(ctx._checkpointer, "worker_id", "") or ""
    errors = [_task_error(a.error) for a in earlier if a.error]
    result = _task_result(
        task=task, id=ctx.run_id, status=TaskResultStatus.RUNNING, enqueued_at=queued_at,
        started_at=started_at or now, finished_at=None, last_attempted_at=now,
        args=data["args"], kwargs=data["kwargs"], backend=data.get("backend", task.backend), errors=errors,
        worker_ids=[a.worker_id for a in earlier] + [worker_id],
    )
    task_started.send(WorkflowsBackend, task_result=result)
    try:
        if task.takes_context:
            value = task.call(TaskContext(task_result=result), *data["args"], **data["kwargs"])
        else:
            value = task.call(*data["args"], **data["kwargs"])
        try:
            value = normalize_json(value)
        except (TypeError, ValueError) as exc:
            raise StepOutputError(f"task {task.module_path} returned a value that is not JSON ({exc})") from None
    except BaseException as exc:
        final = not isinstance(exc, Exception) or isinstance(exc, NON_RETRIABLE) or ctx.attempt >= ctx.function.retries
        if final:  # the engine fails the step for good: tell the listeners
            errors.append(_task_error(error_dict(exc)))
            object.__setattr__(result, "status", TaskResultStatus.FAILED)
            object.__setattr__(result, "finished_at", clock.now())
            task_finished.send(WorkflowsBackend, task_result=result)
        raise
    object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
    object.__setattr__(result, "finished_at", clock.now())
    object.__setattr__(result, "_return_value", value)
    task_finished.send(WorkflowsBackend, task_result=result)
    return value


def _stored_task(data: dict) -> Task:
    """The task as it was enqueued: the imported task with its ``using()`` overrides."""
    task = _import_task(data["task"])
    run_after = datetime.fromisoformat(data["run_after"]) if data.get("run_after") else None
    changes = {
        "priority": data.get("priority", task.priority),
        "queue_name": data.get("queue_name", task.queue_name),
        "backend": data.get("backend", task.backend),
        "run_after": run_after,
    }
    if all(getattr(task, name) == value for name, value in changes.items()):
        return task
    # Not task.using(): that validates against today's settings (a queue since removed
    # from QUEUES must not hide the result of a task enqueued on it).
    task = copy.copy(task)
    for name, value in changes.items():
        object.__setattr__(task, name, value)
    return task


# -- TaskResult from a run -------------------------------------------------------------------------


_RESULT_FIELDS = frozenset(f.name for f in dataclasses.fields(TaskResult) if f.init)


def _task_result(**values: Any) -> TaskResult:
    return TaskResult(**{name: value for name, value in values.items() if name in _RESULT_FIELDS})


def result_from_run(run: Any, *, db: str) -> TaskResult:
    """The ``TaskResult`` of a task's run (``run.event`` loaded)."""
    from .models import Attempt, QueueItem

    data = _call(run.function_id, run.event.data if run.event is not None else {})
    try:
        task = _stored_task(data)
    except UnknownFunctionError as exc:
        raise InvalidTask(f"run {run.pk}: {exc}") from None
    attempts = list(Attempt.objects.using(db).filter(run_id=run.pk).order_by("id"))
    worker_ids = [a.worker_id for a in attempts]
    errors = [_task_error(a.error) for a in attempts if a.error]
    status = {
        RunStatus.COMPLETED: TaskResultStatus.SUCCESSFUL,
        RunStatus.FAILED: TaskResultStatus.FAILED,
        RunStatus.CANCELLED: getattr(TaskResultStatus, "CANCELLED", TaskResultStatus.FAILED),
    }.get(run.status)
    if status is None:
        # Unfinished: running while a worker holds it; ready while it waits for a worker
        # (queued, or between two attempts of a failing task).
        holder = (
            QueueItem.objects.using(db).filter(run_id=run.pk, kind=QueueKind.RUN)
            .exclude(worker_id="").values_list("worker_id", flat=True).first()
        )
        status = TaskResultStatus.RUNNING if holder else TaskResultStatus.READY
        if holder:
            worker_ids.append(holder)
    if run.status == RunStatus.CANCELLED and run.error:
        errors.append(_task_error(run.error, default=TaskCancelled))
    elif run.status == RunStatus.FAILED and not errors and run.error:
        errors.append(_task_error(run.error.get("cause") or run.error))
    last_attempted = max((a.started_at for a in attempts), default=run.started_at)
    result = _task_result(
        task=task, id=str(run.pk), status=status, enqueued_at=run.queued_at, started_at=run.started_at,
        finished_at=run.ended_at if run.status in FINISHED_STATUSES else None,
        last_attempted_at=last_attempted, args=data["args"], kwargs=data["kwargs"],
        backend=data.get("backend", task.backend), errors=errors, worker_ids=worker_ids,
    )
    if run.status == RunStatus.COMPLETED:
        object.__setattr__(result, "_return_value", run.output)
    return result


def _task_error(error: dict, *, default: type[BaseException] | None = None) -> TaskError:
    """A recorded error (name, message, stack) as a ``TaskError``."""
    name = str(error.get("name") or "Exception")
    stack = str(error.get("stack") or "")
    path = _exception_path(name, stack) if default is None else f"{default.__module__}.{default.__qualname__}"
    traceback = stack or f"{name}: {error.get('message', '')}\n"
    return TaskError(exception_class_path=path, traceback=traceback)


def _exception_path(name: str, stack: str) -> str:
    """The exception's class path: the traceback's own line for it names the module
    (``myapp.errors.PaymentDeclined: ...``), except for builtins."""
    line = re.compile(rf"^((?:[A-Za-z_]\w*\.)*){re.escape(name)}(?::|$)")
    for text in reversed(stack.splitlines()):
        found = line.match(text)
        if found and found.group(1):
            return found.group(1) + name
        if found:
            break
    if isinstance(getattr(builtins, name, None), type):
        return f"builtins.{name}"
    from . import errors

    if isinstance(getattr(errors, name, None), type):  # the engine's own (UnknownFunctionError ...)
        return f"{errors.__name__}.{name}"
    return "builtins.Exception"


def _json_arguments(path: str, args: Any, kwargs: Any) -> tuple[list, dict]:
    """The arguments as JSON values, or a clear error: a worker gets them from the database."""
    try:
        args, kwargs = normalize_json(args), normalize_json(kwargs)
    except (TypeError, ValueError) as exc:
        raise type(exc)(
            f"{exc}: task {path} takes JSON values as arguments (str, int, float, bool, None, and "
            "lists and dicts of them); pass an ISO date string or a primary key instead"
        ) from None
    try:
        stored = json.loads(jsonenc.dumps([args, kwargs]))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"task {path}: its arguments are not JSON ({exc})") from None
    if stored != [args, kwargs]:
        raise TypeError(
            f"task {path}: its arguments would not come back the same from JSON "
            "(dict keys must be strings)"
        )
    return stored[0], stored[1]
