"""Retries: step backoff, StepError at the call site, NonRetriableError, RetryAfterError,
errors outside steps."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

import django_workflows as wf
from django_workflows.engine import clock
from django_workflows.engine.backoff import retry_delay
from django_workflows.models import QueueItem, Run
from django_workflows.testing import drain

pytestmark = pytest.mark.django_db

calls: Counter = Counter()


@pytest.fixture(autouse=True)
def _reset():
    calls.clear()


class Flaky(Exception):
    pass


def always_fails(name="fail"):
    calls[name] += 1
    raise Flaky(f"{name} failed (call {calls[name]})")


def fails_until(n, name="flaky"):
    calls[name] += 1
    if calls[name] < n:
        raise Flaky(f"{name}: call {calls[name]} of {n}")
    return f"{name} ok after {calls[name]}"


def counted(name):
    calls[name] += 1
    return name


def start(event="rt.go", data=None):
    wf.send(event, data=data or {})


def the_run(function_id):
    return Run.objects.get(function_id=function_id)


def step(run, step_id):
    return run.steps.get(step_id=step_id)


def seconds(delta):
    return delta.total_seconds()


# -- backoff -----------------------------------------------------------------------------------------


def test_a_failing_step_is_retried_with_growing_backoff_and_jitter():
    @wf.function(id="rt-backoff", trigger="rt.go", retries=3)
    def fn(ctx):
        return ctx.step.run("call-api", always_fails, "api")

    start()
    drain(max_jobs=1)  # the event
    expected = [(15, 18), (30, 36), (60, 72)]
    for attempt, (low, high) in enumerate(expected, start=1):
        before = clock.now()
        assert drain() == 1  # one attempt, then the run waits for its retry
        after = clock.now()
        run = the_run("rt-backoff")
        assert run.status == "running"
        s = step(run, "call-api")
        assert s.status == "retrying"
        assert s.attempts == attempt
        assert s.error["name"] == "Flaky"
        assert s.error["message"] == f"api failed (call {attempt})"
        assert "Traceback" in s.error["stack"] and "always_fails" in s.error["stack"]
        assert s.ended_at is None
        assert low - 0.05 <= seconds(s.scheduled_at - after) and seconds(s.scheduled_at - before) <= high + 0.05
        assert QueueItem.objects.get(run=run).due_at == s.scheduled_at
        assert drain() == 0  # not due yet
        clock.advance_to(s.scheduled_at - timedelta(seconds=1))
        assert drain() == 0
        clock.advance_to(s.scheduled_at)

    assert drain() >= 1  # the 4th and last attempt (and system events about the failure)
    run = the_run("rt-backoff")
    assert calls["api"] == 4
    s = step(run, "call-api")
    assert s.status == "failed"
    assert s.attempts == 4
    assert s.ended_at is not None
    assert s.scheduled_at is None
    assert run.status == "failed"
    assert not QueueItem.objects.filter(run=run).exists()


def test_backoff_table_and_cap():
    bounds = [15, 30, 60, 120, 300, 600, 1200, 2400, 4800, 7200, 7200, 7200]
    for failed, base in enumerate(bounds, start=1):
        for _ in range(20):
            delay = seconds(retry_delay(failed))
            assert base <= delay <= base * 1.2 + 1e-6
    # Jitter: not all the same.
    assert len({retry_delay(1) for _ in range(20)}) > 1


@pytest.mark.parametrize("retries", [0, 1, 2, 5])
def test_retries_n_means_n_plus_one_attempts(retries):
    @wf.function(id="rt-count", trigger="rt.go", retries=retries)
    def fn(ctx):
        ctx.step.run("x", always_fails, "x")

    start()
    drain(advance_time=True)
    run = the_run("rt-count")
    assert run.status == "failed"
    assert calls["x"] == retries + 1
    assert step(run, "x").attempts == retries + 1


def test_the_default_is_four_retries():
    @wf.function(id="rt-default", trigger="rt.go")
    def fn(ctx):
        ctx.step.run("x", always_fails, "x")

    start()
    drain(advance_time=True)
    assert calls["x"] == 5


def test_a_step_that_succeeds_on_a_retry_completes_the_run():
    @wf.function(id="rt-recover", trigger="rt.go", retries=4)
    def fn(ctx):
        before = ctx.step.run("before", counted, "before")
        flaky = ctx.step.run("flaky", fails_until, 3)
        after = ctx.step.run("after", counted, "after")
        return [before, flaky, after]

    start()
    drain(advance_time=True)
    run = the_run("rt-recover")
    assert run.status == "completed"
    assert run.output == ["before", "flaky ok after 3", "after"]
    assert calls == Counter({"before": 1, "flaky": 3, "after": 1})
    s = step(run, "flaky")
    assert (s.status, s.attempts, s.error, s.scheduled_at) == ("completed", 3, None, None)
    assert s.ended_at is not None


# -- StepError -----------------------------------------------------------------------------------------


def test_step_error_is_raised_at_the_call_site_and_can_be_caught():
    @wf.function(id="rt-catch", trigger="rt.go", retries=1)
    def fn(ctx):
        try:
            ctx.step.run("charge", always_fails, "charge")
        except wf.StepError as exc:
            fallback = ctx.step.run("fallback", counted, "fallback")
            return {"step_id": exc.step_id, "name": exc.error["name"], "msg": exc.error["message"], "then": fallback}
        return "not reached"

    start()
    drain(advance_time=True)
    run = the_run("rt-catch")
    assert run.status == "completed", run.error
    assert run.output == {"step_id": "charge", "name": "Flaky", "msg": "charge failed (call 2)", "then": "fallback"}
    assert calls == Counter({"charge": 2, "fallback": 1})
    assert step(run, "charge").status == "failed"
    assert step(run, "fallback").status == "completed"


def test_a_caught_step_error_is_raised_again_on_replay_without_rerunning_the_step():
    @wf.function(id="rt-catch-replay", trigger="rt.go", retries=0)
    def fn(ctx):
        try:
            ctx.step.run("bad", always_fails, "bad")
            outcome = "ok"
        except wf.StepError as exc:
            outcome = exc.error["name"]
        ctx.step.sleep("later", "1d")
        return outcome

    start()
    drain(advance_time=True)
    run = the_run("rt-catch-replay")
    assert run.status == "completed"
    assert run.output == "Flaky"
    assert calls["bad"] == 1


def test_an_uncaught_step_error_fails_the_run_with_an_error_dict():
    @wf.function(id="rt-uncaught", trigger="rt.go", retries=1)
    def fn(ctx):
        ctx.step.run("ok", counted, "ok")
        ctx.step.run("doomed", always_fails, "doomed")
        ctx.step.run("never", counted, "never")

    start()
    drain(advance_time=True)
    run = the_run("rt-uncaught")
    assert run.status == "failed"
    assert run.output is None
    assert run.ended_at is not None
    assert {"name", "message", "stack"} <= set(run.error)
    assert run.error["name"] == "StepError"
    assert "doomed" in run.error["message"]
    assert "Flaky" in run.error["message"]
    assert run.error["stack"]
    assert calls == Counter({"ok": 1, "doomed": 2})
    assert not run.steps.filter(step_id="never").exists()


def test_step_error_carries_the_step_id_and_error():
    error = {"name": "X", "message": "m", "stack": "s"}
    exc = wf.StepError("sid", error)
    assert exc.step_id == "sid" and exc.error == error
    assert "sid" in str(exc) and "X: m" in str(exc)


# -- NonRetriableError ------------------------------------------------------------------------------------


def test_non_retriable_error_fails_the_step_at_once():
    def refuse():
        calls["refuse"] += 1
        raise wf.NonRetriableError("card declined")

    @wf.function(id="rt-nonretriable", trigger="rt.go", retries=5)
    def fn(ctx):
        ctx.step.run("charge", refuse)

    start()
    drain(advance_time=True)
    run = the_run("rt-nonretriable")
    assert calls["refuse"] == 1
    s = step(run, "charge")
    assert s.status == "failed"
    assert s.attempts == 1
    assert s.error["name"] == "NonRetriableError"
    assert s.error["message"] == "card declined"
    assert run.status == "failed"
    assert "card declined" in run.error["message"]


def test_a_subclass_of_non_retriable_error_is_not_retried_either():
    class Declined(wf.NonRetriableError):
        pass

    def refuse():
        calls["refuse"] += 1
        raise Declined("nope")

    @wf.function(id="rt-nonretriable-sub", trigger="rt.go", retries=3)
    def fn(ctx):
        try:
            ctx.step.run("charge", refuse)
        except wf.StepError as exc:
            return exc.error["name"]

    start()
    drain(advance_time=True)
    assert calls["refuse"] == 1
    assert the_run("rt-nonretriable-sub").output == "Declined"


# -- RetryAfterError ----------------------------------------------------------------------------------------


def test_retry_after_a_duration_sets_the_next_attempt_time():
    def limited():
        calls["limited"] += 1
        if calls["limited"] == 1:
            raise wf.RetryAfterError("rate limited", "10s")
        return "through"

    @wf.function(id="rt-after", trigger="rt.go", retries=2)
    def fn(ctx):
        return ctx.step.run("call", limited)

    start()
    drain(max_jobs=1)
    before = clock.now()
    drain()
    after = clock.now()
    run = the_run("rt-after")
    s = step(run, "call")
    assert s.status == "retrying"
    assert s.error["name"] == "RetryAfterError"
    assert 10 - 0.05 <= seconds(s.scheduled_at - after) and seconds(s.scheduled_at - before) <= 10 + 0.05
    clock.advance_to(s.scheduled_at - timedelta(seconds=1))
    assert drain() == 0
    clock.advance_to(s.scheduled_at)
    assert drain() == 1
    run.refresh_from_db()
    assert run.status == "completed"
    assert run.output == "through"
    assert step(run, "call").attempts == 2


def test_retry_after_a_timedelta():
    err = wf.RetryAfterError("later", timedelta(minutes=3))
    assert err.retry_after == timedelta(minutes=3) and err.retry_at is None
    assert str(err) == "later"


def test_retry_after_an_aware_datetime_sets_the_next_attempt_time():
    target = clock.now().replace(microsecond=0) + timedelta(hours=5)

    def limited():
        calls["limited"] += 1
        if calls["limited"] == 1:
            raise wf.RetryAfterError("come back later", target)
        return "through"

    @wf.function(id="rt-after-dt", trigger="rt.go", retries=2)
    def fn(ctx):
        return ctx.step.run("call", limited)

    start()
    drain()
    run = the_run("rt-after-dt")
    s = step(run, "call")
    assert s.status == "retrying"
    assert s.scheduled_at == target
    assert QueueItem.objects.get(run=run).due_at == target
    clock.advance_to(target - timedelta(minutes=1))
    assert drain() == 0
    assert drain(advance_time=True) == 1
    run.refresh_from_db()
    assert run.status == "completed"
    assert calls["limited"] == 2


def test_retry_after_error_still_counts_as_an_attempt():
    def limited():
        calls["limited"] += 1
        raise wf.RetryAfterError("still limited", "1m")

    @wf.function(id="rt-after-spent", trigger="rt.go", retries=2)
    def fn(ctx):
        ctx.step.run("call", limited)

    start()
    drain(advance_time=True)
    run = the_run("rt-after-spent")
    assert run.status == "failed"
    assert calls["limited"] == 3


@pytest.mark.parametrize("bad", [5, "soon"])
def test_retry_after_error_refuses_bad_durations(bad):
    with pytest.raises(wf.WorkflowDefinitionError):
        wf.RetryAfterError("x", bad)


def test_retry_after_error_refuses_a_naive_datetime():
    from datetime import datetime

    with pytest.raises(wf.WorkflowDefinitionError, match="timezone-aware"):
        wf.RetryAfterError("x", datetime(2030, 1, 1))


# -- errors outside steps -------------------------------------------------------------------------------------


def test_an_error_outside_steps_retries_the_function_from_its_last_completed_step():
    @wf.function(id="rt-outside", trigger="rt.go", retries=3)
    def fn(ctx):
        calls["handler"] += 1
        a = ctx.step.run("a", counted, "a")
        if calls["handler"] < 3:
            raise Flaky("outside any step")
        b = ctx.step.run("b", counted, "b")
        return [a, b]

    start()
    drain(max_jobs=1)
    before = clock.now()
    drain()
    after = clock.now()
    run = the_run("rt-outside")
    assert run.status == "running"
    assert run.attempts == 1
    due = QueueItem.objects.get(run=run).due_at
    assert 15 - 0.05 <= seconds(due - after) and seconds(due - before) <= 18 + 0.05

    drain(advance_time=True)
    run.refresh_from_db()
    assert run.status == "completed", run.error
    assert run.output == ["a", "b"]
    assert calls == Counter({"handler": 3, "a": 1, "b": 1})  # "a" did not run again


def test_an_error_outside_steps_fails_the_run_after_its_retries():
    @wf.function(id="rt-outside-fail", trigger="rt.go", retries=2)
    def fn(ctx):
        calls["handler"] += 1
        ctx.step.run("a", counted, "a")
        raise Flaky("always broken")

    start()
    drain(advance_time=True)
    run = the_run("rt-outside-fail")
    assert run.status == "failed"
    assert calls == Counter({"handler": 3, "a": 1})
    assert run.error["name"] == "Flaky"
    assert run.error["message"] == "always broken"
    assert "Traceback" in run.error["stack"]
    assert step(run, "a").status == "completed"  # recorded steps are kept


def test_an_error_outside_steps_with_zero_retries_fails_at_once():
    @wf.function(id="rt-outside-zero", trigger="rt.go", retries=0)
    def fn(ctx):
        calls["handler"] += 1
        raise Flaky("broken")

    start()
    drain(advance_time=True)
    assert the_run("rt-outside-zero").status == "failed"
    assert calls["handler"] == 1


def test_a_non_retriable_error_outside_steps_fails_the_run_at_once():
    @wf.function(id="rt-outside-nonretriable", trigger="rt.go", retries=5)
    def fn(ctx):
        calls["handler"] += 1
        ctx.step.run("a", counted, "a")
        raise wf.NonRetriableError("give up")

    start()
    drain(advance_time=True)
    run = the_run("rt-outside-nonretriable")
    assert run.status == "failed"
    assert calls == Counter({"handler": 1, "a": 1})
    assert run.error["name"] == "NonRetriableError"
    assert run.error["message"] == "give up"
    assert run.error["stack"]


def test_a_retry_after_error_outside_steps_sets_the_retry_time():
    @wf.function(id="rt-outside-after", trigger="rt.go", retries=2)
    def fn(ctx):
        calls["handler"] += 1
        if calls["handler"] == 1:
            raise wf.RetryAfterError("not yet", "2h")
        return "ok"

    start()
    drain(max_jobs=1)
    before = clock.now()
    drain()
    run = the_run("rt-outside-after")
    due = QueueItem.objects.get(run=run).due_at
    assert abs(seconds(due - before) - 7200) < 1
    drain(advance_time=True)
    run.refresh_from_db()
    assert run.status == "completed"
    assert calls["handler"] == 2


def test_step_retries_and_handler_retries_are_counted_apart():
    @wf.function(id="rt-both", trigger="rt.go", retries=2)
    def fn(ctx):
        calls["handler"] += 1
        value = ctx.step.run("flaky", fails_until, 3)  # uses all 3 attempts of the step
        if calls["handler"] < 5:  # the handler ran 3 times for the step; fail twice outside
            raise Flaky("outside")
        return value

    start()
    drain(advance_time=True)
    run = the_run("rt-both")
    assert run.status == "completed", run.error
    assert calls["flaky"] == 3
    assert run.attempts == 2
