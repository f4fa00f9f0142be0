"""How the engine gives flow control one home: the claim's lanes, the end of a run, and
what a held-back run says about itself. On SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection

import django_workflows as wf
from django_workflows.engine import clock, queue
from django_workflows.engine.intake import process_events
from django_workflows.engine.worker import Worker
from django_workflows.models import FlowSlot, QueueItem, Run
from django_workflows.testing import drain

pytestmark = pytest.mark.django_db


def _take_in_events() -> None:
    """Take in every queued event, as a worker's intake does (no run is claimed)."""
    items = [item for item in queue.claim("intake", 1000) if item.kind == "event"]
    process_events(items, db="default")


def _claimed_functions(worker: str, limit: int = 100) -> list[str]:
    claimed = queue.claim(worker, limit)
    runs = Run.objects.in_bulk([uuid.UUID(item.run_id) for item in claimed if item.run_id])
    return sorted(runs[uuid.UUID(item.run_id)].function_id for item in claimed if item.run_id)


def test_a_full_lane_holds_back_only_its_own_items():
    @wf.function(id="per-account", trigger="sync", concurrency=wf.Concurrency(1, key="event.data.account"))
    def per_account(ctx):
        return None

    @wf.function(id="unlimited", trigger="ping")
    def unlimited(ctx):
        return None

    # Account "a" has 50 runs queued first: they must not stop "b", "c" or the other function.
    wf.send([wf.Event(name="sync", data={"account": "a"})] * 50)
    wf.send([wf.Event(name="sync", data={"account": key}) for key in ("b", "c")])
    wf.send([wf.Event(name="ping")] * 3)
    _take_in_events()
    assert _claimed_functions("w1") == ["per-account"] * 3 + ["unlimited"] * 3
    # Every account is at its limit now: a second worker gets nothing of that function.
    assert _claimed_functions("w2") == []


def test_two_limits_the_function_wide_one_caps_the_keys():
    @wf.function(id="both", trigger="sync", concurrency=[3, wf.Concurrency(2, key="event.data.account")])
    def both(ctx):
        return None

    wf.send([wf.Event(name="sync", data={"account": key}) for key in "aaabbbccc"])
    _take_in_events()
    first = queue.claim("w1", 100)
    assert len(first) == 3
    runs = Run.objects.in_bulk([uuid.UUID(item.run_id) for item in first])
    accounts = [runs[uuid.UUID(item.run_id)].event.data["account"] for item in first]
    assert max(accounts.count(key) for key in "abc") <= 2
    assert queue.claim("w2", 100) == []
    queue.release("w1", [first[0].id])
    assert len(queue.claim("w2", 100)) == 1


def test_a_held_back_run_says_why():
    @wf.function(id="api-calls", trigger="call", concurrency=wf.Concurrency(1, key="event.data.account"))
    def api_calls(ctx):
        return None

    wf.send([wf.Event(name="call", data={"account": "acct-42"})] * 2)
    _take_in_events()
    (held,) = queue.claim("w1", 10)
    waiting = Run.objects.exclude(pk=held.run_id).get()
    assert waiting.waiting_reason == 'waiting for concurrency slot (key "acct-42", limit 1)'
    assert Run.objects.get(pk=held.run_id).waiting_reason == ""
    queue.release("w1", [held.id])
    assert waiting.waiting_reason == ""


def test_sleeping_runs_hold_no_slot():
    @wf.function(id="sleepy", trigger="nap", concurrency=1)
    def sleepy(ctx):
        ctx.step.sleep("nap", "1h")
        return "rested"

    wf.send([wf.Event(name="nap")] * 3)
    drain()
    # All three started and are asleep: none waited for the one slot.
    assert Run.objects.filter(function_id="sleepy", status="running").count() == 3
    drain(advance_time=True)
    assert Run.objects.filter(function_id="sleepy", status="completed").count() == 3


def test_every_way_a_run_ends_releases_its_flow_slots():
    @wf.function(id="single", trigger="go", singleton=wf.Singleton(key="event.data.k"))
    def single(ctx):
        ctx.step.sleep("wait", "1h")
        return None

    wf.send("go", data={"k": 1})
    drain()
    run = Run.objects.get(function_id="single")
    assert FlowSlot.objects.filter(kind="singleton", run_id=run.pk).exists()
    wf.cancel(run.pk)
    assert not FlowSlot.objects.filter(kind="singleton", run_id=run.pk).exists()
    wf.send("go", data={"k": 1})
    drain(advance_time=True)
    second = Run.objects.filter(function_id="single").exclude(pk=run.pk).get()
    assert second.status == "completed"
    assert not FlowSlot.objects.filter(kind="singleton", run_id=second.pk).exists()


def test_an_idle_worker_does_not_spin_on_held_back_work():
    worker = Worker(concurrency=2)
    QueueItem.objects.create(kind="run", lane="busy", lane_limit=1, due_at=clock.now() - timedelta(seconds=5))
    assert worker._idle_timeout(0.4, free=2, query=True) == 0.4


def test_drain_stops_when_only_held_back_work_is_due():
    @wf.function(id="one-at-a-time", trigger="job", concurrency=1)
    def one_at_a_time(ctx):
        return None

    wf.send([wf.Event(name="job")] * 2)
    _take_in_events()
    (held,) = queue.claim("elsewhere", 10)  # another worker holds the only slot
    assert drain(advance_time=True) == 0
    queue.release("elsewhere", [held.id])
    assert drain(advance_time=True) == 2


def test_limited_work_is_not_starved_by_an_unlimited_backlog():
    @wf.function(id="limited", trigger="slow", concurrency=2)
    def limited(ctx):
        return None

    @wf.function(id="flood", trigger="flood")
    def flood(ctx):
        return None

    wf.send([wf.Event(name="flood")] * 100)
    wf.send([wf.Event(name="slow")] * 5)
    _take_in_events()
    claimed = _claimed_functions("w1", limit=4)
    assert claimed.count("limited") >= 1 and claimed.count("flood") >= 1


def test_a_free_key_among_many_full_ones_is_found_in_a_few_claims():
    """A claim looks at a window of the limited lanes and goes round them in turns: with
    200 keys at their limit, the one key with room is still reached, in a few claims."""
    now = clock.now()
    items = []
    for n in range(200):  # each key: one item held, one waiting
        lane = f'fn|"user-{n:03}"'
        items.append(QueueItem(kind="run", lane=lane, lane_limit=1, worker_id="busy", due_at=now + timedelta(minutes=5)))
        items.append(QueueItem(kind="run", lane=lane, lane_limit=1, due_at=now - timedelta(seconds=1)))
    free_lane = 'fn|"user-zzz"'  # last in lane order: outside the first windows
    items.append(QueueItem(kind="run", lane=free_lane, lane_limit=1, due_at=now - timedelta(seconds=1)))
    QueueItem.objects.bulk_create(items)
    queue._lane_cursor.clear()
    looks, claimed = 0, []
    while not claimed and looks < 200 // queue.LIMITED_LANES_PER_CLAIM + 2:
        claimed = queue.claim("w1", 4)
        looks += 1
    assert [QueueItem.objects.get(pk=item.id).lane for item in claimed] == [free_lane]
    if connection.vendor == "postgresql":  # SQLite's claim looks at every lane at once
        assert looks > 1, "a claim looked at every limited lane: its cost grows with the keys"
