"""django_workflows.tasks.WorkflowsBackend: Django's task API (django-tasks on Django 5.2)
on the engine; each task is a one-step run that drain() / runworkers execute."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone

pytest.importorskip("django_tasks")

from django_tasks import TaskContext, TaskResultStatus, task, task_backends  # noqa: E402
from django_tasks.base import Task  # noqa: E402
from django_tasks.signals import task_enqueued, task_finished, task_started  # noqa: E402

import django_workflows as wf  # noqa: E402
from django_workflows.engine import clock  # noqa: E402
from django_workflows.functions import registry  # noqa: E402
from django_workflows.models import Attempt, Run, Step  # noqa: E402
from django_workflows.tasks import (  # noqa: E402
    EVENT_NAME,
    InvalidTask,
    TaskCancelled,
    TaskResultDoesNotExist,
    WorkflowsBackend,
)
from django_workflows.testing import drain  # noqa: E402

pytestmark = pytest.mark.django_db

BACKEND = "django_workflows.tasks.WorkflowsBackend"
ROOT = Path(__file__).resolve().parent.parent

# What the tasks below did, in order (reset by the ``backend`` fixture).
calls: list = []


class PaymentDeclined(Exception):
    pass


@task
def add(a, b=0):
    calls.append(("add", a, b))
    return a + b


@task
def record(label):
    calls.append(label)


@task
def record_other(label):
    calls.append(label)


@task
def always_fails(message):
    calls.append("fail")
    raise PaymentDeclined(message)


@task
def fails_twice():
    calls.append("attempt")
    if len(calls) < 3:
        raise PaymentDeclined(f"attempt {len(calls)}")
    return "third time lucky"


@task(takes_context=True)
def who_am_i(context: TaskContext, extra):
    return {"id": context.task_result.id, "attempt": context.attempt, "extra": extra}


@task(takes_context=True)
def second_attempt_wins(context: TaskContext):
    calls.append(context.attempt)
    if context.attempt < 2:
        raise PaymentDeclined("first attempt")
    return context.attempt


@task
async def async_double(x):
    return 2 * x


@task
def returns_a_set():
    return {1, 2}


def _plain() -> None:
    pass


aliased = task(_plain)  # importable as "...aliased", but its module path says "..._plain"


@pytest.fixture
def backend(settings):
    settings.TASKS = {"default": {"BACKEND": BACKEND, "QUEUES": ["default", "emails"]}}
    calls.clear()
    yield task_backends["default"]
    calls.clear()


def run_of(result) -> Run:
    return Run.objects.select_related("event").get(pk=result.id)


# -- enqueue, drain, result -----------------------------------------------------------------------


def test_a_task_is_a_one_step_run(backend):
    assert isinstance(backend, WorkflowsBackend)
    result = add.enqueue(2, b=3)
    assert result.status == TaskResultStatus.READY
    assert result.task == add and result.args == [2] and result.kwargs == {"b": 3}
    assert result.backend == "default" and result.errors == [] and result.attempts == 0
    assert result.started_at is None and result.finished_at is None and not result.is_finished
    with pytest.raises(ValueError, match="not finished yet"):
        result.return_value  # noqa: B018

    run = run_of(result)  # the result id is the run's id
    assert run.function_id == "task:test_tasks_backend.add" and run.status == "queued"
    assert run.event.name == EVENT_NAME and run.event.data["task"] == "test_tasks_backend.add"
    assert backend.get_result(result.id) == result

    assert calls == [] and drain() == 1
    assert calls == [("add", 2, 3)]
    assert [(s.step_id, s.status, s.output) for s in Step.objects.filter(run=run)] == [("add", "completed", 5)]

    done = add.get_result(result.id)
    assert done.status == TaskResultStatus.SUCCESSFUL and done.is_finished
    assert done.return_value == 5 and done.errors == []
    assert done.attempts == 1 and done.worker_ids == ["drain"]
    assert done.enqueued_at <= done.started_at <= done.last_attempted_at <= done.finished_at
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 5
    assert run_of(result).output == 5


def test_missing_results(backend):
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result("123")
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result("0b9f7a36-54c3-4b2c-9f57-2f6d1c0c8f0e")

    @wf.function(id="plain-workflow", trigger="plain.event")
    def plain(ctx):
        return 1

    wf.send("plain.event")
    drain()
    with pytest.raises(TaskResultDoesNotExist):  # a run, but not a task's
        backend.get_result(str(Run.objects.get(function_id="plain-workflow").pk))


def test_get_result_of_another_task_is_a_mismatch(backend):
    from django_tasks.exceptions import TaskResultMismatch

    result = add.enqueue(1)
    with pytest.raises(TaskResultMismatch):
        record.get_result(result.id)


def test_async_api(backend):
    async def enqueue_and_read():
        result = await add.aenqueue(20, b=22)
        return result, await add.aget_result(result.id)

    result, again = async_to_sync(enqueue_and_read)()
    assert again == result and again.status == TaskResultStatus.READY
    drain()
    async_to_sync(result.arefresh)()
    assert result.return_value == 42


def test_async_tasks_run(backend):
    result = async_double.enqueue(21)
    drain()
    assert async_double.get_result(result.id).return_value == 42


# -- failures and retries -------------------------------------------------------------------------


def test_a_failing_task_is_retried_then_fails_with_its_errors(backend, settings):
    settings.TASKS = {"default": {"BACKEND": BACKEND, "OPTIONS": {"RETRIES": 2}}}
    result = always_fails.enqueue("card declined")
    drain()  # the first attempt fails; the retry is due later (backoff)
    between = always_fails.get_result(result.id)
    assert between.status == TaskResultStatus.READY  # waiting for its next attempt
    assert len(between.errors) == 1 and between.attempts == 1 and between.started_at is not None
    assert run_of(result).status == "running"

    drain(advance_time=True)
    failed = always_fails.get_result(result.id)
    assert calls == ["fail"] * 3  # RETRIES=2: three attempts
    assert failed.status == TaskResultStatus.FAILED and failed.is_finished
    with pytest.raises(ValueError, match="Task failed"):
        failed.return_value  # noqa: B018
    assert failed.attempts == 3 and failed.worker_ids == ["drain"] * 3
    assert len(failed.errors) == 3
    for error in failed.errors:
        assert error.exception_class_path == "test_tasks_backend.PaymentDeclined"
        assert error.exception_class is PaymentDeclined
        assert error.traceback.endswith("PaymentDeclined: card declined\n")
        assert "in always_fails" in error.traceback
    assert failed.finished_at >= failed.last_attempted_at >= failed.started_at
    run = run_of(result)
    assert run.status == "failed" and run.error["step_id"] == "always_fails"
    assert Attempt.objects.filter(run=run).count() == 3


def test_a_task_that_succeeds_on_a_retry(backend):
    result = fails_twice.enqueue()
    drain(advance_time=True)
    done = fails_twice.get_result(result.id)
    assert done.status == TaskResultStatus.SUCCESSFUL and done.return_value == "third time lucky"
    assert done.attempts == 3 and [e.exception_class for e in done.errors] == [PaymentDeclined] * 2


def test_retries_option_zero_means_one_attempt(backend, settings):
    settings.TASKS = {"default": {"BACKEND": BACKEND, "OPTIONS": {"RETRIES": 0}}}
    result = always_fails.enqueue("no")
    drain(advance_time=True)
    assert calls == ["fail"] and always_fails.get_result(result.id).status == TaskResultStatus.FAILED


def test_a_return_value_that_is_not_json_fails_at_once(backend):
    result = returns_a_set.enqueue()
    drain(advance_time=True)
    failed = returns_a_set.get_result(result.id)
    assert failed.status == TaskResultStatus.FAILED and failed.attempts == 1
    assert failed.errors[0].exception_class_path == "django_workflows.engine.records.StepOutputError"
    assert "returned a value that is not JSON" in failed.errors[0].traceback


def test_a_cancelled_task_is_failed(backend):
    result = add.enqueue(1)
    assert wf.cancel(result.id)
    cancelled = add.get_result(result.id)
    assert cancelled.status == TaskResultStatus.FAILED and cancelled.finished_at is not None
    assert cancelled.errors[-1].exception_class is TaskCancelled
    assert "cancelled by wf.cancel" in cancelled.errors[-1].traceback
    drain()
    assert calls == []


def test_replaying_a_task_run(backend):
    result = add.enqueue(1, b=1)
    drain()
    again = wf.replay(result.id)
    drain()
    replayed = add.get_result(str(again.pk))
    assert replayed.return_value == 2 and replayed.args == [1] and calls == [("add", 1, 1)] * 2


# -- run_after, priority, queues ------------------------------------------------------------------


def test_run_after_delays_the_run(backend):
    later = timezone.now() + timedelta(hours=2)
    result = add.using(run_after=later).enqueue(1)
    assert result.task.run_after == later
    assert drain() == 0 and calls == []
    waiting = add.get_result(result.id)
    assert waiting.status == TaskResultStatus.READY and waiting.task.run_after == later
    drain(advance_time=True)
    done = add.get_result(result.id)
    assert done.status == TaskResultStatus.SUCCESSFUL and done.started_at >= later
    assert done.task == add.using(run_after=later)


def test_naive_run_after_is_refused(backend):
    with pytest.raises(InvalidTask, match="aware"):
        add.using(run_after=datetime.now())


def test_priority_orders_a_backlog(backend):
    for label, priority in [("low", -50), ("normal", 0), ("high", 80), ("highest", 100)]:
        record.using(priority=priority).enqueue(label)
    record_other.using(priority=90).enqueue("other task, 90")
    record_other.using(priority=-100).enqueue("other task, -100")
    drain(batch_size=1)  # one at a time, as a single busy worker thread takes them
    assert calls == ["highest", "other task, 90", "high", "normal", "low", "other task, -100"]


def test_priority_is_a_head_start_of_six_seconds_a_point(backend):
    """A task enqueued 120 s after another one goes first with 21+ more points (6 s each)."""
    record.enqueue("early, 0")
    clock.advance_to(clock.now() + timedelta(seconds=120))
    record.using(priority=19).enqueue("late, 19")
    record.using(priority=21).enqueue("late, 21")
    drain(batch_size=1)
    assert calls == ["late, 21", "early, 0", "late, 19"]


def test_priority_range(backend):
    with pytest.raises(InvalidTask, match="priority"):
        add.using(priority=101)
    assert add.using(priority=-100).priority == -100


def test_queue_names_are_checked_against_queues(backend, settings):
    result = record.using(queue_name="emails").enqueue("queued on emails")
    assert result.task.queue_name == "emails"
    assert run_of(result).event.data["queue_name"] == "emails"
    assert record.get_result(result.id).task.queue_name == "emails"
    with pytest.raises(InvalidTask, match="Queue 'reports' is not valid"):
        record.using(queue_name="reports")
    drain()
    assert calls == ["queued on emails"]  # every queue is served by the same workers

    settings.TASKS = {"default": {"BACKEND": BACKEND, "QUEUES": []}}  # no list: any name
    assert record.using(queue_name="reports").enqueue("x").task.queue_name == "reports"


# -- context, arguments, transactions -------------------------------------------------------------


def test_takes_context(backend):
    result = who_am_i.enqueue("x")
    drain()
    assert who_am_i.get_result(result.id).return_value == {"id": result.id, "attempt": 1, "extra": "x"}


def test_context_counts_attempts(backend):
    result = second_attempt_wins.enqueue()
    drain(advance_time=True)
    done = second_attempt_wins.get_result(result.id)
    assert done.return_value == 2 and done.attempts == 2 and calls == [1, 2]


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        ((datetime(2024, 1, 1),), {}, TypeError, "Unsupported type: <class 'datetime.datetime'>"),
        ((), {"when": object()}, TypeError, "takes JSON values as arguments"),
        (({1: "a"},), {}, TypeError, "dict keys must be strings"),
        ((math.nan,), {}, ValueError, "not JSON"),
    ],
)
def test_arguments_that_are_not_json_are_refused(backend, args, kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        add.enqueue(*args, **kwargs)
    assert not Run.objects.exists()


def test_arguments_come_back_as_json(backend):
    result = add.enqueue((1, 2), b=(3,))  # tuples are lists in JSON
    assert result.args == [[1, 2]] and result.kwargs == {"b": [3]}
    drain()
    assert add.get_result(result.id).return_value == [1, 2, 3]


def test_too_large_arguments_are_refused(backend, settings):
    settings.DJANGO_WORKFLOWS = {"MAX_EVENT_BYTES": 1000}
    with pytest.raises(wf.EventValidationError, match="over the limit"):
        add.enqueue("x" * 2000)
    assert not Run.objects.exists()


def test_a_task_must_be_importable_by_its_module_path(backend):
    with pytest.raises(InvalidTask, match="does not refer to this task"):
        aliased.enqueue()


def test_enqueue_is_part_of_the_callers_transaction(backend):
    with transaction.atomic():
        kept = add.enqueue(1)
    with pytest.raises(RuntimeError), transaction.atomic():
        dropped = add.enqueue(2)
        assert add.get_result(dropped.id).status == TaskResultStatus.READY  # visible inside
        raise RuntimeError("roll back")
    assert add.get_result(kept.id).status == TaskResultStatus.READY
    with pytest.raises(TaskResultDoesNotExist):
        add.get_result(dropped.id)
    drain()
    assert calls == [("add", 1, 0)]


def test_a_paused_task_is_not_enqueued(backend):
    wf.pause("task:test_tasks_backend.add")  # the function is found by its id on demand
    with pytest.raises(wf.RunRefusedError, match="paused"):
        add.enqueue(1)
    wf.resume("task:test_tasks_backend.add")
    add.enqueue(1)
    drain()
    assert calls == [("add", 1, 0)]


def test_signals(backend):
    seen = []

    def listener(signal_name):
        def receive(sender, task_result, **kwargs):
            seen.append((signal_name, task_result.status, sender))
        return receive

    receivers = [(signal, listener(name)) for signal, name in
                 [(task_enqueued, "enqueued"), (task_started, "started"), (task_finished, "finished")]]
    for signal, receiver in receivers:
        signal.connect(receiver)
    try:
        add.enqueue(1)
        drain()
    finally:
        for signal, receiver in receivers:
            signal.disconnect(receiver)
    assert seen == [
        ("enqueued", TaskResultStatus.READY, WorkflowsBackend),
        ("started", TaskResultStatus.RUNNING, WorkflowsBackend),
        ("finished", TaskResultStatus.SUCCESSFUL, WorkflowsBackend),
    ]


# -- the worker side -------------------------------------------------------------------------------


def test_a_worker_finds_the_task_by_its_function_id(backend):
    result = add.enqueue(5)
    registry.unregister("task:test_tasks_backend.add")  # as in a worker that never imported it
    drain()
    assert add.get_result(result.id).return_value == 5
    assert registry.get("task:test_tasks_backend.add").name == "test_tasks_backend.add"


def test_a_task_that_cannot_be_imported_is_held(backend, tmp_path, monkeypatch):
    module = tmp_path / "vanishing_tasks.py"
    module.write_text("from django_tasks import task\n\n@task\ndef hello():\n    return 'hi'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import vanishing_tasks

    result = vanishing_tasks.hello.enqueue()
    registry.unregister("task:vanishing_tasks.hello")
    module.unlink()
    monkeypatch.delitem(sys.modules, "vanishing_tasks")
    drain()
    run = run_of(result)
    assert run.status_detail.startswith("waiting for a worker that defines function 'task:vanishing_tasks.hello'")
    assert calls == [] and not Step.objects.filter(run=run).exists()
    with pytest.raises(InvalidTask, match="cannot be imported"):
        backend.get_result(result.id)


def test_an_id_typed_in_imports_nothing(backend, tmp_path, monkeypatch):
    """registry.get("task:...") imports a task's module only for a function with runs (or a
    module imported already): an id typed into the admin or the API imports nothing."""
    (tmp_path / "not_a_task_module.py").write_text("raise RuntimeError('imported!')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(wf.UnknownFunctionError):
        registry.get("task:not_a_task_module.anything")
    assert "not_a_task_module" not in sys.modules
    with pytest.raises(wf.UnknownFunctionError, match="is not a task"):
        registry.get("task:json.dumps")  # imported already, but not a task


def test_a_workflow_can_invoke_a_task(backend):
    @wf.function(id="adds-via-task", trigger="numbers.given")
    def adds(ctx):
        return ctx.step.invoke("add", function="task:test_tasks_backend.add", data={"args": [1], "kwargs": {"b": 2}})

    wf.send("numbers.given")
    drain()
    assert Run.objects.get(function_id="adds-via-task").output == 3
    invoked = Run.objects.get(function_id="task:test_tasks_backend.add")
    result = add.get_result(str(invoked.pk))
    assert result.return_value == 3 and result.args == [1] and result.kwargs == {"b": 2}


def test_the_run_shows_in_the_admin(backend, admin_client):
    result = add.enqueue(1)
    drain()
    response = admin_client.get(f"/admin/django_workflows/run/{result.id}/change/")
    assert response.status_code == 200
    assert b"test_tasks_backend.add" in response.content
    event = run_of(result).event
    assert admin_client.get(f"/admin/django_workflows/event/{event.pk}/change/").status_code == 200
    assert admin_client.get("/admin/django_workflows/event/").status_code == 200


def test_backend_options_are_checked(settings):
    with pytest.raises(ImproperlyConfigured, match="unknown keys"):
        WorkflowsBackend("x", {"OPTIONS": {"RETRY": 1}})
    with pytest.raises(ImproperlyConfigured, match="RETRIES"):
        WorkflowsBackend("x", {"OPTIONS": {"RETRIES": 21}})
    assert WorkflowsBackend("x", {"OPTIONS": {"RETRIES": 0}}).retries == 0
    assert list(WorkflowsBackend("x", {}).check()) == []


def test_backend_flags():
    assert WorkflowsBackend.supports_defer and WorkflowsBackend.supports_get_result
    assert WorkflowsBackend.supports_priority and WorkflowsBackend.supports_async_task
    assert isinstance(add, Task)


# -- a real runworkers process ---------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_runworkers_runs_tasks_of_modules_it_never_imported(settings, tmp_path, monkeypatch):
    settings.TASKS = {"default": {"BACKEND": BACKEND}}
    (tmp_path / "fresh_tasks.py").write_text(textwrap.dedent("""
        from django_tasks import task

        @task
        def shout(word):
            return word.upper() + "!"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import fresh_tasks

    result = fresh_tasks.shout.enqueue("hello")
    from django.db import connection

    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}",
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "testproject"), str(tmp_path)]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "django", "runworkers", "--burst", "--concurrency", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    finished = fresh_tasks.shout.get_result(result.id)
    assert finished.status == TaskResultStatus.SUCCESSFUL, (finished.errors, done.stderr)
    assert finished.return_value == "HELLO!" and finished.worker_ids[0] != "drain"
