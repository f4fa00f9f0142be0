"""Cancelling a run whose step is running: the step finishes, no later step starts."""

from __future__ import annotations

import threading
import time

import pytest

import django_workflows as wf
from django_workflows.engine.worker import Worker
from django_workflows.models import QueueItem, Run

STARTED = threading.Event()
RELEASE = threading.Event()
FINISHED: list[str] = []


def slow_step():
    STARTED.set()
    RELEASE.wait(10)
    FINISHED.append("slow")
    return "slow"


@pytest.mark.django_db(transaction=True)
def test_running_step_finishes_and_no_later_step_starts():
    STARTED.clear(), RELEASE.clear(), FINISHED.clear()

    @wf.function(id="cancel-mid-step", trigger="cancel.mid")
    def cancel_mid_step(ctx):
        ctx.step.run("slow", slow_step)
        ctx.step.run("next", lambda: FINISHED.append("next"))

    wf.send("cancel.mid")
    worker = Worker(concurrency=2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert STARTED.wait(10), "the slow step never started"
        run = Run.objects.get()
        assert wf.cancel(run.pk) is True
        assert not QueueItem.objects.filter(run=run).exists()
        RELEASE.set()
        deadline = time.monotonic() + 10
        while "slow" not in FINISHED and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # give a (wrong) next step the chance to start
    finally:
        RELEASE.set()
        worker.stop()
        thread.join(15)
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert FINISHED == ["slow"]
    assert not run.steps.filter(step_id="next").exists()
