"""The shortest path from an event to its run's first step: the runs intake keeps for its
own worker are inserted already running and handed over in memory (no load), unless a run
of the batch may have ended in it; an idle worker takes events in on its claim thread."""

from __future__ import annotations

import logging
import threading
import time

import pytest

import django_workflows as wf
from django_workflows.engine import queue
from django_workflows.engine.intake import process_events
from django_workflows.engine.worker import Worker, process_items
from django_workflows.models import Run


@pytest.fixture
def one_step():
    ran: list[str] = []

    @wf.function(id="wake-one", trigger="wake.one")
    def fn(ctx):
        return ctx.step.run("only", lambda: ran.append(threading.current_thread().name) or "done")

    return ran


@pytest.mark.django_db(transaction=True)
def test_kept_runs_start_running_and_are_run_from_memory(one_step, caplog):
    wf.send("wake.one")
    kept = process_events(queue.claim("w", 8), db="default", keep_for="w", keep_max=8)

    (item,) = kept
    assert item.fresh_run is not None
    run = Run.objects.get(pk=item.run_id)
    assert run.status == "running" and run.started_at is not None  # leased to "w", starting now
    caplog.set_level(logging.INFO, logger="django_workflows.worker")
    process_items(kept, db="default", worker_id="w")

    run.refresh_from_db()
    assert run.status == "completed" and run.output == "done" and one_step == [threading.current_thread().name]
    assert [r.message for r in caplog.records].count(f"run started: wake-one {run.pk}") == 1


@pytest.mark.django_db(transaction=True)
def test_a_run_ended_in_its_own_batch_is_not_run_from_memory():
    ran: list[int] = []

    @wf.function(id="wake-cancelled", trigger="wake.go", cancel=[wf.Cancel(event="wake.stop")])
    def fn(ctx):
        ctx.step.run("s", lambda: ran.append(1))

    wf.send([wf.Event(name="wake.go"), wf.Event(name="wake.stop")])
    kept = process_events(queue.claim("w", 8), db="default", keep_for="w", keep_max=8)

    assert [item.fresh_run for item in kept] == [None]  # loaded again by its thread ...
    process_items(kept, db="default", worker_id="w")
    assert ran == [] and Run.objects.get().status == "cancelled"  # ... which finds it cancelled


@pytest.mark.django_db(transaction=True)
def test_a_throttled_function_is_not_started_by_intake():
    @wf.function(id="wake-throttled", trigger="wake.t", throttle=wf.Throttle(limit=5, period="1s"))
    def fn(ctx):
        return 1

    wf.send("wake.t")
    (item,) = process_events(queue.claim("w", 8), db="default", keep_for="w", keep_max=8)
    assert item.fresh_run is None  # its throttle gate decides when it starts
    assert Run.objects.get().status == "queued"


@pytest.mark.postgres  # (SQLite's in-memory test database cannot be shared by threads)
@pytest.mark.django_db(transaction=True)
def test_an_idle_worker_takes_events_in_on_its_claim_thread(one_step, monkeypatch):
    seen: list[str] = []
    real = Worker._intake

    def spy(self, batch):
        seen.append(threading.current_thread().name)
        return real(self, batch)

    monkeypatch.setattr(Worker, "_intake", spy)
    worker = Worker(concurrency=2)
    thread = threading.Thread(target=worker.run, name="claim-loop", daemon=True)
    thread.start()
    try:
        time.sleep(0.3)  # idle
        wf.send("wake.one")
        deadline = time.monotonic() + 10
        while not Run.objects.filter(status="completed").exists():
            assert time.monotonic() < deadline, "the run did not complete"
            time.sleep(0.02)
    finally:
        worker.stop()
        thread.join(10)
    assert seen[:1] == ["claim-loop"]
    assert one_step and one_step[0].startswith("wf-worker-")  # the run itself on a worker thread


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_backlog_of_events_is_taken_in_by_one_batch(one_step):
    """A claim gives one item per free thread; the events behind it join the same intake
    transaction (up to EVENT_BATCH), the oldest first, and no event is claimed twice."""
    from django_workflows.engine.worker import EVENT_BATCH

    wf.send([wf.Event(name="wake.one", data={"n": n}) for n in range(EVENT_BATCH + 20)])
    first = queue.claim("w1", 1)
    more = queue.claim_events("w1", EVENT_BATCH - len(first))
    other = queue.claim_events("w2", 1000)

    assert len(first) == 1 and len(more) == EVENT_BATCH - 1 and len(other) == 20
    ids = [i.id for i in first + more + other]
    assert len(set(ids)) == len(ids) == EVENT_BATCH + 20
    assert max(i.id for i in first + more) < min(i.id for i in other)  # oldest first
    kept = process_events(first + more, db="default", keep_for="w1", keep_max=2)
    assert len(kept) == 2 and Run.objects.count() == EVENT_BATCH  # the rest wait for any worker
