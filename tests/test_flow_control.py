"""Flow control: concurrency, throttle, rate limit, debounce, batches, idempotency, priority,
singleton, pause, and the options refused at definition time.

Concurrency is enforced by the claim, so its tests claim directly (``queue.claim``) and keep
items held (claimed, not processed) to see what the other claims may take. The other rules
are enforced at admission: their tests take events in and look at the runs and queue items
created, then run them with ``drain``.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

import django_workflows as wf
from django_workflows.engine import clock, cron, queue
from django_workflows.engine.intake import process_events
from django_workflows.engine.worker import process_items
from django_workflows.functions import registry
from django_workflows.models import CronSchedule, Event, FlowSlot, QueueItem, Run, Step
from django_workflows.testing import drain

pytestmark = pytest.mark.django_db

DB = "default"


# -- helpers -----------------------------------------------------------------------------------


def take_in() -> int:
    """Take in the due events as a worker's intake does: runs are created, none is run, and
    the queue items of runs already there are left untouched (not claimed)."""
    taken = 0
    while True:
        items = [
            queue.Claimed(
                id=item.id, kind="event", run_id=None, event_id=str(item.event_id), step_id="",
                token=item.lease_token, claims=1,
            )
            for item in QueueItem.objects.filter(kind="event", worker_id="", due_at__lte=clock.now())
        ]
        if not items:
            return taken
        process_events(items, db=DB)
        taken += len(items)


def send_many(name: str, datas: list[dict]) -> None:
    wf.send([wf.Event(name=name, data=data) for data in datas])


def runs_of(items) -> list[Run]:
    ids = [item.run_id for item in items]
    assert all(item.kind == "run" for item in items), [item.kind for item in items]
    return list(Run.objects.filter(pk__in=ids).select_related("event"))


def accounts_of(items) -> list:
    return sorted(run.event.data["account"] for run in runs_of(items))


def functions_of(items) -> list[str]:
    return sorted(run.function_id for run in runs_of(items))


def item_of(run: Run) -> QueueItem:
    return QueueItem.objects.get(run=run, kind="run")


def by_n(function_id: str) -> dict[int, Run]:
    return {r.event.data["n"]: r for r in Run.objects.filter(function_id=function_id).select_related("event")}


def advance(**kwargs) -> None:
    clock.advance_to(clock.now() + timedelta(**kwargs))


def seconds(delta: timedelta) -> float:
    return round(delta.total_seconds(), 3)


# -- concurrency: enforced at the claim ----------------------------------------------------------


def test_concurrency_limits_items_held_and_a_sleeping_run_holds_no_slot():
    @wf.function(id="fc-conc", trigger="fc.conc", concurrency=2)
    def fn(ctx):
        ctx.step.run("work", lambda: ctx.event.data["n"])
        ctx.step.sleep("nap", "1h")
        return ctx.event.data["n"]

    send_many("fc.conc", [{"n": n} for n in range(5)])
    assert take_in() == 5
    assert Run.objects.filter(function_id="fc-conc", status="queued").count() == 5

    first = queue.claim("w1", 10)
    assert len(first) == 2 and functions_of(first) == ["fc-conc", "fc-conc"]
    assert queue.claim("w2", 10) == [], "two items are held: the limit of 2 is reached"

    process_items(first, db=DB)  # both runs reach their sleep and park
    assert Run.objects.filter(function_id="fc-conc", status="running").count() == 2
    assert QueueItem.objects.filter(function_id="fc-conc").exclude(worker_id="").count() == 0

    second = queue.claim("w2", 10)
    assert len(second) == 2, "sleeping runs must hold no concurrency slot"
    assert not {i.run_id for i in second} & {i.run_id for i in first}
    assert queue.claim("w3", 10) == []
    process_items(second, db=DB)
    third = queue.claim("w3", 10)
    assert len(third) == 1
    process_items(third, db=DB)
    assert Run.objects.filter(function_id="fc-conc", status="running").count() == 5

    # The sleeps end together: five items are due, two may be claimed.
    advance(hours=1, seconds=1)
    woken = queue.claim("w4", 10)
    assert len(woken) == 2
    assert queue.claim("w5", 10) == []
    process_items(woken, db=DB)
    drain(advance_time=True)
    assert Run.objects.filter(function_id="fc-conc", status="completed").count() == 5


def test_a_finished_or_released_item_frees_its_slot():
    @wf.function(id="fc-conc1", trigger="fc.conc1", concurrency=wf.Concurrency(1))
    def fn(ctx):
        return ctx.event.data["n"]

    send_many("fc.conc1", [{"n": n} for n in range(3)])
    take_in()
    held = queue.claim("w", 10)
    assert len(held) == 1
    assert queue.claim("w", 10) == []
    waiting = Run.objects.filter(function_id="fc-conc1").exclude(pk=held[0].run_id)
    assert [r.waiting_reason for r in waiting] == ["waiting for concurrency slot (function 'fc-conc1', limit 1)"] * 2
    assert queue.release("w", [held[0].id]) == 1
    again = queue.claim("w", 10)
    assert len(again) == 1
    assert queue.claim("w", 10) == []
    process_items(again, db=DB)  # the run completes
    assert Run.objects.filter(function_id="fc-conc1", status="completed").count() == 1
    assert len(queue.claim("w", 10)) == 1


def test_drain_runs_every_run_of_a_limited_function():
    @wf.function(id="fc-conc-drain", trigger="fc.conc.drain", concurrency=1)
    def fn(ctx):
        ctx.step.run("a", lambda: 1)
        return ctx.event.data["n"]

    send_many("fc.conc.drain", [{"n": n} for n in range(6)])
    drain()
    assert sorted(Run.objects.filter(function_id="fc-conc-drain", status="completed").values_list("output", flat=True)) == list(range(6))


def test_a_keyed_limit_holds_back_only_its_own_key():
    @wf.function(id="fc-keyed", trigger="fc.keyed", concurrency=wf.Concurrency(1, key="event.data.account"))
    def fn(ctx):
        return ctx.event.data["account"]

    send_many("fc.keyed", [{"account": a} for a in ["A", "A", "A", "B", "B", "C"]])
    take_in()
    first = queue.claim("w", 10)
    assert accounts_of(first) == ["A", "B", "C"]
    assert queue.claim("w", 10) == []
    process_items([i for i in first if runs_of([i])[0].event.data["account"] == "A"], db=DB)
    nxt = queue.claim("w", 10)
    assert accounts_of(nxt) == ["A"]


def test_no_head_of_line_blocking_between_keys():
    @wf.function(id="fc-hol-key", trigger="fc.hol.key", concurrency=wf.Concurrency(1, key="event.data.account"))
    def fn(ctx):
        return None

    send_many("fc.hol.key", [{"account": "A"}] * 100 + [{"account": "B"}])
    take_in()
    claimed = queue.claim("w", 10)
    assert accounts_of(claimed) == ["A", "B"], "account A's backlog must not hold back account B"


def test_a_limited_backlog_does_not_stop_an_unlimited_function():
    @wf.function(id="fc-slow", trigger="fc.slow", concurrency=1)
    def slow(ctx):
        return None

    @wf.function(id="fc-fast", trigger="fc.fast")
    def fast(ctx):
        return None

    send_many("fc.slow", [{"n": n} for n in range(100)])
    wf.send("fc.fast")
    take_in()
    claimed = queue.claim("w", 10)
    assert functions_of(claimed) == ["fc-fast", "fc-slow"]
    assert queue.claim("w", 10) == []
    # Claims of one item at a time: the limited lane's one slot, then the other function.
    QueueItem.objects.exclude(worker_id="").update(worker_id="", due_at=clock.now())
    one = queue.claim("a", 1)
    two = queue.claim("b", 1)
    assert len(one) == 1 and len(two) == 1
    assert functions_of(one + two) == ["fc-fast", "fc-slow"]
    assert queue.claim("c", 1) == []


def test_two_limits_a_function_wide_one_and_a_keyed_one():
    @wf.function(
        id="fc-two", trigger="fc.two",
        concurrency=[3, wf.Concurrency(1, key="event.data.account")],
    )
    def fn(ctx):
        return ctx.event.data["account"]

    send_many("fc.two", [{"account": a} for a in ["A", "B", "C", "D"] * 2])
    take_in()
    first = queue.claim("w", 10)
    accounts = accounts_of(first)
    assert len(first) == 3, "the function-wide limit is 3"
    assert len(set(accounts)) == 3, "one item per account"
    assert queue.claim("w", 10) == []
    done = first[0]
    process_items([done], db=DB)
    still_held = {runs_of([i])[0].event.data["account"] for i in first[1:]}
    nxt = queue.claim("w", 10)
    assert len(nxt) == 1
    assert accounts_of(nxt)[0] not in still_held
    assert queue.claim("w", 10) == []


def test_env_scope_shares_the_limit_between_functions_fn_scope_does_not():
    for fid, event in (("fc-env-a", "fc.env.a"), ("fc-env-b", "fc.env.b")):
        wf.function(id=fid, trigger=event, concurrency=wf.Concurrency(1, key="event.data.account", scope="env"))(
            lambda ctx: None
        )
    for fid, event in (("fc-fn-a", "fc.fn.a"), ("fc-fn-b", "fc.fn.b")):
        wf.function(id=fid, trigger=event, concurrency=wf.Concurrency(1, key="event.data.account"))(
            lambda ctx: None
        )
    wf.send("fc.env.a", data={"account": "A"})
    wf.send("fc.env.b", data={"account": "A"})
    wf.send("fc.env.b", data={"account": "B"})
    take_in()
    claimed = queue.claim("w", 10)
    assert accounts_of(claimed) == ["A", "B"], "one A item across both functions"
    assert queue.claim("w", 10) == []
    queue.release("w", [i.id for i in claimed])
    QueueItem.objects.all().delete()

    wf.send("fc.fn.a", data={"account": "A"})
    wf.send("fc.fn.b", data={"account": "A"})
    take_in()
    claimed = queue.claim("w", 10)
    assert functions_of(claimed) == ["fc-fn-a", "fc-fn-b"], "scope fn: each function has its own limit"


def test_parallel_branches_count_against_the_concurrency_limit():
    @wf.function(id="fc-par", trigger="fc.par", concurrency=2)
    def fn(ctx):
        branches = tuple((lambda n=n: ctx.step.run(f"b{n}", lambda: n)) for n in range(3))
        return list(ctx.group.parallel(branches))

    wf.send("fc.par")
    take_in()
    run_item = queue.claim("w", 10)
    assert len(run_item) == 1
    process_items(run_item, db=DB)  # plans the three branches
    assert QueueItem.objects.filter(kind="branch").count() == 3
    branches = queue.claim("w", 10)
    assert [i.kind for i in branches] == ["branch", "branch"]
    assert queue.claim("w", 10) == []
    process_items(branches, db=DB)
    last = queue.claim("w", 10)
    assert [i.kind for i in last] == ["branch"]
    process_items(last, db=DB)
    drain()
    run = Run.objects.get(function_id="fc-par")
    assert run.status == "completed" and run.output == [0, 1, 2]


def test_an_intake_keeps_no_limited_run_for_itself():
    """The worker's intake may lease new runs to itself; never a run with a limit."""

    @wf.function(id="fc-keep-limited", trigger="fc.keep", concurrency=1)
    def limited(ctx):
        return None

    @wf.function(id="fc-keep-free", trigger="fc.keep")
    def free(ctx):
        return None

    send_many("fc.keep", [{"n": n} for n in range(3)])
    events = queue.claim("w", 10)
    kept = process_events(events, db=DB, keep_for="w", keep_max=8)
    assert functions_of(kept) == ["fc-keep-free"] * 3
    claimed = queue.claim("w2", 10)
    assert functions_of(claimed) == ["fc-keep-limited"], "one slot: the kept runs are not of this function"


# -- throttle ---------------------------------------------------------------------------------


def test_throttle_delays_runs_over_the_limit_first_in_first_out():
    @wf.function(id="fc-throttle", trigger="fc.throttle", throttle=wf.Throttle(2, "1m"))
    def fn(ctx):
        return ctx.event.data["n"]

    send_many("fc.throttle", [{"n": n} for n in range(6)])
    take_in()
    runs = by_n("fc-throttle")
    assert len(runs) == 6, "a throttle drops nothing"
    due = {n: item_of(run).due_at for n, run in runs.items()}
    # 30 s apart, plus the 1% margin that keeps machines' clocks from letting one too many in
    assert [seconds(due[n] - due[0]) for n in range(6)] == [0, 0, 30.3, 60.6, 90.9, 121.2]
    for moment in due.values():  # at most limit + burst starts in any window of the period
        assert sum(moment <= d < moment + timedelta(minutes=1) for d in due.values()) <= 3
    assert runs[0].status_detail == "" and runs[1].status_detail == ""
    for n in range(2, 6):
        assert runs[n].status_detail.startswith("throttled: "), runs[n].status_detail
        assert runs[n].held_since is not None

    drain(advance_time=True)
    runs = by_n("fc-throttle")
    assert all(r.status == "completed" for r in runs.values())
    assert all(r.status_detail == "" for r in runs.values()), "the detail is cleared when the run starts"
    for n in range(6):  # each run started at its turn, not before
        assert runs[n].started_at >= due[n]
        assert runs[n].started_at - due[n] < timedelta(seconds=2)
    starts = [r.started_at for r in runs.values()]
    for moment in starts:  # measured on the real starts too
        assert sum(moment <= s < moment + timedelta(minutes=1) for s in starts) <= 3


def test_a_throttled_run_that_comes_early_waits_for_its_turn_at_the_start():
    """Admission spaces due times, the start checks the real moments: a run due before
    its turn (the previous ones started late) is put back, still queued, until its turn."""
    from django_workflows.engine import clock as engine_clock
    from django_workflows.models import FlowSlot

    @wf.function(id="fc-throttle-gate", trigger="fc.gate", throttle=wf.Throttle(1, "1m", burst=0))
    def fn(ctx):
        return None

    send_many("fc.gate", [{"n": 0}, {"n": 1}])
    take_in()
    runs = by_n("fc-throttle-gate")
    drain(max_jobs=1)  # the first starts now
    # The second is made due right away, as if its turn had come early.
    item_of(runs[1]).__class__.objects.filter(run_id=runs[1].pk).update(due_at=engine_clock.now())
    drain()
    second = by_n("fc-throttle-gate")[1]
    assert second.status == "queued" and second.started_at is None
    assert second.status_detail.startswith("throttled: ")
    assert FlowSlot.objects.filter(kind="throttle_start", function_id="fc-throttle-gate").exists()
    drain(advance_time=True)
    first, second = by_n("fc-throttle-gate")[0], by_n("fc-throttle-gate")[1]
    assert second.status == "completed"
    assert second.started_at - first.started_at >= timedelta(seconds=60)


def test_throttle_keys_are_independent_and_burst_zero_spreads_every_start():
    @wf.function(
        id="fc-throttle-key", trigger="fc.throttle.key",
        throttle=wf.Throttle(1, "10s", key="event.data.k", burst=0),
    )
    def fn(ctx):
        return None

    send_many("fc.throttle.key", [{"k": k, "n": n} for n, k in enumerate("aabab")])
    take_in()
    runs = by_n("fc-throttle-key")
    due = {n: item_of(r).due_at for n, r in runs.items()}
    assert [seconds(due[n] - due[0]) for n in (0, 1, 3)] == [0, 10.1, 20.2]  # key a
    assert [seconds(due[n] - due[0]) for n in (2, 4)] == [0, 10.1]  # key b
    assert '(key "a")' in runs[1].status_detail


def test_throttle_capacity_comes_back_after_a_quiet_period():
    @wf.function(id="fc-throttle-refill", trigger="fc.refill", throttle=wf.Throttle(1, "1m", burst=0))
    def fn(ctx):
        return None

    wf.send("fc.refill", data={"n": 0})
    take_in()
    advance(minutes=5)
    wf.send("fc.refill", data={"n": 1})
    take_in()
    runs = by_n("fc-throttle-refill")
    assert item_of(runs[1]).due_at == runs[1].queued_at, "no debt carried over a quiet period"
    assert runs[1].status_detail == ""
    wf.send("fc.refill", data={"n": 2})
    take_in()
    runs = by_n("fc-throttle-refill")
    assert item_of(runs[2]).due_at == item_of(runs[1]).due_at + timedelta(seconds=60.6)
    assert runs[2].status_detail.startswith("throttled: ")


# -- rate limit --------------------------------------------------------------------------------


def test_rate_limit_drops_runs_over_the_limit_and_keeps_the_events():
    @wf.function(id="fc-rate", trigger="fc.rate", rate_limit=wf.RateLimit(2, "1m"))
    def limited(ctx):
        return ctx.event.data["n"]

    @wf.function(id="fc-rate-other", trigger="fc.rate")
    def other(ctx):
        return ctx.event.data["n"]

    send_many("fc.rate", [{"n": n} for n in range(5)])
    drain()
    assert Event.objects.filter(name="fc.rate").count() == 5
    assert Run.objects.filter(function_id="fc-rate-other", status="completed").count() == 5
    assert sorted(Run.objects.filter(function_id="fc-rate").values_list("output", flat=True)) == [0, 1]

    advance(seconds=30)  # GCRA: one more run allowed per 30 s
    send_many("fc.rate", [{"n": n} for n in (5, 6)])
    drain()
    assert sorted(Run.objects.filter(function_id="fc-rate").values_list("output", flat=True)) == [0, 1, 5]

    advance(minutes=5)  # a quiet period: the full limit again, no more
    send_many("fc.rate", [{"n": n} for n in (7, 8, 9)])
    drain()
    assert sorted(Run.objects.filter(function_id="fc-rate").values_list("output", flat=True)) == [0, 1, 5, 7, 8]
    assert Run.objects.filter(function_id="fc-rate-other").count() == 10


def test_rate_limit_per_key():
    @wf.function(id="fc-rate-key", trigger="fc.rate.key", rate_limit=wf.RateLimit(1, "1h", key="event.data.user"))
    def fn(ctx):
        return ctx.event.data["user"]

    send_many("fc.rate.key", [{"user": u} for u in "ababa"])
    drain()
    assert sorted(Run.objects.filter(function_id="fc-rate-key").values_list("output", flat=True)) == ["a", "b"]


# -- debounce ---------------------------------------------------------------------------------


def test_debounce_starts_one_run_with_the_last_event_after_a_quiet_period():
    @wf.function(id="fc-debounce", trigger="fc.debounce", debounce=wf.Debounce("10s"))
    def fn(ctx):
        return ctx.event.data["n"]

    for n in range(3):
        wf.send("fc.debounce", data={"n": n})
        drain()  # intake only: the run is not due
        if n < 2:
            advance(seconds=5)
    run = Run.objects.get(function_id="fc-debounce")
    assert run.status == "queued"
    assert run.event.data == {"n": 2}, "each event replaces the run's event"
    assert run.status_detail.startswith("debounced")
    first, last = (Event.objects.get(name="fc.debounce", data__n=n) for n in (0, 2))
    due = item_of(run).due_at
    assert seconds(due - last.received_at) == pytest.approx(10, abs=0.5), "the period restarts with each event"
    assert seconds(due - first.received_at) == pytest.approx(20, abs=0.5)
    advance(seconds=9)
    drain()
    assert Run.objects.get(function_id="fc-debounce").status == "queued"
    drain(advance_time=True)
    run = Run.objects.get(function_id="fc-debounce")
    assert run.status == "completed" and run.output == 2
    assert Event.objects.filter(name="fc.debounce").count() == 3
    assert not FlowSlot.objects.filter(kind="debounce", run_id=run.pk).exists()

    wf.send("fc.debounce", data={"n": 3})  # after the run: a new one
    drain(advance_time=True)
    assert sorted(Run.objects.filter(function_id="fc-debounce").values_list("output", flat=True)) == [2, 3]


def test_debounce_timeout_caps_the_delay_from_the_first_event():
    @wf.function(id="fc-debounce-to", trigger="fc.debounce.to", debounce=wf.Debounce("10s", timeout="15s"))
    def fn(ctx):
        return ctx.event.data["n"]

    wf.send("fc.debounce.to", data={"n": 0})
    take_in()
    opened = Run.objects.get(function_id="fc-debounce-to").queued_at
    assert item_of(Run.objects.get(function_id="fc-debounce-to")).due_at == opened + timedelta(seconds=10)
    for n in (1, 2):
        advance(seconds=7)
        wf.send("fc.debounce.to", data={"n": n})
        take_in()
    run = Run.objects.get(function_id="fc-debounce-to")
    assert item_of(run).due_at == opened + timedelta(seconds=15)
    drain(advance_time=True)
    run = Run.objects.get(function_id="fc-debounce-to")
    assert run.output == 2
    assert seconds(run.started_at - opened) == pytest.approx(15, abs=1)


def test_debounce_keys_are_independent_and_a_started_run_is_not_rejoined():
    @wf.function(id="fc-debounce-key", trigger="fc.debounce.key", debounce=wf.Debounce("10s", key="event.data.user"))
    def fn(ctx):
        ctx.step.sleep("nap", "1h")
        return ctx.event.data["n"]

    send_many("fc.debounce.key", [{"user": "a", "n": 0}, {"user": "b", "n": 1}, {"user": "a", "n": 2}])
    take_in()
    runs = {r.event.data["user"]: r for r in Run.objects.filter(function_id="fc-debounce-key").select_related("event")}
    assert {u: r.event.data["n"] for u, r in runs.items()} == {"a": 2, "b": 1}
    advance(seconds=11)
    drain()
    assert Run.objects.filter(function_id="fc-debounce-key", status="running").count() == 2
    wf.send("fc.debounce.key", data={"user": "a", "n": 3})
    take_in()
    assert Run.objects.filter(function_id="fc-debounce-key").count() == 3, "a started run takes no more events"
    assert Run.objects.get(pk=runs["a"].pk).event.data["n"] == 2


def test_a_debounced_runs_concurrency_key_follows_its_last_event():
    @wf.function(
        id="fc-debounce-conc", trigger="fc.debounce.conc",
        debounce=wf.Debounce("10s", key="event.data.user"),
        concurrency=wf.Concurrency(1, key="event.data.account"),
    )
    def fn(ctx):
        return ctx.event.data["account"]

    send_many("fc.debounce.conc", [
        {"user": "u1", "account": "A"}, {"user": "u2", "account": "B"}, {"user": "u1", "account": "B"},
    ])
    take_in()
    assert Run.objects.filter(function_id="fc-debounce-conc").count() == 2
    advance(seconds=11)
    claimed = queue.claim("w", 10)
    assert accounts_of(claimed) == ["B"], "both runs now belong to account B: one slot"


def test_a_debounced_runs_cancel_rules_follow_its_last_event():
    @wf.function(
        id="fc-debounce-cancel", trigger="fc.debounce.cancel", debounce=wf.Debounce("10s"),
        cancel=wf.Cancel(event="fc.debounce.stop", match="data.user"),
    )
    def fn(ctx):
        return ctx.event.data["user"]

    send_many("fc.debounce.cancel", [{"user": "a"}, {"user": "b"}])
    take_in()
    wf.send("fc.debounce.stop", data={"user": "a"})
    take_in()
    run = Run.objects.get(function_id="fc-debounce-cancel")
    assert run.status == "queued", "the run's trigger is now b's event: a's stop does not match"
    wf.send("fc.debounce.stop", data={"user": "b"})
    take_in()
    run.refresh_from_db()
    assert run.status == "cancelled"


# -- batches ----------------------------------------------------------------------------------


def define_batch(**kwargs):
    @wf.function(id="fc-batch", trigger="fc.batch", batch_events=wf.Batch(**kwargs))
    def fn(ctx):
        return {"ns": [e.data["n"] for e in ctx.events], "first": ctx.event.data["n"]}

    return fn


def test_a_batch_starts_when_full_and_the_rest_after_the_timeout():
    define_batch(max_size=3, timeout="10s")
    send_many("fc.batch", [{"n": n} for n in range(7)])
    drain()
    done = sorted(Run.objects.filter(function_id="fc-batch", status="completed").values_list("output", flat=True), key=str)
    assert done == [{"ns": [0, 1, 2], "first": 0}, {"ns": [3, 4, 5], "first": 3}]
    pending = Run.objects.get(function_id="fc-batch", status="queued")
    assert pending.status_detail.startswith("collecting a batch: 1 of 3")
    assert item_of(pending).due_at == pending.queued_at + timedelta(seconds=10)
    drain(advance_time=True)
    pending.refresh_from_db()
    assert pending.status == "completed" and pending.output == {"ns": [6], "first": 6}
    assert seconds(pending.started_at - pending.queued_at) == pytest.approx(10, abs=1)
    assert Run.objects.filter(function_id="fc-batch").count() == 3
    assert not FlowSlot.objects.filter(kind="batch", run_id__isnull=False).exists()


def test_a_batch_collects_over_several_intakes_and_its_timeout_counts_from_the_first_event():
    define_batch(max_size=5, timeout="10s")
    wf.send("fc.batch", data={"n": 0})
    take_in()
    run = Run.objects.get(function_id="fc-batch")
    due = item_of(run).due_at
    advance(seconds=6)
    send_many("fc.batch", [{"n": 1}, {"n": 2}])
    take_in()
    assert Run.objects.filter(function_id="fc-batch").count() == 1
    assert item_of(run).due_at == due, "later events do not push the batch back"
    assert Run.objects.get(pk=run.pk).status_detail.startswith("collecting a batch: 3 of 5")
    drain(advance_time=True)
    run.refresh_from_db()
    assert run.output == {"ns": [0, 1, 2], "first": 0}


def test_replaying_a_batch_run_gives_it_the_same_events():
    define_batch(max_size=2, timeout="10s")
    send_many("fc.batch", [{"n": 0}, {"n": 1}])
    drain()
    run = Run.objects.get(function_id="fc-batch")
    assert run.output == {"ns": [0, 1], "first": 0}
    again = wf.replay(run.pk)
    drain()
    again.refresh_from_db()
    assert again.status == "completed" and again.output == {"ns": [0, 1], "first": 0}


def test_a_batch_of_one_starts_at_once():
    define_batch(max_size=1, timeout="5s")
    send_many("fc.batch", [{"n": 0}, {"n": 1}])
    drain()
    outputs = sorted(Run.objects.filter(function_id="fc-batch", status="completed").values_list("output", flat=True), key=str)
    assert outputs == [{"ns": [0], "first": 0}, {"ns": [1], "first": 1}]


def test_batches_per_key():
    @wf.function(id="fc-batch-key", trigger="fc.batch.key", batch_events=wf.Batch(3, "10s", key="event.data.user"))
    def fn(ctx):
        return [e.data["n"] for e in ctx.events]

    send_many("fc.batch.key", [{"user": u, "n": n} for n, u in enumerate("ababa")])
    drain()
    assert list(Run.objects.filter(function_id="fc-batch-key", status="completed").values_list("output", flat=True)) == [[0, 2, 4]]
    drain(advance_time=True)
    assert sorted(Run.objects.filter(function_id="fc-batch-key").values_list("output", flat=True)) == [[0, 2, 4], [1, 3]]


# -- idempotency -------------------------------------------------------------------------------


def test_idempotency_one_run_per_key_per_24_hours():
    @wf.function(id="fc-idem", trigger="fc.idem", idempotency="event.data.order")
    def fn(ctx):
        return ctx.event.data["n"]

    send_many("fc.idem", [{"order": 1, "n": 0}, {"order": 1, "n": 1}, {"order": 2, "n": 2}])
    drain()
    assert sorted(Run.objects.filter(function_id="fc-idem").values_list("output", flat=True)) == [0, 2]
    assert FlowSlot.objects.filter(kind="idempotency", function_id="fc-idem", run_id__isnull=False).count() == 2
    advance(hours=23)
    wf.send("fc.idem", data={"order": 1, "n": 3})
    drain()
    assert Run.objects.filter(function_id="fc-idem").count() == 2, "the key stays taken after the run ended"
    advance(hours=1, seconds=1)
    wf.send("fc.idem", data={"order": 1, "n": 4})
    wf.send("fc.idem", data={"order": 1, "n": 5})
    drain()
    assert sorted(Run.objects.filter(function_id="fc-idem").values_list("output", flat=True)) == [0, 2, 4]


def test_an_event_refused_by_the_rate_limit_does_not_take_its_idempotency_key():
    @wf.function(
        id="fc-idem-rate", trigger="fc.idem.rate", idempotency="event.data.order",
        rate_limit=wf.RateLimit(1, "1m"),
    )
    def fn(ctx):
        return ctx.event.data["order"]

    send_many("fc.idem.rate", [{"order": 1}, {"order": 2}])
    drain()
    assert list(Run.objects.filter(function_id="fc-idem-rate").values_list("output", flat=True)) == [1]
    advance(minutes=2)
    wf.send("fc.idem.rate", data={"order": 2})
    drain()
    assert sorted(Run.objects.filter(function_id="fc-idem-rate").values_list("output", flat=True)) == [1, 2]


# -- priority ---------------------------------------------------------------------------------


def define_vip():
    @wf.function(id="fc-prio", trigger="fc.prio", priority=wf.Priority(run="event.data.vip ? 120 : 0"))
    def fn(ctx):
        return ctx.event.data["n"]


@pytest.mark.parametrize("later_by, vip_first", [(60, True), (130, False)])
def test_priority_moves_a_run_ahead_of_runs_queued_up_to_its_priority_before(later_by, vip_first):
    define_vip()
    send_many("fc.prio", [{"vip": False, "n": n} for n in range(3)])
    take_in()
    advance(seconds=later_by)
    wf.send("fc.prio", data={"vip": True, "n": 99})
    take_in()
    first = runs_of(queue.claim("w", 1))
    assert len(first) == 1
    assert first[0].event.data["n"] == (99 if vip_first else 0)
    assert len(queue.claim("w", 10)) == 3


def test_a_negative_priority_never_delays_a_run():
    @wf.function(id="fc-prio-low", trigger="fc.prio.low", priority=wf.Priority(run="event.data.low ? -600 : 0"))
    def fn(ctx):
        return ctx.event.data["n"]

    wf.send("fc.prio.low", data={"low": True, "n": 0})
    take_in()
    run = Run.objects.get(function_id="fc-prio-low")
    assert item_of(run).due_at <= clock.now()
    assert runs_of(queue.claim("w", 10))[0].pk == run.pk, "an idle worker takes it at once"
    QueueItem.objects.all().delete()
    send_many("fc.prio.low", [{"low": True, "n": 1}, {"low": False, "n": 2}])
    take_in()
    first = runs_of(queue.claim("w", 1))
    assert first[0].event.data["n"] == 2, "the normal run queued after it goes first"


@pytest.mark.parametrize("value, shift", [(5000, 1200), (-5000, 0), (120, 720), ("high", 600), (None, 600)])
def test_priority_is_clamped_to_600_seconds_and_non_numbers_count_as_0(value, shift):
    @wf.function(id="fc-prio-p", trigger="fc.prio.p", priority=wf.Priority(run="event.data.p"))
    def fn(ctx):
        return None

    wf.send("fc.prio.p", data={"p": value})
    take_in()
    run = Run.objects.get(function_id="fc-prio-p")
    assert item_of(run).due_at == run.queued_at - timedelta(seconds=shift)


def test_priority_keeps_a_delayed_events_time():
    define_vip()
    at = clock.now() + timedelta(hours=1)
    wf.send(wf.Event(name="fc.prio", data={"vip": True, "n": 0}, ts=at))
    take_in()
    run = Run.objects.get(function_id="fc-prio")
    assert item_of(run).due_at == at


# -- singleton --------------------------------------------------------------------------------


def define_singleton(mode="skip", key="event.data.user"):
    @wf.function(id="fc-single", trigger="fc.single", singleton=wf.Singleton(key=key, mode=mode))
    def fn(ctx):
        ctx.step.sleep("nap", "1h")
        return ctx.event.data["n"]


def test_singleton_skip_drops_events_while_a_run_is_active():
    define_singleton("skip")
    wf.send("fc.single", data={"user": "a", "n": 0})
    drain()
    first = Run.objects.get(function_id="fc-single")
    assert first.status == "running"
    send_many("fc.single", [{"user": "a", "n": 1}, {"user": "b", "n": 2}, {"user": "b", "n": 3}])
    drain()
    runs = by_n("fc-single")
    assert sorted(runs) == [0, 2], "one active run per key"
    drain(advance_time=True)
    assert Run.objects.get(pk=first.pk).status == "completed"
    assert not FlowSlot.objects.filter(kind="singleton", run_id=first.pk).exists()
    wf.send("fc.single", data={"user": "a", "n": 4})
    drain()
    assert sorted(by_n("fc-single")) == [0, 2, 4], "after the run ended a new one may start"


def test_singleton_skip_within_one_intake_batch():
    define_singleton("skip", key=None)
    send_many("fc.single", [{"user": u, "n": n} for n, u in enumerate("abc")])
    take_in()
    assert list(by_n("fc-single")) == [0]


def test_singleton_cancel_replaces_the_active_run():
    define_singleton("cancel")
    wf.send("fc.single", data={"user": "a", "n": 0})
    drain()
    wf.send("fc.single", data={"user": "a", "n": 1})
    drain()
    assert Event.objects.get(name="fc.single", data__n=1).error is None, "the new event must not be set aside"
    runs = by_n("fc-single")
    assert sorted(runs) == [0, 1]
    assert runs[0].status == "cancelled"
    assert "Singleton" in runs[0].error["message"]
    assert runs[1].status == "running"
    assert not FlowSlot.objects.filter(run_id=runs[0].pk).exists()
    # Two in one intake: the first is started, then replaced.
    send_many("fc.single", [{"user": "b", "n": 2}, {"user": "b", "n": 3}])
    take_in()
    runs = by_n("fc-single")
    assert runs[2].status == "cancelled" and runs[3].status == "queued"
    drain(advance_time=True)
    assert {n: r.status for n, r in by_n("fc-single").items()} == {
        0: "cancelled", 1: "completed", 2: "cancelled", 3: "completed",
    }


def test_singleton_cancel_replaces_a_run_a_worker_is_executing():
    steps: list = []

    @wf.function(id="fc-single-busy", trigger="fc.single.busy", singleton=wf.Singleton(mode="cancel"))
    def fn(ctx):
        ctx.step.run("one", lambda: steps.append(("one", ctx.event.data["n"])))
        ctx.step.run("two", lambda: steps.append(("two", ctx.event.data["n"])))
        return ctx.event.data["n"]

    wf.send("fc.single.busy", data={"n": 0})
    take_in()
    held = queue.claim("w", 10)
    assert len(held) == 1
    wf.send("fc.single.busy", data={"n": 1})
    take_in()  # while the first run is held by worker w
    runs = by_n("fc-single-busy")
    assert runs[0].status == "cancelled" and runs[1].status == "queued"
    process_items(held, db=DB)  # the old worker's writes are fenced out
    drain()
    runs = by_n("fc-single-busy")
    assert runs[0].status == "cancelled" and runs[1].status == "completed" and runs[1].output == 1
    assert ("two", 0) not in steps
    assert not Step.objects.filter(run=runs[0]).exists()


@pytest.mark.parametrize("ending", ["completed", "failed", "cancelled"])
def test_the_end_of_a_run_releases_its_singleton_slot(ending):
    @wf.function(id="fc-single-end", trigger="fc.single.end", retries=0, singleton=wf.Singleton())
    def fn(ctx):
        ctx.step.sleep("nap", "1h")
        if ctx.event.data.get("fail"):
            raise wf.NonRetriableError("boom")
        return "ok"

    wf.send("fc.single.end", data={"fail": ending == "failed"})
    drain()
    run = Run.objects.get(function_id="fc-single-end")
    assert FlowSlot.objects.filter(kind="singleton", run_id=run.pk).count() == 1
    if ending == "cancelled":
        assert wf.cancel(run.pk) is True
    else:
        drain(advance_time=True)
    run.refresh_from_db()
    assert run.status == ending
    assert not FlowSlot.objects.filter(run_id=run.pk).exists()
    wf.send("fc.single.end", data={})
    drain()
    assert Run.objects.filter(function_id="fc-single-end").count() == 2


@pytest.mark.parametrize("kind", ["debounce", "batch"])
def test_a_cancelled_collecting_run_releases_its_slot(kind):
    options = {"debounce": wf.Debounce("10s")} if kind == "debounce" else {"batch_events": wf.Batch(5, "10s")}

    @wf.function(id="fc-collect", trigger="fc.collect", **options)
    def fn(ctx):
        return [e.data["n"] for e in ctx.events]

    wf.send("fc.collect", data={"n": 0})
    take_in()
    run = Run.objects.get(function_id="fc-collect")
    assert FlowSlot.objects.filter(kind=kind, run_id=run.pk).count() == 1
    assert wf.cancel(run.pk) is True
    assert not FlowSlot.objects.filter(run_id=run.pk).exists()
    wf.send("fc.collect", data={"n": 1})
    drain(advance_time=True)
    assert list(Run.objects.filter(function_id="fc-collect", status="completed").values_list("output", flat=True)) == [[1]]


# -- pause ------------------------------------------------------------------------------------


def test_a_paused_function_starts_no_run_from_events():
    @wf.function(id="fc-paused", trigger="fc.paused")
    def paused(ctx):
        return 1

    @wf.function(id="fc-not-paused", trigger="fc.paused")
    def not_paused(ctx):
        return 2

    wf.pause("fc-paused")
    wf.send("fc.paused")
    drain()
    assert not Run.objects.filter(function_id="fc-paused").exists()
    assert Run.objects.filter(function_id="fc-not-paused").count() == 1
    assert wf.replay_events("fc-paused") == 0, "replaying its events while paused starts nothing"
    wf.resume("fc-paused")
    wf.send("fc.paused")
    drain()
    assert Run.objects.filter(function_id="fc-paused").count() == 1


def test_replaying_events_goes_through_the_rate_limit():
    @wf.function(id="fc-rate-replay", trigger="fc.rate.replay", rate_limit=wf.RateLimit(1, "1h"))
    def fn(ctx):
        return ctx.event.data["n"]

    wf.pause("fc-rate-replay")
    send_many("fc.rate.replay", [{"n": n} for n in range(3)])
    drain()
    assert not Run.objects.filter(function_id="fc-rate-replay").exists()
    wf.resume("fc-rate-replay")
    assert wf.replay_events("fc-rate-replay") == 1
    drain()
    assert list(Run.objects.filter(function_id="fc-rate-replay").values_list("output", flat=True)) == [0]


def test_a_paused_function_starts_no_cron_run():
    @wf.function(id="fc-cron", trigger=wf.TriggerCron("*/5 * * * *"))
    def fn(ctx):
        return 1

    cron.sync_schedules(DB)
    schedule = CronSchedule.objects.get(function_id="fc-cron")
    tick = cron.next_tick(fn.cron_triggers[0], schedule.created_at)
    wf.pause("fc-cron")
    assert cron.fire_schedule(DB, schedule.pk, tick + timedelta(seconds=1)) is None
    assert not Run.objects.filter(function_id="fc-cron").exists()
    wf.resume("fc-cron")
    later = cron.next_tick(fn.cron_triggers[0], tick + timedelta(seconds=1))
    assert cron.fire_schedule(DB, schedule.pk, later + timedelta(seconds=1)) is not None
    assert Run.objects.filter(function_id="fc-cron").count() == 1


def define_invoker(calls=("call",)):
    @wf.function(id="fc-parent", trigger="fc.parent")
    def parent(ctx):
        outcomes = []
        for step_id in calls:
            try:
                outcomes.append(ctx.step.invoke(step_id, function="fc-child", data={"from": step_id}))
            except wf.StepError as exc:
                outcomes.append(exc.error["name"])
        return outcomes


def test_invoking_a_paused_function_fails_the_invoke_step():
    @wf.function(id="fc-child", trigger="fc.child")
    def child(ctx):
        return "child"

    define_invoker()
    wf.pause("fc-child")
    wf.send("fc.parent")
    drain()
    parent = Run.objects.get(function_id="fc-parent")
    assert parent.status == "completed" and parent.output == ["FunctionPaused"]
    step = Step.objects.get(run=parent, step_id="call")
    assert step.status == "failed" and "paused" in step.error["message"]
    assert not Run.objects.filter(function_id="fc-child").exists()


def test_replaying_a_run_of_a_paused_function_is_refused():
    @wf.function(id="fc-replay-paused", trigger="fc.replay.paused")
    def fn(ctx):
        return 1

    wf.send("fc.replay.paused")
    drain()
    run = Run.objects.get(function_id="fc-replay-paused")
    wf.pause("fc-replay-paused")
    with pytest.raises(wf.RunRefusedError) as refused:
        wf.replay(run.pk)
    assert refused.value.name == "FunctionPaused"
    assert Run.objects.filter(function_id="fc-replay-paused").count() == 1
    wf.resume("fc-replay-paused")
    assert wf.replay(run.pk).replay_of_id == run.pk


# -- invoke and replay through flow control -----------------------------------------------------


def test_invoking_a_rate_limited_function_over_its_limit_fails_the_step():
    @wf.function(id="fc-child", trigger="fc.child", rate_limit=wf.RateLimit(1, "1h"))
    def child(ctx):
        return "child"

    define_invoker(calls=("a", "b"))
    wf.send("fc.parent")
    drain()
    parent = Run.objects.get(function_id="fc-parent")
    assert parent.output == ["child", "RateLimited"]
    assert Run.objects.filter(function_id="fc-child").count() == 1


def test_invoking_a_singleton_with_an_active_run_fails_the_step():
    @wf.function(id="fc-child", trigger="fc.child", singleton=wf.Singleton())
    def child(ctx):
        ctx.step.sleep("nap", "1h")
        return "child"

    define_invoker()
    wf.send("fc.child")
    drain()
    wf.send("fc.parent")
    drain()
    parent = Run.objects.get(function_id="fc-parent")
    assert parent.status == "completed" and parent.output == ["SingletonRunActive"]
    assert Run.objects.filter(function_id="fc-child").count() == 1


def test_invoking_a_limited_function_returns_its_output():
    @wf.function(id="fc-child", trigger="fc.child", concurrency=1, throttle=wf.Throttle(1, "1m", burst=0))
    def child(ctx):
        return ctx.event.data["from"]

    define_invoker(calls=("a", "b"))
    wf.send("fc.parent")
    drain(advance_time=True)
    assert Run.objects.get(function_id="fc-parent").output == ["a", "b"]
    children = list(Run.objects.filter(function_id="fc-child").order_by("started_at"))
    assert len(children) == 2
    assert (children[1].started_at - children[0].started_at) >= timedelta(seconds=59), "the throttle applies to invokes"


def test_replaying_a_rate_limited_run_over_its_limit_is_refused():
    @wf.function(id="fc-replay-rate", trigger="fc.replay.rate", rate_limit=wf.RateLimit(1, "1h"))
    def fn(ctx):
        return 1

    wf.send("fc.replay.rate")
    drain()
    run = Run.objects.get(function_id="fc-replay-rate")
    with pytest.raises(wf.RunRefusedError) as refused:
        wf.replay(run.pk)
    assert refused.value.name == "RateLimited"
    assert Run.objects.filter(function_id="fc-replay-rate").count() == 1
    advance(hours=1, seconds=1)
    assert wf.replay(run.pk).replay_of_id == run.pk


def test_replaying_a_singleton_while_another_run_is_active_is_refused():
    define_singleton("skip", key=None)
    wf.send("fc.single", data={"n": 0})
    drain()
    first = Run.objects.get(function_id="fc-single")
    wf.cancel(first.pk)
    wf.send("fc.single", data={"n": 1})
    drain()
    with pytest.raises(wf.RunRefusedError) as refused:
        wf.replay(first.pk)
    assert refused.value.name == "SingletonRunActive"


def test_replaying_a_run_with_an_idempotency_key_is_allowed():
    @wf.function(id="fc-replay-idem", trigger="fc.replay.idem", idempotency="event.data.order")
    def fn(ctx):
        return ctx.event.data["order"]

    wf.send("fc.replay.idem", data={"order": 7})
    drain()
    run = Run.objects.get(function_id="fc-replay-idem")
    again = wf.replay(run.pk)
    drain()
    again.refresh_from_db()
    assert again.status == "completed" and again.output == 7


# -- definitions refused --------------------------------------------------------------------------


def define(**options):
    return wf.function(id="fc-bad", trigger="fc.bad", **options)(lambda ctx: None)


REFUSED = [
    # combinations
    ("batch+debounce", lambda: define(batch_events=wf.Batch(5, "5s"), debounce=wf.Debounce("5s")),
     r"function 'fc-bad': batch_events cannot be combined with debounce"),
    ("batch+idempotency", lambda: define(batch_events=wf.Batch(5, "5s"), idempotency="event.data.id"),
     r"batch_events cannot be combined with idempotency"),
    ("batch+rate_limit", lambda: define(batch_events=wf.Batch(5, "5s"), rate_limit=wf.RateLimit(1, "1m")),
     r"batch_events cannot be combined with rate_limit"),
    ("batch+cancel", lambda: define(batch_events=wf.Batch(5, "5s"), cancel=wf.Cancel(event="fc.stop")),
     r"batch_events cannot be combined with cancel"),
    ("batch+priority", lambda: define(batch_events=wf.Batch(5, "5s"), priority=wf.Priority(run="1")),
     r"batch_events cannot be combined with priority"),
    ("batch+singleton", lambda: define(batch_events=wf.Batch(5, "5s"), singleton=wf.Singleton()),
     r"batch_events cannot be combined with singleton"),
    ("throttle+debounce", lambda: define(throttle=wf.Throttle(1, "1m"), debounce=wf.Debounce("5s")),
     r"function 'fc-bad': throttle cannot be combined with debounce"),
    ("throttle+batch", lambda: define(throttle=wf.Throttle(1, "1m"), batch_events=wf.Batch(5, "5s")),
     r"throttle cannot be combined with batch_events"),
    # limits
    ("concurrency-0", lambda: define(concurrency=0), r"concurrency must be at least 1, got 0"),
    ("concurrency-negative", lambda: define(concurrency=-2), r"concurrency must be at least 1, got -2"),
    ("concurrency-list-0", lambda: define(concurrency=[0]), r"concurrency must be at least 1"),
    ("Concurrency-0", lambda: define(concurrency=wf.Concurrency(0)), r"Concurrency limit must be an integer of at least 1"),
    ("Concurrency-negative", lambda: define(concurrency=wf.Concurrency(-1, key="event.data.a")), r"Concurrency limit"),
    ("Concurrency-float", lambda: define(concurrency=wf.Concurrency(1.5)), r"Concurrency limit must be an integer"),
    ("Concurrency-bool", lambda: define(concurrency=wf.Concurrency(True)), r"Concurrency limit must be an integer"),
    ("Throttle-0", lambda: define(throttle=wf.Throttle(0, "1m")), r"Throttle limit must be an integer of at least 1"),
    ("Throttle-negative", lambda: define(throttle=wf.Throttle(-3, "1m")), r"Throttle limit"),
    ("Throttle-burst", lambda: define(throttle=wf.Throttle(1, "1m", burst=-1)), r"Throttle burst must be an integer of at least 0"),
    ("RateLimit-0", lambda: define(rate_limit=wf.RateLimit(0, "1m")), r"RateLimit limit must be an integer of at least 1"),
    ("RateLimit-negative", lambda: define(rate_limit=wf.RateLimit(-1, "1m")), r"RateLimit limit"),
    ("Batch-0", lambda: define(batch_events=wf.Batch(0, "5s")), r"Batch max_size must be an integer of at least 1"),
    ("Batch-negative", lambda: define(batch_events=wf.Batch(-5, "5s")), r"Batch max_size"),
    ("Batch-too-big", lambda: define(batch_events=wf.Batch(1001, "5s")), r"Batch max_size must be at most 1000"),
    # periods
    ("throttle-short", lambda: define(throttle=wf.Throttle(1, "500ms")), r"Throttle period must be between 1s and 7d"),
    ("throttle-long", lambda: define(throttle=wf.Throttle(1, "8d")), r"Throttle period must be between 1s and 7d, got 8d"),
    ("rate-short", lambda: define(rate_limit=wf.RateLimit(1, "0.5s")), r"RateLimit period must be between 1s and 1d"),
    ("rate-long", lambda: define(rate_limit=wf.RateLimit(1, "25h")), r"RateLimit period must be between 1s and 1d, got 25h"),
    ("debounce-short", lambda: define(debounce=wf.Debounce("999ms")), r"Debounce period must be between 1s and 7d"),
    ("debounce-long", lambda: define(debounce=wf.Debounce("8d")), r"Debounce period must be between 1s and 7d"),
    ("debounce-timeout", lambda: define(debounce=wf.Debounce("5s", timeout="8d")), r"Debounce timeout must be between 1s and 7d"),
    ("debounce-timeout-0", lambda: define(debounce=wf.Debounce("5s", timeout="0s")), r"Debounce timeout must be between"),
    ("batch-timeout-long", lambda: define(batch_events=wf.Batch(5, "61s")), r"Batch timeout must be between 1s and 1m"),
    ("batch-timeout-short", lambda: define(batch_events=wf.Batch(5, "100ms")), r"Batch timeout must be between 1s and 1m"),
    ("throttle-bare", lambda: define(throttle=wf.Throttle(1, 60)), r"Throttle period: a bare number"),
    ("rate-bare", lambda: define(rate_limit=wf.RateLimit(1, 60)), r"RateLimit period: a bare number"),
    ("debounce-bare", lambda: define(debounce=wf.Debounce(10)), r"Debounce period: a bare number"),
    ("debounce-timeout-bare", lambda: define(debounce=wf.Debounce("5s", timeout=30)), r"Debounce timeout: a bare number"),
    ("batch-bare", lambda: define(batch_events=wf.Batch(5, 5)), r"Batch timeout: a bare number"),
    ("throttle-bare-string", lambda: define(throttle=wf.Throttle(1, "60")), r"Throttle period: a bare number"),
    # keys
    ("concurrency-key", lambda: define(concurrency=wf.Concurrency(1, key="event.data.(")), r"Concurrency key 'event.data.\(' does not compile"),
    ("throttle-key", lambda: define(throttle=wf.Throttle(1, "1m", key="event.data.(")), r"Throttle key .* does not compile"),
    ("rate-key", lambda: define(rate_limit=wf.RateLimit(1, "1m", key="event.data.(")), r"RateLimit key .* does not compile"),
    ("debounce-key", lambda: define(debounce=wf.Debounce("5s", key="event.data.(")), r"Debounce key .* does not compile"),
    ("batch-key", lambda: define(batch_events=wf.Batch(5, "5s", key="event.data.(")), r"Batch key .* does not compile"),
    ("singleton-key", lambda: define(singleton=wf.Singleton(key="event.data.(")), r"Singleton key .* does not compile"),
    ("priority-run", lambda: define(priority=wf.Priority(run="event.data.(")), r"Priority run .* does not compile"),
    ("idempotency-key", lambda: define(idempotency="event.data.("), r"idempotency .* does not compile"),
    ("idempotency-type", lambda: define(idempotency=5), r"idempotency must be a CEL expression string"),
    ("idempotency-empty", lambda: define(idempotency="  "), r"idempotency must be a CEL expression string"),
    ("key-type", lambda: define(concurrency=wf.Concurrency(1, key=5)), r"Concurrency key must be a CEL expression string"),
    ("priority-none", lambda: define(priority=wf.Priority(run=None)), r"Priority run must be a CEL expression string"),
    # concurrency shapes
    ("scope", lambda: define(concurrency=wf.Concurrency(1, key="event.data.a", scope="global")), r"Concurrency scope must be \"fn\" or \"env\", got 'global'"),
    ("env-no-key", lambda: define(concurrency=wf.Concurrency(1, scope="env")), r"Concurrency\(scope=\"env\"\) needs a key"),
    ("three-limits", lambda: define(concurrency=[1, wf.Concurrency(1, key="event.data.a"), wf.Concurrency(1, key="event.data.b")]),
     r"at most 2 concurrency limits, got 3"),
    ("two-unkeyed", lambda: define(concurrency=[1, 2]), r"two concurrency limits without keys"),
    # types
    ("throttle-type", lambda: define(throttle=5), r"function 'fc-bad': throttle must be a wf.Throttle\(...\), got 5"),
    ("rate-type", lambda: define(rate_limit="10/m"), r"rate_limit must be a wf.RateLimit"),
    ("debounce-type", lambda: define(debounce="5s"), r"debounce must be a wf.Debounce"),
    ("batch-type", lambda: define(batch_events=10), r"batch_events must be a wf.Batch"),
    ("priority-type", lambda: define(priority="event.data.p"), r"priority must be a wf.Priority"),
    ("singleton-type", lambda: define(singleton=True), r"singleton must be a wf.Singleton"),
    ("concurrency-type", lambda: define(concurrency="3"), r"concurrency must be an int, a wf.Concurrency\(...\) or a list of two"),
    ("concurrency-bool", lambda: define(concurrency=True), r"concurrency must be an int"),
    ("throttle-instance-of-other", lambda: define(throttle=wf.RateLimit(1, "1m")), r"throttle must be a wf.Throttle"),
    ("singleton-mode", lambda: define(singleton=wf.Singleton(mode="queue")), r"Singleton mode must be \"skip\" or \"cancel\""),
]


@pytest.mark.parametrize("build, message", [(b, m) for _, b, m in REFUSED], ids=[i for i, _, _ in REFUSED])
def test_refused_definitions(build, message):
    with pytest.raises(wf.WorkflowDefinitionError, match=message):
        build()
    assert "fc-bad" not in registry._functions


ACCEPTED = [
    ("bounds-low", dict(throttle=wf.Throttle(1, "1s"), rate_limit=wf.RateLimit(1, "1s"))),
    ("bounds-high", dict(throttle=wf.Throttle(1, "7d"), rate_limit=wf.RateLimit(1, "24h"))),
    ("debounce-bounds", dict(debounce=wf.Debounce("1s", timeout="7d"))),
    ("batch-bounds", dict(batch_events=wf.Batch(1000, "60s"))),
    ("batch-small", dict(batch_events=wf.Batch(1, "1s", key="event.data.a"))),
    ("timedelta-period", dict(throttle=wf.Throttle(3, timedelta(minutes=5), burst=0))),
    ("two-limits", dict(concurrency=[wf.Concurrency(5), wf.Concurrency(1, key="event.data.a", scope="env")])),
    ("two-keyed", dict(concurrency=[wf.Concurrency(2, key="event.data.a"), wf.Concurrency(1, key="event.data.b")])),
    ("everything-but-batch", dict(
        concurrency=2, throttle=wf.Throttle(1, "1m"), rate_limit=wf.RateLimit(10, "1h"),
        idempotency="event.data.id", priority=wf.Priority(run="event.data.p"), singleton=wf.Singleton(mode="cancel"),
    )),
    ("debounce-and-friends", dict(debounce=wf.Debounce("5s", key="event.data.a"), rate_limit=wf.RateLimit(1, "1m"), singleton=wf.Singleton())),
    ("batch-and-concurrency", dict(batch_events=wf.Batch(10, "5s"), concurrency=wf.Concurrency(1, key="event.data.a"))),
]


@pytest.mark.parametrize("options", [o for _, o in ACCEPTED], ids=[i for i, _ in ACCEPTED])
def test_accepted_definitions(options):
    fn = define(**options)
    assert registry._functions["fc-bad"] is fn
