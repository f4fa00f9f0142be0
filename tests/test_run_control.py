"""parallel, cron, cancellation, on_failure, system events, timeouts, replay, pause/resume."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

import django_workflows as wf
from django_workflows.engine import clock, cron
from django_workflows.models import CronSchedule, QueueItem, Run
from django_workflows.testing import drain, trigger

pytestmark = pytest.mark.django_db

CALLS: list[str] = []


@pytest.fixture(autouse=True)
def _calls():
    CALLS.clear()
    yield


def record(name):
    CALLS.append(name)
    return name


# -- parallel --------------------------------------------------------------------------------


def define_parallel():
    @wf.function(id="parallel-fetch", trigger="fetch.all", retries=1)
    def parallel_fetch(ctx):
        before = ctx.step.run("before", record, "before")
        results = ctx.group.parallel((
            lambda: ctx.step.run("a", record, "a"),
            lambda: ctx.step.run("b", record, "b"),
            lambda: ctx.step.run("c", record, "c"),
        ))
        after = ctx.step.run("after", record, "after")
        return [before, *results, after]

    return parallel_fetch


def test_parallel_branches_are_separate_queue_items_and_results_keep_order():
    define_parallel()
    wf.send("fetch.all")
    drain()
    run = Run.objects.get()
    assert run.status == "completed", run.error
    assert run.output == ["before", "a", "b", "c", "after"]
    assert CALLS.count("a") == CALLS.count("b") == CALLS.count("c") == 1
    assert CALLS.count("before") == 1 and CALLS.count("after") == 1


def test_parallel_branch_items_are_queued_while_the_run_is_parked():
    define_parallel()
    wf.send("fetch.all")
    drain(max_jobs=2)  # the event, then the run up to the parallel group
    items = QueueItem.objects.order_by("kind", "step_id")
    assert [(i.kind, i.step_id) for i in items if i.kind == "branch"] == [("branch", "a"), ("branch", "b"), ("branch", "c")]
    parked = items.get(kind="run")
    assert parked.due_at is None


def test_parallel_branch_retries_independently():
    attempts = {"b": 0}

    def flaky_b():
        attempts["b"] += 1
        if attempts["b"] == 1:
            raise RuntimeError("transient")
        return "b"

    @wf.function(id="parallel-flaky", trigger="flaky.go")
    def parallel_flaky(ctx):
        return list(ctx.group.parallel((lambda: ctx.step.run("a", record, "a"), lambda: ctx.step.run("b", flaky_b))))

    wf.send("flaky.go")
    drain(advance_time=True)
    assert Run.objects.get().output == ["a", "b"]
    assert CALLS.count("a") == 1 and attempts["b"] == 2


def test_parallel_in_trigger_runs_in_memory():
    result = trigger(define_parallel(), "fetch.all")
    assert result.output == ["before", "a", "b", "c", "after"]


# -- cron ------------------------------------------------------------------------------------


def define_cron(expr="*/5 * * * *"):
    @wf.function(id="cron-report", trigger=wf.TriggerCron(expr))
    def cron_report(ctx):
        return {"event": ctx.event.name, "scheduled_for": ctx.event.data["scheduled_for"]}

    return cron_report


def test_cron_fires_once_per_tick_and_once_after_downtime():
    define_cron()
    cron.sync_schedules("default")
    schedule = CronSchedule.objects.get(function_id="cron-report")
    start = schedule.created_at
    first_tick = cron.next_tick(define_cron().cron_triggers[0], start)
    clock.advance_to(first_tick)
    drain()
    runs = Run.objects.filter(function_id="cron-report")
    assert runs.count() == 1
    assert runs.get().output["event"] == "workflows/scheduled.timer"
    # An hour of downtime (12 missed ticks) fires once, not 12 times.
    clock.advance_to(first_tick + timedelta(hours=1, seconds=30))
    drain()
    assert runs.count() == 2


def test_cron_tick_is_exactly_once_when_fired_repeatedly():
    define_cron()
    cron.sync_schedules("default")
    schedule = CronSchedule.objects.get(function_id="cron-report")
    tick = cron.next_tick(define_cron().cron_triggers[0], schedule.created_at)
    fired = [cron.fire_schedule("default", schedule.pk, tick + timedelta(seconds=s)) for s in range(5)]
    assert sum(r is not None for r in fired) == 1


def test_cron_timezone_and_validation():
    trig = wf.TriggerCron("TZ=Europe/Paris 0 9 * * *")
    tick = cron.next_tick(trig, datetime(2026, 1, 10, 0, 0, tzinfo=timezone.utc))
    assert tick.astimezone(timezone.utc).hour == 8  # 09:00 in Paris in winter
    with pytest.raises(wf.WorkflowDefinitionError, match="not a valid cron"):
        wf.TriggerCron("every day")
    with pytest.raises(wf.WorkflowDefinitionError, match="time zone"):
        wf.TriggerCron("TZ=Mars/Olympus 0 9 * * *")


def test_function_with_mixed_triggers():
    @wf.function(id="mixed", trigger=["report.now", wf.TriggerCron("0 * * * *")])
    def mixed(ctx):
        return ctx.event.name

    wf.send("report.now")
    drain()
    assert Run.objects.get().output == "report.now"


# -- cancellation ----------------------------------------------------------------------------


def define_cancellable():
    @wf.function(
        id="reminder",
        trigger="reminder.set",
        cancel=[wf.Cancel(event="reminder.deleted", match="data.reminder_id")],
    )
    def reminder(ctx):
        ctx.step.sleep("wait", "1d")
        ctx.step.run("send", record, "sent")

    return reminder


def test_cancel_by_event_cancels_a_sleeping_run_at_once():
    define_cancellable()
    wf.send("reminder.set", data={"reminder_id": 1})
    wf.send("reminder.set", data={"reminder_id": 2})
    drain()
    wf.send("reminder.deleted", data={"reminder_id": 1})
    drain()
    cancelled = Run.objects.get(event__data__reminder_id=1)
    assert cancelled.status == "cancelled" and cancelled.ended_at is not None
    assert not QueueItem.objects.filter(run=cancelled).exists()
    drain(advance_time=True)
    assert Run.objects.get(event__data__reminder_id=2).status == "completed"
    assert CALLS == ["sent"]


def test_only_events_newer_than_the_trigger_cancel():
    define_cancellable()
    wf.send("reminder.deleted", data={"reminder_id": 1})
    wf.send("reminder.set", data={"reminder_id": 1})
    drain(advance_time=True)
    assert Run.objects.get().status == "completed"


def test_cancel_and_cancel_runs_and_the_cancelled_event():
    define_cancellable()

    @wf.function(id="audit-cancel", trigger="workflows/function.cancelled")
    def audit_cancel(ctx):
        return ctx.event.data["function_id"]

    for n in range(4):
        wf.send("reminder.set", data={"reminder_id": n})
    drain()
    first = Run.objects.get(function_id="reminder", event__data__reminder_id=0)
    assert wf.cancel(first.pk) is True
    assert wf.cancel(first.pk) is False
    assert wf.cancel_runs("reminder", if_exp="event.data.reminder_id >= 2") == 2
    drain()
    statuses = dict(Run.objects.filter(function_id="reminder").values_list("event__data__reminder_id", "status"))
    assert statuses == {0: "cancelled", 1: "running", 2: "cancelled", 3: "cancelled"}
    assert list(Run.objects.filter(function_id="audit-cancel").values_list("output", flat=True)) == ["reminder"] * 3


# -- failure and completion ------------------------------------------------------------------


def test_on_failure_runs_once_with_the_original_event_and_error():
    def handle_failure(ctx):
        return {
            "failed_run": ctx.event.data["run_id"],
            "original": ctx.event.data["event"]["data"],
            "error": ctx.event.data["error"]["message"],
        }

    @wf.function(id="charge-card", trigger="card.charge", retries=1, on_failure=handle_failure)
    def charge_card(ctx):
        ctx.step.run("charge", lambda: (_ for _ in ()).throw(RuntimeError("card declined")))

    wf.send("card.charge", data={"card": "x"})
    drain(advance_time=True)
    failed = Run.objects.get(function_id="charge-card")
    handler = Run.objects.get(function_id="charge-card-failure")
    assert failed.status == "failed"
    assert handler.status == "completed"
    assert handler.event.name == "workflows/function.failed"
    assert handler.output["failed_run"] == str(failed.pk)
    assert handler.output["original"] == {"card": "x"}
    assert "card declined" in handler.output["error"]


def test_finished_and_failed_events_trigger_other_functions():
    @wf.function(id="ok-fn", trigger="ok.go")
    def ok_fn(ctx):
        return 1

    @wf.function(id="watch-finished", trigger=wf.TriggerEvent("workflows/function.finished", expression="event.data.function_id == 'ok-fn'"))
    def watch(ctx):
        return ctx.event.data["result"]

    wf.send("ok.go")
    drain()
    assert Run.objects.get(function_id="watch-finished").output == 1


# -- timeouts --------------------------------------------------------------------------------


def test_finish_timeout_cancels_a_run_that_sleeps_too_long():
    @wf.function(id="slow-fn", trigger="slow.go", timeouts=wf.Timeouts(finish="1h"))
    def slow_fn(ctx):
        ctx.step.sleep("nap", "2h")
        ctx.step.run("late", record, "late")

    wf.send("slow.go")
    drain(advance_time=True)
    run = Run.objects.get()
    assert run.status == "cancelled"
    assert "Timeouts.finish" in run.error["message"]
    assert CALLS == []


def test_start_timeout_cancels_a_run_that_waited_too_long_to_start():
    @wf.function(id="fresh-only", trigger="fresh.go", timeouts=wf.Timeouts(start="10s"))
    def fresh_only(ctx):
        return "ran"

    wf.send("fresh.go")
    clock.advance_to(clock.now() + timedelta(seconds=1))
    drain(max_jobs=1)  # intake queues the run
    clock.advance_to(clock.now() + timedelta(minutes=1))
    drain()
    assert Run.objects.get().status == "cancelled"


# -- replay, pause ---------------------------------------------------------------------------


def test_replay_and_replay_from_step():
    @wf.function(id="pipeline", trigger="pipeline.go")
    def pipeline(ctx):
        a = ctx.step.run("extract", record, "extract")
        b = ctx.step.run("transform", record, "transform")
        c = ctx.step.run("load", record, "load")
        return [a, b, c]

    wf.send("pipeline.go")
    drain()
    original = Run.objects.get()
    CALLS.clear()
    again = wf.replay(original.pk)
    drain()
    assert CALLS == ["extract", "transform", "load"]
    CALLS.clear()
    partial = wf.replay(original.pk, from_step="transform")
    drain()
    assert CALLS == ["transform", "load"]
    for run in (again, partial):
        run.refresh_from_db()
        assert run.status == "completed" and run.replay_of_id == original.pk and run.event_id == original.event_id
    with pytest.raises(ValueError, match="no step 'nope'"):
        wf.replay(original.pk, from_step="nope")


def test_pause_starts_no_runs_until_resumed():
    @wf.function(id="pausable", trigger="p.go")
    def pausable(ctx):
        return "ran"

    wf.pause("pausable")
    wf.send("p.go")
    drain()
    assert not Run.objects.exists()
    wf.resume("pausable")
    wf.send("p.go")
    drain()
    assert Run.objects.get().output == "ran"
    with pytest.raises(wf.UnknownFunctionError):
        wf.pause("no-such-function")


def test_events_received_while_paused_can_be_replayed_later():
    @wf.function(id="paused-import", trigger=wf.TriggerEvent("file.uploaded", expression="event.data.size > 0"))
    def paused_import(ctx):
        return ctx.event.data["size"]

    wf.pause("paused-import")
    for size in (3, 0, 5):
        wf.send("file.uploaded", data={"size": size})
    drain()
    assert not Run.objects.exists()
    wf.resume("paused-import")
    assert wf.replay_events("paused-import") == 2  # the size-0 event does not match the trigger
    assert wf.replay_events("paused-import") == 0  # each event is replayed once
    drain()
    assert sorted(Run.objects.values_list("output", flat=True)) == [3, 5]
