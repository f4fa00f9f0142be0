"""django_workflows.testing: drain() and trigger()."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from functools import partial

import pytest
from django.utils import timezone

import django_workflows as wf
from django_workflows.engine import clock
from django_workflows.models import Event, QueueItem, Run, Step
from django_workflows.testing import drain, reset_clock, trigger

calls: Counter = Counter()


@pytest.fixture(autouse=True)
def _reset():
    calls.clear()


def counted(name, value=None):
    calls[name] += 1
    return name if value is None else value


def always_fails(name):
    calls[name] += 1
    raise RuntimeError(f"{name} broke")


def db_is_empty():
    return not (Event.objects.exists() or Run.objects.exists() or Step.objects.exists() or QueueItem.objects.exists())


# -- drain ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_drain_returns_the_number_of_jobs_run():
    @wf.function(id="th-one-step", trigger="th.go")
    def fn(ctx):
        return ctx.step.run("s", counted, "s")

    assert drain() == 0
    wf.send([wf.Event(name="th.go", data={"n": n}) for n in range(3)])
    assert drain() == 6  # three events, then three runs
    assert Run.objects.filter(status="completed").count() == 3
    assert calls["s"] == 3
    assert drain() == 0


@pytest.mark.django_db
def test_drain_counts_an_event_nobody_listens_to():
    wf.send("th.nobody")
    assert drain() == 1
    assert drain() == 0


@pytest.mark.django_db
def test_drain_max_jobs_stops_early_and_the_rest_runs_later():
    @wf.function(id="th-max", trigger="th.go")
    def fn(ctx):
        return counted("run")

    wf.send([wf.Event(name="th.go") for _ in range(3)])
    assert drain(max_jobs=2) == 2
    assert QueueItem.objects.count() > 0
    assert drain(max_jobs=1) == 1
    assert drain() == 3
    assert calls["run"] == 3
    assert QueueItem.objects.count() == 0


@pytest.mark.django_db
def test_drain_without_advance_time_leaves_sleeps_and_the_clock_alone():
    @wf.function(id="th-sleepy", trigger="th.go")
    def fn(ctx):
        ctx.step.sleep("nap", "3d")
        return "woke"

    wf.send("th.go")
    real_before = timezone.now()
    assert drain() == 2
    assert abs((clock.now() - timezone.now()).total_seconds()) < 1  # not moved
    assert clock.now() - real_before < timedelta(seconds=5)
    assert Run.objects.get().status == "running"
    assert drain() == 0


@pytest.mark.django_db
def test_drain_advance_time_passes_sleeps_and_backoffs_instantly():
    @wf.function(id="th-long", trigger="th.go", retries=3)
    def fn(ctx):
        ctx.step.sleep("a-month", "30d")
        value = ctx.step.run("flaky", lambda: counted("flaky") if calls["flaky"] >= 2 else always_fails("flaky"))
        ctx.step.sleep_until("new-year", datetime(2200, 1, 1, tzinfo=dt_timezone.utc))
        return value

    wf.send("th.go")
    started_wall = time.monotonic()
    start = clock.now()
    jobs = drain(advance_time=True)
    assert time.monotonic() - started_wall < 2
    run = Run.objects.get()
    assert run.status == "completed", run.error
    assert run.output == "flaky"
    assert calls["flaky"] == 3
    assert jobs == 1 + 1 + 1 + 2 + 1  # event, start, after 30d, 2 retries, after the new year
    assert clock.now() >= datetime(2200, 1, 1, tzinfo=dt_timezone.utc)
    assert clock.now() - start > timedelta(days=30)
    assert drain(advance_time=True) == 0

    reset_clock()
    assert abs((clock.now() - timezone.now()).total_seconds()) < 1


@pytest.mark.django_db
def test_drain_advance_time_runs_a_delayed_event():
    @wf.function(id="th-delayed", trigger="th.go")
    def fn(ctx):
        return "ran"

    when = clock.now() + timedelta(days=7)
    wf.send("th.go", ts=when)
    assert drain() == 1
    assert Run.objects.get().status == "queued"
    assert drain(advance_time=True) == 1
    assert Run.objects.get().status == "completed"
    assert clock.now() >= when


# -- trigger: results -------------------------------------------------------------------------------------


def test_trigger_runs_a_function_in_memory_without_the_database():
    # No django_db mark: any database access would fail this test.
    @wf.function(id="th-mem", trigger="th.go")
    def fn(ctx):
        a = ctx.step.run("a", counted, "a")
        ctx.step.sleep("nap", "1d")
        b = ctx.step.run("b", counted, "b")
        return {"a": a, "b": b, "who": ctx.event.data["who"], "name": ctx.event.name}

    result = trigger(fn, wf.Event(name="th.go", data={"who": "ada"}))
    assert result.status == "completed"
    assert result.output == {"a": "a", "b": "b", "who": "ada", "name": "th.go"}
    assert result.error is None
    assert calls == Counter({"a": 1, "b": 1})  # replays do not re-run completed steps
    assert set(result.steps) == {"a", "nap", "b"}
    assert result.steps["a"].status == "completed"
    assert result.steps["nap"].kind == "sleep"


@pytest.mark.django_db
def test_trigger_writes_nothing_to_the_database():
    @wf.function(id="th-nowrite", trigger="th.go", retries=1)
    def fn(ctx):
        ctx.step.run("ok", counted, "ok")
        ctx.step.sleep("nap", "2h")
        try:
            ctx.step.run("bad", always_fails, "bad")
        except wf.StepError:
            pass
        return "done"

    result = trigger(fn, "th.go")
    assert result.status == "completed"
    assert db_is_empty()
    assert drain() == 0


def test_trigger_accepts_a_function_id_an_event_dict_or_a_name():
    @wf.function(id="th-forms", trigger="th.go")
    def fn(ctx):
        return {"id": ctx.event.id, "name": ctx.event.name, "data": ctx.event.data, "aware": ctx.event.ts.tzinfo is not None}

    ts = datetime(2024, 1, 2, tzinfo=dt_timezone.utc)
    by_id = trigger("th-forms", {"name": "th.go", "data": {"x": 1}, "id": "e-1", "ts": ts})
    assert by_id.output == {"id": "e-1", "name": "th.go", "data": {"x": 1}, "aware": True}
    by_name = trigger(fn, "th.go")
    assert by_name.output["name"] == "th.go" and by_name.output["data"] == {} and by_name.output["aware"]
    by_event = trigger(fn, wf.Event(name="th.go", data={"y": 2}, id="e-2", ts=ts))
    assert by_event.output == {"id": "e-2", "name": "th.go", "data": {"y": 2}, "aware": True}


def test_trigger_with_an_unknown_function_id_is_a_clear_error():
    with pytest.raises(wf.UnknownFunctionError, match="th-missing"):
        trigger("th-missing", "th.go")


def test_trigger_refuses_a_bad_event():
    @wf.function(id="th-bad-event", trigger="th.go")
    def fn(ctx):
        return None

    with pytest.raises(wf.WorkflowDefinitionError, match="event must be"):
        trigger(fn, 42)


def test_trigger_sleeps_take_no_time_and_leave_the_clock_alone():
    @wf.function(id="th-sleeps", trigger="th.go")
    def fn(ctx):
        before = ctx.step.run("before", lambda: clock.now().isoformat())
        ctx.step.sleep("year", "365d")
        middle = ctx.step.run("middle", lambda: clock.now().isoformat())
        ctx.step.sleep_until("far", datetime(2300, 1, 1, tzinfo=dt_timezone.utc))
        after = ctx.step.run("after", lambda: clock.now().isoformat())
        return [before, middle, after]

    started = time.monotonic()
    result = trigger(fn, "th.go")
    assert time.monotonic() - started < 1
    assert result.status == "completed"
    before, middle, after = (datetime.fromisoformat(t) for t in result.output)
    assert middle - before >= timedelta(days=365)  # the function saw the time pass
    assert after >= datetime(2300, 1, 1, tzinfo=dt_timezone.utc)
    assert abs((clock.now() - timezone.now()).total_seconds()) < 1  # put back afterwards


def test_trigger_reports_a_failed_run():
    @wf.function(id="th-fails", trigger="th.go", retries=2)
    def fn(ctx):
        ctx.step.run("bad", always_fails, "bad")
        return "unreachable"

    started = time.monotonic()
    result = trigger(fn, "th.go")
    assert time.monotonic() - started < 1  # backoffs take no time
    assert result.status == "failed"
    assert result.output is None
    assert result.error["name"] == "StepError"
    assert "bad broke" in result.error["message"]
    assert result.error["stack"]
    assert calls["bad"] == 3  # retries=2: three attempts
    assert result.steps["bad"].status == "failed"
    assert result.steps["bad"].attempts == 3


def test_trigger_reports_errors_outside_steps_and_non_retriable_errors():
    @wf.function(id="th-outside", trigger="th.go", retries=1)
    def outside(ctx):
        calls["outside"] += 1
        raise ValueError("broken handler")

    result = trigger(outside, "th.go")
    assert result.status == "failed"
    assert result.error["name"] == "ValueError"
    assert result.error["message"] == "broken handler"
    assert calls["outside"] == 2

    @wf.function(id="th-nonretriable", trigger="th.go", retries=3)
    def nonretriable(ctx):
        calls["nonretriable"] += 1
        raise wf.NonRetriableError("stop now")

    result = trigger(nonretriable, "th.go")
    assert result.status == "failed"
    assert result.error["message"] == "stop now"
    assert calls["nonretriable"] == 1


def test_trigger_non_json_step_result_is_reported():
    @wf.function(id="th-nonjson", trigger="th.go")
    def fn(ctx):
        ctx.step.run("bad", lambda: object())

    result = trigger(fn, "th.go")
    assert result.status == "failed"
    assert "JSON" in result.error["message"]


# -- trigger: step stubs ---------------------------------------------------------------------------------


def test_step_stubs_replace_steps_by_id_with_values():
    @wf.function(id="th-stub-values", trigger="th.go")
    def fn(ctx):
        user = ctx.step.run("load-user", counted, "load-user")
        charge = ctx.step.run("charge", counted, "charge")
        mail = ctx.step.run("send-mail", counted, "send-mail")
        return [user, charge, mail]

    result = trigger(fn, "th.go", step_stubs={"load-user": {"id": 7, "tags": ("a", "b")}, "charge": None})
    assert result.status == "completed"
    assert result.output == [{"id": 7, "tags": ["a", "b"]}, None, "send-mail"]
    assert calls == Counter({"send-mail": 1})  # stubbed steps never ran


def test_a_callable_stub_gets_the_steps_arguments():
    def real_charge(amount, currency="EUR"):
        calls["real"] += 1
        return "charged for real"

    @wf.function(id="th-stub-callable", trigger="th.go")
    def fn(ctx):
        a = ctx.step.run("charge", real_charge, 42)
        b = ctx.step.run("convert", partial(real_charge, currency="USD"), 10)
        return [a, b]

    result = trigger(
        fn, "th.go",
        step_stubs={"charge": lambda amount: f"fake {amount}", "convert": lambda amount: amount * 2},
    )
    assert result.output == ["fake 42", 20]
    assert calls["real"] == 0


def test_a_stub_applies_to_every_repetition_of_a_step_id():
    @wf.function(id="th-stub-repeat", trigger="th.go")
    def fn(ctx):
        return [ctx.step.run("item", counted, "item", n) for n in range(3)]

    result = trigger(fn, "th.go", step_stubs={"item": lambda name, n: n * 10})
    assert result.output == [0, 10, 20]
    assert set(result.steps) == {"item", "item:1", "item:2"}
    assert calls["item"] == 0


def test_a_stub_that_raises_is_reported_as_the_steps_failure():
    @wf.function(id="th-stub-raises", trigger="th.go", retries=1)
    def fn(ctx):
        return ctx.step.run("charge", counted, "charge")

    def declined(name):
        calls["declined"] += 1
        raise RuntimeError("card declined")

    result = trigger(fn, "th.go", step_stubs={"charge": declined})
    assert result.status == "failed"
    assert "card declined" in result.error["message"]
    assert calls == Counter({"declined": 2})


def test_a_stub_can_replace_a_sleep():
    @wf.function(id="th-stub-sleep", trigger="th.go")
    def fn(ctx):
        ctx.step.sleep("nap", "1d")
        return "after"

    result = trigger(fn, "th.go", step_stubs={"nap": None})
    assert result.status == "completed"
    assert result.output == "after"


def test_stubs_for_wait_for_event_and_a_clear_error_without_one():
    @wf.function(id="th-wait", trigger="th.go")
    def fn(ctx):
        paid = ctx.step.wait_for_event("wait-paid", event="th.paid", timeout="1h")
        if paid is None:
            return None
        return {"name": paid.name, "data": paid.data, "aware": paid.ts.tzinfo is not None}

    stubbed = trigger(fn, "th.go", step_stubs={"wait-paid": {"name": "th.paid", "data": {"ok": True}}})
    assert stubbed.status == "completed", stubbed.error
    assert stubbed.output == {"name": "th.paid", "data": {"ok": True}, "aware": True}
    as_event = trigger(fn, "th.go", step_stubs={"wait-paid": wf.Event(name="th.paid", data={"n": 1})})
    assert as_event.output == {"name": "th.paid", "data": {"n": 1}, "aware": True}
    timed_out = trigger(fn, "th.go", step_stubs={"wait-paid": None})
    assert timed_out.status == "completed"
    assert timed_out.output is None

    with pytest.raises(wf.WorkflowDefinitionError, match="step_stubs"):
        trigger(fn, "th.go")

def test_trigger_logger_is_silent_while_replaying(caplog):
    import logging

    @wf.function(id="th-log", trigger="th.go")
    def fn(ctx):
        ctx.logger.info("before")
        ctx.step.sleep("nap", "1d")
        ctx.logger.info("after")

    caplog.set_level(logging.INFO, logger="django_workflows")
    assert trigger(fn, "th.go").status == "completed"
    lines = [r.getMessage().split("] ", 1)[1] for r in caplog.records if r.name == "django_workflows.functions.th-log"]
    assert lines == ["before", "after"]
