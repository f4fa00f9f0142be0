"""Finished runs are pruned after RETENTION_DAYS, failed ones after FAILED_RETENTION_DAYS."""

from __future__ import annotations

from datetime import timedelta

import pytest

import django_workflows as wf
from django_workflows.engine import clock, retention
from django_workflows.models import Event, Run, Step
from django_workflows.testing import drain

pytestmark = pytest.mark.django_db


def test_prune_keeps_recent_and_failed_runs_longer(settings):
    settings.DJANGO_WORKFLOWS = {"RETENTION_DAYS": 7, "FAILED_RETENTION_DAYS": 30}

    @wf.function(id="keep-or-fail", trigger="prune.go", retries=0)
    def keep_or_fail(ctx):
        ctx.step.run("work", lambda: 1)
        if ctx.event.data["fail"]:
            raise wf.NonRetriableError("failed on purpose")

    wf.send("prune.go", data={"fail": False})
    wf.send("prune.go", data={"fail": True})
    drain()
    assert Run.objects.count() == 2 and Step.objects.count() == 2

    assert retention.prune("default", now=clock.now() + timedelta(days=6)) == 0
    assert retention.prune("default", now=clock.now() + timedelta(days=8)) == 1
    assert list(Run.objects.values_list("status", flat=True)) == ["failed"]
    assert Step.objects.count() == 1
    assert Event.objects.count() == 1  # the completed run's event went with it

    assert retention.prune("default", now=clock.now() + timedelta(days=31)) == 1
    assert not Run.objects.exists() and not Event.objects.exists()


def test_prune_never_touches_unfinished_runs():
    @wf.function(id="long-sleeper", trigger="sleep.long")
    def long_sleeper(ctx):
        ctx.step.sleep("nap", "90d")

    wf.send("sleep.long")
    drain()
    assert retention.prune("default", now=clock.now() + timedelta(days=60)) == 0
    assert Run.objects.get().status == "running"
