"""Every attempt of every step, and of the handler between steps, is kept (append-only)."""

from __future__ import annotations

import pytest

import django_workflows as wf
from django_workflows.models import Attempt, Run, Step
from django_workflows.testing import drain

pytestmark = pytest.mark.django_db


def test_each_attempt_of_a_step_keeps_its_own_error():
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] < 3:
            raise ValueError(f"boom {calls['n']}")
        return "ok"

    @wf.function(id="attempts-flaky", trigger="attempts.flaky", retries=4)
    def fn(ctx):
        ctx.step.run("prepare", lambda: 1)
        ctx.step.sleep("pause", "1m")
        return ctx.step.run("call-api", flaky)

    wf.send("attempts.flaky")
    drain(advance_time=True)
    run = Run.objects.get(function_id="attempts-flaky")
    assert run.status == "completed"
    rows = list(Attempt.objects.filter(run=run).order_by("id"))
    assert [(a.step_id, a.number, a.outcome) for a in rows] == [
        ("prepare", 1, "completed"),
        ("call-api", 1, "retrying"),
        ("call-api", 2, "retrying"),
        ("call-api", 3, "completed"),
    ]
    assert [a.error["message"] for a in rows if a.error] == ["boom 1", "boom 2"]
    assert all(a.started_at <= a.ended_at for a in rows)
    assert all(a.worker_id == "drain" for a in rows)
    # The step row keeps the last state only; the history keeps every attempt.
    assert Step.objects.get(run=run, step_id="call-api").attempts == 3


def test_a_step_that_fails_for_good_and_the_handler_errors_are_kept():
    state = {"handler": 0}

    @wf.function(id="attempts-handler", trigger="attempts.handler", retries=1)
    def fn(ctx):
        ctx.step.run("first", lambda: 1)
        state["handler"] += 1
        if state["handler"] < 2:
            raise RuntimeError("between steps")
        ctx.step.run("doomed", lambda: (_ for _ in ()).throw(KeyError("gone")))

    wf.send("attempts.handler")
    drain(advance_time=True)
    run = Run.objects.get(function_id="attempts-handler")
    assert run.status == "failed"
    rows = [(a.step_id, a.number, a.outcome, (a.error or {}).get("name")) for a in Attempt.objects.filter(run=run)]
    assert rows == [
        ("first", 1, "completed", None),
        ("", 1, "retrying", "RuntimeError"),
        ("doomed", 1, "retrying", "KeyError"),
        ("doomed", 2, "failed", "KeyError"),
    ]


def test_a_handler_that_fails_for_good_records_its_last_attempt():
    @wf.function(id="attempts-broken", trigger="attempts.broken", retries=0)
    def fn(ctx):
        raise wf.NonRetriableError("no way")

    wf.send("attempts.broken")
    drain(advance_time=True)
    run = Run.objects.get(function_id="attempts-broken")
    assert [(a.step_id, a.number, a.outcome, a.error["message"]) for a in Attempt.objects.filter(run=run)] == [
        ("", 1, "failed", "no way"),
    ]
    run.delete()
    assert not Attempt.objects.exists(), "attempts go with their run"
