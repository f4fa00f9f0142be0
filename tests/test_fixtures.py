"""The pytest fixtures the plugin gives every project (no import needed)."""

from __future__ import annotations

import pytest

import django_workflows as wf

pytestmark = pytest.mark.django_db


def test_workflows_send_runs_what_the_event_starts(workflows_send, mailoutbox):
    from django.core.mail import send_mail

    @wf.function(id="fixture-welcome", trigger="fixture.signup")
    def welcome(ctx):
        ctx.step.run("email", send_mail, "Hi", "Welcome", None, [ctx.event.data["email"]])
        ctx.step.sleep("a-day", "1d")
        return "done"

    (run,) = workflows_send("fixture.signup", {"email": "ada@example.com"})
    assert (run.status, run.output) == ("completed", "done"), "the day passed instantly"
    assert [m.to for m in mailoutbox] == [["ada@example.com"]]


def test_workflows_drain_without_time_travel_leaves_sleepers(workflows_drain):
    @wf.function(id="fixture-sleeper", trigger="fixture.sleep")
    def sleeper(ctx):
        ctx.step.sleep("nap", "1h")
        return "rested"

    wf.send("fixture.sleep")
    assert workflows_drain(advance_time=False) == 2  # the event, then the run until its sleep
    from django_workflows.models import Run

    assert Run.objects.get(function_id="fixture-sleeper").status == "running"
    workflows_drain()
    assert Run.objects.get(function_id="fixture-sleeper").output == "rested"
